"""A SessionServer's options are checked where they are given, and a bad one never reaches a turn.

Issue 15, items 3, 7 and 8; issue 17, item 4 (the option messages).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

import otpy
import sessions
from sessions import FinishReason, ScriptedProvider, ScriptedReply, SessionServer

BAD_NUMBERS = [math.nan, math.inf, -1, "1", True, [1]]

# option -> does math.inf mean "no limit" for it (budgets and timeouts) or is it refused (counts)
NUMERIC_OPTIONS = {
    "max_cost_usd": True,
    "max_turns": False,
    "max_queued_turns": False,
    "interrupt_grace": True,
    "turn_timeout": True,
    "close_timeout": True,
    "subscriber_buffer": False,
}

TURN_OPTIONS = ["max_iterations", "max_turns", "max_budget_usd"]


def spec(**options: Any) -> otpy.ChildSpec:
    return SessionServer.child_spec(name="a", **{"provider": ScriptedProvider(), **options})


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("option", sorted(NUMERIC_OPTIONS))
def test_every_numeric_option_refuses_what_is_not_a_number_in_range(option: str, value: Any) -> None:
    """NaN, a negative number, a str, a bool and a list are refused, naming the option; inf
    only where it means no limit."""
    if value == math.inf and NUMERIC_OPTIONS[option]:
        spec(**{option: value})  # math.inf: no limit, as None
        return
    with pytest.raises(sessions.InvalidOption) as info:
        spec(**{option: value})
    assert info.value.option == option
    assert info.value.value is value


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("option", TURN_OPTIONS)
def test_turn_options_in_query_opts_are_checked(option: str, value: Any) -> None:
    """query_opts' own limits are checked in child_spec too (inf only for the budget)."""
    if value == math.inf and option == "max_budget_usd":
        spec(query_opts={option: value})
        return
    with pytest.raises(sessions.InvalidOption) as info:
        spec(query_opts={option: value})
    assert info.value.option == option


@pytest.mark.parametrize("cwd", [123, b"/tmp", "", ["/tmp"]], ids=repr)
def test_cwd_must_be_a_path(cwd: Any) -> None:
    with pytest.raises(sessions.InvalidOption) as info:
        spec(cwd=cwd)
    assert info.value.option == "cwd"


def test_a_path_object_is_a_cwd(tmp_path: Path) -> None:
    assert spec(cwd=tmp_path).start.keywords["cwd"] == tmp_path  # type: ignore[attr-defined]


def test_a_typo_names_the_option_and_the_likely_one() -> None:
    """No private class, no TypeError text: the unknown option and a "did you mean"."""
    with pytest.raises(sessions.InvalidOption) as info:
        spec(max_turn=3)
    assert info.value.option == "max_turn"
    assert str(info.value) == "invalid max_turn=3: not a SessionServer option; did you mean 'max_turns'?"


def test_an_unknown_option_with_no_likely_one_lists_them() -> None:
    with pytest.raises(sessions.InvalidOption, match="the options are close_timeout, cwd, "):
        spec(colour="blue")


def test_a_missing_provider_is_named() -> None:
    with pytest.raises(sessions.InvalidOption) as info:
        SessionServer.child_spec(name="a")
    assert info.value.option == "provider"
    assert "required" in str(info.value)
    assert "_Config" not in str(info.value)


async def test_start_link_raises_the_same_error_as_child_spec(nursery: trio.Nursery) -> None:
    """An option typo is InvalidOption from start_link too, raised before anything starts."""
    with pytest.raises(sessions.InvalidOption) as info:
        await SessionServer.start_link(provider=ScriptedProvider(), max_turn=3, nursery=nursery)
    assert "did you mean 'max_turns'?" in str(info.value)
    with pytest.raises(sessions.InvalidOption):
        await SessionServer.start_link(provider=ScriptedProvider(), turn_timeout=math.nan, nursery=nursery)


