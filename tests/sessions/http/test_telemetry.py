"""OpenTelemetry spans and metrics of turns, model calls and tool calls (the SDK's in-memory
exporters), against the real OpenAICompatible provider and the fake server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sessions_fake_llm import Reply, error_reply, openai_text, openai_tools, serve

import otpy
import sessions
from sessions import SessionServer

Start = Callable[..., Any]
ROOT = Path(__file__).resolve().parents[3]

_READER = InMemoryMetricReader()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Providers of the test's own (OpenTelemetry's global ones can be set once per process)."""
    global _READER
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    _READER = InMemoryMetricReader()
    sessions.configure_telemetry(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[_READER])
    )
    yield exporter
    sessions.configure_telemetry()


def points(name: str) -> list[Any]:
    data = _READER.get_metrics_data()
    found: list[Any] = []
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def trace_provider_of(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def tree(finished: tuple[ReadableSpan, ...]) -> list[tuple[str, str | None]]:
    names = {span.context.span_id: span.name for span in finished}
    return [(span.name, names.get(span.parent.span_id) if span.parent else None) for span in finished]


def loop_over(server: Any, tmp_path: Path) -> sessions.AgentLoop:
    return sessions.AgentLoop(
        sessions.OpenAICompatible("m", base_url=server.url + "/v1", retry=sessions.RetryPolicy(max_attempts=1)),
        cwd=str(tmp_path),
    )


async def test_a_tool_using_turn_is_a_tree_of_spans(
    supervised: Start, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    (tmp_path / "notes.md").write_text("# Notes\nbuy milk\n")
    script = [
        openai_tools(("call_a", "grep", {"pattern": "milk"}), prompt_tokens=20, completion_tokens=7),
        openai_text("You need milk.", prompt_tokens=30, completion_tokens=4),
    ]
    async with serve(script) as server:
        await supervised(name="a", provider=loop_over(server, tmp_path), session_id="s-tree")
        result = await SessionServer.send_message("a", "what do I need?")
    assert result.text == "You need milk."
    finished = spans.get_finished_spans()
    assert tree(finished) == [
        ("chat m", "invoke_agent"),
        ("execute_tool grep", "invoke_agent"),
        ("chat m", "invoke_agent"),
        ("invoke_agent", None),
    ]
    first_chat, tool, second_chat, turn = finished
    assert len({span.context.trace_id for span in finished}) == 1
    assert dict(turn.attributes or {}) | {} == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": "openai",
        "gen_ai.conversation.id": "s-tree",
        "otpy_sessions.turn": 1,
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 50,
        "gen_ai.usage.output_tokens": 11,
        "otpy_sessions.cost_usd": 0.0,
        "otpy_sessions.result.category": "ok",
        "gen_ai.response.model": "m",
    }
    assert turn.status.status_code is StatusCode.UNSET
    assert first_chat.kind is trace.SpanKind.CLIENT
    assert {k: first_chat.attributes[k] for k in ("gen_ai.operation.name", "gen_ai.request.model")} == {  # type: ignore[index]
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "m",
    }
    assert (first_chat.attributes or {})["gen_ai.response.finish_reasons"] == ("stop",)
    assert (
        (first_chat.attributes or {})["gen_ai.usage.input_tokens"],
        (second_chat.attributes or {})["gen_ai.usage.output_tokens"],
    ) == (20, 4)
    assert dict(tool.attributes or {}) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "grep",
        "gen_ai.tool.call.id": "call_a",
        "gen_ai.tool.type": "function",
    }
    # no text of the conversation unless content capture is on
    assert "milk" not in json.dumps([dict(s.attributes or {}) for s in finished])
    usage = {
        (p.attributes["gen_ai.token.type"], p.sum)
        for p in points("gen_ai.client.token.usage")
        if p.attributes.get("gen_ai.provider.name") == "openai"
    }
    assert ("input", 50) in usage
    assert ("output", 11) in usage
    assert any(p.attributes.get("otpy_sessions.finish_reason") == "stop" for p in points("otpy_sessions.turns"))


