"""SessionServer benchmarks: the cost of a turn through the server, and of idle sessions.

    PYTHONPATH=. python bench/sessions_server.py               # both rows (about a minute)
    PYTHONPATH=. python bench/sessions_server.py --quick       # a smoke run; its numbers mean little

Row a, **turn overhead**: the same `ScriptedProvider` turn (ten text deltas, one tool
call, a cost; no delays) run ``--turns`` times directly on a connected provider
session, and ``--turns`` times through ``SessionServer.send_message`` (the turn task,
the write-ahead records in an `InMemoryStore`, the fold, the deferred reply), in
sessions of ``--session-length`` turns (a session copies its transcript once a turn,
so a turn costs a little more as a session grows). The two alternate, ``--rounds``
times; the ratio of each round's per-turn times is reported as median and min-max.

Row b, **idle sessions**: ``--sessions`` SessionServers started under one
DynamicSupervisor, each with its turn task connected (a scripted provider) and its
session_started record in a shared `InMemoryStore`. Reported: start time per session,
and memory per session, measured twice: the RSS growth of the process (psutil), and
the Python allocations still held (tracemalloc, in a second run, as tracing slows
everything down).

Prints a Markdown table and writes ``bench/results/sessions_server.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import trio

import otpy
import sessions
from sessions import ScriptedProvider, ScriptedReply, ScriptedTool, SessionServer

REPLY = ScriptedReply(
    "one two three four five six seven eight nine ten",
    tools=(ScriptedTool("read", {"path": "README.md"}, result="# otpy"),),
    cost_usd=0.001,
)


# --- row a: turn overhead -------------------------------------------------------------------------


async def direct_turns(provider: ScriptedProvider, turns: int, length: int) -> float:
    """Seconds per turn, calling the provider directly (turn numbers as in sessions of ``length`` turns)."""
    ctx = sessions.SessionContext(session_id="direct")
    async with provider.connect(ctx) as conn:
        start = time.perf_counter()
        for n in range(turns):
            request = sessions.TurnRequest(turn=n % length + 1, prompt="hi", messages=())
            async for _event in conn.run_turn(request):
                pass
        return (time.perf_counter() - start) / turns


async def server_turns(provider: ScriptedProvider, turns: int, length: int, nursery: trio.Nursery) -> float:
    """Seconds per turn, through SessionServers of ``length`` turns each (started beforehand)."""
    store = sessions.InMemoryStore()
    pids = [
        await SessionServer.start_link(provider=provider, store=store, nursery=nursery)
        for _ in range(-(-turns // length))
    ]
    start = time.perf_counter()
    for n in range(turns):
        await SessionServer.send_message(pids[n // length], "hi")
    elapsed = (time.perf_counter() - start) / turns
    for pid in pids:
        await SessionServer.stop(pid)
    return elapsed


async def row_a(turns: int, rounds: int, length: int) -> dict[str, Any]:
    provider = ScriptedProvider(default=REPLY)
    direct: list[float] = []
    server: list[float] = []
    async with trio.open_nursery() as nursery:
        await direct_turns(provider, max(10, turns // 10), length)  # warm-up
        await server_turns(provider, max(10, turns // 10), length, nursery)
        for _ in range(rounds):
            direct.append(await direct_turns(provider, turns, length))
            server.append(await server_turns(provider, turns, length, nursery))
    ratios = [s / d for s, d in zip(server, direct, strict=True)]
    return {
        "turns_per_round": turns,
        "turns_per_session": length,
        "rounds": rounds,
        "direct_us_per_turn": _spread([d * 1e6 for d in direct]),
        "server_us_per_turn": _spread([s * 1e6 for s in server]),
        "ratio": _spread(ratios),
    }


# --- row b: idle sessions -----------------------------------------------------------------------


async def start_sessions(count: int) -> tuple[float, otpy.Pid]:
    """Start ``count`` idle sessions under a DynamicSupervisor; seconds per session."""
    provider = ScriptedProvider()
    store = sessions.InMemoryStore()
    sup = await otpy.DynamicSupervisor.start_link(name="sessions", nursery=_NURSERY[0])
    start = time.perf_counter()
    for n in range(count):
        await otpy.DynamicSupervisor.start_child(
            sup, SessionServer.child_spec(provider=provider, store=store, session_id=f"s{n}")
        )
    while provider.open_connections < count:  # noqa: ASYNC110 (the turn tasks connect as they get to run)
        await trio.sleep(0.001)
    return (time.perf_counter() - start) / count, sup


_NURSERY: list[trio.Nursery] = []


async def idle_run(count: int, trace: bool) -> dict[str, float]:
    process = psutil.Process()
    async with trio.open_nursery() as nursery:
        _NURSERY[:] = [nursery]
        gc.collect()
        if trace:
            tracemalloc.start()
            base_traced = tracemalloc.get_traced_memory()[0]
        base_rss = process.memory_info().rss
        per_session_s, sup = await start_sessions(count)
        gc.collect()
        rss = process.memory_info().rss - base_rss
        result = {"start_us_per_session": per_session_s * 1e6, "rss_bytes_per_session": rss / count}
        if trace:
            result["traced_bytes_per_session"] = (tracemalloc.get_traced_memory()[0] - base_traced) / count
            tracemalloc.stop()
        # one of them still answers at once
        assert (await SessionServer.send_message(_any_child(sup), "hi")).turn == 1
        stop_start = time.perf_counter()
        await otpy.stop(sup)
        result["stop_us_per_session"] = (time.perf_counter() - stop_start) / count * 1e6
    return result


def _any_child(sup: otpy.Pid) -> otpy.Pid:
    node = otpy.tree(sup)
    pid = node.children[len(node.children) // 2].pid
    assert pid is not None
    return pid


async def row_b(count: int) -> dict[str, Any]:
    plain = await idle_run(count, trace=False)
    traced = await idle_run(count, trace=True)
    return {
        "sessions": count,
        "start_us_per_session": plain["start_us_per_session"],
        "stop_us_per_session": plain["stop_us_per_session"],
        "rss_bytes_per_session": plain["rss_bytes_per_session"],
        "traced_bytes_per_session": traced["traced_bytes_per_session"],
    }


# --- report -------------------------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _fmt(spread: dict[str, float], digits: int = 1) -> str:
    return f"{spread['median']:.{digits}f} ({spread['min']:.{digits}f}-{spread['max']:.{digits}f})"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": psutil.cpu_count(),
            "trio": trio.__version__,
        }
    }
    results["a"] = await row_a(args.turns, args.rounds, args.session_length)
    results["b"] = await row_b(args.sessions)
    return results


def report(results: dict[str, Any]) -> str:
    a, b = results["a"], results["b"]
    lines = [
        "| row | measure | value (median, min-max over rounds) |",
        "| --- | --- | --- |",
        f"| a | direct provider turn | {_fmt(a['direct_us_per_turn'])} µs |",
        f"| a | SessionServer turn | {_fmt(a['server_us_per_turn'])} µs |",
        f"| a | ratio server / direct | {_fmt(a['ratio'], 2)} x "
        f"({a['rounds']} rounds of {a['turns_per_round']} turns, {a['turns_per_session']} per session) |",
        f"| b | start, per idle session ({b['sessions']:,} sessions) | {b['start_us_per_session']:.0f} µs |",
        f"| b | stop, per idle session | {b['stop_us_per_session']:.0f} µs |",
        f"| b | memory per idle session, RSS growth | {b['rss_bytes_per_session'] / 1024:.1f} KiB |",
        f"| b | memory per idle session, Python allocations (tracemalloc) | "
        f"{b['traced_bytes_per_session'] / 1024:.1f} KiB |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--session-length", type=int, default=50, help="turns per session in row a")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="200 turns, 2 rounds, 500 sessions")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sessions_server.json"))
    args = parser.parse_args()
    if args.quick:
        args.turns, args.rounds, args.sessions = 200, 2, 500
    outcome = trio.run(main, args)
    print(report(outcome))
    if not args.quick:
        Path(args.out).write_text(json.dumps(outcome, indent=2) + "\n")
        print(f"written to {args.out}")