# --- per-turn overrides: refused in the caller's task, the session untouched -------------------


BAD_OVERRIDES = [
    {"max_iterations": "many"},
    {"max_iterations": [3]},
    {"max_iterations": 0},
    {"max_iterations": math.nan},
    {"max_iterations": True},
    {"max_iterations": 2.5},
    {"max_budget_usd": "lots"},
    {"max_budget_usd": math.nan},
    {"max_budget_usd": -1},
    {"max_budget_usd": [1]},
    {"max_turns": "3"},
    {"max_turns": math.inf},
    {"system_prompt": 42},
    {"model": ["a"]},
    {"model": "caf\udce9"},
]


@pytest.mark.parametrize("overrides", BAD_OVERRIDES, ids=repr)
async def test_a_bad_override_is_refused_in_the_callers_task(overrides: dict[str, Any], supervised: Any) -> None:
    """InvalidOption reaches the caller; no turn is queued; the server lives on unchanged."""
    provider = ScriptedProvider()
    await supervised(name="a", provider=provider)
    pid = otpy.whereis("a")
    with pytest.raises(sessions.InvalidOption) as info:
        await SessionServer.send_message("a", "hi", **overrides)
    assert info.value.option in overrides
    assert provider.requests == []
    assert otpy.whereis("a") is pid
    assert (await SessionServer.send_message("a", "again")).text == "You said: again"


async def test_a_bad_override_that_reaches_the_loop_ends_the_turn_not_the_session(
    supervised: Any, tmp_path: Path
) -> None:
    """A per-turn limit the loop cannot use (sent past the client check) ends that turn."""
    loop = sessions.AgentLoop(_NoModel(), cwd=tmp_path)
    async with loop.connect(sessions.SessionContext("s", cwd=str(tmp_path))) as conn:
        events = [e async for e in conn.run_turn(sessions.TurnRequest(1, "hi", (), {"max_iterations": "many"}))]
    done = events[-1]
    assert isinstance(done, sessions.TurnCompleted)
    assert done.finish_reason is FinishReason.DURING_EXECUTION
    assert "max_iterations" in (done.error or "")


class _NoModel:
    name = "none"

    async def chat(self, messages: Any, tools: Any, options: Any) -> Any:  # pragma: no cover
        raise AssertionError("the model must not be called")
        yield

    async def aclose(self) -> None:  # pragma: no cover
        pass


# --- infinity means no limit, NaN never passes --------------------------------------------------


async def test_an_infinite_budget_is_no_limit(supervised: Any) -> None:
    provider = ScriptedProvider(default=ScriptedReply("x", cost_usd=1e6))
    await supervised(name="a", provider=provider, max_cost_usd=math.inf)
    for _ in range(3):
        await SessionServer.send_message("a", "spend")
    assert await SessionServer.total_cost("a") == 3e6


async def test_a_finite_budget_binds(supervised: Any) -> None:
    await supervised(name="a", provider=ScriptedProvider(default=ScriptedReply("x", cost_usd=0.4)), max_cost_usd=1.0)
    for _ in range(3):
        await SessionServer.send_message("a", "spend")
    with pytest.raises(sessions.BudgetExceeded):
        await SessionServer.send_message("a", "more")


# --- text that cannot be encoded ----------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["\ud83d", "a\udc80b", "end \ude00"], ids=repr)
async def test_a_prompt_with_a_lone_surrogate_is_refused(prompt: str, supervised: Any) -> None:
    """It could never be stored: InvalidOption in the caller's task, the session untouched."""
    provider = ScriptedProvider()
    await supervised(name="a", provider=provider)
    with pytest.raises(sessions.InvalidOption) as info:
        await SessionServer.send_message("a", prompt)
    assert info.value.option == "prompt"
    assert "surrogate" in str(info.value)
    assert provider.requests == []
    assert await SessionServer.turn_count("a") == 0
    assert (await SessionServer.send_message("a", "\U0001f600")).text == "You said: \U0001f600"