async def test_content_capture_puts_the_prompt_and_the_reply_on_the_turn(
    supervised: Start, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    sessions.configure_telemetry(capture_content=True, tracer_provider=trace_provider_of(spans))
    async with serve([openai_text("Hello there.")]) as server:
        await supervised(name="a", provider=loop_over(server, tmp_path))
        await SessionServer.send_message("a", "Say hello.")
    turn = spans.get_finished_spans()[-1]
    attributes = turn.attributes or {}
    assert json.loads(str(attributes["gen_ai.input.messages"]))[0]["parts"][0]["content"] == "Say hello."
    assert json.loads(str(attributes["gen_ai.output.messages"]))[0]["parts"][0]["content"] == "Hello there."


async def test_a_turn_that_fails_at_the_provider_has_error_spans(
    supervised: Start, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    async with serve([error_reply(401, "bad key", openai=True)]) as server:
        await supervised(name="a", provider=loop_over(server, tmp_path))
        result = await SessionServer.send_message("a", "hi")
    assert result.category is sessions.ResultCategory.PROVIDER
    chat, turn = spans.get_finished_spans()
    assert (chat.status.status_code, (chat.attributes or {})["error.type"]) == (StatusCode.ERROR, "ProviderAuthError")
    assert (turn.status.status_code, (turn.attributes or {})["error.type"]) == (StatusCode.ERROR, "error_provider")
    failed = [
        p for p in points("gen_ai.client.operation.duration") if p.attributes.get("error.type") == "ProviderAuthError"
    ]
    assert failed
    assert failed[0].count >= 1


async def test_a_killed_turn_ends_its_spans_with_an_error(
    tmp_path: Path, nursery: trio.Nursery, spans: InMemorySpanExporter
) -> None:
    """The server is killed mid-stream: the turn task is cancelled, and both spans end (error)."""
    slow = Reply(chunks=openai_text("a", "b").chunks[:2], content_type="text/event-stream", hang=True)
    async with serve([slow]) as server:
        pid = await SessionServer.start_link(provider=loop_over(server, tmp_path), nursery=nursery)
        outcome: list[BaseException] = []

        async def send() -> None:
            try:
                await SessionServer.send_message(pid, "hi")
            except otpy.ServerExited as exc:
                outcome.append(exc)

        nursery.start_soon(send)
        with trio.fail_after(10):
            while not server.requests:  # noqa: ASYNC110 (no event to wait on)
                await trio.sleep(0.01)
            await trio.sleep(0.05)
            otpy.exit(pid, "kill")
            while not outcome:  # noqa: ASYNC110
                await trio.sleep(0.01)
            while len(spans.get_finished_spans()) < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
    chat, turn = spans.get_finished_spans()
    assert (chat.name, turn.name) == ("chat m", "invoke_agent")
    assert turn.status.status_code is StatusCode.ERROR
    assert chat.status.status_code is StatusCode.ERROR
    assert (turn.attributes or {})["error.type"] == "Cancelled"
    assert turn.end_time is not None
    assert chat.end_time is not None


async def test_refusals_are_counted(supervised: Start, spans: InMemorySpanExporter) -> None:
    before = sum(
        p.value for p in points("otpy_sessions.refusals") if p.attributes.get("error.type") == "BudgetExceeded"
    )
    await supervised(name="a", provider=sessions.ScriptedProvider(["x"]), max_turns=1)
    await SessionServer.send_message("a", "1")
    with pytest.raises(sessions.BudgetExceeded):
        await SessionServer.send_message("a", "2")
    after = sum(p.value for p in points("otpy_sessions.refusals") if p.attributes.get("error.type") == "BudgetExceeded")
    assert after == before + 1


def test_without_opentelemetry_nothing_is_imported_and_turns_run() -> None:
    """With the package hidden from imports, a turn runs and no opentelemetry module is loaded
    (the claude extra is hidden too: its SDK would import opentelemetry on its own)."""
    program = textwrap.dedent(
        """
        import importlib.abc, sys

        class Hide(importlib.abc.MetaPathFinder):
            # the claude extra's SDK imports opentelemetry itself (through mcp): hidden too
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "claude_agent_sdk":
                    raise ModuleNotFoundError(name, name=name)
                return None

        sys.meta_path.insert(0, Hide())
        sys.modules["opentelemetry"] = None  # as if not installed: find_spec None, import fails
        import importlib.util
        import trio, sessions
        from sessions import SessionServer

        async def main():
            async with trio.open_nursery() as nursery:
                pid = await SessionServer.start_link(provider=sessions.ScriptedProvider(["fine"]), nursery=nursery)
                result = await SessionServer.send_message(pid, "hi")
                assert result.text == "fine", result
                await SessionServer.stop(pid)

        trio.run(main)
        loaded = sorted(m for m, v in sys.modules.items() if m.startswith("opentelemetry") and v is not None)
        assert loaded == [], loaded
        try:
            sessions.configure_telemetry(enabled=True)
        except ImportError as exc:
            print("refused:", exc)
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "refused: sessions telemetry needs opentelemetry-api" in done.stdout
    assert done.stdout.strip().endswith("ok")


class Crashy(otpy.GenServer):
    async def handle_cast(self, request: Any) -> None:
        raise RuntimeError(request)


async def test_otpy_restarts_are_counted_by_supervisor_and_child(
    nursery: trio.Nursery, spans: InMemorySpanExporter
) -> None:
    """A child crashed three times: otpy_supervisor.restarts counts 3 for that supervisor and child."""

    def counted() -> float:
        return sum(
            p.value
            for p in points("otpy_supervisor.restarts")
            if dict(p.attributes) == {"otpy_supervisor.name": "telemetry-sup", "otpy_supervisor.child.id": "crashy"}
        )

    sup = await otpy.Supervisor.start_link(
        [Crashy.child_spec(id="crashy", name="crashy")], name="telemetry-sup", max_restarts=10, nursery=nursery
    )
    assert counted() == 0
    for _ in range(3):
        crashed = otpy.whereis("crashy")
        assert crashed is not None
        otpy.cast(crashed, "boom")
        with trio.fail_after(10):
            await crashed.wait_exited()
            while otpy.whereis("crashy") in (None, crashed):  # noqa: ASYNC110 (the restart has no event)
                await trio.sleep(0.01)
    await otpy.Supervisor.stop(sup)
    assert counted() == 3


async def test_telemetry_off_leaves_no_restart_listener(spans: InMemorySpanExporter) -> None:
    from otpy._restarts import _listeners

    assert len(_listeners) == 1  # on: sessions' counter
    sessions.configure_telemetry(enabled=False)
    assert _listeners == []
    sessions.configure_telemetry(tracer_provider=trace_provider_of(spans))
    assert len(_listeners) == 1  # on again: one listener, not two


def refusals(error_type: str) -> float:
    return sum(p.value for p in points("otpy_sessions.refusals") if p.attributes.get("error.type") == error_type)


async def started_turn(nursery: trio.Nursery, name: str, outcome: list[Any]) -> None:
    """Send a first (slow) turn in the background and return once it runs."""

    async def send() -> None:
        outcome.append(await SessionServer.send_message(name, "1"))

    nursery.start_soon(send)
    with trio.fail_after(10):
        while (await SessionServer.status(name)).state != "running":  # noqa: ASYNC110 (polling the server)
            await trio.sleep(0.01)


async def test_a_full_queue_refusal_is_counted(
    supervised: Start, nursery: trio.Nursery, spans: InMemorySpanExporter
) -> None:
    """send_message while a turn runs and max_queued_turns=0: SessionBusy, counted once."""
    provider = sessions.ScriptedProvider([sessions.ScriptedReply("slow", delay=0.3), "x"])
    await supervised(name="a", provider=provider, max_queued_turns=0)
    outcome: list[Any] = []
    await started_turn(nursery, "a", outcome)
    before = refusals("SessionBusy")
    with pytest.raises(sessions.SessionBusy):
        await SessionServer.send_message("a", "2")
    assert refusals("SessionBusy") == before + 1
    with trio.fail_after(10):
        while not outcome:  # noqa: ASYNC110 (the first turn's reply)
            await trio.sleep(0.01)


async def test_a_queued_turn_refused_when_its_turn_comes_is_counted(
    supervised: Start, nursery: trio.Nursery, spans: InMemorySpanExporter
) -> None:
    """max_turns=1: the second turn is queued (the budget is not spent yet), then refused
    with BudgetExceeded when the first ends: a refused send_message too."""
    provider = sessions.ScriptedProvider([sessions.ScriptedReply("slow", delay=0.3), "x"])
    await supervised(name="a", provider=provider, max_turns=1)
    outcome: list[Any] = []
    await started_turn(nursery, "a", outcome)
    before = refusals("BudgetExceeded")
    with pytest.raises(sessions.BudgetExceeded):
        await SessionServer.send_message("a", "2")
    assert refusals("BudgetExceeded") == before + 1
    with trio.fail_after(10):
        while not outcome:  # noqa: ASYNC110 (the first turn's reply)
            await trio.sleep(0.01)
    assert outcome[0].text == "slow"


def everything(exporter: InMemorySpanExporter) -> str:
    """All that telemetry recorded, as text: every span's name, attributes, events, links and
    status, and every metric point's attributes."""
    spans = [span.to_json() for span in exporter.get_finished_spans()]
    data = _READER.get_metrics_data()
    metrics = data.to_json() if data is not None else ""
    return "\n".join([*spans, metrics])


@pytest.mark.parametrize("capture", [False, True])
async def test_no_text_of_the_conversation_unless_content_capture_is_on(
    supervised: Start, tmp_path: Path, spans: InMemorySpanExporter, capture: bool
) -> None:
    """The prompt, a tool's arguments and result, and the reply are nowhere in the spans or
    the metrics; with capture_content=True each is (so the check can see them)."""
    global _READER
    _READER = InMemoryMetricReader()
    sessions.configure_telemetry(
        capture_content=capture, tracer_provider=trace_provider_of(spans), meter_provider=MeterProvider([_READER])
    )
    (tmp_path / "notes.md").write_text("# Notes\nFILE-TEXT-4471 buy milk\n")
    script = [
        openai_tools(("call_a", "grep", {"pattern": "ARGUMENT-TEXT-4471|milk"})),
        openai_text("REPLY-TEXT-4471 You need milk."),
    ]
    async with serve(script) as server:
        await supervised(name="a", provider=loop_over(server, tmp_path))
        result = await SessionServer.send_message("a", "PROMPT-TEXT-4471 what do I need?")
    assert "REPLY-TEXT-4471" in result.text
    recorded = everything(spans)
    assert "invoke_agent" in recorded
    assert "execute_tool grep" in recorded
    found = {marker for marker in ("PROMPT", "ARGUMENT", "FILE", "REPLY") if f"{marker}-TEXT-4471" in recorded}
    assert found == ({"PROMPT", "ARGUMENT", "FILE", "REPLY"} if capture else set())


async def test_a_provider_that_raises_mid_turn_gives_error_spans(
    supervised: Start, spans: InMemorySpanExporter
) -> None:
    """A provider running its own tools (scripted) breaks after a tool call: the tool's span is
    fine, the turn's has error.type; no chat span is made up for a provider that does not
    report its model calls."""
    failure = sessions.ProviderError("scripted", "the backend went away", kind="unavailable")
    reply = sessions.ScriptedReply(tools=(sessions.ScriptedTool("read", {"path": "a"}, result="x"),), raise_=failure)
    await supervised(name="a", provider=sessions.ScriptedProvider([reply]))
    result = await SessionServer.send_message("a", "hi")
    assert result.category is sessions.ResultCategory.PROVIDER
    assert tree(spans.get_finished_spans()) == [("execute_tool read", "invoke_agent"), ("invoke_agent", None)]
    tool, turn = spans.get_finished_spans()
    assert tool.status.status_code is StatusCode.UNSET
    assert (turn.status.status_code, (turn.attributes or {})["error.type"]) == (StatusCode.ERROR, "error_provider")
