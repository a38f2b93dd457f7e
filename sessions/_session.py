"""The `Session` value and how a session's log of records folds into it.

A SessionServer never keeps state that its store could not rebuild: at a turn's end it
folds the turn's records into its `Session` with the same `fold` that a restarted
server runs over the whole log. So what a live server reports and what a restart
reloads cannot drift apart.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import attrs

from ._errors import CorruptRecord
from ._events import FinishReason, Message, Result, Usage
from ._stores._base import Record


@attrs.frozen
class Session:
    """A snapshot of a whole session: its transcript, its results and the provider's id.

    Totals are derived, never stored: ``total_cost`` is the sum of the per-turn costs in
    ``history`` (deltas, as `Result.cost_usd` is), so nothing can be counted twice.
    `SessionServer.get_session` returns one; `SessionServer.put_session` replaces the
    server's with one.

    After `SessionServer.rewind`, ``messages`` is the rewound transcript (what the next
    turn continues from), while ``history`` still holds every turn that ran, the rewound
    ones too: the budgets, ``turn_count`` and ``total_cost`` keep counting what was spent,
    and turn numbers keep growing. The log keeps the rewound turns' messages as well.

    Example::

        session = await SessionServer.get_session("agent")
        print(session.turn_count, session.total_cost, len(session.messages))
        assert session.total_cost == sum(r.cost_usd for r in session.history)
    """

    session_id: str
    messages: tuple[Message, ...] = ()
    """The normalized transcript: prompts, replies, tool calls and results, notes (after a
    `SessionServer.rewind`, the transcript the next turn continues from)."""
    history: tuple[Result, ...] = ()
    """One `Result` per turn, in order (interrupted and failed turns included, and the turns
    a `SessionServer.rewind` went back over)."""
    provider_session_id: str | None = None
    """The provider's own session id (the Claude CLI's), kept apart from ``session_id``."""
    idempotency_keys: Mapping[str, int] = attrs.field(factory=dict, hash=False)
    """The ``idempotency_key`` of each turn sent with one, and the turn's number: every key
    in the log is kept, for the session's life (see `SessionServer.send_message`)."""
    continues_from: int | None = None
    """After a `SessionServer.rewind` to a turn > 0, or in a `SessionServer.fork` of one, and
    until the provider reports a session of its own: the number of the turn whose end the
    transcript continues from. A provider that keeps its own conversation branches it there
    (the Claude CLI's ``--fork-session``, from that turn's `Result`); else None."""

    @property
    def turn_count(self) -> int:
        """How many turns the session has had (``len(history)``)."""
        return len(self.history)

    @functools.cached_property
    def total_cost(self) -> float:
        """The session's cost in USD: the sum of the turns' costs, added as the decimals
        they were reported as (0.1 + 0.2 is 0.3 here), then made a float."""
        return float(sum((Decimal(repr(result.cost_usd)) for result in self.history), Decimal(0)))

    @functools.cached_property
    def usage(self) -> Usage:
        """The session's tokens: the sum of the turns' usage."""
        total = Usage()
        for result in self.history:
            total = total + result.usage
        return total

    @property
    def last_result(self) -> Result | None:
        """The last turn's `Result`, or ``None`` before the first turn."""
        return self.history[-1] if self.history else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what a ``session_put`` record holds)."""
        return {
            "session_id": self.session_id,
            "messages": [m.to_dict() for m in self.messages],
            "history": [r.to_dict() for r in self.history],
            "provider_session_id": self.provider_session_id,
            "idempotency_keys": dict(self.idempotency_keys),
            **({"continues_from": self.continues_from} if self.continues_from is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Session:
        """Rebuild from `to_dict` output."""
        return cls(
            session_id=str(data["session_id"]),
            messages=tuple(Message.from_dict(m) for m in data.get("messages") or ()),
            history=tuple(Result.from_dict(r) for r in data.get("history") or ()),
            provider_session_id=data.get("provider_session_id"),
            idempotency_keys={str(k): int(v) for k, v in (data.get("idempotency_keys") or {}).items()},
            continues_from=_turn_number(data.get("continues_from")),
        )

    def result_of(self, turn: int) -> Result | None:
        """The `Result` of turn number ``turn`` in ``history``, or ``None`` (internal)."""
        history = self.history
        if 0 < turn <= len(history) and history[turn - 1].turn == turn:
            return history[turn - 1]
        return next((result for result in history if result.turn == turn), None)

    def result_for_key(self, key: str) -> Result | None:
        """The `Result` of the turn sent with ``idempotency_key=key``, or ``None`` (internal)."""
        turn = self.idempotency_keys.get(key)
        return None if turn is None else self.result_of(turn)


def _turn_number(value: object) -> int | None:
    """A stored turn number, or None for anything else (a record from an older release has none)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@attrs.frozen
