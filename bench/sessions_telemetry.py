"""The cost of sessions' OpenTelemetry instrumentation per turn.

    PYTHONPATH=. python bench/sessions_telemetry.py            # about half a minute
    PYTHONPATH=. python bench/sessions_telemetry.py --quick    # a smoke run

The same agent-loop turn (an in-process model: a tool call, then ten text deltas; one
tool) runs ``--turns`` times through ``SessionServer.send_message`` in each mode, the
modes alternating ``--rounds`` times:

- ``off``: ``configure_telemetry(enabled=False)``: what a program without the
  ``telemetry`` extra pays (one global read per turn, per model call and per tool call);
- ``api``: on, with OpenTelemetry's API and no SDK configured (non-recording spans);
- ``sdk``: on, with the SDK's TracerProvider and MeterProvider recording every span and
  metric (an in-memory exporter and reader, emptied between rounds).

Reported: microseconds per turn (median and min-max over the rounds) and each mode's
extra cost over ``off``. Writes ``bench/results/sessions_telemetry.json``.

``--provider agent`` measures instead a provider that runs its own agent loop, as the
Claude Code CLI does (in process: a tool call, its `ModelCallFinished`, the tool's
result, ten text deltas, a second `ModelCallFinished`): the path where telemetry makes
the ``chat`` and ``execute_tool`` spans from the provider's events. Writes
``bench/results/sessions_telemetry_agent.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sessions
from sessions import SessionServer


class Model:
    """A model in the process: the first call asks for the tool, the second answers in ten deltas."""

    name = "bench"
    model = "bench-1"

    async def chat(
        self, messages: Sequence[sessions.Message], tools: Any, options: Any
    ) -> AsyncIterator[sessions.ProviderEvent]:
        if messages[-1].role == "user":
            yield sessions.ToolCallRequested(sessions.ToolCall("c1", "echo", {"text": "x"}))
            yield sessions.TurnCompleted(text="", usage=sessions.Usage(10, 2))
            return
        for word in ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]:
            yield sessions.TextDelta(word + " ")
        yield sessions.TurnCompleted(text="", usage=sessions.Usage(20, 10))

    async def aclose(self) -> None:
        pass


class AgentSession:
    """One session of `Agent`: what a Claude CLI turn with one tool call yields, in process."""

    async def run_turn(self, request: sessions.TurnRequest) -> AsyncIterator[sessions.ProviderEvent]:
        call = sessions.ToolCall("c1", "echo", {"text": "x"})
        yield sessions.ToolCallRequested(call)
        yield sessions.ModelCallFinished("bench-1", sessions.Usage(10, 2), stop_reason="tool_use")
        yield sessions.ToolCallFinished(sessions.ToolResult("c1", "echo", "x"))
        for word in ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]:
            yield sessions.TextDelta(word + " ")
        yield sessions.ModelCallFinished("bench-1", sessions.Usage(20, 10), stop_reason="end_turn")
        yield sessions.TurnCompleted(text="", usage=sessions.Usage(30, 12), model="bench-1")

    async def interrupt(self) -> None:
        pass


class Agent:
    """A provider that runs its own tools and reports its model calls (the Claude CLI's shape)."""

    name = "bench-agent"
    runs_own_tools = True
    reports_model_calls = True
    model = "bench-1"

    @contextlib.asynccontextmanager
    async def connect(self, ctx: sessions.SessionContext) -> AsyncIterator[AgentSession]:
        yield AgentSession()


@sessions.tool(read_only=True)
async def echo(text: str) -> str:
    """Say it back."""
    return text


async def turns_per_mode(turns: int, nursery: trio.Nursery, kind: str) -> float:
    """Seconds per turn through one SessionServer (a new session every 50 turns)."""
    loop: Any = (
        Agent() if kind == "agent" else sessions.AgentLoop(Model(), tools=[echo], permission_mode="bypass")  # type: ignore[arg-type]
    )
    start = time.perf_counter()
    pid = None
    for n in range(turns):
        if n % 50 == 0:
            if pid is not None:
                await SessionServer.stop(pid)
            pid = await SessionServer.start_link(provider=loop, nursery=nursery)
        await SessionServer.send_message(pid, "hi")
    elapsed = (time.perf_counter() - start) / turns
    if pid is not None:
        await SessionServer.stop(pid)
    return elapsed


async def main(args: argparse.Namespace) -> dict[str, Any]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    modes = {
        "off": {"enabled": False},
        "api": {},
        "sdk": {"tracer_provider": tracer_provider, "meter_provider": meter_provider},
    }
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    async with trio.open_nursery() as nursery:
        for _ in range(args.rounds):
            for mode, options in modes.items():
                sessions.configure_telemetry(**options)
                times[mode].append(await turns_per_mode(args.turns, nursery, args.provider))
                exporter.clear()
    sessions.configure_telemetry()
    off = statistics.median(times["off"])
    return {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "provider": args.provider,
        "turns": args.turns,
        "rounds": args.rounds,
        "modes": {
            mode: {
                "us_per_turn": statistics.median(values) * 1e6,
                "min": min(values) * 1e6,
                "max": max(values) * 1e6,
                "extra_us": (statistics.median(values) - off) * 1e6,
            }
            for mode, values in times.items()
        },
    }


def report(results: dict[str, Any]) -> str:
    lines = ["| mode | µs per turn (median) | min-max | extra over off |", "| --- | --- | --- | --- |"]
    for mode, row in results["modes"].items():
        extra = "" if mode == "off" else f"{row['extra_us']:+.0f} µs"
        lines.append(f"| {mode} | {row['us_per_turn']:.0f} | {row['min']:.0f}-{row['max']:.0f} | {extra} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100 turns, 2 rounds")
    parser.add_argument("--provider", choices=["loop", "agent"], default="loop", help="see the module docstring")
    parser.add_argument("--out", default=None, help="default bench/results/sessions_telemetry[_agent].json")
    args = parser.parse_args()
    if args.out is None:
        suffix = "_agent" if args.provider == "agent" else ""
        args.out = str(Path(__file__).parent / "results" / f"sessions_telemetry{suffix}.json")
    if args.quick:
        args.turns, args.rounds = 100, 2
    results = trio.run(main, args)
    print(report(results))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
