"""Call paths that must never hang or leak (issue 7), and what a caller learns (issue 8).

Each test here failed before its fix.
"""

from __future__ import annotations

import gc
import math
import time
import weakref
from typing import Any

import pytest
import structlog
import trio
import trio.testing

import otpy


class Payload:
    """A request or reply whose lifetime the tests watch through a weak reference."""

    def __init__(self, size: int = 16) -> None:
        self.data = bytearray(size)


def alive(refs: list[weakref.ref[Payload]]) -> int:
    gc.collect()
    return sum(1 for ref in refs if ref() is not None)


class Deferring(otpy.GenServer):
    """Defers every call; answers them all on the cast "flush", then forgets them."""

    async def init(self) -> None:
        self.waiting: list[otpy.From] = []

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case ("bye", _):
                return otpy.Stop("normal", reply="bye")
            case "pending":
                return len(self.pid._pending or ())
            case _:
                self.waiting.append(from_)
                return otpy.NoReply()

    async def handle_cast(self, request: Any) -> None:
        match request:
            case "flush":
                for from_ in self.waiting:
                    otpy.reply(from_, "late")
                self.waiting.clear()
            case _:
                raise ValueError(request)

    async def terminate(self, reason: object) -> None:
        if reason == "normal":
            await trio.sleep(10)  # long enough to be killed in the middle


# --- 1. a caller owed a reply never hangs -------------------------------------------------


