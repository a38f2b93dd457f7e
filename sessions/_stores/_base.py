"""The store protocol and the record format.

A store keeps, per session, an append-only log of `Record` values. A session is rebuilt
by folding its records in order (`sessions._session`), so the log is the only truth:
nothing is updated in place. Records carry a format ``version``: a store writes
`RECORD_VERSION` and must load every version it has ever written.

Record kinds (``kind``) and their ``data``, written by the SessionServer:

==================  ======================================================================
kind                data
==================  ======================================================================
session_started     ``{"options": {...}}``: the session was created (first record)
session_resumed     ``{}``: a server (re)started on an existing log
turn_started        ``{"turn", "prompt", "options"[, "idempotency_key"]}``: durable *before* the provider sees it
message             ``{"turn", "message": Message.to_dict()}``: a transcript message
provider_session    ``{"id"}``: the provider's native session id changed
turn_finished       ``{"turn", "result": Result.to_dict()}``: durable at the turn's end
turn_interrupted    ``{"turn", "reason"}``: a started turn never finished (found at resume)
session_put         ``{"session": Session.to_dict()}``: `put_session` replaced the state
session_rewound     ``{"to_turn"}``: `rewind`: the transcript goes back to the end of turn ``to_turn``
                    (history, cost and turn numbers go on; the provider's session id is dropped)
provider_data       ``{"key", "value"}``: a provider's own records (e.g. a CLI transcript)
==================  ======================================================================
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final, Protocol, runtime_checkable

import attrs

from .._errors import CorruptRecord
from ._claims import CLAIM_WAIT, SessionClaim

RECORD_VERSION: Final = 1
"""The record format this version of sessions writes."""


@attrs.frozen
class Record:
    """One entry of a session's log.

    ``seq`` numbers a session's records from 1 with no gaps; ``ts`` is wall-clock
    seconds (``time.time()``); ``data`` is a JSON object.

    Example::

        sessions.Record(session_id="s1", seq=1, kind="session_started", data={"options": {}})
    """

    session_id: str
    seq: int
    kind: str
    data: dict[str, Any] = attrs.field(factory=dict)
    ts: float = attrs.field(factory=time.time)
    version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON object a store writes: ``{"v", "sid", "seq", "ts", "kind", "data"}``."""
        return {
            "v": self.version,
            "sid": self.session_id,
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, raw: object, *, location: str = "<record>", line: int = 0) -> Record:
        """Read a record written by `to_dict` (any version this release knows).

        Raises:
            CorruptRecord: ``raw`` is not a record, naming ``location`` and ``line``.
        """
        if not isinstance(raw, dict):
            raise CorruptRecord(location, line, f"expected a JSON object, got {type(raw).__name__}")
        version = raw.get("v")
        if not isinstance(version, int) or not 1 <= version <= RECORD_VERSION:
            raise CorruptRecord(
                location, line, f"unknown record version {version!r} (this release reads 1 to {RECORD_VERSION})"
            )
        try:
            session_id, seq, ts, kind, data = raw["sid"], raw["seq"], raw["ts"], raw["kind"], raw["data"]
        except KeyError as exc:
            raise CorruptRecord(location, line, f"missing field {exc.args[0]!r}") from None
        if not isinstance(session_id, str) or not isinstance(kind, str):
            raise CorruptRecord(location, line, "sid and kind must be strings")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise CorruptRecord(location, line, f"seq must be a positive integer, got {seq!r}")
        if not isinstance(ts, (int, float)) or not isinstance(data, dict):
            raise CorruptRecord(location, line, "ts must be a number and data an object")
        return cls(session_id=session_id, seq=seq, kind=kind, data=data, ts=float(ts), version=version)


@runtime_checkable
class Store(Protocol):
    """**Protocol**: where sessions keep their logs. Implement it for your own backend and
    check it with `sessions.testing.check_store`.

    A store object is shared: by every session given it, and by the restarts of each.
    It binds to the running trio run lazily (create it anywhere, use it in ``trio.run``).
    Every method may be called concurrently from many sessions' tasks.

    Example::

        store = sessions.SqliteStore("agents.db")
        with await store.claim("s1"):
            await store.append("s1", [sessions.Record("s1", 1, "session_started")], durable=True)
            assert [r.seq for r in await store.load("s1")] == [1]
    """

    async def append(self, session_id: str, records: Sequence[Record], *, durable: bool = False) -> None:
        """Add ``records`` (consecutive ``seq``) to the end of ``session_id``'s log.

        With ``durable=True`` it returns only once these records, and all appended
        before them, survive a crash of the process (fsync or commit). Without it they
        are visible to `load` at once and made durable no later than the next durable
        append of the same session.
        """
        ...

    async def load(self, session_id: str) -> list[Record]:
        """All records of ``session_id`` in ``seq`` order (empty for an unknown session).

        Raises:
            CorruptRecord: a record cannot be read (a torn *last* line is not an error).
        """
        ...

    async def list_sessions(self) -> list[str]:
        """The ids of every session with at least one record."""
        ...

    async def delete(self, session_id: str) -> None:
        """Forget ``session_id`` and its records (no error if unknown)."""
        ...

    async def claim(self, session_id: str, *, wait: float = CLAIM_WAIT) -> SessionClaim:
        """Become the one writer of ``session_id`` in this store, until the claim is released.

        A SessionServer claims its session before it loads the log. While the claim is
        held, a second claim of the session in this store — through any store object on
        the same location, from any OS process — waits up to ``wait`` seconds for it
        to be released, then raises. The claim is released by `SessionClaim.release`,
        when the otpy process that made it (and every `SessionClaim.add_owner`) has
        exited, when the trio run ends, and when the OS process dies.

        Claims do not guard `append`: they keep a second *server* off a session.

        Raises:
            SessionInUse: another writer still holds the session after ``wait`` seconds.
        """
        ...

    async def aclose(self) -> None:
        """Flush and release files, connections and threads. The store may be used again
        later. Claims are not released: they belong to their owners."""
        ...
