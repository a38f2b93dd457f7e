"""Profile otpy's hot paths: the call round trip (row a), casts (row c), starts (row d).

    PYTHONPATH=. .venv/bin/python bench/profile_otpy.py [--rows acd] [--out bench/results/profiles]

For each row it writes two reports: ``<row>-cprofile.txt`` (cProfile, functions sorted
by own time: deterministic, with call counts, but its per-call overhead inflates small
functions) and, when pyinstrument is installed (it is in the dev venv),
``<row>-pyinstrument.txt`` (sampling, every frame shown, trio's scheduler included).
The measured section is the same code as bench/systems/otpy_bench.py, at full size.

Both profilers distort code made of many tiny calls, so ``ablations.txt`` adds plain
timings of variants (interleaved, median of 7): the same row with a piece of work
removed or isolated, which tells what that piece costs. ``--ablations-only`` skips
the profilers.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import pstats
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent / "systems"))

import otpy_bench  # found through the path set just above
import trio_bench
from _common import Params, median, perf_counter

import otpy

SIZES = {"a": 20_000, "b": 100_000, "c": 200_000, "d": 10_000}


# --- ablations: each returns microseconds per operation --------------------------------


async def _calls(n: int, clients: int, call_timeout: float | None) -> float:
    """n calls from ``clients`` concurrent tasks to an echo server; None: the default timeout."""
    per_client = n // clients

    async def client(pid: otpy.Pid) -> None:
        if call_timeout is None:
            for i in range(per_client):
                await otpy.call(pid, i)
        else:
            for i in range(per_client):
                await otpy.call(pid, i, call_timeout)

    async with trio.open_nursery() as nursery:
        pid = await otpy_bench.Echo.start_link(nursery=nursery)
        t0 = perf_counter()
        async with trio.open_nursery() as group:
            for _ in range(clients):
                group.start_soon(client, pid)
        elapsed = perf_counter() - t0
        await otpy.stop(pid)
    return elapsed / n * 1e6


async def _floor_calls(n: int, clients: int) -> float:
    box = trio_bench.Handoff()
    per_client = n // clients

    async def client() -> None:
        for i in range(per_client):
            await box.call(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.serve)
        await trio.lowlevel.checkpoint()
        t0 = perf_counter()
        async with trio.open_nursery() as group:
            for _ in range(clients):
                group.start_soon(client)
        elapsed = perf_counter() - t0
        nursery.cancel_scope.cancel()
    return elapsed / n * 1e6


async def _cast_split(n: int, part: str) -> float:
    """Row c, with the client's casts ("send") or the server's handling ("serve") timed alone."""
    async with trio.open_nursery() as nursery:
        pid = await otpy_bench.Counter.start_link(nursery=nursery)
        t0 = perf_counter()
        for _ in range(n):
            otpy.cast(pid, 1)
        t1 = perf_counter()
        await otpy.call(pid, "get")
        t2 = perf_counter()
        await otpy.stop(pid)
    return ((t1 - t0) if part == "send" else (t2 - t1)) / n * 1e6


async def _starts(n: int, how: str) -> float:
    async with trio.open_nursery() as nursery:
        if how == "child_spec only":
            t0 = perf_counter()
            for i in range(n):
                otpy_bench.Worker.child_spec(i)
            return (perf_counter() - t0) / n * 1e6
        if how == "CancelScope enter+exit":
            t0 = perf_counter()
            for _ in range(n):
                with trio.CancelScope():  # noqa: ASYNC100 (the cost of the scope is the point)
                    pass
            return (perf_counter() - t0) / n * 1e6
        if how == "bare trio task spawn":
            event = trio.Event()
            t0 = perf_counter()
            async with trio.open_nursery() as tasks:
                for _ in range(n):
                    tasks.start_soon(event.wait)
                await trio.testing.wait_all_tasks_blocked()
                elapsed = perf_counter() - t0
                event.set()
            return elapsed / n * 1e6
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        if how in ("echo call", "supervisor call"):
            echo = await otpy_bench.Echo.start_link(nursery=nursery)
            t0 = perf_counter()
            if how == "echo call":
                for i in range(n):
                    await otpy.call(echo, i, math.inf)
            else:
                for _ in range(n):
                    await otpy.DynamicSupervisor.count_children(sup)
            elapsed = perf_counter() - t0
            nursery.cancel_scope.cancel()
            return elapsed / n * 1e6
        gc.collect()
        if how.endswith("GC off"):
            gc.disable()
        try:
            t0 = perf_counter()
            if how.startswith("DynamicSupervisor.start_child"):
                for i in range(n):
                    await otpy.DynamicSupervisor.start_child(sup, otpy_bench.Worker.child_spec(i))
            else:
                for i in range(n):
                    await otpy_bench.Worker.start(i, nursery=nursery)
            elapsed = perf_counter() - t0
        finally:
            gc.enable()
        nursery.cancel_scope.cancel()
    return elapsed / n * 1e6


Variant = tuple[str, Callable[..., Awaitable[float]], tuple[Any, ...]]


def ablations(out: Path, reps: int = 7, only: str = "abcd") -> None:
    groups: list[tuple[str, list[Variant]]] = [
        (
            "a: one client, 20,000 calls (us per call)",
            [
                ("otpy.call, default 5 s timeout", _calls, (20_000, 1, None)),
                ("otpy.call, timeout=math.inf (no deadline entry)", _calls, (20_000, 1, math.inf)),
                ("bare trio hand-off (floor)", _floor_calls, (20_000, 1)),
            ],
        ),
        (
            "b: 100 clients, 100,000 calls (us per call)",
            [
                ("otpy.call, default 5 s timeout", _calls, (100_000, 100, None)),
                ("otpy.call, timeout=math.inf (no deadline entry)", _calls, (100_000, 100, math.inf)),
                ("bare trio hand-off (floor)", _floor_calls, (100_000, 100)),
            ],
        ),
        (
            "c: 200,000 casts (us per cast)",
            [
                ("client side: otpy.cast alone", _cast_split, (200_000, "send")),
                ("server side: draining the mailbox (handle_cast)", _cast_split, (200_000, "serve")),
            ],
        ),
        (
            "d: 10,000 starts (us per start)",
            [
                (
                    "DynamicSupervisor.start_child(sup, Worker.child_spec(i))",
                    _starts,
                    (10_000, "DynamicSupervisor.start_child"),
                ),
                ("DynamicSupervisor.start_child, GC off", _starts, (10_000, "DynamicSupervisor.start_child, GC off")),
                ("Worker.start(i, nursery=...) without a supervisor", _starts, (10_000, "start")),
                ("Worker.start, GC off", _starts, (10_000, "start, GC off")),
                ("Worker.child_spec(i) alone", _starts, (10_000, "child_spec only")),
                ("trio.CancelScope() enter+exit alone", _starts, (10_000, "CancelScope enter+exit")),
                ("bare trio task spawn, run to its first park", _starts, (10_000, "bare trio task spawn")),
                ("a call to an echo server (timeout=inf), for comparison", _starts, (10_000, "echo call")),
                ("a call to a DynamicSupervisor: count_children, no children", _starts, (10_000, "supervisor call")),
            ],
        ),
    ]
    lines = [f"Ablations: median [min - max] of {reps} interleaved runs, microseconds per operation", ""]
    for title, variants in groups:
        if title[0] not in only:
            continue
        samples: dict[str, list[float]] = {label: [] for label, _, _ in variants}
        for _ in range(reps):
            for label, fn, args in variants:
                samples[label].append(trio.run(fn, *args))
        lines.append(title)
        for label, _, _ in variants:
            values = samples[label]
            lines.append(f"  {median(values):8.2f} [{min(values):.2f} - {max(values):.2f}]  {label}")
        lines.append("")
        print("\n".join(lines[-len(variants) - 2 :]), flush=True)
    (out / "ablations.txt").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default="acd")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "profiles")
    parser.add_argument("--ablations-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.ablations_only:
        ablations(args.out, only=args.rows if args.rows != "acd" else "abcd")
        return
    profiler_type: Any = None
    try:
        from pyinstrument import Profiler

        profiler_type = Profiler
    except ImportError:
        pass
    for row in args.rows:
        params = Params(row, SIZES[row], 0, 100, 1000, "")
        trio.run(otpy_bench.ROWS[row], Params(row, SIZES[row] // 10, 0, 100, 100, ""))  # warm-up

        profile = cProfile.Profile()
        profile.enable()
        metrics = trio.run(otpy_bench.ROWS[row], params)
        profile.disable()
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text)
        stats.sort_stats("tottime").print_stats(30)
        (args.out / f"{row}-cprofile.txt").write_text(f"row {row}, under cProfile: {metrics}\n" + text.getvalue())
        print(f"row {row}: cProfile -> {args.out / f'{row}-cprofile.txt'}")

        if profiler_type is not None:
            profiler = profiler_type(interval=0.001, async_mode="disabled")
            profiler.start()
            metrics = trio.run(otpy_bench.ROWS[row], params)
            profiler.stop()
            report = profiler.output_text(unicode=True, color=False, show_all=True)
            (args.out / f"{row}-pyinstrument.txt").write_text(f"row {row}, under pyinstrument: {metrics}\n" + report)
            print(f"row {row}: pyinstrument -> {args.out / f'{row}-pyinstrument.txt'}")
    ablations(args.out)


if __name__ == "__main__":
    main()