class TestOwedReplies:
    @pytest.mark.parametrize("timeout", [math.inf, 30.0])
    async def test_stop_with_reply_killed_in_terminate_fails_the_caller(
        self,
        nursery: trio.Nursery,
        autojump_clock: trio.testing.MockClock,
        timeout: float,  # noqa: ASYNC109 (the call's timeout, a parameter of the test)
    ) -> None:
        """Stop(reply=...) then killed during terminate: the caller fails at once with "killed", as in OTP."""
        pid = await Deferring.start_link(nursery=nursery)
        outcome: list[object] = []

        async def caller() -> None:
            try:
                await otpy.call(pid, ("bye", 1), timeout=timeout)
            except otpy.CallError as exc:
                outcome.append((type(exc), getattr(exc, "reason", None), trio.current_time()))

        nursery.start_soon(caller)
        await trio.sleep(1)  # terminate is sleeping now
        otpy.exit(pid, "kill")
        await trio.sleep(0.001)
        assert outcome == [(otpy.ServerExited, "killed", pytest.approx(1.0))]

    async def test_stop_with_reply_answers_after_terminate(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The ordinary path still works: the reply comes after terminate has run."""
        pid = await Deferring.start_link(nursery=nursery)
        assert await otpy.call(pid, ("bye", 1), timeout=math.inf) == "bye"
        assert trio.current_time() == pytest.approx(10.0)
        assert pid.exit_reason == "normal"

    async def test_deferred_caller_fails_when_the_server_crashes(self, nursery: trio.Nursery) -> None:
        """A deferred call whose server crashes later fails with the crash, chained as the cause."""
        pid = await Deferring.start(nursery=nursery)
        failures: list[BaseException] = []

        async def caller() -> None:
            try:
                await otpy.call(pid, "wait", timeout=math.inf)
            except otpy.ServerExited as exc:
                failures.append(exc)

        nursery.start_soon(caller)
        await trio.testing.wait_all_tasks_blocked()
        with structlog.testing.capture_logs():
            otpy.cast(pid, "crash")
            await pid.wait_exited()
        await trio.testing.wait_all_tasks_blocked()
        [error] = failures
        assert isinstance(error.__cause__, ValueError)  # the server's own exception, traceback included
        assert error.__cause__ is pid.exit_reason
        assert error.__cause__.__traceback__ is not None


# --- 3 and 4. finished and abandoned calls pin nothing --------------------------------------


class TestNothingPinned:
    async def test_abandoned_deferred_calls_are_released(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """200 callers time out on deferred calls; after the replies, no request stays alive."""
        pid = await Deferring.start_link(nursery=nursery)
        refs: list[weakref.ref[Payload]] = []

        async def caller() -> None:
            request = Payload()
            refs.append(weakref.ref(request))
            with pytest.raises(otpy.CallTimeout):
                await otpy.call(pid, request, timeout=1)

        async with trio.open_nursery() as callers:
            for _ in range(200):
                callers.start_soon(caller)
        assert await otpy.call(pid, "pending") == 0  # the giving-up left the pending set
        otpy.cast(pid, "flush")
        await otpy.call(pid, "pending")
        assert alive(refs) == 0

    async def test_cancelled_deferred_calls_are_released(self, nursery: trio.Nursery) -> None:
        """A caller cancelled while its call is deferred leaves nothing in the server."""
        pid = await Deferring.start_link(nursery=nursery)
        with trio.move_on_after(0.01):
            await otpy.call(pid, Payload(), timeout=math.inf)
        assert await otpy.call(pid, "pending") == 0

    async def test_answered_deferred_calls_are_released(self, nursery: trio.Nursery) -> None:
        """Deferred calls answered with otpy.reply leave the pending set and let go of their requests."""
        pid = await Deferring.start_link(nursery=nursery)
        refs: list[weakref.ref[Payload]] = []
        replies: list[object] = []

        async def caller() -> None:
            request = Payload()
            refs.append(weakref.ref(request))
            replies.append(await otpy.call(pid, request, timeout=math.inf))

        async with trio.open_nursery() as callers:
            for _ in range(20):
                callers.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            assert await otpy.call(pid, "pending") == 20
            otpy.cast(pid, "flush")
        assert replies == ["late"] * 20
        assert await otpy.call(pid, "pending") == 0  # answered calls left the pending set
        assert alive(refs) == 0  # and nothing in the server holds their requests

    async def test_answered_calls_release_request_and_reply(self, nursery: trio.Nursery) -> None:
        """Answered calls with a long timeout do not keep their requests or replies alive."""

        class Echo(otpy.GenServer):
            async def handle_call(self, request: Any, from_: otpy.From) -> Any:
                return Payload() if request == "new" else request

        pid = await Echo.start_link(nursery=nursery)
        refs: list[weakref.ref[Payload]] = []
        for _ in range(50):
            request = Payload(1024)
            refs.append(weakref.ref(request))
            assert await otpy.call(pid, request, timeout=3600) is request
            del request
            reply = await otpy.call(pid, "new", timeout=3600)
            refs.append(weakref.ref(reply))
            del reply
        await otpy.call(pid, None)  # trio's scheduler holds the latest reply until the next one
        assert alive(refs) == 0


# --- 5. timeouts that are not numbers of seconds -------------------------------------------


class Recorder(otpy.GenServer):
    async def init(self) -> None:
        self.seen: list[Any] = []

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        self.seen.append(request)
        return self.seen


BAD_TIMEOUTS = [float("nan"), -1, -0.5, "5", True, None]


class TestTimeoutValidation:
    @pytest.mark.parametrize("bad", BAD_TIMEOUTS)
    async def test_call_rejects_before_sending(self, nursery: trio.Nursery, bad: Any) -> None:
        """call() with a bad timeout raises ValueError naming it, and the server never sees the request."""
        pid = await Recorder.start_link(nursery=nursery)
        with pytest.raises(ValueError, match="timeout must be a number of seconds"):
            await otpy.call(pid, "act", timeout=bad)
        assert await otpy.call(pid, "check") == ["check"]

    @pytest.mark.parametrize("bad", BAD_TIMEOUTS)
    async def test_stop_and_get_state_reject_before_sending(self, nursery: trio.Nursery, bad: Any) -> None:
        """stop() and get_state() with a bad timeout raise before anything is delivered."""
        pid = await Recorder.start_link(nursery=nursery)
        with pytest.raises(ValueError, match="timeout"):
            await otpy.stop(pid, timeout=bad)
        with pytest.raises(ValueError, match="timeout"):
            await otpy.get_state(pid, timeout=bad)
        assert pid.alive
        assert pid.mailbox_size == 0

    @pytest.mark.parametrize("timeout", [float("nan"), -1])
    def test_reply_and_noreply_timeouts(self, timeout: float) -> None:
        """Reply and NoReply refuse an inactivity timeout that is not seconds."""
        with pytest.raises(ValueError, match="timeout"):
            otpy.Reply(1, timeout=timeout)
        with pytest.raises(ValueError, match="timeout"):
            otpy.NoReply(timeout=timeout)
        assert otpy.NoReply(timeout=0).timeout == 0

    async def test_timer_task_and_agent_timeouts(self, nursery: trio.Nursery) -> None:
        """Timers, tasks and agents check their timeouts too."""
        pid = await Recorder.start_link(nursery=nursery)
        with pytest.raises(ValueError, match="seconds must be"):
            otpy.send_after(pid, "x", float("nan"))

        async def job() -> int:
            return 1

        task = otpy.Task.async_(job, nursery=nursery)
        for bad in (float("nan"), -1):
            with pytest.raises(ValueError, match="timeout"):
                await task.await_(timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                await task.yield_(timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                await otpy.Task.yield_many([task], timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                await task.shutdown(timeout=bad)
        assert await task.await_() == 1
        agent = await otpy.Agent.start_link(lambda: 0, nursery=nursery)
        with pytest.raises(ValueError, match="timeout"):
            await otpy.Agent.get(agent, lambda state: state, timeout=float("nan"))

    async def test_a_short_call_still_times_out_beside_long_ones(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A heap-held call (earlier deadline than the FIFO's last) times out on time."""
        pid = await Deferring.start_link(nursery=nursery)
        nursery.start_soon(lambda: otpy.call(pid, "long", timeout=math.inf))
        with pytest.raises(otpy.CallTimeout):
            await otpy.call(pid, "long", timeout=100)
        started = trio.current_time()
        nursery.start_soon(lambda: otpy.call(pid, "long", timeout=50))
        await trio.lowlevel.checkpoint()
        with pytest.raises(otpy.CallTimeout):
            await otpy.call(pid, "short", timeout=0.2)
        assert trio.current_time() - started == pytest.approx(0.2)


# --- 6. linking to a dead process ---------------------------------------------------------


class Linker(otpy.GenServer):
    async def init(self, trap: bool) -> None:
        otpy.trap_exit(trap)
        self.infos: list[Any] = []

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case ("link", pid, catch):
                if not catch:
                    otpy.link(pid)
                    return "linked"
                try:
                    otpy.link(pid)
                except otpy.NoProcess as exc:
                    return exc
                return "linked"
            case "infos":
                return self.infos

    async def handle_info(self, message: Any) -> None:
        self.infos.append(message)


class TestLinkToDead:
    async def test_non_trapping_caller_can_catch_noproc(self, nursery: trio.Nursery) -> None:
        """Process.link/1 on a dead pid raises a catchable noproc error; the caller lives on."""
        dead = await Recorder.start_link(nursery=nursery)
        await otpy.stop(dead)
        linker = await Linker.start_link(False, nursery=nursery)
        error = await otpy.call(linker, ("link", dead, True))
        assert isinstance(error, otpy.NoProcess)
        assert linker.alive

    async def test_uncaught_noproc_crashes_the_caller(self, nursery: trio.Nursery) -> None:
        """Uncaught, the error crashes the caller with NoProcess as its reason."""
        dead = await Recorder.start_link(nursery=nursery)
        await otpy.stop(dead)
        linker = await Linker.start(False, nursery=nursery)
        with structlog.testing.capture_logs(), pytest.raises(otpy.ServerExited) as info:
            await otpy.call(linker, ("link", dead, False))
        assert isinstance(info.value.reason, otpy.NoProcess)

    async def test_trapping_caller_gets_an_exit_message(self, nursery: trio.Nursery) -> None:
        """A caller that traps exits gets ExitSignal(pid, "noproc") as a message."""
        dead = await Recorder.start_link(nursery=nursery)
        await otpy.stop(dead)
        linker = await Linker.start_link(True, nursery=nursery)
        assert await otpy.call(linker, ("link", dead, False)) == "linked"
        assert await otpy.call(linker, "infos") == [otpy.ExitSignal(dead, "noproc")]


# --- issue 8: the caller in From, crashes that surface in trio --------------------------------


class TestCallerAndCrashes:
    async def test_from_knows_the_calling_process(self, nursery: trio.Nursery) -> None:
        """from_.caller is the calling process, or None for plain trio code."""

        class WhoCalls(otpy.GenServer):
            async def handle_call(self, request: Any, from_: otpy.From) -> Any:
                if request == "relay":
                    return await otpy.call(self.target, "who")
                return from_.caller

            async def handle_cast(self, request: Any) -> None:
                self.target = request

        a = await WhoCalls.start_link(nursery=nursery)
        b = await WhoCalls.start_link(nursery=nursery)
        otpy.cast(a, b)
        assert await otpy.call(a, "who") is None
        assert await otpy.call(a, "relay") is a

    async def test_crash_of_a_server_started_by_trio_code_surfaces(self) -> None:
        """A server that plain trio code start_link'ed crashes: the nursery raises ProcessCrashed."""

        class Fragile(otpy.GenServer):
            async def handle_cast(self, request: Any) -> None:
                raise KeyError(request)

        with structlog.testing.capture_logs(), pytest.RaisesGroup(otpy.ProcessCrashed) as info:
            async with trio.open_nursery() as nursery:
                pid = await Fragile.start_link(nursery=nursery)
                otpy.cast(pid, "boom")
                await trio.sleep_forever()
        error = info.value.exceptions[0]
        assert error.pid is pid
        assert isinstance(error.__cause__, KeyError)

    async def test_requested_exits_do_not_surface(self) -> None:
        """stop() with any reason, a kill, and an unlinked crash raise nothing into the nursery."""

        class Fragile(otpy.GenServer):
            async def handle_cast(self, request: Any) -> None:
                raise KeyError(request)

        with structlog.testing.capture_logs():
            async with trio.open_nursery() as nursery:
                a = await Fragile.start_link(nursery=nursery)
                await otpy.stop(a, "custom")
                b = await Fragile.start_link(nursery=nursery)
                otpy.exit(b, "kill")
                c = await Fragile.start(nursery=nursery)
                otpy.cast(c, "boom")
                await c.wait_exited()
                await b.wait_exited()


# --- 2. a supervisor whose tree is torn down restarts nothing -------------------------------


class Teardown(BaseException):
    """Stands for SystemExit or KeyboardInterrupt escaping a child's callback."""


class Member(otpy.GenServer):
    trap_exit = True

    async def init(self, tag: str, log: list[str]) -> None:
        self.tag, self.log = tag, log
        log.append(f"init {tag}")

    async def handle_cast(self, request: Any) -> None:
        raise Teardown

    async def terminate(self, reason: object) -> None:
        self.log.append(f"terminate {self.tag}")


class TestTeardown:
    @pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
    async def test_no_restart_and_reverse_order(self, strategy: str) -> None:
        """A BaseException in child b: nothing restarts, c and a stop in reverse order, once each."""
        log: list[str] = []
        with structlog.testing.capture_logs(), pytest.RaisesGroup(Teardown, flatten_subgroups=True):
            async with trio.open_nursery() as nursery:
                children = [Member.child_spec(tag, log, id=tag, name=tag) for tag in "abc"]
                await otpy.Supervisor.start_link(children, strategy=strategy, nursery=nursery)  # type: ignore[arg-type]
                otpy.cast("b", "die")
                await trio.sleep_forever()
        assert log == ["init a", "init b", "init c", "terminate b", "terminate c", "terminate a"]

    async def test_nested_supervisors(self) -> None:
        """The same under a nested supervisor: the inner tree stops in order, then the outer one."""
        log: list[str] = []
        inner = otpy.Supervisor.child_spec([Member.child_spec(t, log, id=t, name=t) for t in "xy"], id="inner")
        with structlog.testing.capture_logs(), pytest.RaisesGroup(Teardown, flatten_subgroups=True):
            async with trio.open_nursery() as nursery:
                children = [Member.child_spec("a", log, id="a", name="a"), inner, Member.child_spec("c", log, id="c")]
                await otpy.Supervisor.start_link(children, nursery=nursery)
                otpy.cast("x", "die")
                await trio.sleep_forever()
        assert log == [
            "init a",
            "init x",
            "init y",
            "init c",
            "terminate x",
            "terminate y",
            "terminate c",
            "terminate a",
        ]

    async def test_dynamic_supervisor(self) -> None:
        """A DynamicSupervisor restarts nothing either and stops its other children."""
        log: list[str] = []
        with structlog.testing.capture_logs(), pytest.RaisesGroup(Teardown, flatten_subgroups=True):
            async with trio.open_nursery() as nursery:
                sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
                for tag in "ab":
                    await otpy.DynamicSupervisor.start_child(sup, Member.child_spec(tag, log, name=tag))
                otpy.cast("a", "die")
                await trio.sleep_forever()
        assert log == ["init a", "init b", "terminate a", "terminate b"]


# --- 7. slow callbacks are reported ---------------------------------------------------------


class TestSlowCallbacks:
    async def test_a_blocking_handle_call_is_reported(self, nursery: trio.Nursery) -> None:
        """A handle_call that holds the run longer than the threshold is logged with process and callback."""

        class Blocking(otpy.GenServer):
            async def handle_call(self, request: Any, from_: otpy.From) -> Any:
                time.sleep(0.05)  # noqa: ASYNC251 (the point of the test)
                await trio.lowlevel.checkpoint()
                return "done"

        instrument = otpy.SlowCallbacks(threshold=0.02)
        pid = await Blocking.start_link(name="blocking", nursery=nursery)
        trio.lowlevel.add_instrument(instrument)
        try:
            with structlog.testing.capture_logs() as logs:
                assert await otpy.call(pid, "work") == "done"
        finally:
            trio.lowlevel.remove_instrument(instrument)
        [event] = [e for e in logs if e["event"] == "slow_callback"]
        assert event["log_level"] == "warning"
        assert event["process"] is pid
        assert event["callback"].endswith("Blocking.handle_call")
        assert event["seconds"] >= 0.05

    async def test_a_finished_blocking_cast_is_still_named(self, nursery: trio.Nursery) -> None:
        """A callback that blocked and returned is named from the message the loop handled."""

        class Blocking(otpy.GenServer):
            async def handle_cast(self, request: Any) -> None:
                time.sleep(0.05)  # noqa: ASYNC251

        instrument = otpy.SlowCallbacks(threshold=0.02)
        pid = await Blocking.start_link(nursery=nursery)
        trio.lowlevel.add_instrument(instrument)
        try:
            with structlog.testing.capture_logs() as logs:
                otpy.cast(pid, ("job", 1))
                await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(instrument)
        [event] = [e for e in logs if e["event"] == "slow_callback"]
        assert event["callback"] == "handle_cast"
        assert event["message_type"] == "tuple"

    async def test_quick_steps_are_not_reported(self, nursery: trio.Nursery) -> None:
        """Ordinary calls under a generous threshold log nothing."""
        instrument = otpy.SlowCallbacks(threshold=5.0)
        pid = await Recorder.start_link(nursery=nursery)
        trio.lowlevel.add_instrument(instrument)
        try:
            with structlog.testing.capture_logs() as logs:
                for _ in range(100):
                    await otpy.call(pid, "x")
        finally:
            trio.lowlevel.remove_instrument(instrument)
        assert [e for e in logs if e["event"] == "slow_callback"] == []

    def test_threshold_is_checked(self) -> None:
        with pytest.raises(ValueError, match="threshold"):
            otpy.SlowCallbacks(threshold=-1)


class TestUnhandled:
    class Strict(otpy.GenServer):
        async def handle_call(self, request: Any, from_: otpy.From) -> Any:
            match request:
                case "ping":
                    return "pong"
                case _:
                    otpy.unhandled(request)

    async def test_an_unmatched_call_crashes_the_server(self, nursery: trio.Nursery) -> None:
        """otpy.unhandled crashes the server; the caller sees ServerExited caused by UnhandledMessage."""
        pid = await self.Strict.start(nursery=nursery)
        assert await otpy.call(pid, "ping") == "pong"
        with structlog.testing.capture_logs(), pytest.raises(otpy.ServerExited) as info:
            await otpy.call(pid, {"secret": "hunter2"})
        assert isinstance(info.value.reason, otpy.UnhandledMessage)
        assert info.value.__cause__ is info.value.reason
        assert "hunter2" not in str(info.value.reason)  # only the type is shown
        assert "dict" in str(info.value.reason)

    async def test_unexpected_info_is_logged_as_an_error(self, nursery: trio.Nursery) -> None:
        """The default handle_info logs at error level, as Elixir's does, and the server lives on."""
        pid = await self.Strict.start_link(nursery=nursery)
        with structlog.testing.capture_logs() as logs:
            otpy.send(pid, ("stray", 1))
            assert await otpy.call(pid, "ping") == "pong"
        [event] = [e for e in logs if e["event"] == "unexpected_message"]
        assert event["log_level"] == "error"
        assert event["message_type"] == "tuple"


async def test_the_deadline_task_holds_no_queue_while_asleep(nursery: trio.Nursery) -> None:
    """A queue that add() replaced (compacted) is not kept alive by the sleeping deadline task."""
    pid = await Recorder.start_link(nursery=nursery)
    for _ in range(3000):  # past the FIFO's limit: it gets compacted and replaced
        await otpy.call(pid, None, timeout=5)
    await trio.testing.wait_all_tasks_blocked()
    root = trio.lowlevel.current_root_task()
    [task] = [t for n in root.child_nurseries for t in n.child_tasks if t.name == "otpy call deadlines"]
    frame = task.coro.cr_frame
    assert frame is not None
    assert {"fifo", "heap"} & frame.f_locals.keys() == set()
