"""Timers: periodic work and an inactivity timeout with send_after / cancel_timer / read_timer.

    python examples/timers.py

- ``Heartbeat`` does periodic work the Elixir way: each "beat" schedules the next one
  with ``otpy.send_after(otpy.self(), "beat", period)``.
- ``Session`` expires after 0.3 s without activity: each request cancels the pending
  expiry timer and starts a new one.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog
import trio

import otpy

START = 0.0


def say(text: str) -> None:
    print(f"[{trio.current_time() - START:4.2f}s] {text}")


class Heartbeat(otpy.GenServer):
    """Beats every `period` seconds."""

    async def init(self, period: float) -> None:
        self.period = period
        self.beats = 0
        otpy.send_after(otpy.self(), "beat", period)

    async def handle_info(self, message: Any) -> None:
        if message == "beat":
            self.beats += 1
            say(f"heartbeat {self.beats}")
            otpy.send_after(otpy.self(), "beat", self.period)

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return self.beats


class Session(otpy.GenServer):
    """Stops itself after `idle` seconds without a request."""

    async def init(self, idle: float) -> None:
        self.idle = idle
        self.timer = otpy.send_after(otpy.self(), "expire", idle)

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        left = otpy.cancel_timer(self.timer)
        self.timer = otpy.send_after(otpy.self(), "expire", self.idle)
        return f"{request} (the old timer had {left:.1f}s left)"

    async def handle_info(self, message: Any) -> otpy.Stop | None:
        if message == "expire":
            say("session expired")
            return otpy.Stop("normal")
        return None


async def main() -> None:
    global START
    START = trio.current_time()
    async with trio.open_nursery() as nursery:
        heart = await Heartbeat.start_link(0.25, nursery=nursery)
        session = await Session.start_link(0.3, nursery=nursery)

        for request in ("hello", "again"):
            await trio.sleep(0.2)
            say(await otpy.call(session, request))
        await session.wait_exited()

        ref = otpy.send_after(heart, "never", 5.0)
        say(f"a 5 s timer reads {otpy.read_timer(ref):.1f}s; cancelled with {otpy.cancel_timer(ref):.1f}s left")
        say(f"reading it again: {otpy.read_timer(ref)}")

        later = otpy.send_after(heart, "later", 5.0)
        beats = await otpy.call(heart, "beats")
        await otpy.stop(heart)
        say(f"heartbeat stopped after {beats} beats; a timer to it now reads {otpy.read_timer(later)}")
        nursery.cancel_scope.cancel()
    print("done")


if __name__ == "__main__":
    # An application configures structlog; otpy never does. Show errors only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    trio.run(main)
