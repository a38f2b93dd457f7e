"""Monitors, links and trapped exits: how processes learn that others have died.

    python examples/monitors_links.py

- A watcher monitors a worker: when the worker crashes, the watcher gets a Down
  message with the exit reason, and keeps running.
- A guardian traps exits and links to a helper: the helper's crash arrives as an
  ExitSignal message instead of killing the guardian.
- A process linked to a crashing helper, without trapping exits, dies with it.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog
import trio

import otpy


class Worker(otpy.GenServer):
    """Crashes when asked."""

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        if request == "crash":
            raise RuntimeError("the worker fell over")
        return "ok"


class Watcher(otpy.GenServer):
    """Monitors a pid and records what its Down message says."""

    async def init(self, target: otpy.Pid) -> None:
        self.ref = otpy.monitor(target)
        self.seen: list[str] = []

    async def handle_info(self, message: Any) -> None:
        if isinstance(message, otpy.Down) and message.ref == self.ref:
            self.seen.append(f"Down: {message.pid!r} exited with {message.reason!r}")

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return self.seen


class Guardian(otpy.GenServer):
    """Links to a pid; whether it survives the pid's crash depends on trap_exit."""

    async def init(self, target: otpy.Pid, trap: bool) -> None:
        otpy.trap_exit(trap)
        otpy.link(target)
        self.seen: list[str] = []

    async def handle_info(self, message: Any) -> None:
        if isinstance(message, otpy.ExitSignal):
            self.seen.append(f"ExitSignal: {message.pid!r} exited with {message.reason!r}")

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return self.seen


async def crash(pid: otpy.Pid) -> None:
    try:
        await otpy.call(pid, "crash")
    except otpy.ServerExited as exc:
        print(f"caller: the call failed at once: {exc.reason!r}")


async def main() -> None:
    async with trio.open_nursery() as nursery:
        worker = await Worker.start(nursery=nursery)
        watcher = await Watcher.start(worker, nursery=nursery)
        await crash(worker)
        print("watcher:", await otpy.call(watcher, "seen"))

        helper = await Worker.start(nursery=nursery)
        guardian = await Guardian.start(helper, True, nursery=nursery)
        await crash(helper)
        print("trapping guardian:", await otpy.call(guardian, "seen"), "alive:", guardian.alive)

        helper = await Worker.start(nursery=nursery)
        bystander = await Guardian.start(helper, False, nursery=nursery)
        await crash(helper)
        print("linked bystander exited with:", repr(await bystander.wait_exited()))

        for pid in (watcher, guardian):
            await otpy.stop(pid)


if __name__ == "__main__":
    # The application decides what otpy's reports show; here, none of the crash reports.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    trio.run(main)
