"""Does otpy's call path slow down after many servers have started and stopped?

    PYTHONPATH=. python bench/churn.py                       # 20,000 start/stop cycles, three ways
    PYTHONPATH=. python bench/churn.py --n 60000 --modes dynsup
    PYTHONPATH=. python bench/churn.py --callgrind           # instruction counts (valgrind, slow)

In one trio run it measures the cost of a call to an echo server, starts and stops
``--n`` servers, and measures the same calls again, for each churn mode:

- ``none``: no churn (the noise of the measurement itself);
- ``seq``: ``start_link`` then ``stop``, one server at a time;
- ``batch``: ``--n`` servers alive at once, then stopped one by one;
- ``dynsup``: ``--n`` children of a DynamicSupervisor, each started, called once (a
  call with the default 5 s timeout) and terminated, as a node that churns sessions does.

Each mode runs in a process of its own, pinned to one core. The cost of a call is the
median of ``--reps`` samples of ``--calls`` calls each, in CPU time of the process
(``time.process_time``: time the process spent descheduled by other work does not
count), before and after the churn; the line also says how many objects the collector
tracks and how many exited processes are still reachable (``dead pids``).

With ``--callgrind`` each mode runs under ``valgrind --tool=callgrind`` instead, which
counts the instructions of the same calls before and after, sample by sample: a count does not depend
on what else the machine is doing, so a difference of a few tenths of a percent is
real. (It dumps a profile part whenever the process calls ``getppid``, which this
script does at the edges of each measured phase.) Slow: a few minutes per mode.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import otpy
from otpy import _process

MODES = ("none", "seq", "batch", "dynsup")


class Echo(otpy.GenServer):
    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return request


class Worker(otpy.GenServer):
    async def init(self, ident: int) -> None:
        self.ident = ident

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return request


async def _calls(pid: otpy.Pid, n: int) -> float:
    """µs of CPU time per call, over ``n`` calls."""
    t0 = time.process_time()
    for i in range(n):
        await otpy.call(pid, i)
    return (time.process_time() - t0) / n * 1e6


async def _churn(mode: str, n: int, nursery: trio.Nursery) -> None:
    if mode == "seq":
        for i in range(n):
            await otpy.stop(await Worker.start_link(i, nursery=nursery))
    elif mode == "batch":
        workers = [await Worker.start_link(i, nursery=nursery) for i in range(n)]
        for worker in workers:
            await otpy.stop(worker)
    elif mode == "dynsup":
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        for i in range(n):
            child = await otpy.DynamicSupervisor.start_child(sup, Worker.child_spec(i))
            assert child is not None
            await otpy.call(child, i)
            await otpy.DynamicSupervisor.terminate_child(sup, child)
        await otpy.stop(sup)


def _census() -> str:
    gc.collect()
    objects = gc.get_objects()
    dead = sum(1 for o in objects if type(o) is _process.Pid and not o.alive)
    return f"{len(objects)} GC-tracked objects, {dead} dead pids"


async def _measure(mode: str, n: int, calls: int, reps: int, marks: bool) -> None:
    mark = os.getppid if marks else (lambda: 0)
    async with trio.open_nursery() as nursery:
        echo = await Echo.start_link(nursery=nursery)
        await _calls(echo, 2000)  # warm-up: imports, caches, the specialising interpreter
        gc.collect()
        mark()
        before = []
        for _ in range(reps):
            before.append(await _calls(echo, calls))
            mark()
        census_before = _census()
        t0 = time.process_time()
        await _churn(mode, n, nursery)
        churn_s = time.process_time() - t0
        census_after = _census()
        mark()
        after = []
        for _ in range(reps):
            after.append(await _calls(echo, calls))
            mark()
        await otpy.stop(echo)
    b, a = statistics.median(before), statistics.median(after)
    print(
        f"{mode:7s} n={n}: {b:6.2f} -> {a:6.2f} µs per call (after/before {a / b:.3f}; "
        f"before [{min(before):.2f} - {max(before):.2f}], after [{min(after):.2f} - {max(after):.2f}]); "
        f"churn {churn_s / max(n, 1) * 1e6:.0f} µs per server; {census_before} -> {census_after}",
        flush=True,
    )


def _child(args: argparse.Namespace, mode: str, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--n",
        str(args.n),
        "--calls",
        str(args.calls),
        "--reps",
        str(args.reps),
        *extra,
    ]


def _callgrind(args: argparse.Namespace, mode: str) -> None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not on PATH")
    with tempfile.TemporaryDirectory(prefix="otpy-churn-") as tmp:
        out = Path(tmp) / "cg"
        command = [
            valgrind,
            "--tool=callgrind",
            "--dump-before=getppid",
            "--dump-instr=no",
            f"--callgrind-out-file={out}",
            *_child(args, mode, ["--marks"]),
        ]
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])

        def total(part: int) -> int:
            for line in Path(f"{out}.{part}").read_text().splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
            raise SystemExit(f"no totals in callgrind part {part}")

        # Parts: 1 setup; then one per sample before; then the census and the churn;
        # then one per sample after.
        reps = args.reps
        before = [total(2 + k) / args.calls for k in range(reps)]
        churn = total(2 + reps)
        after = [total(3 + reps + k) / args.calls for k in range(reps)]
        b, a = statistics.median(before), statistics.median(after)
        print(
            f"{mode:7s} n={args.n}: {b:,.0f} -> {a:,.0f} instructions per call (after/before {a / b:.4f}; "
            f"samples before {', '.join(f'{x:,.0f}' for x in before)}; after {', '.join(f'{x:,.0f}' for x in after)}); "
            f"churn {churn / max(args.n, 1):,.0f} instructions per server",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="servers started and stopped (default 20,000)")
    parser.add_argument("--calls", type=int, default=5_000, help="calls per sample (default 5,000)")
    parser.add_argument(
        "--reps", type=int, default=None, help="samples before and after (default 11; 3 with --callgrind)"
    )
    parser.add_argument("--modes", default="none,seq,batch,dynsup", help="comma-separated: " + ",".join(MODES))
    parser.add_argument("--rounds", type=int, default=1, help="run every mode this many times, interleaved")
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind instead")
    parser.add_argument("--cpu", type=int, default=None, help="the core to pin to (default: the last usable one)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--marks", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reps is None:
        args.reps = 3 if args.callgrind else 11
    if args.child is not None:
        trio.run(_measure, args.child, args.n, args.calls, args.reps, args.marks)
        return
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes: {', '.join(sorted(unknown))}")
    if args.callgrind:
        for mode in modes:
            _callgrind(args, mode)
        return
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    for _ in range(args.rounds):
        for mode in modes:
            subprocess.run(_child(args, mode, []), check=True, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


if __name__ == "__main__":
    main()
