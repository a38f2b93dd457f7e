"""OpenTelemetry spans of Claude Code turns (the SDK's in-memory exporters): the real bundled
CLI against the fake Messages API. Each API call the CLI reports is one ``chat`` span, its
tools ``execute_tool`` spans, all children of the turn's ``invoke_agent``."""

from __future__ import annotations

import json
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

import otpy
import sessions
from sessions import SessionServer

from .fake_api import FakeAnthropic

Start = Callable[..., Any]


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        sessions.configure_telemetry(
            tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[self.reader])
        )

    def finished(self) -> tuple[ReadableSpan, ...]:
        return self.spans.get_finished_spans()

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [
            point
            for resource in (data.resource_metrics if data is not None else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    yield Telemetry()
    sessions.configure_telemetry(enabled=False)


def tree(finished: tuple[ReadableSpan, ...]) -> list[tuple[str, str | None]]:
    names = {span.context.span_id: span.name for span in finished}
    return [(span.name, names.get(span.parent.span_id) if span.parent else None) for span in finished]


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def wait_for(predicate: Callable[[], bool], seconds: float = 20) -> None:
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - polling a thread's flag and the exporter
            await trio.sleep(0.02)


async def test_a_claude_turn_with_a_tool_call_has_a_chat_span_per_api_call(
    supervised: Start,
    fake_api: FakeAnthropic,
    claude_kwargs: dict[str, Any],
    workdir: Path,
    telemetry: Telemetry,
) -> None:
    (workdir / "notes.md").write_text("the secret is periwinkle\n")
    fake_api.usages = [(1_200, 30), (1_500, 12)]
    await supervised(name="agent", provider=sessions.ClaudeCode(**claude_kwargs), session_id="s-claude")
    prompt = "[[tool:Read:" + json.dumps({"file_path": str(workdir / "notes.md")}) + "]] quietly"
    result = await SessionServer.send_message("agent", prompt)
    assert "periwinkle" in result.text
    assert len(fake_api.message_requests()) == 2
    finished = telemetry.finished()
    model = claude_kwargs["model"]
    assert tree(finished) == [
        (f"chat {model}", "invoke_agent"),
        ("execute_tool Read", "invoke_agent"),
        (f"chat {model}", "invoke_agent"),
        ("invoke_agent", None),
    ]
    first, tool, second, turn = finished
    assert len({span.context.trace_id for span in finished}) == 1
    # each chat span carries the usage the fake API reported for that call
    tokens = [
        (attributes(s)["gen_ai.usage.input_tokens"], attributes(s)["gen_ai.usage.output_tokens"])
        for s in (first, second)
    ]
    assert tokens == [(1_200, 30), (1_500, 12)]
    assert first.kind is trace.SpanKind.CLIENT
    assert attributes(first) | {"gen_ai.response.id": "?"} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "claude",
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.response.id": "?",
        "gen_ai.response.finish_reasons": ("tool_use",),
        "gen_ai.usage.input_tokens": 1_200,
        "gen_ai.usage.output_tokens": 30,
    }
    assert attributes(second)["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert str(attributes(first)["gen_ai.response.id"]).startswith("msg_fake_")
    assert attributes(tool)["gen_ai.tool.name"] == "Read"
    assert str(attributes(tool)["gen_ai.tool.call.id"]).startswith("toolu_fake_")
    assert tool.status.status_code is StatusCode.UNSET
    # in time order: call, tool, call, within the turn
    assert turn.start_time <= first.start_time <= first.end_time <= tool.start_time  # type: ignore[operator]
    assert tool.end_time <= second.start_time <= second.end_time <= turn.end_time  # type: ignore[operator]
    assert (attributes(turn)["gen_ai.usage.input_tokens"], attributes(turn)["gen_ai.usage.output_tokens"]) == (
        2_700,
        42,
    )
    assert turn.status.status_code is StatusCode.UNSET
    # no text of the conversation: neither the prompt, the file nor the reply
    dumped = json.dumps([attributes(s) for s in finished])
    assert "periwinkle" not in dumped
    assert "quietly" not in dumped
    usage = {
        (p.attributes["gen_ai.token.type"], p.sum)
        for p in telemetry.points("gen_ai.client.token.usage")
        if p.attributes.get("gen_ai.provider.name") == "claude"
    }
    assert usage == {("input", 2_700), ("output", 42)}


async def test_a_claude_turn_that_fails_at_the_api_has_error_spans(
    supervised: Start, fake_api: FakeAnthropic, claude_kwargs: dict[str, Any], telemetry: Telemetry
) -> None:
    await supervised(name="agent", provider=sessions.ClaudeCode(**claude_kwargs))
    result = await SessionServer.send_message("agent", "[[error:500]]")
    assert result.category is sessions.ResultCategory.PROVIDER
    chat, turn = telemetry.finished()
    assert (chat.name, turn.name) == (f"chat {claude_kwargs['model']}", "invoke_agent")
    assert chat.parent is not None
    assert chat.parent.span_id == turn.context.span_id
    assert (chat.status.status_code, attributes(chat)["error.type"]) == (StatusCode.ERROR, "server_error")
    assert (turn.status.status_code, attributes(turn)["error.type"]) == (StatusCode.ERROR, "error_provider")


async def test_a_claude_server_killed_mid_turn_ends_its_spans_in_error(
    supervised: Start, fake_api: FakeAnthropic, claude_kwargs: dict[str, Any], telemetry: Telemetry
) -> None:
    """otpy.exit(server, "kill") while the API call streams: the turn and its call end in error."""
    await supervised(name="agent", provider=sessions.ClaudeCode(interrupt_grace=1.0, **claude_kwargs))
    server = otpy.whereis("agent")
    assert server is not None
    outcome: list[BaseException] = []

    async def stalled_turn() -> None:
        try:
            await SessionServer.send_message("agent", "[[stall]]")
        except otpy.ServerExited as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stalled_turn)
        await wait_for(fake_api.stalled.is_set)
        otpy.exit(server, "kill")
        await wait_for(lambda: bool(outcome) and len(telemetry.finished()) >= 2)
    fake_api.release.set()
    chat, turn = telemetry.finished()
    assert (chat.name, turn.name) == (f"chat {claude_kwargs['model']}", "invoke_agent")
    assert chat.parent is not None
    assert chat.parent.span_id == turn.context.span_id
    assert (turn.status.status_code, attributes(turn)["error.type"]) == (StatusCode.ERROR, "Cancelled")
    assert (chat.status.status_code, attributes(chat)["error.type"]) == (StatusCode.ERROR, "Cancelled")
    assert turn.end_time is not None
    assert chat.end_time is not None


async def test_an_interrupted_claude_turn_ends_its_spans_in_error(
    supervised: Start,
    nursery: trio.Nursery,
    fake_api: FakeAnthropic,
    claude_kwargs: dict[str, Any],
    telemetry: Telemetry,
) -> None:
    """SessionServer.interrupt while the API call streams: the turn's span and the cut call's
    span end with an error status, none is left open."""
    await supervised(name="agent", provider=sessions.ClaudeCode(**claude_kwargs))
    words = " ".join(f"w{i}" for i in range(300))
    outcome: list[sessions.Result] = []

    async def long_turn() -> None:
        outcome.append(await SessionServer.send_message("agent", f"[[slow:0.05]] {words}"))

    events = await SessionServer.subscribe("agent")
    nursery.start_soon(long_turn)
    deltas = 0
    async for event in events:
        deltas += isinstance(event, sessions.TextDelta)
        if deltas == 3:
            break
    events.close()
    assert await SessionServer.interrupt("agent")
    await wait_for(lambda: bool(outcome))
    assert outcome[0].finish_reason is sessions.FinishReason.INTERRUPTED
    finished = telemetry.finished()
    assert [name for name, _ in tree(finished)] == [f"chat {claude_kwargs['model']}", "invoke_agent"]
    chat, turn = finished
    assert (turn.status.status_code, attributes(turn)["error.type"]) == (StatusCode.ERROR, "interrupted")
    assert (chat.status.status_code, attributes(chat)["error.type"]) == (StatusCode.ERROR, "interrupted")


async def test_content_capture_puts_the_cli_tool_call_on_its_span(
    supervised: Start, fake_api: FakeAnthropic, claude_kwargs: dict[str, Any], workdir: Path, telemetry: Telemetry
) -> None:
    (workdir / "notes.md").write_text("the secret is periwinkle\n")
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    sessions.configure_telemetry(capture_content=True, tracer_provider=tracer_provider)
    await supervised(name="agent", provider=sessions.ClaudeCode(**claude_kwargs))
    path = str(workdir / "notes.md")
    await SessionServer.send_message("agent", "[[tool:Read:" + json.dumps({"file_path": path}) + "]]")
    [tool] = [span for span in exporter.get_finished_spans() if span.name == "execute_tool Read"]
    assert json.loads(str(attributes(tool)["gen_ai.tool.call.arguments"])) == {"file_path": path}
    assert "periwinkle" in str(attributes(tool)["gen_ai.tool.call.result"])
