"""The otpy demo: a supervision tree whose workers crash and get restarted, printed live.

    python examples/demo.py [--seconds 3]

The tree::

    app (one_for_one)
    ├── clock        permanent worker: ticks every 0.2 s and counts the ticks
    ├── flaky        permanent worker: crashes on every 4th job it gets
    └── storage (rest_for_one)
        ├── db       permanent worker
        └── cache    permanent worker: restarted whenever db is

Everything the supervisors do is printed from otpy's own structlog reports: which
child crashed, why, and its restart. At the end the tree is stopped in reverse start
order, and each worker says goodbye from its ``terminate``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

import structlog
import trio

import otpy


class Clock(otpy.GenServer):
    """Counts ticks; the count restarts from zero when the clock is restarted."""

    trap_exit = True

    async def init(self) -> otpy.NoReply:
        self.ticks = 0
        return otpy.NoReply(timeout=0.2)

    async def handle_info(self, message: Any) -> otpy.NoReply | None:
        if message is otpy.TIMEOUT:
            self.ticks += 1
            return otpy.NoReply(timeout=0.2)
        return None

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return self.ticks

    async def terminate(self, reason: object) -> None:
        say(f"  clock: stopping after {self.ticks} ticks ({reason!r})")


class Flaky(otpy.GenServer):
    """Does jobs; every 4th job crashes it with a KeyError."""

    trap_exit = True

    async def init(self) -> None:
        self.jobs = 0

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        self.jobs += 1
        if self.jobs % 4 == 0:
            raise KeyError(f"job {request} found no key")
        return f"job {request} done"

    async def terminate(self, reason: object) -> None:
        if not otpy.is_normal_reason(reason):
            say(f"  flaky: crashed with {reason!r}")
        else:
            say(f"  flaky: stopping ({reason!r})")


class Store(otpy.GenServer):
    """A stand-in for a database or a cache."""

    trap_exit = True

    async def init(self, label: str) -> None:
        self.label = label
        say(f"  {label}: up")

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        if request == "crash":
            raise ConnectionError(f"{self.label} lost its connection")
        return f"{self.label} ok"

    async def terminate(self, reason: object) -> None:
        say(f"  {self.label}: stopping ({reason!r})")


def say(text: str) -> None:
    print(f"{trio.current_time() - START:6.2f}s {text}" if START is not None else text, flush=True)


START: float | None = None


def print_reports(_logger: Any, _method: str, event: dict[str, Any]) -> Any:
    """A structlog processor that prints otpy's supervisor reports as one readable line."""
    name = event.get("event")
    if name == "child_terminated":
        say(f"! {event['supervisor']}: child {event['child_id']!r} exited: {event['reason']!r} -> restarting it")
    elif name == "child_started":
        say(f"  {event['supervisor']}: started {event['child_id']!r}")
    elif name == "supervisor_gave_up":
        say(f"!! {event['supervisor']} gave up: too many restarts")
    raise structlog.DropEvent


async def main(seconds: float) -> None:
    global START
    START = trio.current_time()
    storage = otpy.Supervisor.child_spec(
        [Store.child_spec("db", name="db"), Store.child_spec("cache", name="cache")],
        id="storage",
        strategy="rest_for_one",
        name="storage",
    )
    children = [Clock.child_spec(name="clock"), Flaky.child_spec(name="flaky"), storage]
    async with trio.open_nursery() as nursery:
        say("starting the tree")
        app = await otpy.Supervisor.start_link(children, max_restarts=10, max_seconds=5, name="app", nursery=nursery)
        say("tree started:")
        for info in await otpy.Supervisor.which_children(app):
            say(f"  {info.id}: {info.child!r}")
        job = 0
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            job += 1
            try:
                say(f"-> flaky: {await otpy.call('flaky', job)}")
            except otpy.ServerExited as exc:
                say(f"-> flaky: call failed at once, the server exited: {exc.reason!r}")
            if job == 6:
                say("-> db: asking it to crash (rest_for_one restarts db, then cache)")
                with contextlib.suppress(otpy.ServerExited):
                    await otpy.call("db", "crash")
            await trio.sleep(0.25)
        say(f"clock has ticked {await otpy.call('clock', 'ticks')} times since its last start")
        counts = await otpy.Supervisor.count_children(app)
        say(f"app has {counts.active} of {counts.specs} children running; stopping the tree")
        await otpy.stop(app)
        say("tree stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    # An application configures structlog; otpy never does.
    structlog.configure(processors=[print_reports], logger_factory=structlog.PrintLoggerFactory(sys.stdout))
    trio.run(main, args.seconds)
