"""What crosses the wire between nodes (no database needed): every request, reply and error
of the client functions comes back as the same value or the same typed error."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

import otpy
import sessions
from sessions._cluster._wire import (
    _Stop,
    decode_error,
    decode_event,
    decode_reply,
    decode_request,
    encode_error,
    encode_event,
    encode_reply,
    encode_request,
)
from sessions._server import SessionStatus, _Get, _Interrupt, _Put, _Refused, _Rewind, _Send


def through(value: Any) -> Any:
    return json.loads(json.dumps(value))


@pytest.mark.parametrize(
    "request_",
    [
        _Send("hi", {"model": "haiku"}, "key-1"),
        _Send("hi", {}, None),
        _Get("session"),
        _Get("status"),
        _Get("session_id"),
        _Interrupt(),
        _Put(sessions.Session(session_id="s1")),
        _Rewind(2),
        _Stop("normal"),
    ],
    ids=repr,
)
def test_every_request_round_trips(request_: object) -> None:
    assert decode_request(through(encode_request(request_))) == request_


def test_a_request_that_json_cannot_carry_is_refused_by_name() -> None:
    with pytest.raises(sessions.InvalidOption, match="overrides"):
        encode_request(_Send("hi", {"can_use_tool": print}, None))
    with pytest.raises(ValueError, match="not a forwarded request"):
        decode_request({"op": "get", "what": "__dict__"})
    with pytest.raises(ValueError, match="not a forwarded request"):
        decode_request({"op": "send", "prompt": "hi", "overrides": {}, "key": 3})


def test_every_reply_round_trips() -> None:
    result = sessions.Result(text="ok", session_id="s1", turn=2, cost_usd=0.5)
    session = sessions.Session(session_id="s1", history=(result,))
    status = SessionStatus(session_id="s1", state="running", turn_count=1, total_cost=0.5, turn=2, turn_elapsed=0.1)
    for value in (None, True, "s1", result, session, status):
        assert decode_reply(through(encode_reply(value)), "s1") == value


@pytest.mark.parametrize(
    "error",
    [
        sessions.SessionBusy("s1", 8),
        sessions.BudgetExceeded("s1", "cost", 1.0, 1.5),
        sessions.InvalidOption("system_prompt", "x", "pinned"),
        otpy.ServerExited("s1", ["node_lost", "a"]),
        otpy.NoProcess("s1"),
        otpy.CallTimeout("s1", None, 5.0),
        sessions.ClusterUnavailable("s1", "no node"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_error_comes_back_typed(error: Exception) -> None:
    back = decode_error(through(encode_error(error)), "s1")
    assert type(back) is type(error)
    assert str(back) == str(error)


def test_a_refusal_is_raised_on_the_calling_side() -> None:
    with pytest.raises(sessions.SessionBusy):
        decode_reply(through(encode_reply(_Refused(sessions.SessionBusy("s1", 2)))), "s1")


def test_an_unknown_error_keeps_its_name_and_message() -> None:
    back = decode_error(through(encode_error(KeyError("x"))), "s1")
    assert isinstance(back, sessions.SessionError)
    assert str(back) == "KeyError: 'x'"


def test_rendezvous_picks_one_node_whatever_the_order_and_moves_only_the_leavers_share() -> None:
    nodes = ["a", "b", "c"]
    picks = {f"s{i}": sessions.rendezvous(f"s{i}", nodes) for i in range(300)}
    assert picks == {sid: sessions.rendezvous(sid, list(reversed(nodes))) for sid in picks}
    assert set(picks.values()) == set(nodes)
    after = {sid: sessions.rendezvous(sid, ["a", "c"]) for sid in picks}
    assert all(after[sid] == pick for sid, pick in picks.items() if pick != "b")
    assert sessions.rendezvous("s1", []) is None


def test_a_node_checks_its_options() -> None:
    with pytest.raises(sessions.InvalidOption, match="token"):
        sessions.ClusterNode(object(), dict, token="short")
    with pytest.raises(sessions.InvalidOption, match="idle_timeout"):
        sessions.ClusterNode(object(), dict, token="x" * 16, idle_timeout=0)
    with pytest.raises(sessions.InvalidOption, match="session_factory"):
        sessions.ClusterNode(object(), "options", token="x" * 16)  # type: ignore[arg-type]
    with pytest.raises(sessions.InvalidOption, match="advertise"):
        sessions.ClusterNode(object(), dict, token="x" * 16, advertise="10.0.0.5:8401")
    node = sessions.ClusterNode(object(), dict, token="x" * 16, idle_timeout=math.inf)
    assert node.idle_timeout == math.inf


_MESSAGE = sessions.Message(
    role="assistant",
    content="done",
    tool_calls=(sessions.ToolCall(id="c1", name="Read", arguments={"path": "a.txt"}),),
)


@pytest.mark.parametrize(
    "event",
    [
        sessions.TextDelta("hel"),
        sessions.ThinkingDelta("hmm"),
        sessions.ToolCallRequested(sessions.ToolCall(id="c1", name="Read", arguments={"path": "a.txt"})),
        sessions.ToolCallFinished(sessions.ToolResult(tool_call_id="c1", name="Read", content="text", is_error=True)),
        sessions.ModelCallFinished("haiku", sessions.Usage(10, 5), stop_reason="end_turn", response_id="r1"),
        sessions.MessageAdded(_MESSAGE),
        sessions.ProviderSessionId("p-1"),
        sessions.TurnCompleted(
            text="done",
            finish_reason=sessions.FinishReason.INTERRUPTED,
            cost_usd=0.25,
            usage=sessions.Usage(3, 4),
            permission_denials=("Bash",),
            extra={"k": [1, 2]},
        ),
        sessions.TurnStarted("s1", 3, "hi"),
        sessions.TurnFinished(sessions.Result(text="done", session_id="s1", turn=3, cost_usd=0.01)),
        sessions.TurnSnapshot("s1", 3, "hi", "do", (_MESSAGE,)),
        sessions.EventsDropped(4),
    ],
    ids=lambda event: type(event).__name__,
)
def test_events_cross_the_wire_unchanged(event: sessions.SessionEvent) -> None:
    assert decode_event(through(encode_event(event))) == event


def test_an_unknown_event_is_refused() -> None:
    with pytest.raises(ValueError, match="not a session event"):
        decode_event({"event": "nope"})
    with pytest.raises(TypeError, match="not a session event"):
        encode_event("not an event")  # type: ignore[arg-type]
