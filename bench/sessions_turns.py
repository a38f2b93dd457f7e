"""The cost of a turn as users get it: end-to-end durable turns/s, CPU per turn and per streamed delta.

    PYTHONPATH=. python bench/sessions_turns.py              # every row (a few minutes)
    PYTHONPATH=. python bench/sessions_turns.py --quick      # a smoke run; its numbers mean little
    PYTHONPATH=. python bench/sessions_turns.py --rows e     # only the end-to-end rows

Row **e**, end to end: ``--sessions`` (100) `SessionServer`s under one DynamicSupervisor, a
`ScriptedProvider` answering at once with about 1 KB of text (one delta), each session
sending ``--turns`` turns in a loop with ``send_message``, which returns only once the
turn's records are durable (with a durable store). Systems: SessionServer with
`SqliteStore` (one file), `JsonlStore` (one directory), `InMemoryStore` (no disk), and
openai-agents' ``SQLiteSession`` doing the same work: 100 asyncio sessions on one file,
one ``add_items`` of the two items of a turn (the prompt and the 1 KB reply) per turn,
as in ``bench/sessions_stores.py``. Beside them, the store alone (``bench/sessions_stores.py``'s
row: two records appended durably per turn, no server, no provider), so that the two
numbers are never confused. Rounds are interleaved (the order rotates); medians, min-max,
and the per-round ratio to ``SQLiteSession``.

Row **c**, CPU per turn: one SessionServer with an `InMemoryStore` and the same 1 KB
reply, ``--cpu-turns`` turns in a row, process CPU time per turn; beside it the
provider's own cost (the same `ScriptedProvider` turn driven directly on a connected
session). The overhead is the difference.

Row **d**, CPU per streamed delta: the same with a 100-delta reply, with 0, 1 and 10
subscribers draining the session's events, against the provider driven directly. The
per-delta figures are the 100-delta turn's cost minus the 1-delta turn's cost, over 99.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure the working tree's sessions
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sessions_stores import measure_sqlite_session, measure_store

import otpy
import sessions
from sessions import InMemoryStore, JsonlStore, ScriptedProvider, ScriptedReply, SessionServer, SqliteStore

ONE_KB = ("lorem ipsum " * 86)[:1024]
REPLY = ScriptedReply(ONE_KB, deltas=(ONE_KB,))
PROMPT = "p" * 170
DELTAS_100 = ScriptedReply("", deltas=tuple(f"w{i:03d}-words " for i in range(100)))
DELTAS_1 = ScriptedReply("", deltas=("".join(DELTAS_100.deltas or ()),))

Result = dict[str, Any]


# --- row e: end to end ----------------------------------------------------------------------------


def measure_servers(make_store: Callable[[Path], sessions.Store], n_sessions: int, n_turns: int) -> Result:
    """Durable turns/s through SessionServers, ``n_sessions`` at once, each looping send_message."""
    with tempfile.TemporaryDirectory(prefix="sessions-turns-") as directory:
        store = make_store(Path(directory))
        provider = ScriptedProvider(default=REPLY)
        latencies: list[float] = []

        async def session(pid: otpy.Pid, turns: int, timed: bool) -> None:
            for _ in range(turns):
                start = time.perf_counter()
                result = await SessionServer.send_message(pid, PROMPT)
                if timed:
                    latencies.append(time.perf_counter() - start)
                assert not result.is_error, result

        async def main() -> float:
            async with trio.open_nursery() as nursery:
                sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
                pids = [
                    await otpy.DynamicSupervisor.start_child(
                        sup, SessionServer.child_spec(provider=provider, store=store, session_id=f"s{i}")
                    )
                    for i in range(n_sessions)
                ]
                async with trio.open_nursery() as warm:  # untimed: connections, files, the writer thread
                    for pid in pids:
                        warm.start_soon(session, pid, 1, False)
                gc.collect()
                start = time.perf_counter()
                async with trio.open_nursery() as timed:
                    for pid in pids:
                        timed.start_soon(session, pid, n_turns, True)
                elapsed = time.perf_counter() - start
                assert await SessionServer.turn_count(pids[-1]) == n_turns + 1
                await otpy.stop(sup)
            await store.aclose()
            return elapsed

        elapsed = trio.run(main)
        latencies.sort()
        return {
            "turns_per_s": n_sessions * n_turns / elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        }


def row_e(args: argparse.Namespace) -> dict[str, Any]:
    n, t = args.sessions, args.turns
    systems: dict[str, Callable[[], Result]] = {
        "server+SqliteStore": lambda: measure_servers(lambda d: SqliteStore(d / "s.db"), n, t),
        "server+JsonlStore": lambda: measure_servers(lambda d: JsonlStore(d / "s"), n, t),
        "server+InMemoryStore": lambda: measure_servers(lambda d: InMemoryStore(), n, t),
        "SqliteStore alone": lambda: measure_store(lambda d: SqliteStore(d / "s.db"), n, t),
    }
    try:
        import agents  # noqa: F401
    except ImportError:
        print("openai-agents is not installed: the SQLiteSession column is skipped (pip install openai-agents)")
    else:
        systems["SQLiteSession"] = lambda: measure_sqlite_session(n, t)
    names = list(systems)
    rounds: dict[str, list[Result]] = {name: [] for name in names}
    for number in range(args.rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        for name in order:
            gc.collect()
            result = systems[name]()
            rounds[name].append(result)
            print(f"  round {number + 1} {name:<22} {result['turns_per_s']:>9,.0f} turns/s", flush=True)
    return {"sessions": n, "turns": t, "rounds": rounds}


def report_e(e: dict[str, Any]) -> str:
    rounds = e["rounds"]
    base = rounds.get("SQLiteSession")
    lines = [
        f"{e['sessions']} sessions x {e['turns']} turns per round, {len(next(iter(rounds.values())))} rounds",
        "",
        "| system | durable turns/s (median) | min-max | p50 / p99 per turn | vs SQLiteSession (per round) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, results in rounds.items():
        rates = [r["turns_per_s"] for r in results]
        p50 = statistics.median(r["p50_ms"] for r in results)
        p99 = statistics.median(r["p99_ms"] for r in results)
        if base:
            ratios = [r["turns_per_s"] / b["turns_per_s"] for r, b in zip(results, base, strict=True)]
            ratio = f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
        else:
            ratio = "n/a"
        lines.append(
            f"| {name} | {statistics.median(rates):,.0f} | {min(rates):,.0f}-{max(rates):,.0f} "
            f"| {p50:.1f} / {p99:.1f} ms | {ratio} |"
        )
    return "\n".join(lines)


# --- rows c and d: CPU per turn and per delta -------------------------------------------------------


async def _direct(provider: ScriptedProvider, turns: int) -> float:
    """CPU seconds per turn, the provider driven directly."""
    async with provider.connect(sessions.SessionContext(session_id="direct")) as conn:
        gc.collect()
        start = time.process_time()
        for n in range(turns):
            async for _event in conn.run_turn(sessions.TurnRequest(turn=n + 1, prompt=PROMPT, messages=())):
                pass
        return (time.process_time() - start) / turns


async def _drain(subscription: sessions.Subscription) -> None:
    async for _event in subscription:
        pass


async def _through_server(provider: ScriptedProvider, turns: int, subscribers: int, length: int) -> float:
    """CPU seconds per turn through one SessionServer (InMemoryStore), sessions of ``length`` turns."""
    async with trio.open_nursery() as nursery:
        total = 0.0
        done = 0
        while done < turns:
            pid = await SessionServer.start_link(provider=provider, store=InMemoryStore(), nursery=nursery)
            for _ in range(subscribers):
                nursery.start_soon(_drain, await SessionServer.subscribe(pid, buffer=1000))
            await SessionServer.send_message(pid, PROMPT)  # connected, warm
            batch = min(length, turns - done)
            gc.collect()
            start = time.process_time()
            for _ in range(batch):
                await SessionServer.send_message(pid, PROMPT)
            total += time.process_time() - start
            done += batch
            await otpy.stop(pid)
        return total / turns


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rows_cd(args: argparse.Namespace) -> dict[str, Any]:
    turns, rounds, length = args.cpu_turns, args.cpu_rounds, args.session_length
    one_kb = ScriptedProvider(default=REPLY)
    d100, d1 = ScriptedProvider(default=DELTAS_100), ScriptedProvider(default=DELTAS_1)
    samples: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        samples.setdefault(name, []).append(seconds * 1e6)

    async def main() -> None:
        await _direct(one_kb, max(10, turns // 10))  # warm-up
        await _through_server(one_kb, max(10, turns // 10), 0, length)
        for _ in range(rounds):
            add("c.direct", await _direct(one_kb, turns))
            add("c.server", await _through_server(one_kb, turns, 0, length))
            add("d.direct1", await _direct(d1, turns))
            add("d.direct100", await _direct(d100, turns))
            for subs in (0, 1, 10):
                add(f"d.server1.{subs}", await _through_server(d1, turns, subs, length))
                add(f"d.server100.{subs}", await _through_server(d100, turns, subs, length))

    trio.run(main)
    out: dict[str, Any] = {"turns": turns, "rounds": rounds, "samples_us": samples}
    n = len(samples["c.direct"])
    out["c.overhead_us"] = _spread([samples["c.server"][i] - samples["c.direct"][i] for i in range(n)])
    per_delta_direct = [(samples["d.direct100"][i] - samples["d.direct1"][i]) / 99 for i in range(n)]
    out["d.direct_per_delta_us"] = _spread(per_delta_direct)
    for subs in (0, 1, 10):
        server = [(samples[f"d.server100.{subs}"][i] - samples[f"d.server1.{subs}"][i]) / 99 for i in range(n)]
        out[f"d.server_per_delta_us.{subs}"] = _spread(server)
        out[f"d.overhead_per_delta_us.{subs}"] = _spread([s - d for s, d in zip(server, per_delta_direct, strict=True)])
    return out


def _fmt(spread: dict[str, float], digits: int = 1) -> str:
    return f"{spread['median']:.{digits}f} [{spread['min']:.{digits}f}-{spread['max']:.{digits}f}]"


def report_cd(cd: dict[str, Any]) -> str:
    s = {k: _spread(v) for k, v in cd["samples_us"].items()}
    lines = [
        f"CPU time (time.process_time), {cd['turns']} turns per sample, {cd['rounds']} rounds; median [min-max]",
        "",
        "| row | measure | µs |",
        "|---|---|---:|",
        f"| c | provider alone, 1 KB turn | {_fmt(s['c.direct'])} |",
        f"| c | SessionServer + InMemoryStore, 1 KB turn | {_fmt(s['c.server'])} |",
        f"| c | overhead per turn (server - provider) | {_fmt(cd['c.overhead_us'])} |",
        f"| d | provider alone, 100-delta turn | {_fmt(s['d.direct100'])} |",
        f"| d | provider alone, per delta | {_fmt(cd['d.direct_per_delta_us'], 2)} |",
    ]
    for subs in (0, 1, 10):
        lines.append(f"| d | server, 100-delta turn, {subs} subscribers | {_fmt(s[f'd.server100.{subs}'])} |")
        lines.append(
            f"| d | server, per delta, {subs} subscribers (overhead over the provider) | "
            f"{_fmt(cd[f'd.server_per_delta_us.{subs}'], 2)} ({_fmt(cd[f'd.overhead_per_delta_us.{subs}'], 2)}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", default="ecd")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--turns", type=int, default=30, help="timed turns per session per round (row e)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of row e")
    parser.add_argument("--cpu-turns", type=int, default=1000)
    parser.add_argument("--cpu-rounds", type=int, default=3)
    parser.add_argument("--session-length", type=int, default=50, help="turns per session in rows c and d")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--telemetry", action="store_true", help="leave sessions' OpenTelemetry on (default: off, as without the extra)"
    )
    args = parser.parse_args(argv)
    if not args.telemetry:
        sessions.configure_telemetry(enabled=False)
    if args.quick:
        args.sessions, args.turns, args.rounds, args.cpu_turns, args.cpu_rounds = 10, 3, 1, 20, 1
    print(
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, trio {trio.__version__}, "
        f"{os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.2f}"
    )
    results: dict[str, Any] = {}
    if "e" in args.rows:
        results["e"] = row_e(args)
    if "c" in args.rows or "d" in args.rows:
        results["cd"] = rows_cd(args)
    print(f"load average at end {os.getloadavg()[0]:.2f}\n")
    if "e" in results:
        print(report_e(results["e"]) + "\n")
    if "cd" in results:
        print(report_cd(results["cd"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
