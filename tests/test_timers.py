"""Timers: send_after, cancel_timer, read_timer, in virtual time."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import pytest
import structlog
import structlog.testing
import trio
import trio.testing

import otpy
from otpy._timers import _TIMERS


class Inbox(otpy.GenServer):
    """Records (time, message) for every message; answers calls with the record."""

    async def init(self) -> None:
        self.got: list[tuple[float, Any]] = []

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case ("send_after", dest, message, seconds):
                return otpy.send_after(dest, message, seconds)
        return self.got

    async def handle_info(self, message: Any) -> None:
        self.got.append((trio.current_time(), message))


class Ticker(otpy.GenServer):
    """Elixir's periodic-work idiom: a tick that schedules the next one."""

    async def init(self, every: float) -> None:
        self.every = every
        self.ticks: list[float] = []
        otpy.send_after(otpy.self(), "tick", every)

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return self.ticks

    async def handle_info(self, message: Any) -> None:
        if message == "tick":
            self.ticks.append(trio.current_time())
            otpy.send_after(otpy.self(), "tick", self.every)


async def received(pid: otpy.Pid) -> list[tuple[float, Any]]:
    got: list[tuple[float, Any]] = await otpy.call(pid, "got")
    return got


class TestSendAfter:
    async def test_message_arrives_at_the_deadline(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """send_after delivers the message to handle_info exactly `seconds` later."""
        pid = await Inbox.start_link(nursery=nursery)
        otpy.send_after(pid, "hello", 2.5)
        await trio.sleep(10)
        assert await received(pid) == [(2.5, "hello")]

    async def test_zero_delay_is_not_immediate(self, nursery: trio.Nursery) -> None:
        """With seconds=0 the message still comes later: a message sent right after arrives first."""
        pid = await Inbox.start_link(nursery=nursery)
        otpy.send_after(pid, "timer", 0)
        otpy.send(pid, "direct")
        await trio.testing.wait_all_tasks_blocked()
        assert [message for _, message in await received(pid)] == ["direct", "timer"]

    async def test_timers_fire_in_deadline_then_creation_order(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Timers fire by deadline; those due at the same time fire in the order they were created."""
        pid = await Inbox.start_link(nursery=nursery)
        for message, seconds in [("c", 3), ("a1", 1), ("b", 2), ("a2", 1), ("a3", 1)]:
            otpy.send_after(pid, message, seconds)
        await trio.sleep(5)
        assert await received(pid) == [(1, "a1"), (1, "a2"), (1, "a3"), (2, "b"), (3, "c")]

    async def test_a_periodic_tick(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """A process that reschedules its tick in handle_info ticks every period."""
        pid = await Ticker.start_link(1.0, nursery=nursery)
        await trio.sleep(10.5)
        assert await otpy.call(pid, "ticks") == [float(n) for n in range(1, 11)]

    async def test_from_inside_a_process(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """A process can schedule a message to itself with otpy.self()."""
        pid = await Inbox.start_link(nursery=nursery)
        ref = await otpy.call(pid, ("send_after", pid, "me", 1.0))
        assert isinstance(ref, otpy.TimerRef)
        await trio.sleep(2)
        assert await received(pid) == [(1.0, "me")]

    async def test_bad_arguments(self, nursery: trio.Nursery) -> None:
        """A negative or NaN delay raises ValueError; a destination that is no pid or name raises TypeError."""
        pid = await Inbox.start_link(nursery=nursery)
        with pytest.raises(ValueError, match="seconds"):
            otpy.send_after(pid, "x", -1)
        with pytest.raises(ValueError, match="seconds"):
            otpy.send_after(pid, "x", math.nan)
        with pytest.raises(TypeError, match="Pid, a name"):
            otpy.send_after(42, "x", 1)  # type: ignore[arg-type]


class TestCancelAndRead:
    async def test_cancel_returns_the_time_left_and_stops_delivery(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """cancel_timer returns the seconds left and the message never arrives; a second cancel returns None."""
        pid = await Inbox.start_link(nursery=nursery)
        ref = otpy.send_after(pid, "never", 5.0)
        await trio.sleep(2.0)
        assert otpy.cancel_timer(ref) == 3.0
        assert otpy.cancel_timer(ref) is None
        assert otpy.read_timer(ref) is None
        await trio.sleep(10)
        assert await received(pid) == []

    async def test_read_timer(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """read_timer returns the seconds left while active and None once the timer has fired."""
        pid = await Inbox.start_link(nursery=nursery)
        ref = otpy.send_after(pid, "ping", 10.0)
        assert otpy.read_timer(ref) == 10.0
        await trio.sleep(4.0)
        assert otpy.read_timer(ref) == 6.0
        assert ref.deadline == 10.0
        await trio.sleep(7.0)
        assert otpy.read_timer(ref) is None
        assert otpy.cancel_timer(ref) is None
        assert await received(pid) == [(10.0, "ping")]

    async def test_cancelled_timers_do_not_accumulate(self, nursery: trio.Nursery) -> None:
        """Ten thousand cancelled timers leave the heap bounded by the active ones."""
        pid = await Inbox.start_link(nursery=nursery)
        keep = [otpy.send_after(pid, "keep", 1000) for _ in range(10)]
        for _ in range(10_000):
            otpy.cancel_timer(otpy.send_after(pid, "x", 1000))
        timers = _TIMERS.get()
        assert timers.active == len(keep)
        assert len(timers.heap) <= 1024 + 1
        assert all(otpy.read_timer(ref) is not None for ref in keep)


class TestLifetime:
    async def test_destination_exit_cancels_its_timers(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Timers whose destination pid exits are cancelled: read_timer and cancel_timer return None."""
        pid = await Inbox.start_link(nursery=nursery)
        refs = [otpy.send_after(pid, n, 5.0) for n in range(3)]
        await otpy.stop(pid)
        assert [otpy.read_timer(ref) for ref in refs] == [None] * 3
        assert otpy.cancel_timer(refs[0]) is None
        await trio.sleep(10)
        assert _TIMERS.get().active == 0

    async def test_dead_destination_gives_an_inactive_timer(self, nursery: trio.Nursery) -> None:
        """send_after to a pid that has already exited returns a timer that is not active."""
        pid = await Inbox.start_link(nursery=nursery)
        await otpy.stop(pid)
        ref = otpy.send_after(pid, "x", 1.0)
        assert otpy.read_timer(ref) is None

    async def test_one_exit_hook_per_destination(self, nursery: trio.Nursery) -> None:
        """A hundred timers to one process add one exit hook to it, not one each."""
        pid = await Inbox.start_link(nursery=nursery)
        for _ in range(100):
            otpy.cancel_timer(otpy.send_after(pid, "x", 1.0))
        assert pid._on_exit is not None
        assert len(pid._on_exit) == 1

    async def test_the_caller_exit_does_not_cancel(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """As in Erlang, a timer lives with its destination: the process that set it may exit first."""
        setter = await Inbox.start_link(nursery=nursery)
        dest = await Inbox.start_link(nursery=nursery)
        ref = await otpy.call(setter, ("send_after", dest, "from a ghost", 2.0))
        await otpy.stop(setter)
        assert otpy.read_timer(ref) == 2.0
        await trio.sleep(3)
        assert await received(dest) == [(2.0, "from a ghost")]

    async def test_a_name_is_resolved_when_the_timer_fires(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A named destination is looked up at expiry: whoever holds the name then gets the message."""
        first = await Inbox.start_link(name="inbox", nursery=nursery)
        otpy.send_after("inbox", "late", 5.0)
        await otpy.stop(first)
        second = await Inbox.start_link(name="inbox", nursery=nursery)
        await trio.sleep(6)
        assert await received(second) == [(5.0, "late")]

    async def test_a_name_nobody_holds_drops_the_message(self, autojump_clock: trio.testing.MockClock) -> None:
        """A timer to a name nobody holds at expiry fires without effect."""
        ref = otpy.send_after("nobody", "lost", 1.0)
        await trio.sleep(2)
        assert otpy.read_timer(ref) is None

    async def test_via_names_work(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """A via name is a valid destination."""
        await otpy.Registry.start_link("unique", name="reg", nursery=nursery)
        name = otpy.Registry.via("reg", "inbox")
        pid = await Inbox.start_link(name=name, nursery=nursery)
        otpy.send_after(name, "via", 1.0)
        await trio.sleep(2)
        assert await received(pid) == [(1.0, "via")]

    async def test_a_broken_via_registry_is_logged_not_fatal(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """If resolving a name fails at expiry, the error is logged and other timers still fire."""

        class Broken:
            def register_name(self, key: Hashable, pid: otpy.Pid) -> bool:
                return False

            def unregister_name(self, key: Hashable) -> None:
                pass

            def whereis_name(self, key: Hashable) -> otpy.Pid | None:
                raise RuntimeError("registry on fire")

        pid = await Inbox.start_link(nursery=nursery)
        with structlog.testing.capture_logs() as logs:
            otpy.send_after(otpy.via(Broken(), "k"), "x", 1.0)
            otpy.send_after(pid, "still here", 2.0)
            await trio.sleep(3)
        assert [entry["event"] for entry in logs] == ["timer_delivery_failed"]
        assert isinstance(logs[0]["exc_info"], RuntimeError)
        assert await received(pid) == [(2.0, "still here")]


def test_a_pending_timer_does_not_keep_trio_run_alive() -> None:
    """trio.run returns when main returns, although a timer is still pending."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    refs: list[otpy.TimerRef] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            pid = await Inbox.start_link(nursery=nursery)
            refs.append(otpy.send_after(pid, "much later", 1000.0))
            refs.append(otpy.send_after("a name", "later", 500.0))
            await otpy.stop(pid)

    trio.run(main, clock=clock)
    assert clock.current_time() < 500.0  # autojump would have jumped to 500 had the run waited
    assert len(refs) == 2
