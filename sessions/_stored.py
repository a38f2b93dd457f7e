"""Stored sessions without a server: load one, list them (`SessionServer.load`, `SessionServer.list_sessions`).

Everything here only reads the store: it folds a session's records as a resumed server
would, and writes nothing (a turn left open reads as interrupted, but no
``turn_interrupted`` record is added; the server that resumes it adds that).
"""

from __future__ import annotations

import datetime

import attrs

from ._errors import InvalidOption, SessionNotFound
from ._session import Folded, Session, fold
from ._stores._base import Record, Store

OPEN_TURN_REASON = "the session's server exited during the turn"
"""What a resumed server records for a turn it finds open (the same words, so that a
loaded session and the resumed one are equal)."""


@attrs.frozen
class SessionInfo:
    """One line of `SessionServer.list_sessions`: a stored session, for admin tools and UIs.

    ``turn_count`` and ``total_cost`` are those of `SessionServer.load`'s `Session`;
    ``last_activity`` is the time of the session's last record (UTC); ``open_turn`` is
    the number of a turn that started and never finished (its server is running it, or
    exited during it; it counts as one of the turns, as a resumed server counts it),
    else ``None``.

    Example::

        for info in await SessionServer.list_sessions(store):
            print(info.session_id, info.turn_count, f"${info.total_cost:.4f}", info.last_activity.isoformat())
    """

    session_id: str
    turn_count: int
    total_cost: float
    last_activity: datetime.datetime
    created_at: datetime.datetime
    open_turn: int | None = None


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)


def folded_from_records(session_id: str, records: list[Record]) -> tuple[Folded, int | None]:
    """The fold a resumed server would start from, and the number of a turn left open.

    The open turn is closed by the record a resumed server would write, folded but not
    written, so the two cannot differ.
    """
    folded = fold(session_id, records)
    open_turn = folded.open_turn
    if open_turn is None:
        return folded, None
    data = {"turn": open_turn.turn, "reason": OPEN_TURN_REASON}
    closing = Record(session_id, folded.last_seq + 1, "turn_interrupted", data)
    return fold(session_id, [*records, closing]), open_turn.turn


def session_from_records(session_id: str, records: list[Record]) -> tuple[Session, int | None]:
    """The session a resumed server would start from, and the number of a turn left open."""
    folded, open_turn = folded_from_records(session_id, records)
    return folded.session, open_turn


async def load_session(store: Store, session_id: str) -> Session:
    """See `SessionServer.load`."""
    records = await store.load(session_id)
    if not records:
        raise SessionNotFound(session_id)
    return session_from_records(session_id, records)[0]


async def list_sessions(store: Store) -> list[SessionInfo]:
    """See `SessionServer.list_sessions`."""
    infos = []
    for session_id in await store.list_sessions():
        records = await store.load(session_id)
        if not records:
            continue  # deleted between the listing and the load
        session, open_turn = session_from_records(session_id, records)
        infos.append(
            SessionInfo(
                session_id=session_id,
                turn_count=session.turn_count,
                total_cost=session.total_cost,
                last_activity=_utc(max(r.ts for r in records)),
                created_at=_utc(records[0].ts),
                open_turn=open_turn,
            )
        )
    infos.sort(key=lambda info: info.last_activity, reverse=True)
    return infos


async def fork_session(store: Store, session_id: str, at_turn: int | None, new_id: str) -> str:
    """See `SessionServer.fork`."""
    given: object = at_turn  # checked: a caller's value may be any type
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 0):
        raise InvalidOption("at_turn", at_turn, "expected an int >= 0 (a turn number), or None for all")
    records = await store.load(session_id)
    if not records:
        raise SessionNotFound(session_id)
    folded, _ = folded_from_records(session_id, records)
    source = folded.session
    if at_turn is not None:
        if at_turn > source.turn_count:
            raise InvalidOption("at_turn", at_turn, f"session {session_id!r} has {source.turn_count} turns")
        # The transcript as it stood at the end of turn at_turn (what rewind goes back to): a
        # rewind or a put_session after that turn does not reach into the fork.
        messages = folded.transcript_at(at_turn)
        if messages is None:
            problem = (
                f"the end of turn {at_turn} is not in session {session_id!r}'s log"
                " (it came whole with a put_session, a messages= seed or a fork)"
            )
            raise InvalidOption("at_turn", at_turn, problem)
        source = attrs.evolve(source, messages=messages, history=source.history[:at_turn])
    if at_turn is not None:
        continues_from = at_turn or None
    elif source.provider_session_id is None:
        continues_from = source.continues_from  # a rewound source that has not gone on yet
    else:
        continues_from = source.turn_count or None
    forked = Session(
        session_id=new_id,
        messages=source.messages,
        history=tuple(attrs.evolve(result, session_id=new_id) for result in source.history),
        # The provider's conversation is not shared: the fork's provider starts its own, branched
        # (if it can) from where the source's stood at the end of turn ``continues_from``.
        provider_session_id=None,
        continues_from=continues_from,
    )
    started = {"options": {}, "forked_from": {"session_id": session_id, "at_turn": source.turn_count}}
    fork_records = [
        Record(new_id, 1, "session_started", started),
        Record(new_id, 2, "session_put", {"session": forked.to_dict()}),
    ]
    if await store.load(new_id):
        raise InvalidOption("new_session_id", new_id, "a session with this id exists already")
    await store.append(new_id, fork_records, durable=True)
    return new_id
