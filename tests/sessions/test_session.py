"""The Session value, and how a log of records folds into it (what a restart reloads)."""

from __future__ import annotations

from typing import Any

import attrs

import sessions
from sessions import FinishReason, Message, Record, Result, Session, Usage
from sessions._session import fold

SID = "s1"


def log(*entries: tuple[str, dict[str, Any]]) -> list[Record]:
    return [Record(SID, seq, kind, data) for seq, (kind, data) in enumerate(entries, start=1)]


def finished(turn: int, cost: float = 0.0, text: str = "ok", **fields: Any) -> tuple[str, dict[str, Any]]:
    result = Result(text=text, session_id=SID, turn=turn, cost_usd=cost, **fields)
    return ("turn_finished", {"turn": turn, "result": result.to_dict()})


def started(turn: int, prompt: str = "hi") -> tuple[str, dict[str, Any]]:
    return ("turn_started", {"turn": turn, "prompt": prompt, "options": {}})


def said(turn: int, text: str, role: str = "assistant") -> tuple[str, dict[str, Any]]:
    return ("message", {"turn": turn, "message": {"role": role, "content": text}})


class TestSessionValue:
    def test_totals_are_derived_from_the_history(self) -> None:
        """total_cost, turn_count, usage and last_result come from the per-turn results."""
        history = tuple(
            Result(text="", session_id=SID, turn=n, cost_usd=0.1, usage=Usage(input_tokens=n)) for n in (1, 2, 3)
        )
        session = Session(session_id=SID, history=history)
        assert session.turn_count == 3
        assert session.total_cost == 0.3  # added as decimals: not 0.30000000000000004
        assert session.usage == Usage(input_tokens=6)
        assert session.last_result is history[-1]
        assert Session(session_id=SID).last_result is None

    def test_round_trips_through_a_dict(self) -> None:
        """to_dict/from_dict keep everything (what a session_put record holds)."""
        session = Session(
            session_id=SID,
            messages=(Message(role="user", content="hi"), Message(role="assistant", content="yo")),
            history=(Result(text="yo", session_id=SID, turn=1, cost_usd=0.5),),
            provider_session_id="native",
            continues_from=1,
        )
        assert Session.from_dict(session.to_dict()) == session
        assert "continues_from" not in attrs.evolve(session, continues_from=None).to_dict()  # as older records

    def test_is_exported(self) -> None:
        """sessions.Session is the public name."""
        assert sessions.Session is Session
        assert Session.__module__ == "sessions"


class TestFold:
    def test_an_empty_log_is_an_empty_session(self) -> None:
        """Nothing folds into a fresh session with no open turn."""
        folded = fold(SID, [])
        assert folded.session == Session(session_id=SID)
        assert folded.open_turn is None
        assert folded.last_seq == 0

    def test_turns_rebuild_messages_history_and_cost(self) -> None:
        """Prompts, messages, results and provider ids fold into the session; costs add as deltas."""
        records = log(
            ("session_started", {"options": {}}),
            started(1, "one"),
            ("provider_session", {"id": "native-1"}),
            said(1, "first"),
            finished(1, cost=0.25),
            ("session_resumed", {}),
            started(2, "two"),
            said(2, "second"),
            finished(2, cost=0.5),
        )
        folded = fold(SID, records)
        session = folded.session
        assert [(m.role, m.content) for m in session.messages] == [
            ("user", "one"),
            ("assistant", "first"),
            ("user", "two"),
            ("assistant", "second"),
        ]
        assert [r.turn for r in session.history] == [1, 2]
        assert session.total_cost == 0.75
        assert session.provider_session_id == "native-1"
        assert folded.open_turn is None
        assert folded.last_seq == 9

    def test_a_started_turn_without_its_end_is_open(self) -> None:
        """A turn_started with no turn_finished is returned as the open turn, with its messages."""
        folded = fold(SID, log(started(1, "one"), said(1, "partial")))
        assert folded.open_turn is not None
        assert (folded.open_turn.turn, folded.open_turn.prompt) == (1, "one")
        assert [m.content for m in folded.open_turn.messages] == ["partial"]
        assert folded.session.turn_count == 0

    def test_turn_interrupted_closes_the_open_turn_as_an_interrupted_result(self) -> None:
        """turn_interrupted makes an INTERRUPTED error result (cost 0, partial text) and a note."""
        records = log(
            started(1, "one"),
            said(1, "half "),
            said(1, "done"),
            ("turn_interrupted", {"turn": 1, "reason": "crash"}),
        )
        folded = fold(SID, records)
        [result] = folded.session.history
        assert result.finish_reason is FinishReason.INTERRUPTED
        assert result.is_error
        assert (result.turn, result.cost_usd, result.text, result.error) == (1, 0.0, "half done", "crash")
        assert folded.session.messages[-1].role == "system"
        assert "Turn 1 was interrupted (crash)" in folded.session.messages[-1].content
        assert folded.open_turn is None

    def test_session_put_replaces_the_state(self) -> None:
        """A session_put record replaces messages, history and provider id wholesale."""
        put = Session(session_id=SID, messages=(Message(role="user", content="only"),), provider_session_id="p")
        records = log(started(1), finished(1, cost=1.0), ("session_put", {"session": put.to_dict()}))
        assert fold(SID, records).session == put

    def test_unknown_kinds_are_skipped(self) -> None:
        """Kinds this release does not rebuild from (provider_data, later kinds) change nothing."""
        records = log(started(1), ("provider_data", {"key": "k", "value": 1}), ("from_the_future", {}), finished(1))
        assert fold(SID, records).session.turn_count == 1

    def test_folding_in_steps_equals_folding_at_once(self) -> None:
        """fold(start=...) continues from a session: what a live server does at each turn's end."""
        records = log(started(1), said(1, "a"), finished(1, cost=0.1), started(2), said(2, "b"), finished(2, cost=0.2))
        first = fold(SID, records[:3])
        second = fold(SID, records[3:], start=first.session, last_seq=first.last_seq)
        assert second == fold(SID, records)


def test_usage_to_dict_holds_every_field() -> None:
    """Usage.to_dict is spelled out (it runs at every turn's end): it names every field, so a
    field added later cannot be left out of the records."""
    usage = sessions.Usage(*range(1, len(attrs.fields(sessions.Usage)) + 1))
    assert usage.to_dict() == attrs.asdict(usage)
    assert sessions.Usage.from_dict(usage.to_dict()) == usage