async def test_scripted_text_is_cleaned_as_a_providers_is(supervised: Any) -> None:
    """A pair split across two pieces is joined; a half without its pair becomes U+FFFD."""
    reply = ScriptedReply(deltas=("a\ud83d", "\ude00b", " c\ud83d"))
    await supervised(name="a", provider=ScriptedProvider([reply]), store=sessions.InMemoryStore())
    result = await SessionServer.send_message("a", "go")
    assert result.text == "a\U0001f600b c\ufffd"
    assert (await SessionServer.messages("a"))[-1].content == "a\U0001f600b c\ufffd"


# --- a configuration that can never work is refused at start; one that may pass fails turns ------


async def test_a_missing_cwd_fails_its_own_start_and_the_siblings_live(nursery: trio.Nursery, tmp_path: Path) -> None:
    """start_child refuses the one child (StartError naming cwd); the healthy ones keep answering."""
    healthy = [
        SessionServer.child_spec(name=f"ok{i}", provider=sessions.AgentLoop(_Echo(), cwd=tmp_path)) for i in range(3)
    ]
    sup = await otpy.Supervisor.start_link(
        healthy, strategy="one_for_one", max_restarts=3, max_seconds=5, nursery=nursery
    )
    pids = [otpy.whereis(f"ok{i}") for i in range(3)]
    for cwd_at in ("session", "loop"):
        missing = str(tmp_path / "nowhere")
        if cwd_at == "session":
            bad = SessionServer.child_spec(name="bad", provider=_Echo(), cwd=missing)
        else:
            bad = SessionServer.child_spec(name="bad", provider=sessions.AgentLoop(_Echo(), cwd=missing))
        with pytest.raises(otpy.StartError) as info:
            await otpy.Supervisor.start_child(sup, bad)
        reason = info.value.reason
        assert isinstance(reason, sessions.InvalidOption)
        assert reason.option == "cwd"
        assert "does not exist" in str(reason)
    for i in range(3):
        assert (await SessionServer.send_message(f"ok{i}", "ping")).text == "echo: ping"
    assert [otpy.whereis(f"ok{i}") for i in range(3)] == pids
    assert sup.alive
    await otpy.stop(sup)


async def test_a_cwd_that_vanishes_fails_turns_not_the_session(supervised: Any, tmp_path: Path) -> None:
    """A cwd removed after the start may come back: each turn is an error Result, no restart."""
    work = tmp_path / "work"
    work.mkdir()
    await supervised(name="a", provider=_Echo(), cwd=str(work))
    pid = otpy.whereis("a")
    assert (await SessionServer.send_message("a", "one")).text == "echo: one"
    await SessionServer.put_session("a", await SessionServer.get_session("a"))  # the next turn connects again
    shutil.rmtree(work)
    failed = await SessionServer.send_message("a", "two")
    assert failed.is_error
    assert failed.finish_reason is FinishReason.PROVIDER_ERROR
    assert "cwd" in (failed.error or "")
    os.mkdir(work)
    # the failed turn has no answer: its prompt and the next one reach the model as one user message
    assert (await SessionServer.send_message("a", "three")).text == "echo: two\n\nthree"
    assert otpy.whereis("a") is pid