class OpenTurn:
    """A turn whose ``turn_started`` record has no ``turn_finished`` after it (internal)."""

    turn: int
    prompt: str
    messages: tuple[Message, ...] = ()


Checkpoint = tuple[tuple[Message, ...], list[Message], int]
"""Where a transcript stood (internal): ``base + tuple(added[:length])``. ``added`` is only
ever appended to, so a checkpoint stays true while the fold goes on."""


@attrs.frozen
class Folded:
    """What `fold` returns: the session, a turn left open, and the last ``seq`` seen (internal).

    ``checkpoints`` maps a turn count to where the transcript stood the last time a turn
    ended with that count (or a ``session_put`` left the session with it): what
    ``session_rewound`` goes back to. Only the turns whose ends are in the folded records
    after the last ``session_put`` (and the count the fold started from, or the put's) are
    there.
    """

    session: Session
    open_turn: OpenTurn | None
    last_seq: int
    checkpoints: Mapping[int, Checkpoint] = attrs.field(factory=dict, eq=False, repr=False)

    def transcript_at(self, turn: int) -> tuple[Message, ...] | None:
        """The transcript as it stood at the end of turn ``turn``, or None if the fold did not see it."""
        checkpoint = self.checkpoints.get(turn)
        if checkpoint is None:
            return None
        base, added, length = checkpoint
        return base + tuple(added[:length])


def interrupted_result(session_id: str, turn: OpenTurn, reason: str, provider_session_id: str | None) -> Result:
    """The `Result` that stands for a turn that started and never finished (internal).

    Its cost is unknown and counted as zero; its text is that of the messages the turn had
    finished and recorded (usually none: streamed deltas are not stored).
    """
    text = "".join(m.content for m in turn.messages if m.role == "assistant")
    return Result(
        text=text,
        session_id=session_id,
        turn=turn.turn,
        finish_reason=FinishReason.INTERRUPTED,
        is_error=True,
        provider_session_id=provider_session_id,
        error=reason,
        tool_calls=tuple(call for m in turn.messages for call in m.tool_calls),
    )


def interrupted_note(turn: int, reason: str) -> Message:
    """The transcript note left by an interrupted turn (internal)."""
    return Message(role="system", content=f"Turn {turn} was interrupted ({reason}); it was not retried.")


