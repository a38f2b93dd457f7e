"""The agent loop over the real providers, against the fake servers on 127.0.0.1."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import structlog
import trio
from sessions_fake_llm import (
    Reply,
    Seen,
    error_reply,
    ollama_lines,
    ollama_text,
    ollama_tools,
    openai_text,
    openai_tools,
    serve,
)

import sessions
from sessions import (
    FinishReason,
    Message,
    MessageAdded,
    SessionContext,
    TextDelta,
    ToolCallFinished,
    ToolCallRequested,
    TurnCompleted,
    TurnRequest,
)


async def run_turn(
    loop: sessions.AgentLoop, prompt: str = "go", messages: tuple[Message, ...] = (), *, cwd: Path, **options: Any
) -> list[Any]:
    async with loop.connect(SessionContext("s1", cwd=str(cwd))) as conn:
        return [e async for e in conn.run_turn(TurnRequest(1, prompt, messages, options))]


def final(events: list[Any]) -> TurnCompleted:
    assert isinstance(events[-1], TurnCompleted)
    assert sum(isinstance(e, TurnCompleted) for e in events) == 1
    return events[-1]


def added(events: list[Any]) -> list[Message]:
    return [e.message for e in events if isinstance(e, MessageAdded)]


async def test_a_multi_step_tool_loop_over_ollama(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha\n")
    script = [
        ollama_tools(("read", {"path": "a.txt"}), text="Reading."),
        ollama_tools(("write", {"path": "b.txt", "content": "ALPHA"})),
        ollama_text("Copied ", "it."),
    ]
    async with serve(script) as server:
        model = sessions.Ollama("m", host=server.url)
        loop = sessions.AgentLoop(model, permission_mode="accept_edits", system_prompt="You are terse.")
        events = await run_turn(loop, "copy a to b upper-cased", cwd=tmp_path)
    done = final(events)
    assert done.finish_reason is FinishReason.STOP
    assert not done.is_error
    assert done.text == "Copied it."
    assert done.num_turns == 3
    assert done.usage == sessions.Usage(input_tokens=30, output_tokens=15)
    assert [c["name"] for c in done.extra["tool_calls"]] == ["read", "write"]
    assert (tmp_path / "b.txt").read_text() == "ALPHA"
    kinds = [type(e).__name__ for e in events]
    assert kinds[:4] == ["TextDelta", "ToolCallRequested", "MessageAdded", "ToolCallFinished"]
    assert [m.role for m in added(events)] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert added(events)[1].tool_result is not None
    assert "alpha" in added(events)[1].tool_result.content
    # what the model saw on its third call: system, prompt, and both round trips
    third = server.requests[2].body["messages"]
    assert [m["role"] for m in third] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert third[0]["content"] == "You are terse."
    assert third[3]["tool_name"] == "read"
    assert "alpha" in third[3]["content"]
    assert [t["function"]["name"] for t in server.requests[0].body["tools"]] == [
        "read",
        "write",
        "edit",
        "list",
        "glob",
        "grep",
        "bash",
    ]


async def test_a_multi_step_tool_loop_over_openai(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("# Notes\nbuy milk\n")
    script = [openai_tools(("call_a", "grep", {"pattern": "milk"})), openai_text("You need milk.")]
    async with serve(script) as server:
        loop = sessions.AgentLoop(sessions.OpenAICompatible("m", base_url=server.url + "/v1"))
        events = await run_turn(loop, "what do I need?", cwd=tmp_path)
    assert final(events).text == "You need milk."
    second = server.requests[1].body["messages"]
    assert second[1]["tool_calls"][0]["id"] == "call_a"
    assert second[2] == {"role": "tool", "tool_call_id": "call_a", "content": "notes.md:2:buy milk"}


async def test_parallel_tool_calls_run_concurrently_up_to_the_cap(tmp_path: Path, autojump_clock: Any) -> None:
    running = 0
    most = 0

    @sessions.tool(read_only=True)
    async def slow(n: int) -> str:
        """Take a while."""
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(1)
        running -= 1
        return f"done {n}"

    calls = [(f"c{i}", "slow", {"n": i}) for i in range(5)]
    async with serve([openai_tools(*calls), openai_text("ok")]) as server:
        model = sessions.OpenAICompatible("m", base_url=server.url + "/v1")
        loop = sessions.AgentLoop(model, tools=[slow], max_parallel_tools=3)
        start = trio.current_time()
        events = await run_turn(loop, cwd=tmp_path)
        took = trio.current_time() - start
    assert most == 3
    assert 2 <= took < 3  # two rounds of one second, not five
    results = [e.result for e in events if isinstance(e, ToolCallFinished)]
    assert [r.content for r in results] == [f"done {i}" for i in range(5)]  # in the model's order


async def test_max_iterations(tmp_path: Path) -> None:
    async with serve(lambda seen: ollama_tools(("list", {"path": "."}))) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url), max_iterations=4)
        events = await run_turn(loop, cwd=tmp_path)
    done = final(events)
    assert done.finish_reason is FinishReason.MAX_ITERATIONS
    assert done.is_error
    assert done.num_turns == 4
    assert len(server.requests) == 4
    assert "max_iterations" in (done.error or "")


async def test_max_iterations_per_turn_option(tmp_path: Path) -> None:
    async with serve(lambda seen: ollama_tools(("list", {"path": "."}))) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url))
        events = await run_turn(loop, cwd=tmp_path, max_iterations=2)
    assert final(events).num_turns == 2


async def test_budget_stops_the_loop(tmp_path: Path) -> None:
    prices = sessions.PriceTable({"m": sessions.Price(input_per_mtok=1000.0)})  # 10 tokens = $0.01 a call
    async with serve(lambda seen: ollama_tools(("list", {"path": "."}))) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url, prices=prices))
        events = await run_turn(loop, cwd=tmp_path, max_budget_usd=0.015)
    done = final(events)
    assert done.finish_reason is FinishReason.MAX_BUDGET
    assert done.cost_usd == pytest.approx(0.02)
    assert len(server.requests) == 2
    # the calls of the answer that spent the budget are not run, but answered
    last_tool = added(events)[-1]
    assert last_tool.tool_result is not None
    assert "budget" in last_tool.tool_result.content


async def test_the_same_failing_call_repeated_is_no_progress(tmp_path: Path) -> None:
    async with serve(lambda seen: ollama_tools(("read", {"path": "missing.txt"}))) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url), max_failed_repeats=3)
        events = await run_turn(loop, cwd=tmp_path)
    done = final(events)
    assert done.finish_reason is FinishReason.NO_PROGRESS
    assert done.num_turns == 3
    assert "'read'" in (done.error or "")


async def test_different_failing_calls_are_progress(tmp_path: Path) -> None:
    count = 0

    def script(seen: Seen) -> Reply:
        nonlocal count
        count += 1
        return ollama_tools(("read", {"path": f"missing{count}.txt"})) if count < 6 else ollama_text("gave up")

    async with serve(script) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url))
        events = await run_turn(loop, cwd=tmp_path)
    assert final(events).finish_reason is FinishReason.STOP


async def test_malformed_chunk_ends_the_turn_with_a_clear_error_and_the_session_survives(tmp_path: Path) -> None:
    async with serve([ollama_lines(b"{garbage\n"), ollama_text("fine")]) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url))
        async with loop.connect(SessionContext("s1", cwd=str(tmp_path))) as conn:
            first = [e async for e in conn.run_turn(TurnRequest(1, "a", ()))]
            second = [e async for e in conn.run_turn(TurnRequest(2, "b", ()))]
    assert final(first).finish_reason is FinishReason.PROVIDER_ERROR
    assert "ProviderProtocolError" in (final(first).error or "")
    assert "malformed chunk" in (final(first).error or "")
    assert final(second).text == "fine"


async def test_http_errors_end_the_turn_with_their_status(tmp_path: Path) -> None:
    async with serve([error_reply(401, "bad key", openai=True)]) as server:
        loop = sessions.AgentLoop(sessions.OpenAICompatible("m", base_url=server.url + "/v1"))
        events = await run_turn(loop, cwd=tmp_path)
    done = final(events)
    assert done.finish_reason is FinishReason.PROVIDER_ERROR
    assert done.api_error_status == 401
    assert "ProviderAuthError" in (done.error or "")


async def test_a_hanging_server_times_out_as_a_provider_error(tmp_path: Path, autojump_clock: Any) -> None:
    async with serve([Reply(hang_before_headers=True)]) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url, timeout=60))
        events = await run_turn(loop, cwd=tmp_path)
    assert "ProviderTimeout" in (final(events).error or "")


async def test_interrupt_during_the_model_call(tmp_path: Path) -> None:
    first = b'{"model": "m", "message": {"role": "assistant", "content": "Thinking"}, "done": false}\n'
    async with serve([Reply(chunks=(first,), hang=True, content_type="application/x-ndjson")]) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url))
        events: list[Any] = []
        async with loop.connect(SessionContext("s1", cwd=str(tmp_path))) as conn:
            async for event in conn.run_turn(TurnRequest(1, "go", ())):
                events.append(event)
                if isinstance(event, TextDelta):
                    await conn.interrupt()
    done = final(events)
    assert done.finish_reason is FinishReason.INTERRUPTED
    assert events[0] == TextDelta("Thinking")


async def test_interrupt_during_tools_kills_them(tmp_path: Path) -> None:
    marker = f"1000.{uuid.uuid4().int % 10**8:08d}"
    script = [ollama_tools(("bash", {"command": f"sleep {marker}"}))]
    async with serve(script) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url), permission_mode="bypass")
        events: list[Any] = []
        async with loop.connect(SessionContext("s1", cwd=str(tmp_path))) as conn, trio.open_nursery() as nursery:

            async def interrupt_soon() -> None:
                await trio.sleep(0.5)
                await conn.interrupt()

            nursery.start_soon(interrupt_soon)
            with trio.fail_after(10):
                async for event in conn.run_turn(TurnRequest(1, "go", ())):
                    events.append(event)
    done = final(events)
    assert done.finish_reason is FinishReason.INTERRUPTED
    tool_messages = [m for m in added(events) if m.role == "tool"]
    assert len(tool_messages) == 1  # the interrupted call is answered in the transcript
    assert not alive(marker)


def alive(marker: str) -> bool:
    for proc in psutil.process_iter(["cmdline", "status"]):
        if any(marker in part for part in proc.info.get("cmdline") or ()) and proc.info["status"] != "zombie":
            return True
    return False


async def test_cancelling_a_turn_leaves_nothing_running(tmp_path: Path) -> None:
    marker = f"1000.{uuid.uuid4().int % 10**8:08d}"
    script = [ollama_tools(("bash", {"command": f"sleep {marker} & sleep {marker}"}))]
    async with serve(script) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url), permission_mode="bypass")
        with trio.move_on_after(0.5) as scope:
            await run_turn(loop, cwd=tmp_path)
        assert scope.cancelled_caught
    assert not alive(marker)


async def test_an_unknown_tool_is_an_error_result(tmp_path: Path) -> None:
    async with serve([ollama_tools(("teleport", {})), ollama_text("sorry")]) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url), tools=sessions.builtin_tools(["read"]))
        events = await run_turn(loop, cwd=tmp_path)
    result = next(e.result for e in events if isinstance(e, ToolCallFinished))
    assert result.is_error
    assert result.content == "no tool named 'teleport' (tools: read)"


async def test_a_transcript_with_unanswered_calls_is_repaired(tmp_path: Path) -> None:
    crashed = (
        Message("user", "list"),
        Message("assistant", "", tool_calls=(sessions.ToolCall("c9", "list", {}),)),
    )
    async with serve([openai_text("ok")]) as server:
        loop = sessions.AgentLoop(sessions.OpenAICompatible("m", base_url=server.url + "/v1"))
        await run_turn(loop, "again", crashed, cwd=tmp_path)
    sent = server.requests[0].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[2]["tool_call_id"] == "c9"
    assert "no result" in sent[2]["content"]


async def test_tool_call_requested_events_come_before_results(tmp_path: Path) -> None:
    async with serve([openai_tools(("c1", "list", {}), ("c2", "list", {})), openai_text("ok")]) as server:
        loop = sessions.AgentLoop(sessions.OpenAICompatible("m", base_url=server.url + "/v1"))
        events = await run_turn(loop, cwd=tmp_path)
    kinds = [type(e) for e in events]
    assert kinds.index(ToolCallRequested) < kinds.index(ToolCallFinished)
    assert kinds.count(ToolCallRequested) == 2


def test_options_are_checked() -> None:
    model = sessions.Ollama("m")
    for bad in (
        {"permission_mode": "yolo"},
        {"max_iterations": 0},
        {"max_parallel_tools": 0},
        {"tool_timeout": 0},
        {"allowed_tools": "read"},
        {"tools": "some"},
    ):
        with pytest.raises(sessions.InvalidOption):
            sessions.AgentLoop(model, **bad)


def test_it_is_a_provider() -> None:
    loop = sessions.AgentLoop(sessions.Ollama("m"))
    assert isinstance(loop, sessions.Provider)
    assert loop.runs_own_tools is False
    assert loop.name == "ollama"


async def test_the_loop_session_is_a_provider_session(tmp_path: Path) -> None:
    loop = sessions.AgentLoop(sessions.Ollama("m"))
    async with loop.connect(SessionContext("s1", cwd=str(tmp_path))) as conn:
        assert isinstance(conn, sessions.ProviderSession)
        assert conn.cwd == str(await trio.Path(tmp_path).resolve())


def test_public_names_of_this_part_claim_sessions_and_have_examples() -> None:
    names = [
        "AgentLoop", "LoopSession", "Ollama", "OpenAICompatible", "Price", "PriceTable", "RetryPolicy", "Tool",
        "ToolContext", "ToolError", "Allow", "Deny", "Halt", "Transform", "Hooks", "HookMatcher", "HookEvent",
        "PermissionRequest", "builtin_tools", "tool",
    ]  # fmt: skip
    for name in names:
        obj = getattr(sessions, name)
        assert obj.__module__ == "sessions", name
        assert "Example::" in (obj.__doc__ or ""), name


# --- issue 15 items 3, 7, 10; issue 17 items 4, 5 ------------------------------------------------


async def test_model_call_costs_add_up_exactly(tmp_path: Path) -> None:
    """Three calls of $0.4 cost $1.2 (as floats they would sum to 1.2000000000000002)."""
    prices = sessions.PriceTable({"m": sessions.Price(input_per_mtok=40_000.0)})  # 10 tokens: $0.4
    script = [ollama_tools(("list", {"path": "."})), ollama_tools(("list", {"path": "."})), ollama_text("done")]
    async with serve(script) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url, prices=prices))
        events = await run_turn(loop, cwd=tmp_path)
    done = final(events)
    assert done.num_turns == 3
    assert done.cost_usd == 1.2


@pytest.mark.parametrize("value", [math.nan, math.inf, -1, "1", True, [1], 2.5], ids=repr)
@pytest.mark.parametrize(
    "option", ["max_iterations", "max_failed_repeats", "max_parallel_tools", "max_tool_output", "max_context_chars"]
)
def test_every_count_of_the_loop_is_an_int_in_range(option: str, value: Any) -> None:
    with pytest.raises(sessions.InvalidOption) as info:
        sessions.AgentLoop(sessions.Ollama("m"), **{option: value})
    assert info.value.option == option


@pytest.mark.parametrize("value", [math.nan, -1, "1", True, [1], 0], ids=repr)
def test_tool_timeout_is_seconds(value: Any) -> None:
    with pytest.raises(sessions.InvalidOption) as info:
        sessions.AgentLoop(sessions.Ollama("m"), tool_timeout=value)
    assert info.value.option == "tool_timeout"


@pytest.mark.parametrize(
    "options",
    [
        {"max_iterations": "many"},
        {"max_iterations": [3]},
        {"max_iterations": math.nan},
        {"max_budget_usd": "lots"},
        {"max_budget_usd": math.nan},
        {"max_budget_usd": -1},
    ],
    ids=repr,
)
async def test_a_bad_turn_option_ends_the_turn_with_a_typed_error(options: dict[str, Any], tmp_path: Path) -> None:
    async with serve([]) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url))
        events = await run_turn(loop, cwd=tmp_path, **options)
    done = final(events)
    assert done.finish_reason is FinishReason.DURING_EXECUTION
    assert next(iter(options)) in (done.error or "")
    assert server.requests == []


async def test_an_infinite_turn_budget_is_no_limit(tmp_path: Path) -> None:
    prices = sessions.PriceTable({"m": sessions.Price(input_per_mtok=1e6)})
    async with serve([ollama_tools(("list", {"path": "."})), ollama_text("done")]) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url, prices=prices))
        done = final(await run_turn(loop, cwd=tmp_path, max_budget_usd=math.inf))
    assert done.finish_reason is FinishReason.STOP


class CostModel:
    """A ModelProvider that reports the given costs, one per call."""

    name = "costs"

    def __init__(self, *costs: Any) -> None:
        self.costs = list(costs)

    async def chat(self, messages: Any, tools: Any, options: Any) -> Any:
        cost = self.costs.pop(0)
        calls = [sessions.ToolCall(f"c{len(self.costs)}", "list", {})] if self.costs else []
        for call in calls:
            yield ToolCallRequested(call)
        yield TurnCompleted(text="ok", finish_reason=FinishReason.STOP, cost_usd=cost)

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("cost", [math.nan, math.inf, "1"], ids=repr)
async def test_a_cost_that_cannot_be_added_ends_the_turn(cost: Any, tmp_path: Path) -> None:
    """A NaN cost would switch the budget off: the turn ends with a provider error."""
    loop = sessions.AgentLoop(CostModel(0.1, cost, 0.1))
    done = final(await run_turn(loop, cwd=tmp_path, max_budget_usd=1.0))
    assert done.finish_reason is FinishReason.PROVIDER_ERROR
    assert done.cost_usd == 0.1


async def test_a_negative_cost_counts_as_zero_and_the_budget_binds(tmp_path: Path) -> None:
    loop = sessions.AgentLoop(CostModel(0.6, -100.0, 0.6, 0.1))
    done = final(await run_turn(loop, cwd=tmp_path, max_budget_usd=1.0))
    assert done.finish_reason is FinishReason.MAX_BUDGET
    assert done.cost_usd == 1.2


async def test_a_budget_reached_exactly_stops_the_turn(tmp_path: Path) -> None:
    """The turn stops once its cost reaches max_budget_usd, not only once it exceeds it."""
    model = CostModel(0.5, 0.5, 0.5)
    done = final(await run_turn(sessions.AgentLoop(model), cwd=tmp_path, max_budget_usd=1.0))
    assert done.finish_reason is FinishReason.MAX_BUDGET
    assert done.cost_usd == 1.0
    assert model.costs == [0.5]  # no third model call


async def test_a_turn_that_ends_in_a_provider_error_is_logged_at_warning(tmp_path: Path, autojump_clock: Any) -> None:
    """After its retries, the failure is a WARNING (seen with default logging); retry delays are rounded."""
    policy = sessions.RetryPolicy(max_attempts=3, base_delay=0.3, max_delay=1.0)
    async with serve([error_reply(503, "down")] * 3) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url, retry=policy))
        with structlog.testing.capture_logs() as logs:
            done = final(await run_turn(loop, cwd=tmp_path))
    assert done.finish_reason is FinishReason.PROVIDER_ERROR
    [failed] = [e for e in logs if e["event"] == "model_call_failed"]
    assert failed["log_level"] == "warning"
    assert failed["kind"] == "server_error"
    retries = [e for e in logs if e["event"] == "provider_retry"]
    assert len(retries) == 2
    assert all(e["delay"] == round(e["delay"], 3) for e in retries)


async def test_text_from_any_model_and_tools_is_cleaned(tmp_path: Path) -> None:
    """A ModelProvider's split pair is joined, a lone half replaced; a tool's output too."""

    class Splitter:
        name = "splitter"

        def __init__(self) -> None:
            self.calls = 0

        async def chat(self, messages: Any, tools: Any, options: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                yield ToolCallRequested(sessions.ToolCall("c1", "odd", {"x": "\ud83d"}))
                yield TurnCompleted(text="", finish_reason=FinishReason.STOP)
                return
            for piece in ("a\ud83d", "\ude00b\ud83d"):
                yield TextDelta(piece)
            yield TurnCompleted(text="", finish_reason=FinishReason.STOP)

        async def aclose(self) -> None:
            pass

    seen: list[Any] = []

    async def odd(x: str) -> str:
        """Echo with a broken byte."""
        seen.append(x)
        return "out\udce9"

    loop = sessions.AgentLoop(Splitter(), tools=[odd], permission_mode="bypass")
    events = await run_turn(loop, cwd=tmp_path)
    assert seen == ["\ufffd"]
    [result] = [e.result for e in events if isinstance(e, ToolCallFinished)]
    assert result.content == "out\ufffd"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a", "\U0001f600b", "\ufffd"]
    assert final(events).text == "a\U0001f600b\ufffd"


def test_for_model_folds_notes_and_keeps_roles_alternating() -> None:
    from sessions._loop import for_model

    note = "Turn 2 was interrupted (the session's server exited during the turn); it was not retried."
    transcript = [
        Message("system", "Be brief."),
        Message("user", "one"),
        Message("assistant", "answer one"),
        Message("user", "two"),  # killed before any answer
        Message("system", note),
        Message("user", "three"),
        Message("assistant", "half"),  # interrupted mid-answer
        Message("system", "Turn 3 was interrupted (interrupted); it was not retried."),
        Message("user", "four"),
    ]
    sent = for_model(transcript)
    assert [(m.role, m.content) for m in sent] == [
        ("system", "Be brief."),
        ("user", "one"),
        ("assistant", "answer one"),
        ("user", f"two\n\n[{note}]\n\nthree"),
        ("assistant", "half"),
        ("user", "[Turn 3 was interrupted (interrupted); it was not retried.]\n\nfour"),
    ]
    assert for_model([Message("user", "a"), Message("system", "n")]) == [Message("user", "a\n\n[n]")]
