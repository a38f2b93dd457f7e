"""InMemoryStore: records in a dict, for tests and throwaway sessions."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from .._errors import InvalidOption, StoreError
from ._base import Record
from ._claims import CLAIM_WAIT, ClaimTable, SessionClaim
from ._common import check_json, utf8


class InMemoryStore:
    """A `Store` that keeps records in memory: nothing survives the Python process.

    Restarts within one process still carry on: a restarted SessionServer given the
    same store object reloads its session.

    Example::

        store = sessions.InMemoryStore()
        children = [SessionServer.child_spec(name="a", provider=p, store=store)]
    """

    # An append is never cancelled half-way: it writes, then yields without raising
    # trio.Cancelled, so a turn task needs no shield of its own around it (sessions._turn).
    _append_never_cancelled = True

    def __init__(self) -> None:
        self._logs: dict[str, list[Record]] = {}
        self._claims = ClaimTable()

    def __repr__(self) -> str:
        return f"<InMemoryStore {id(self):#x}>"

    async def append(self, session_id: str, records: Sequence[Record], *, durable: bool = False) -> None:
        """Add ``records`` to the session's log (durable means nothing here).

        Like the durable stores, it refuses what they could not write, so that tests on
        it meet the same errors.

        Raises:
            UnstorableRecord: a record is not JSON, or holds a lone surrogate (not UTF-8).
            StoreError: the records do not follow the log.
        """
        log = self._logs.get(session_id, [])
        expected = log[-1].seq + 1 if log else 1
        for record in records:
            if record.session_id != session_id or record.seq != expected:
                raise StoreError(
                    f"record {record.session_id!r}#{record.seq} does not follow {session_id!r}#{expected - 1}"
                )
            if not record.kind.isascii():
                utf8(session_id, record.seq, record.kind, record.kind, "kind")
            check_json(session_id, record.seq, record.data)
            expected += 1
        self._logs.setdefault(session_id, log).extend(records)
        # A schedule point that does not raise Cancelled: what was written stays written
        # and the caller knows it (a cancellation surfaces at its next checkpoint), as
        # the durable stores' shielded wait for their writer does.
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def load(self, session_id: str) -> list[Record]:
        """A copy of the session's records."""
        await trio.lowlevel.checkpoint()
        return list(self._logs.get(session_id, ()))

    async def list_sessions(self) -> list[str]:
        """The sessions with records."""
        await trio.lowlevel.checkpoint()
        return [sid for sid, log in self._logs.items() if log]

    async def delete(self, session_id: str) -> None:
        """Drop the session's records."""
        self._logs.pop(session_id, None)
        await trio.lowlevel.checkpoint()

    async def claim(self, session_id: str, *, wait: float = CLAIM_WAIT) -> SessionClaim:
        """Become the one writer of ``session_id`` in this store object (see `Store.claim`).

        Raises:
            SessionInUse: another writer still holds it after ``wait`` seconds.
        """
        checked: object = session_id
        if not isinstance(checked, str) or not checked:
            raise InvalidOption("session_id", session_id, "must be a non-empty string")
        return await self._claims.claim(session_id, session_id, repr(self), wait)

    async def aclose(self) -> None:
        """Nothing to release."""
        await trio.lowlevel.checkpoint()
