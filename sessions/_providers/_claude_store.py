"""claude-agent-sdk's `SessionStore` protocol on top of a `sessions` `Store`.

The CLI mirrors every transcript line it writes (``--session-mirror``); the SDK batches
them into `ClaudeTranscriptStore.append`, and on resume loads them back
(`ClaudeTranscriptStore.load`) into a temporary ``CLAUDE_CONFIG_DIR`` so that
``--resume`` works on a machine whose ``~/.claude`` never saw the session.

Records go to their own log, ``f"{session_id}.claude"``, beside the session's log:
the SessionServer numbers its records itself, and two writers cannot share one gap-free
``seq``. Each `append` call becomes one ``provider_data`` record whose ``data`` is
``{"key": "<project>/<session>[/<subpath>]", "value": {"session_key": {...},
"entries": [...]}}``; the provider's cost carry-over is ``{"key": "cost", "value":
{"unreported_cost_usd": x}}``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import trio
from claude_agent_sdk.types import SessionKey, SessionListSubkeysKey, SessionStoreEntry, SessionStoreListEntry

from .._errors import StoreError
from .._stores._base import Record, Store

KIND = "provider_data"
COST_KEY = "cost"


def claude_mirror_key(session_id: str) -> str:
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
        self.key = claude_mirror_key(session_id)
        self._seq: int | None = None
        self._lock = trio.Lock()

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Add one batch of transcript lines as one durable ``provider_data`` record."""
        if not entries:
            return
        await self._write({"key": _key_string(key), "value": {"session_key": dict(key), "entries": list(entries)}})

    async def _write(self, data: dict[str, Any]) -> None:
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

    async def _fold(self) -> dict[str, tuple[dict[str, Any], list[SessionStoreEntry], int]]:
        return (await self._fold_all())[0]

    async def _fold_all(self) -> tuple[dict[str, tuple[dict[str, Any], list[SessionStoreEntry], int]], set[str]]:
        """Every transcript in the log: key string -> (session key, entries, mtime in ms).

        A ``delete`` is a tombstone record: the key's entries (and, for a main
        transcript, its subagents') before it are gone. Entries with a ``uuid`` already
        seen for their key are dropped (the SDK retries batches)."""
        transcripts: dict[str, tuple[dict[str, Any], list[SessionStoreEntry], int]] = {}
        seen: dict[str, set[str]] = {}
        deleted: set[str] = set()
        records = await self.store.load(self.key)
        if records:
            self._seq = max(self._seq or 0, records[-1].seq)
        for record in records:
            value = record.data.get("value")
            if record.kind != KIND or not isinstance(value, dict) or not isinstance(value.get("session_key"), dict):
                continue
            session_key = value["session_key"]
            key = _key_string(session_key)
            if value.get("deleted"):
                deleted.add(key)
                for other in [
                    k for k in transcripts if k == key or (not session_key.get("subpath") and k.startswith(key + "/"))
                ]:
                    del transcripts[other]
                    seen.pop(other, None)
                continue
            _, entries, _ = transcripts.setdefault(key, (session_key, [], 0))
            uuids = seen.setdefault(key, set())
            for entry in value.get("entries") or ():
                uuid = entry.get("uuid") if isinstance(entry, dict) else None
                if isinstance(uuid, str):
                    if uuid in uuids:
                        continue
                    uuids.add(uuid)
                entries.append(entry)
            transcripts[key] = (session_key, entries, int(record.ts * 1000))
        return transcripts, deleted

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """The transcript ``key`` names, or None. When the project has no such session, the
        same session (and subpath) under another project is returned: a session mirrored
        from one working directory resumes from another."""
        transcripts, deleted = await self._fold_all()
        exact = transcripts.get(_key_string(key))
        if exact is not None:
            return list(exact[1])
        main = _key_string({"project_key": key["project_key"], "session_id": key["session_id"]})
        if _key_string(key) in deleted or main in deleted:
            return None
        for session_key, entries, _ in transcripts.values():
            if session_key.get("session_id") == key["session_id"] and session_key.get("subpath") == key.get("subpath"):
                return list(entries)
        return None

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """The main transcripts of ``project_key`` mirrored here, with their last write time."""
        return [
            {"session_id": session_key["session_id"], "mtime": mtime}
            for session_key, _, mtime in (await self._fold()).values()
            if session_key.get("project_key") == project_key and not session_key.get("subpath")
        ]

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """The subagent transcripts (subpaths) mirrored for ``key``'s session."""
        return [
            str(session_key["subpath"])
            for session_key, _, _ in (await self._fold()).values()
            if session_key.get("subpath")
            and session_key.get("session_id") == key["session_id"]
            and session_key.get("project_key") == key["project_key"]
        ]

    async def unreported_cost(self) -> float:
        """Cost the CLI charged for turns that had already ended (abandoned, timed out,
        cancelled) and that no later turn has reported yet (see `add_unreported_cost`)."""
        total = Decimal(0)
        for record in await self.store.load(self.key):
            value = record.data.get("value")
            if record.kind == KIND and record.data.get("key") == COST_KEY and isinstance(value, dict):
                total += Decimal(repr(float(value.get("unreported_cost_usd", 0.0))))
        return float(round(total, 12))

    async def add_unreported_cost(self, amount: float) -> None:
        """Record ``amount`` of unreported cost (negative once a turn reported it), so that a
        restarted session still reports it: the session's total stays exact."""
        if amount:
            await self._write({"key": COST_KEY, "value": {"unreported_cost_usd": amount}})

    async def delete(self, key: SessionKey) -> None:
        """Forget a transcript (a main one with its subagents'): a tombstone record, since the
        log is append-only."""
        await self._write({"key": _key_string(key), "value": {"session_key": dict(key), "deleted": True}})