async def test_a_provider_that_is_down_fails_turns_as_results_without_restarts(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: Any
) -> None:
    """Nobody listens on the port: every turn is a PROVIDER_ERROR Result; no process restarts."""
    with trio.socket.socket() as probe:  # a port that was free a moment ago and has no listener
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = sessions.OpenAICompatible(
        "m", base_url=f"http://127.0.0.1:{port}/v1", retry=sessions.RetryPolicy(max_attempts=2, max_delay=0.5)
    )
    children = [
        SessionServer.child_spec(name="down", provider=sessions.AgentLoop(down, cwd=tmp_path)),
        SessionServer.child_spec(name="up", provider=sessions.AgentLoop(_Echo(), cwd=tmp_path)),
    ]
    sup = await otpy.Supervisor.start_link(
        children, strategy="one_for_one", max_restarts=1, max_seconds=60, nursery=nursery
    )
    pids = {name: otpy.whereis(name) for name in ("down", "up")}
    for n in range(5):
        result = await SessionServer.send_message("down", f"try {n}")
        assert result.finish_reason is FinishReason.PROVIDER_ERROR
        assert "cannot connect" in (result.error or "")
    assert (await SessionServer.send_message("up", "ping")).text == "echo: ping"
    assert {name: otpy.whereis(name) for name in ("down", "up")} == pids
    assert await SessionServer.turn_count("down") == 5
    await otpy.stop(sup)
    await down.aclose()


class _Echo:
    """A ModelProvider that answers "echo: <last user message>" (no HTTP)."""

    name = "echo"

    async def chat(self, messages: Any, tools: Any, options: Any) -> Any:
        text = f"echo: {messages[-1].content}"
        yield sessions.TextDelta(text)
        yield sessions.TurnCompleted(text=text, finish_reason=FinishReason.STOP)

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("path", [42, None, b"agents.db", 1.5], ids=repr)
def test_a_sqlite_store_path_that_is_no_path_is_an_invalid_option(path: Any) -> None:
    """SqliteStore(42) raises InvalidOption like every other option (issue 17, item 4)."""
    with pytest.raises(sessions.InvalidOption) as info:
        sessions.SqliteStore(path)
    assert info.value.option == "path"


# --- the edges of each range (a check weakened by one character fails one of these) -------------


@pytest.mark.parametrize("option", sorted(NUMERIC_OPTIONS))
def test_zero_is_in_range_for_every_numeric_option(option: str) -> None:
    spec(**{option: 0})
    if NUMERIC_OPTIONS[option]:
        spec(**{option: 0.0})
    else:
        with pytest.raises(sessions.InvalidOption):
            spec(**{option: 0.0})  # a count is an int


async def test_the_smallest_turn_options_pass(supervised: Any) -> None:
    await supervised(name="a", provider=ScriptedProvider())
    result = await SessionServer.send_message("a", "hi", max_iterations=1, max_turns=1, max_budget_usd=0)
    assert result.text == "You said: hi"
    with pytest.raises(sessions.InvalidOption):
        await SessionServer.send_message("a", "hi", max_turns=0)


def test_token_counts_at_the_edges() -> None:
    from sessions._providers._http_common import MAX_TOKENS, checked_usage

    edge = sessions.Usage(input_tokens=0, output_tokens=MAX_TOKENS)
    assert checked_usage("p", edge) is edge
    over = checked_usage("p", sessions.Usage(input_tokens=-1, output_tokens=MAX_TOKENS + 1))
    assert (over.input_tokens, over.output_tokens) == (0, MAX_TOKENS)


def test_a_retry_after_of_zero_is_used() -> None:
    from sessions._providers._http_common import retry_after_of

    class Failed(Exception):
        def __init__(self, value: str) -> None:
            self.response = type("Response", (), {"headers": {"retry-after": value}})()

    assert retry_after_of(Failed("0")) == 0.0
    assert retry_after_of(Failed("-0.001")) is None
    assert retry_after_of(Failed("nan")) is None
    assert retry_after_of(Failed("inf")) is None
    assert sessions.RetryPolicy(max_delay=0).delay(3) == 0.0
    assert sessions.Price(0.0).cost(sessions.Usage(10)) == 0.0


async def test_an_override_named_with_a_lone_surrogate_is_refused(supervised: Any) -> None:
    await supervised(name="a", provider=ScriptedProvider())
    with pytest.raises(sessions.InvalidOption) as info:
        await SessionServer.send_message("a", "hi", **{"x\ud83d": 1})
    assert info.value.option == "overrides"
