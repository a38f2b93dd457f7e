"""claude-agent-sdk's `SessionStore` protocol on top of a `sessions` `Store`.

The CLI mirrors every transcript line it writes (``--session-mirror``); the SDK batches
them into `ClaudeTranscriptStore.append`, and on resume loads them back
(`ClaudeTranscriptStore.load`) into a temporary ``CLAUDE_CONFIG_DIR`` so that
``--resume`` works on a machine whose ``~/.claude`` never saw the session.

Records go to their own log, ``f"{session_id}.claude"``, beside the session's log:
the SessionServer numbers its records itself, and two writers cannot share one gap-free
``seq``. Each `append` call becomes one ``provider_data`` record whose ``data`` is
``{"key": "<project>/<session>[/<subpath>]", "value": {"session_key": {...},
"entries": [...]}}``.
"""

from __future__ import annotations

from typing import Any

import trio
from claude_agent_sdk.types import SessionKey, SessionListSubkeysKey, SessionStoreEntry, SessionStoreListEntry

from .._errors import StoreError
from .._stores._base import Record, Store

KIND = "provider_data"


def mirror_key(session_id: str) -> str:
    """The store key of a session's Claude transcript mirror.

    Example::

        assert sessions.claude_mirror_key("s1") == "s1.claude"
    """
    return f"{session_id}.claude"


def _key_string(key: SessionKey | SessionListSubkeysKey) -> str:
    parts = [key["project_key"], key["session_id"]]
    subpath = key.get("subpath")
    if subpath:
        parts.append(str(subpath))
    return "/".join(parts)


class ClaudeTranscriptStore:
    """A claude-agent-sdk ``SessionStore`` that keeps the CLI's transcript in a `sessions` store.

    ``ClaudeCode`` uses it by itself when the session has a store; use it directly to
    give a plain ``ClaudeSDKClient`` the same durable transcript. Entries are matched
    by CLI session id (and subpath), not by project: a session mirrored from one
    working directory resumes from another.

    Example::

        store = sessions.SqliteStore("agents.db")
        mirror = sessions.ClaudeTranscriptStore(store, "s1")
        options = ClaudeAgentOptions(session_store=mirror, resume=claude_session_id)
    """

    def __init__(self, store: Store, session_id: str) -> None:
        self.store = store
        self.key = mirror_key(session_id)
        self._seq: int | None = None
        self._lock = trio.Lock()

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Add one batch of transcript lines as one durable ``provider_data`` record."""
        if not entries:
            return
        data = {"key": _key_string(key), "value": {"session_key": dict(key), "entries": list(entries)}}
        async with self._lock:
            for attempt in range(2):
                if self._seq is None or attempt:
                    records = await self.store.load(self.key)
                    self._seq = records[-1].seq if records else 0
                record = Record(self.key, self._seq + 1, KIND, data)
                try:
                    await self.store.append(self.key, [record], durable=True)
                except StoreError:
                    if attempt:
                        raise
                    continue
                self._seq += 1
                return

    async def _batches(self) -> list[dict[str, Any]]:
        records = await self.store.load(self.key)
        if records:
            self._seq = max(self._seq or 0, records[-1].seq)
        return [r.data["value"] for r in records if r.kind == KIND and isinstance(r.data.get("value"), dict)]

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """Every line of the transcript ``key`` names (by session id and subpath), or None."""
        entries: list[SessionStoreEntry] = []
        seen: set[str] = set()
        found = False
        for batch in await self._batches():
            session_key = batch.get("session_key") or {}
            if session_key.get("session_id") != key["session_id"] or session_key.get("subpath") != key.get("subpath"):
                continue
            found = True
            for entry in batch.get("entries") or ():
                uuid = entry.get("uuid") if isinstance(entry, dict) else None
                if isinstance(uuid, str):
                    if uuid in seen:
                        continue
                    seen.add(uuid)
                entries.append(entry)
        return entries if found else None

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """The CLI sessions mirrored here (any project: the log is this session's own)."""
        mtimes: dict[str, int] = {}
        for record in await self.store.load(self.key):
            session_key = (record.data.get("value") or {}).get("session_key") or {}
            if record.kind == KIND and session_key.get("session_id") and not session_key.get("subpath"):
                mtimes[session_key["session_id"]] = int(record.ts * 1000)
        return [{"session_id": sid, "mtime": mtime} for sid, mtime in mtimes.items()]

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """The subagent transcripts (subpaths) mirrored for ``key``'s session."""
        subpaths: list[str] = []
        for batch in await self._batches():
            session_key = batch.get("session_key") or {}
            subpath = session_key.get("subpath")
            if session_key.get("session_id") == key["session_id"] and subpath and subpath not in subpaths:
                subpaths.append(subpath)
        return subpaths
