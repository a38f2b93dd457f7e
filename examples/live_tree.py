"""A supervision tree, printed live while its children crash and get restarted.

    python examples/live_tree.py [--seconds 3] [--every 0.3]

The tree::

    app (one_for_one)
    ├── ticker       counts ticks; never crashes
    ├── flaky        crashes every 0.7 s; its supervisor restarts it
    ├── storage (rest_for_one)
    │   ├── db       crashes every 1.3 s; cache is restarted with it
    │   └── cache
    └── jobs         a TaskSupervisor: short tasks come and go, every third one crashes

`otpy.tree("app")` is printed every ``--every`` seconds: watch the restart counts
grow, the uptimes reset, and tasks appear and vanish. Then the tree is stopped and the
program exits with status 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import structlog
import trio

import otpy


class Ticker(otpy.GenServer):
    """Ticks every 0.1 s."""

    async def init(self) -> otpy.NoReply:
        self.ticks = 0
        return otpy.NoReply(timeout=0.1)

    async def handle_info(self, message: Any) -> otpy.NoReply | None:
        if message is otpy.TIMEOUT:
            self.ticks += 1
            return otpy.NoReply(timeout=0.1)
        return None


class Crashy(otpy.GenServer):
    """Crashes ``lifetime`` seconds after it starts."""

    async def init(self, lifetime: float) -> otpy.NoReply:
        return otpy.NoReply(timeout=lifetime)

    async def handle_info(self, message: Any) -> None:
        if message is otpy.TIMEOUT:
            raise RuntimeError("time to crash")


class Cache(otpy.GenServer):
    """Stands in for a cache that must restart with its database."""


async def job(n: int) -> int:
    await trio.sleep(0.45)
    if n % 3 == 0:
        raise ValueError(f"job {n} failed")
    return n


async def main(seconds: float, every: float) -> None:
    storage = otpy.Supervisor.child_spec(
        [Crashy.child_spec(1.3, name="db"), Cache.child_spec(name="cache")],
        id="storage",
        name="storage",
        strategy="rest_for_one",
    )
    children = [
        Ticker.child_spec(name="ticker"),
        Crashy.child_spec(0.7, name="flaky"),
        storage,
        otpy.TaskSupervisor.child_spec(name="jobs"),
    ]
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    async with trio.open_nursery() as nursery:
        app = await otpy.Supervisor.start_link(children, max_restarts=50, max_seconds=5, name="app", nursery=nursery)
        start = trio.current_time()
        n = 0
        while (elapsed := trio.current_time() - start) < seconds:
            n += 1
            await otpy.TaskSupervisor.start_child("jobs", job, n)
            print(f"{clear}--- t={elapsed:.1f}s ---", flush=True)
            print(otpy.tree(app), flush=True)
            await trio.sleep(every)
        flaky = otpy.tree(app).find("flaky")
        restarts = flaky.restarts if flaky is not None else 0
        print(f"--- after {seconds:g}s: flaky restarted {restarts} times ---", flush=True)
        await otpy.stop(app)
        print("tree stopped", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--every", type=float, default=0.3)
    args = parser.parse_args()
    # An application configures structlog; otpy never does. The tree says it all, so
    # the crash reports are silenced here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    trio.run(main, args.seconds, args.every)