class Folder:
    """Folds records into a `Session`, one at a time (internal; `fold` is the entry point).

    Record kinds and what they do are listed in `sessions._stores._base`.
    """

    def __init__(self, session: Session, last_seq: int = 0, known: Mapping[int, object] | None = None) -> None:
        self.session_id = session.session_id
        # What ``session`` held, and what was added since: a turn's end copies the
        # transcript once, not once per step.
        self.base_messages = session.messages
        self.base_history = session.history
        self.messages: list[Message] = []
        self.history: list[Result] = []
        self.provider_session_id = session.provider_session_id
        self.continues_from = session.continues_from
        self.base_keys = session.idempotency_keys
        self.keys: dict[str, int] = {}
        self.open: OpenTurn | None = None
        self.open_messages: list[Message] = []
        self.last_seq = last_seq
        self.known = known or {}
        self.checkpoints: dict[int, Checkpoint] = {}
        self._checkpoint()

    def _count(self) -> int:
        return len(self.base_history) + len(self.history)

    def _checkpoint(self) -> None:
        """Remember where the transcript stands now, as the end of the current turn count."""
        self.checkpoints[self._count()] = (self.base_messages, self.messages, len(self.messages))

    def apply(self, record: Record) -> None:
        """Fold one record in."""
        self.last_seq = max(self.last_seq, record.seq)
        data = record.data
        match record.kind:
            case "turn_started":
                if self.open is not None:
                    self._interrupt("a new turn started before it finished")
                prompt = str(data.get("prompt", ""))
                self.open = OpenTurn(turn=int(data["turn"]), prompt=prompt)
                key = data.get("idempotency_key")
                if isinstance(key, str):
                    self.keys[key] = self.open.turn
                self.open_messages = []
                self.messages.append(Message(role="user", content=prompt))
            case "message":
                message = self.known.get(record.seq)
                if not isinstance(message, Message):
                    message = Message.from_dict(data["message"])
                self.messages.append(message)
                if self.open is not None:
                    self.open_messages.append(message)
            case "provider_session":
                self.provider_session_id = str(data["id"])
                self.continues_from = None  # the provider's own conversation goes on from here
            case "turn_finished":
                result = self.known.get(record.seq)
                if not isinstance(result, Result):
                    result = Result.from_dict(data["result"])
                self.history.append(result)
                self.open = None
                self.open_messages = []
                self._checkpoint()
            case "turn_interrupted":
                self._interrupt(str(data.get("reason", "interrupted")))
            case "session_put":
                session = Session.from_dict(data["session"])
                self.base_messages, self.base_history = session.messages, session.history
                self.messages, self.history = [], []
                self.provider_session_id = session.provider_session_id
                self.continues_from = session.continues_from
                self.base_keys, self.keys = session.idempotency_keys, {}
                self.open = None
                self.open_messages = []
                # The state is replaced: no rewind goes back past it (a put_session that trimmed
                # or redacted the transcript stays so), and it is itself a point to go back to.
                self.checkpoints.clear()
                self._checkpoint()
            case "session_rewound":
                self._rewind(record)
            case _:
                # session_started, session_resumed, provider_data, and kinds written by
                # a later release: nothing to rebuild from them.
                pass

    def _interrupt(self, reason: str) -> None:
        if self.open is None:
            return
        turn = attrs.evolve(self.open, messages=tuple(self.open_messages))
        self.history.append(interrupted_result(self.session_id, turn, reason, self.provider_session_id))
        self.messages.append(interrupted_note(turn.turn, reason))
        self.open = None
        self.open_messages = []
        self._checkpoint()

    def _rewind(self, record: Record) -> None:
        """``session_rewound``: the transcript goes back to the end of turn ``to_turn``; the
        history (what was spent) and the idempotency keys stay; the provider's session is
        dropped, and ``continues_from`` names ``to_turn`` (a provider that can branch its own
        conversation, the Claude CLI, goes on from that turn's end in a new one).

        Raises:
            CorruptRecord: ``to_turn`` is not a turn whose end this fold has seen.
        """
        to_turn = record.data.get("to_turn")
        where = f"the log of session {self.session_id!r}"
        if isinstance(to_turn, bool) or not isinstance(to_turn, int):
            raise CorruptRecord(where, record.seq, f"session_rewound: to_turn must be an int, got {to_turn!r}")
        self._interrupt("the session was rewound before it finished")
        checkpoint = self.checkpoints.get(to_turn)
        if to_turn < 0 or to_turn > self._count() or checkpoint is None:
            problem = f"session_rewound: to_turn={to_turn} is not a turn whose end is in the log before it"
            raise CorruptRecord(where, record.seq, problem)
        base, added, length = checkpoint
        self.base_messages = base + tuple(added[:length])
        self.messages = []  # a new list: the checkpoints hold the old one, which is never cut
        self.provider_session_id = None
        self.continues_from = to_turn or None

    def folded(self) -> Folded:
        """The session so far, and the turn left open, if any."""
        open_turn = None
        if self.open is not None:
            open_turn = attrs.evolve(self.open, messages=tuple(self.open_messages))
        session = Session(
            session_id=self.session_id,
            messages=self.base_messages + tuple(self.messages) if self.messages else self.base_messages,
            history=self.base_history + tuple(self.history) if self.history else self.base_history,
            provider_session_id=self.provider_session_id,
            idempotency_keys={**self.base_keys, **self.keys} if self.keys else self.base_keys,
            continues_from=self.continues_from,
        )
        return Folded(session=session, open_turn=open_turn, last_seq=self.last_seq, checkpoints=dict(self.checkpoints))


def fold(
    session_id: str,
    records: Iterable[Record],
    start: Session | None = None,
    last_seq: int = 0,
    known: Mapping[int, object] | None = None,
) -> Folded:
    """Fold ``records`` (in ``seq`` order) into a `Session`, from ``start`` or from nothing.

    A turn that started and has no ``turn_finished`` yet is returned as ``open_turn``;
    a ``turn_interrupted`` record closes it as an interrupted `Result`. ``known`` maps
    a record's ``seq`` to the `Message` or `Result` it was written from, which saves
    reading it back (the live server passes what its turn task wrote).

    Example::

        folded = fold("s1", await store.load("s1"))
        print(folded.session.turn_count, folded.open_turn)
    """
    folder = Folder(start if start is not None else Session(session_id=session_id), last_seq, known)
    for record in records:
        folder.apply(record)
    return folder.folded()
