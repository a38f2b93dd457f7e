"""GenServer: calls, casts, messages, replies, timeouts, stops, names, exit signals, monitors."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
import structlog
import structlog.testing
import trio
import trio.lowlevel
import trio.testing

import otpy


async def exited(pid: otpy.Pid) -> object:
    """Wait for ``pid`` to exit (failing instead of hanging) and return its exit reason."""
    with trio.fail_after(30):
        return await pid.wait_exited()


# --- servers used by the tests ---------------------------------------------------------


class Echo(otpy.GenServer):
    """Records everything it handles; answers calls by a small command language."""

    async def init(self, events: list[Any] | None = None, *, tag: str = "echo") -> None:
        self.events = events if events is not None else []
        self.tag = tag
        self.count = 0
        self.waiting: list[otpy.From] = []

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        self.events.append(("call", request))
        match request:
            case "get":
                return self.count
            case "tag":
                return self.tag
            case ("sleep", seconds):
                await trio.sleep(seconds)
                return "slept"
            case "defer":
                self.waiting.append(from_)
                return otpy.NoReply()
            case "raise":
                raise KeyError("boom")
            case "call_self":
                try:
                    await otpy.call(otpy.self(), "get")
                except otpy.CallingSelf as exc:
                    return exc
            case ("stop", reason):
                return otpy.Stop(reason)
            case ("stop_reply", reason, value):
                return otpy.Stop(reason, reply=value)
            case ("reply", value):
                return otpy.Reply(value)
            case "none":
                return None
        return ("echo", request)

    async def handle_cast(self, request: Any) -> Any:
        self.events.append(("cast", request))
        match request:
            case "inc":
                self.count += 1
            case ("answer", value):
                otpy.reply(self.waiting.pop(0), value)
            case ("stop", reason):
                return otpy.Stop(reason)
            case ("exit", reason):
                raise otpy.ProcessExit(reason)
            case "raise":
                raise ValueError("cast crash")
            case ("sleep", seconds):
                await trio.sleep(seconds)
            case "bad_return":
                return 42
        return None

    async def handle_info(self, message: Any) -> Any:
        self.events.append(("info", message))
        if message == "stop":
            return otpy.Stop("normal")
        return None

    async def terminate(self, reason: object) -> None:
        self.events.append(("terminate", reason))


class Trapper(Echo):
    """An Echo that traps exits."""

    trap_exit = True


@attrs.frozen
class GetCount(otpy.Call[int]):
    pass


class Typed(otpy.GenServer):
    """Answers a typed request."""

    async def init(self) -> None:
        self.count = 7

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        if isinstance(request, GetCount):
            return self.count
        return None


# --- calls, casts and messages ----------------------------------------------------------


class TestCallCastInfo:
    async def test_call_returns_the_handle_call_value(self, nursery: trio.Nursery) -> None:
        """A call returns what handle_call returns."""
        pid = await Echo.start_link(nursery=nursery)
        assert await otpy.call(pid, "hello") == ("echo", "hello")

    async def test_none_is_a_reply(self, nursery: trio.Nursery) -> None:
        """A handle_call that returns None replies None."""
        pid = await Echo.start_link(nursery=nursery)
        assert await otpy.call(pid, "none") is None

    async def test_reply_wraps_a_control_value(self, nursery: trio.Nursery) -> None:
        """Reply(value) sends value even when value is itself a control object."""
        pid = await Echo.start_link(nursery=nursery)
        assert await otpy.call(pid, ("reply", otpy.NoReply())) == otpy.NoReply()
        assert await otpy.call(pid, ("reply", otpy.Stop("x"))) == otpy.Stop("x")
        assert pid.alive

    async def test_typed_call_request(self, nursery: trio.Nursery) -> None:
        """A Call[R] request reaches handle_call and its reply comes back."""
        pid = await Typed.start_link(nursery=nursery)
        value: int = await otpy.call(pid, GetCount())
        assert value == 7

    async def test_casts_and_calls_are_handled_in_order(self, nursery: trio.Nursery) -> None:
        """Casts sent before a call are handled before it."""
        events: list[Any] = []
        pid = await Echo.start_link(events, nursery=nursery)
        for _ in range(3):
            otpy.cast(pid, "inc")
        assert await otpy.call(pid, "get") == 3
        assert events == [("cast", "inc")] * 3 + [("call", "get")]

    async def test_send_reaches_handle_info(self, nursery: trio.Nursery) -> None:
        """A message sent with otpy.send arrives in handle_info."""
        events: list[Any] = []
        pid = await Echo.start_link(events, nursery=nursery)
        otpy.send(pid, ("tick", 1))
        await otpy.call(pid, "get")
        assert events[0] == ("info", ("tick", 1))

    async def test_call_and_cast_by_name(self, nursery: trio.Nursery) -> None:
        """A registered name works for call, cast and send."""
        events: list[Any] = []
        await Echo.start_link(events, name="echo", nursery=nursery)
        otpy.cast("echo", "inc")
        otpy.send("echo", "hi")
        assert await otpy.call("echo", "get") == 1
        assert events == [("cast", "inc"), ("info", "hi"), ("call", "get")]

    async def test_default_handle_call_crashes(self, nursery: trio.Nursery) -> None:
        """A server without handle_call crashes on a call, and the caller sees ServerExited."""

        class Bare(otpy.GenServer):
            pass

        pid = await Bare.start(nursery=nursery)
        with pytest.raises(otpy.ServerExited) as info:
            await otpy.call(pid, "x")
        assert isinstance(info.value.reason, NotImplementedError)
        assert not pid.alive

    async def test_default_handle_info_ignores_messages(self, nursery: trio.Nursery) -> None:
        """The default handle_info ignores a message and the server goes on."""

        class Plain(otpy.GenServer):
            async def handle_call(self, request: Any, from_: otpy.From) -> Any:
                return "ok"

        pid = await Plain.start_link(nursery=nursery)
        otpy.send(pid, "stray")
        assert await otpy.call(pid, "x") == "ok"

    async def test_bad_callback_return_crashes_the_server(self, nursery: trio.Nursery) -> None:
        """A handle_cast that returns something other than None/NoReply/Stop crashes with TypeError."""
        pid = await Echo.start(nursery=nursery)
        otpy.cast(pid, "bad_return")
        reason = await exited(pid)
        assert isinstance(reason, TypeError)


# --- deferred replies -------------------------------------------------------------------


class TestDeferredReply:
    async def test_noreply_then_reply(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """A call deferred with NoReply is answered later by otpy.reply, and the server goes on meanwhile."""
        pid = await Echo.start_link(nursery=nursery)
        result: list[Any] = []

        async def caller() -> None:
            result.append(await otpy.call(pid, "defer"))

        nursery.start_soon(caller)
        await trio.sleep(1)
        assert result == []
        assert await otpy.call(pid, "get") == 0  # the server is not blocked
        otpy.cast(pid, ("answer", "later"))
        await trio.testing.wait_all_tasks_blocked()
        assert result == ["later"]

    async def test_from_waiting_and_double_reply(self, nursery: trio.Nursery) -> None:
        """From.waiting turns false after the reply, and a second reply is dropped."""
        pid = await Echo.start_link(nursery=nursery)
        result: list[Any] = []

        async def caller() -> None:
            result.append(await otpy.call(pid, "defer"))

        nursery.start_soon(caller)
        await trio.testing.wait_all_tasks_blocked()
        server = await otpy.get_state(pid)
        from_ = server.waiting[0]
        assert from_.waiting
        otpy.reply(from_, 1)
        otpy.reply(from_, 2)
        assert not from_.waiting
        await trio.testing.wait_all_tasks_blocked()
        assert result == [1]

    async def test_reply_from_a_helper_task(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A helper task answers a deferred call after a delay."""

        class Slow(otpy.GenServer):
            async def init(self, helpers: trio.Nursery) -> None:
                self.nursery = helpers

            async def handle_call(self, request: Any, from_: otpy.From) -> Any:
                self.nursery.start_soon(self.answer, from_)
                return otpy.NoReply()

            async def answer(self, from_: otpy.From) -> None:
                await trio.sleep(2)
                otpy.reply(from_, "done")

        pid = await Slow.start_link(nursery, nursery=nursery)
        assert await otpy.call(pid, "x") == "done"
        assert trio.current_time() == 2.0


# --- continue -----------------------------------------------------------------------------


class Continuer(otpy.GenServer):
    """Uses handle_continue from init, calls and casts."""

    async def init(self, events: list[Any], first: object = None) -> otpy.NoReply | None:
        self.events = events
        self.loaded = False
        if first is not None:
            return otpy.NoReply(continue_=first)
        return None

    async def handle_continue(self, arg: Any) -> Any:
        self.events.append(("continue", arg, trio.current_time()))
        match arg:
            case "load":
                await trio.sleep(1)
                self.loaded = True
            case ("chain", n) if n > 0:
                return otpy.NoReply(continue_=("chain", n - 1))
            case "stop":
                return otpy.Stop(("shutdown", "from continue"))
        return None

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        self.events.append(("call", request, trio.current_time()))
        if request == "reply_then_load":
            return otpy.Reply("replied", continue_="load")
        if request == "defer_then_continue":
            return otpy.NoReply(continue_=("answer", from_))
        return self.loaded

    async def handle_cast(self, request: Any) -> Any:
        self.events.append(("cast", request, trio.current_time()))
        return otpy.NoReply(continue_="load")


class TestContinue:
    async def test_init_continue_runs_before_the_first_message(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """NoReply(continue_=...) from init runs handle_continue before any message."""
        events: list[Any] = []
        pid = await Continuer.start_link(events, "load", nursery=nursery)
        assert trio.current_time() == 0.0  # start_link does not wait for the continuation
        assert await otpy.call(pid, "loaded?") is True
        assert events == [("continue", "load", 0.0), ("call", "loaded?", 1.0)]

    async def test_reply_continue_replies_first(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Reply(value, continue_=...) answers at once, then continues before the next message."""
        events: list[Any] = []
        pid = await Continuer.start_link(events, nursery=nursery)
        assert await otpy.call(pid, "reply_then_load") == "replied"
        assert trio.current_time() == 0.0
        assert await otpy.call(pid, "loaded?") is True
        assert trio.current_time() == 1.0
        assert [e[0] for e in events] == ["call", "continue", "call"]

    async def test_cast_continue_runs_before_the_next_message(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """NoReply(continue_=...) from handle_cast runs handle_continue before the next message."""
        events: list[Any] = []
        pid = await Continuer.start_link(events, nursery=nursery)
        otpy.cast(pid, "go")
        assert await otpy.call(pid, "loaded?") is True
        assert events == [("cast", "go", 0.0), ("continue", "load", 0.0), ("call", "loaded?", 1.0)]

    async def test_continue_chains(self, nursery: trio.Nursery) -> None:
        """A handle_continue that returns NoReply(continue_=...) continues again."""
        events: list[Any] = []
        pid = await Continuer.start_link(events, ("chain", 2), nursery=nursery)
        await otpy.call(pid, "x")
        assert [e[1] for e in events] == [("chain", 2), ("chain", 1), ("chain", 0), "x"]

    async def test_continue_can_stop(self, nursery: trio.Nursery) -> None:
        """A handle_continue that returns Stop stops the server with that reason."""
        pid = await Continuer.start(nursery=nursery, events=[], first="stop")
        assert await exited(pid) == ("shutdown", "from continue")

    async def test_default_handle_continue_crashes(self, nursery: trio.Nursery) -> None:
        """A continuation without handle_continue crashes the server with NotImplementedError."""

        class NoContinue(otpy.GenServer):
            async def init(self) -> otpy.NoReply:
                return otpy.NoReply(continue_="x")

        pid = await NoContinue.start(nursery=nursery)
        assert isinstance(await exited(pid), NotImplementedError)


# --- inactivity timeouts ------------------------------------------------------------------


class Idle(otpy.GenServer):
    """Asks for inactivity timeouts and records when TIMEOUT arrives."""

    async def init(self, idle: float | None = None) -> otpy.NoReply | None:
        self.timeouts: list[float] = []
        self.seen: list[Any] = []
        return otpy.NoReply(timeout=idle) if idle is not None else None

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        if request == "timeouts":
            return self.timeouts
        return otpy.Reply("ok", timeout=request)

    async def handle_cast(self, request: Any) -> Any:
        self.seen.append(request)
        return otpy.NoReply(timeout=request) if request is not None else None

    async def handle_info(self, message: Any) -> Any:
        if message is otpy.TIMEOUT:
            self.timeouts.append(trio.current_time())
            return otpy.NoReply(timeout=5) if len(self.timeouts) < 2 else None
        return None


class TestInactivityTimeout:
    async def test_timeout_from_init(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """NoReply(timeout=2) from init delivers TIMEOUT to handle_info after 2 idle seconds."""
        pid = await Idle.start_link(2, nursery=nursery)
        await trio.sleep(100)
        server = await otpy.get_state(pid)
        assert server.timeouts == [2.0, 7.0]  # the first timeout asks for another, the second does not

    async def test_a_message_cancels_the_timeout(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A message that arrives before the timeout cancels it."""
        pid = await Idle.start_link(2, nursery=nursery)
        await trio.sleep(1)
        otpy.cast(pid, None)
        await trio.sleep(100)
        assert await otpy.call(pid, "timeouts") == []

    async def test_timeout_from_a_call_reply(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Reply(value, timeout=3) starts the inactivity timer after the reply."""
        pid = await Idle.start_link(nursery=nursery)
        await trio.sleep(1)
        assert await otpy.call(pid, 3) == "ok"
        await trio.sleep(100)
        assert (await otpy.get_state(pid)).timeouts == [4.0, 9.0]

    async def test_timeout_from_a_cast(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """NoReply(timeout=0.5) from handle_cast delivers TIMEOUT half a second later."""
        pid = await Idle.start_link(nursery=nursery)
        otpy.cast(pid, 0.5)
        await trio.sleep(100)
        assert (await otpy.get_state(pid)).timeouts == [0.5, 5.5]

    async def test_zero_timeout_loses_to_a_queued_message(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A zero timeout does not fire when a message is already waiting."""
        pid = await Idle.start_link(nursery=nursery)
        otpy.cast(pid, 0)  # handled first: asks for a zero timeout, but a message already waits
        otpy.cast(pid, None)
        await trio.testing.wait_all_tasks_blocked()
        assert (await otpy.get_state(pid)).timeouts == []

    async def test_get_state_keeps_the_timeout(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A get_state does not cancel a pending inactivity timeout; the timer starts again after it."""
        pid = await Idle.start_link(5, nursery=nursery)
        await trio.sleep(1)
        await otpy.get_state(pid)
        await trio.sleep(100)
        assert (await otpy.get_state(pid)).timeouts[:1] == [6.0]

    def test_timeout_is_an_inactivity_timeout(self) -> None:
        """TIMEOUT is the InactivityTimeout value, equal to any other instance."""
        assert isinstance(otpy.TIMEOUT, otpy.InactivityTimeout)
        assert otpy.InactivityTimeout() == otpy.TIMEOUT


# --- stopping -----------------------------------------------------------------------------


class TestStop:
    async def test_stop_from_cast_runs_terminate(self, nursery: trio.Nursery) -> None:
        """Stop(reason) from handle_cast runs terminate(reason) and exits with reason."""
        events: list[Any] = []
        pid = await Echo.start_link(events, nursery=nursery)
        otpy.cast(pid, ("stop", ("shutdown", "bye")))
        assert await exited(pid) == ("shutdown", "bye")
        assert events[-1] == ("terminate", ("shutdown", "bye"))
        assert pid.exit_reason == ("shutdown", "bye")

    async def test_stop_with_reply_runs_terminate_first(self, nursery: trio.Nursery) -> None:
        """Stop(reason, reply=value) answers the caller after terminate has run."""
        events: list[Any] = []
        pid = await Echo.start_link(events, nursery=nursery)
        assert await otpy.call(pid, ("stop_reply", "normal", "bye")) == "bye"
        assert events[-1] == ("terminate", "normal")
        assert not pid.alive
        assert pid.exit_reason == "normal"

    async def test_stop_without_reply_fails_the_caller(self, nursery: trio.Nursery) -> None:
        """Stop(reason) from handle_call fails the caller with ServerExited carrying reason."""
        events: list[Any] = []
        pid = await Echo.start_link(events, nursery=nursery)
        with pytest.raises(otpy.ServerExited) as info:
            await otpy.call(pid, ("stop", "shutdown"))
        assert info.value.reason == "shutdown"
        assert info.value.server is pid
        assert events[-1] == ("terminate", "shutdown")

    async def test_stop_from_info(self, nursery: trio.Nursery) -> None:
        """Stop from handle_info stops the server."""
        pid = await Echo.start_link(nursery=nursery)
        otpy.send(pid, "stop")
        assert await exited(pid) == "normal"

    async def test_process_exit_sets_the_reason(self, nursery: trio.Nursery) -> None:
        """Raising ProcessExit(reason) in a callback exits with reason after terminate."""
        events: list[Any] = []
        pid = await Echo.start(events, nursery=nursery)  # unlinked: a crash would fail the test's nursery
        otpy.cast(pid, ("exit", {"why": "done"}))
        assert await exited(pid) == {"why": "done"}
        assert events[-1] == ("terminate", {"why": "done"})

    async def test_crash_runs_terminate_with_the_exception(self, nursery: trio.Nursery) -> None:
        """A callback that raises runs terminate with the exception, which becomes the exit reason."""
        events: list[Any] = []
        pid = await Echo.start(events, nursery=nursery)
        with structlog.testing.capture_logs() as logs:
            otpy.cast(pid, "raise")
            reason = await exited(pid)
        assert isinstance(reason, ValueError)
        assert events[-1] == ("terminate", reason)
        crashes = [e for e in logs if e["event"] == "server_crashed"]
        assert len(crashes) == 1
        assert crashes[0]["log_level"] == "error"
        assert crashes[0]["reason"] is reason
        assert crashes[0]["server"] is pid
        assert crashes[0]["exc_info"] is reason

    @pytest.mark.parametrize(
        "reason",
        [
            pytest.param("normal", id="normal"),
            pytest.param("shutdown", id="shutdown"),
            pytest.param(("shutdown", 1), id="shutdown-tuple"),
        ],
    )
    async def test_normal_stops_are_not_reported(self, nursery: trio.Nursery, reason: object) -> None:
        """A stop with a normal reason logs no crash report."""
        pid = await Echo.start_link(nursery=nursery)
        with structlog.testing.capture_logs() as logs:
            otpy.cast(pid, ("stop", reason))
            await exited(pid)
        assert [e for e in logs if e["event"] == "server_crashed"] == []

    async def test_terminate_crash_replaces_the_reason(self, nursery: trio.Nursery) -> None:
        """A terminate that raises replaces the exit reason with its exception."""

        class BadTerminate(Echo):
            async def terminate(self, reason: object) -> None:
                raise RuntimeError("cleanup failed")

        pid = await BadTerminate.start(nursery=nursery)
        otpy.cast(pid, ("stop", "normal"))
        reason = await exited(pid)
        assert isinstance(reason, RuntimeError)
        assert str(reason) == "cleanup failed"


class TestOtpStop:
    async def test_stop_runs_terminate_and_waits(self, nursery: trio.Nursery) -> None:
        """otpy.stop runs terminate("normal") and returns once the process has exited."""
        events: list[Any] = []
        pid = await Echo.start_link(events, nursery=nursery)
        await otpy.stop(pid)
        assert not pid.alive
        assert pid.exit_reason == "normal"
        assert events == [("terminate", "normal")]

    async def test_stop_with_a_reason(self, nursery: trio.Nursery) -> None:
        """otpy.stop passes its reason to terminate and the process exits with it."""
        events: list[Any] = []
        await Echo.start_link(events, name="s", nursery=nursery)
        await otpy.stop("s", ("shutdown", "maintenance"))
        assert events == [("terminate", ("shutdown", "maintenance"))]
        assert otpy.whereis("s") is None

    async def test_stop_waits_behind_queued_messages(self, nursery: trio.Nursery) -> None:
        """A stop request is handled after the messages already queued."""
        events: list[Any] = []
        pid = await Echo.start_link(events, nursery=nursery)
        otpy.cast(pid, "inc")
        otpy.cast(pid, "inc")
        await otpy.stop(pid)
        assert events == [("cast", "inc"), ("cast", "inc"), ("terminate", "normal")]

    async def test_stop_timeout(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """otpy.stop raises CallTimeout when the process has not exited within timeout."""
        pid = await Echo.start_link(nursery=nursery)
        otpy.cast(pid, ("sleep", 60))
        with pytest.raises(otpy.CallTimeout) as info:
            await otpy.stop(pid, timeout=2)
        assert trio.current_time() == 2.0
        assert info.value.timeout == 2
        assert pid.alive
        otpy.exit(pid, "kill")
        assert await exited(pid) == "killed"

    async def test_stop_self(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """A process that stops itself with otpy.stop gets CallingSelf at once, as OTP's calling_self."""
        pid = await SelfStopper.start_link(nursery=nursery)
        assert await otpy.call(pid, "stop") == (otpy.CallingSelf, 0.0)

    async def test_stop_unknown_raises_no_process(self) -> None:
        """otpy.stop of a name nobody holds raises NoProcess."""
        with pytest.raises(otpy.NoProcess) as info:
            await otpy.stop("nobody")
        assert info.value.server == "nobody"

    async def test_stop_reports_another_exit_reason(self, nursery: trio.Nursery) -> None:
        """otpy.stop raises ServerExited when terminate crashes and changes the reason."""

        class BadTerminate(Echo):
            async def terminate(self, reason: object) -> None:
                raise RuntimeError("cleanup failed")

        pid = await BadTerminate.start(nursery=nursery)
        with pytest.raises(otpy.ServerExited) as info:
            await otpy.stop(pid)
        assert isinstance(info.value.reason, RuntimeError)


class SelfStopper(otpy.GenServer):
    """Calls stop or get_state on itself."""

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        try:
            if request == "stop":
                await otpy.stop(otpy.self(), timeout=3)
            else:
                await otpy.get_state(otpy.self(), timeout=3)
        except otpy.OtpError as exc:
            return type(exc), trio.current_time()
        return None


class TestOutsideCancellation:
    async def test_trapping_server_runs_terminate(self) -> None:
        """Cancelling the nursery of a trapping server runs terminate("shutdown") and exits with "shutdown"."""
        events: list[Any] = []
        async with trio.open_nursery() as nursery:
            pid = await Trapper.start_link(events, nursery=nursery)
            nursery.cancel_scope.cancel()
        assert events == [("terminate", "shutdown")]
        assert pid.exit_reason == "shutdown"

    async def test_non_trapping_server_skips_terminate(self) -> None:
        """Cancelling the nursery of a non-trapping server exits it with "shutdown" without terminate."""
        events: list[Any] = []
        async with trio.open_nursery() as nursery:
            pid = await Echo.start_link(events, name="gone", nursery=nursery)
            nursery.cancel_scope.cancel()
        assert events == []
        assert pid.exit_reason == "shutdown"
        assert otpy.whereis("gone") is None

    async def test_pending_caller_fails(self, autojump_clock: trio.testing.MockClock) -> None:
        """A caller waiting on a server whose nursery is cancelled fails with ServerExited("shutdown")."""

        async def host(*, task_status: trio.TaskStatus[tuple[trio.Nursery, otpy.Pid]]) -> None:
            async with trio.open_nursery() as servers:
                task_status.started((servers, await Echo.start_link(nursery=servers)))

        async with trio.open_nursery() as outer:
            servers, pid = await outer.start(host)

            async def cancel_soon() -> None:
                await trio.sleep(1)
                servers.cancel_scope.cancel()

            outer.start_soon(cancel_soon)
            with pytest.raises(otpy.ServerExited) as info:
                await otpy.call(pid, "defer", timeout=math.inf)
        assert info.value.reason == "shutdown"
        assert trio.current_time() == 1.0


class TestGetState:
    async def test_get_state_returns_the_server(self, nursery: trio.Nursery) -> None:
        """get_state returns the server object after the queued messages are handled."""
        pid = await Echo.start_link(nursery=nursery)
        for _ in range(5):
            otpy.cast(pid, "inc")
        server = await otpy.get_state(pid)
        assert isinstance(server, Echo)
        assert server.count == 5
        assert server.pid is pid

    async def test_get_state_self(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """A process that asks its own state gets CallingSelf at once instead of a deadlock."""
        pid = await SelfStopper.start_link(nursery=nursery)
        assert await otpy.call(pid, "get_state") == (otpy.CallingSelf, 0.0)

    async def test_get_state_unknown(self) -> None:
        """get_state of a name nobody holds raises NoProcess."""
        with pytest.raises(otpy.NoProcess):
            await otpy.get_state("nobody")

    async def test_get_state_timeout(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """get_state raises CallTimeout when the server is busy for longer than timeout."""
        pid = await Echo.start_link(nursery=nursery)
        otpy.cast(pid, ("sleep", 60))
        with pytest.raises(otpy.CallTimeout):
            await otpy.get_state(pid, timeout=1)
        assert trio.current_time() == 1.0


# --- init and the start handshake -------------------------------------------------------


class Starter(otpy.GenServer):
    """An init driven by its argument."""

    async def init(self, how: str, *args: Any) -> Any:
        match how:
            case "sleep":
                await trio.sleep(args[0])
                self.ready = True
            case "stop":
                return otpy.Stop(args[0])
            case "raise":
                raise ValueError("bad config")
            case "exit":
                raise otpy.ProcessExit(args[0])
            case "ignore":
                return otpy.Ignore()
            case "bad_return":
                return 42
        self.ready = True
        return None

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return self.ready


class TestInit:
    async def test_start_link_returns_after_init(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """start_link returns once init has run, even when init takes time."""
        pid = await Starter.start_link("sleep", 3, nursery=nursery)
        assert trio.current_time() == 3.0
        assert pid.alive
        assert (await otpy.get_state(pid)).ready is True

    async def test_init_receives_args_and_kwargs(self, nursery: trio.Nursery) -> None:
        """start_link passes positional and keyword arguments to init."""
        pid = await Echo.start_link(None, tag="custom", nursery=nursery)
        assert await otpy.call(pid, "tag") == "custom"

    async def test_init_stop_fails_the_start(self, nursery: trio.Nursery) -> None:
        """init returning Stop(reason) makes start_link raise StartError with reason."""
        with pytest.raises(otpy.StartError) as info:
            await Starter.start_link("stop", ("shutdown", "no db"), nursery=nursery)
        assert info.value.reason == ("shutdown", "no db")
        assert info.value.child_id is None
        assert not isinstance(info.value, otpy.StartIgnored)

    async def test_init_raise_fails_the_start_with_cause(self, nursery: trio.Nursery) -> None:
        """init raising makes start_link raise StartError whose reason and __cause__ are the exception."""
        with pytest.raises(otpy.StartError) as info:
            await Starter.start_link("raise", nursery=nursery)
        assert isinstance(info.value.reason, ValueError)
        assert info.value.__cause__ is info.value.reason
        assert "bad config" in str(info.value)

    async def test_init_process_exit_fails_the_start(self, nursery: trio.Nursery) -> None:
        """init raising ProcessExit(reason) fails the start with that reason."""
        with pytest.raises(otpy.StartError) as info:
            await Starter.start_link("exit", "nope", nursery=nursery)
        assert info.value.reason == "nope"

    async def test_init_ignore(self, nursery: trio.Nursery) -> None:
        """init returning Ignore makes start_link raise StartIgnored, a StartError."""
        with pytest.raises(otpy.StartIgnored) as info:
            await Starter.start_link("ignore", nursery=nursery)
        assert isinstance(info.value, otpy.StartError)
        assert info.value.reason == "ignore"

    async def test_init_bad_return_fails_the_start(self, nursery: trio.Nursery) -> None:
        """init returning an unexpected value makes start_link raise StartError with a TypeError reason."""
        with pytest.raises(otpy.StartError) as info:
            await Starter.start_link("bad_return", nursery=nursery)
        assert isinstance(info.value.reason, TypeError)

    async def test_failed_start_frees_the_name(self, nursery: trio.Nursery) -> None:
        """A server whose init fails does not keep its name."""
        with pytest.raises(otpy.StartError):
            await Starter.start_link("raise", name="broken", nursery=nursery)
        assert otpy.whereis("broken") is None
        await Starter.start_link("ok", name="broken", nursery=nursery)
        assert otpy.whereis("broken") is not None

    async def test_start_link_outside_a_process_needs_a_nursery(self) -> None:
        """start_link outside any process without nursery= raises RuntimeError."""
        with pytest.raises(RuntimeError, match="nursery"):
            await Echo.start_link()

    async def test_start_link_links_to_the_calling_process(self, nursery: trio.Nursery) -> None:
        """A server started with start_link inside a process dies with its crashing parent."""

        class Parent(otpy.GenServer):
            async def init(self, linked: bool) -> None:
                starter = Echo.start_link if linked else Echo.start
                self.child = await starter()

            async def handle_call(self, request: Any, from_: otpy.From) -> Any:
                if request == "crash":
                    raise RuntimeError("parent crash")
                return self.child

        linked_parent = await Parent.start(True, nursery=nursery)
        unlinked_parent = await Parent.start(False, nursery=nursery)
        linked_child = await otpy.call(linked_parent, "child")
        unlinked_child = await otpy.call(unlinked_parent, "child")
        assert linked_child.parent is linked_parent
        for parent in (linked_parent, unlinked_parent):
            with pytest.raises(otpy.ServerExited):
                await otpy.call(parent, "crash")
        assert isinstance(await exited(linked_child), RuntimeError)
        assert unlinked_child.alive


# --- a server that exits during a call --------------------------------------------------


class TestServerExitsDuringCall:
    async def test_handle_call_crash_fails_the_caller(self, nursery: trio.Nursery) -> None:
        """A handle_call that raises fails the caller with ServerExited carrying the exception."""
        pid = await Echo.start(nursery=nursery)
        with pytest.raises(otpy.ServerExited) as info:
            await otpy.call(pid, "raise")
        assert isinstance(info.value.reason, KeyError)
        assert info.value.reason is pid.exit_reason

    async def test_crash_fails_a_deferred_caller_at_once(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A caller waiting on a deferred reply fails at once when the server crashes."""
        pid = await Echo.start(nursery=nursery)

        async def crash_later() -> None:
            await trio.sleep(2)
            otpy.cast(pid, "raise")

        nursery.start_soon(crash_later)
        with pytest.raises(otpy.ServerExited) as info:
            await otpy.call(pid, "defer", timeout=math.inf)
        assert trio.current_time() == 2.0
        assert isinstance(info.value.reason, ValueError)

    async def test_stop_fails_a_deferred_caller(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A caller waiting on a deferred reply fails with the stop reason."""
        pid = await Echo.start(nursery=nursery)

        async def stop_later() -> None:
            await trio.sleep(1)
            await otpy.stop(pid, ("shutdown", "bye"))

        nursery.start_soon(stop_later)
        with pytest.raises(otpy.ServerExited) as info:
            await otpy.call(pid, "defer")
        assert info.value.reason == ("shutdown", "bye")
        assert trio.current_time() == 1.0

    async def test_kill_fails_the_caller_with_killed(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A kill while handle_call runs fails the caller with reason "killed", and terminate does not run."""
        events: list[Any] = []
        pid = await Trapper.start(events, nursery=nursery)

        async def kill_later() -> None:
            await trio.sleep(1)
            otpy.exit(pid, "kill")

        nursery.start_soon(kill_later)
        with pytest.raises(otpy.ServerExited) as info:
            await otpy.call(pid, ("sleep", 10), timeout=30)
        assert info.value.reason == "killed"
        assert trio.current_time() == 1.0
        assert ("terminate", "killed") not in events
        assert [e for e in events if e[0] == "terminate"] == []

    async def test_queued_callers_fail_too(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """Callers still queued in the mailbox fail with ServerExited when the server dies."""
        pid = await Echo.start(nursery=nursery)
        errors: list[object] = []

        async def caller(request: Any) -> None:
            try:
                await otpy.call(pid, request, timeout=math.inf)
            except otpy.ServerExited as exc:
                errors.append((request, exc.reason, trio.current_time()))

        async with trio.open_nursery() as callers:
            callers.start_soon(caller, ("sleep", 10))
            await trio.testing.wait_all_tasks_blocked()
            callers.start_soon(caller, "get")
            await trio.testing.wait_all_tasks_blocked()
            assert pid.mailbox_size == 1
            await trio.sleep(1)
            otpy.exit(pid, "boom")
        assert sorted(errors, key=repr) == sorted([(("sleep", 10), "boom", 1.0), ("get", "boom", 1.0)], key=repr)


# --- call errors ------------------------------------------------------------------------


class TestCallErrors:
    async def test_unknown_name_raises_no_process(self) -> None:
        """A call to a name nobody holds raises NoProcess naming it."""
        with pytest.raises(otpy.NoProcess) as info:
            await otpy.call("nobody", "ping")
        assert info.value.server == "nobody"
        assert info.value.request == "ping"
        assert "'nobody'" in str(info.value)
        assert isinstance(info.value, otpy.CallError)

    async def test_dead_pid_raises_no_process(self, nursery: trio.Nursery) -> None:
        """A call to a pid that has exited raises NoProcess."""
        pid = await Echo.start_link(nursery=nursery)
        await otpy.stop(pid)
        with pytest.raises(otpy.NoProcess) as info:
            await otpy.call(pid, "get")
        assert info.value.server is pid

    async def test_bad_server_type(self) -> None:
        """A call to something that is neither a pid nor a name raises TypeError."""
        with pytest.raises(TypeError, match=r"expected a Pid, a name or otpy\.via\(\.\.\.\), not int: 42"):
            await otpy.call(42, "get")  # type: ignore[arg-type]

    async def test_call_timeout(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """A call that gets no reply within timeout raises CallTimeout, also a trio.TooSlowError."""
        pid = await Echo.start_link(nursery=nursery)
        with pytest.raises(otpy.CallTimeout) as info:
            await otpy.call(pid, "defer", timeout=1.5)
        assert trio.current_time() == 1.5
        assert isinstance(info.value, trio.TooSlowError)
        assert isinstance(info.value, otpy.CallError)
        assert info.value.server is pid
        assert info.value.request == "defer"
        assert info.value.timeout == 1.5
        assert pid.alive

    async def test_timeouts_expire_in_deadline_order(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Concurrent calls time out at their own deadlines, also when a shorter one comes later."""
        pid = await Echo.start_link(nursery=nursery)
        expired: dict[str, float] = {}

        async def caller(label: str, delay: float, call_timeout: float) -> None:
            await trio.sleep(delay)
            with pytest.raises(otpy.CallTimeout):
                await otpy.call(pid, "defer", timeout=call_timeout)
            expired[label] = trio.current_time()

        async with trio.open_nursery() as callers:
            callers.start_soon(caller, "long", 0, 10)
            callers.start_soon(caller, "short", 1, 2)  # deadline 3, before the long one's 10
            callers.start_soon(caller, "same", 2, 8)  # deadline 10, the same as the long one
            callers.start_soon(caller, "later", 4, 7)  # deadline 11
        assert expired == {"long": 10.0, "short": 3.0, "same": 10.0, "later": 11.0}

    async def test_default_timeout_is_five_seconds(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call without timeout= gives up after 5 seconds."""
        pid = await Echo.start_link(nursery=nursery)
        with pytest.raises(otpy.CallTimeout):
            await otpy.call(pid, "defer")
        assert trio.current_time() == 5.0

    async def test_late_reply_is_dropped(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """A reply after the caller timed out is dropped, and the server keeps working."""
        pid = await Echo.start_link(nursery=nursery)
        with pytest.raises(otpy.CallTimeout):
            await otpy.call(pid, ("sleep", 3), timeout=1)
        assert trio.current_time() == 1.0
        assert await otpy.call(pid, "get") == 0
        assert trio.current_time() == 3.0

    async def test_late_deferred_reply_is_dropped(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A deferred reply to a caller that timed out does nothing."""
        pid = await Echo.start_link(nursery=nursery)
        with pytest.raises(otpy.CallTimeout):
            await otpy.call(pid, "defer", timeout=1)
        otpy.cast(pid, ("answer", "late"))
        assert await otpy.call(pid, "get") == 0
        assert pid.alive

    async def test_cancelled_call_drops_the_reply(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A call cancelled by an enclosing scope is abandoned, and its later reply is dropped."""
        pid = await Echo.start_link(nursery=nursery)
        with trio.move_on_after(1) as scope:
            await otpy.call(pid, ("sleep", 2), timeout=math.inf)
        assert scope.cancelled_caught
        assert await otpy.call(pid, "get") == 0
        assert trio.current_time() == 2.0

    async def test_infinite_timeout_waits(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """A call with timeout=math.inf waits as long as the server takes."""
        pid = await Echo.start_link(nursery=nursery)
        assert await otpy.call(pid, ("sleep", 1000), timeout=math.inf) == "slept"
        assert trio.current_time() == 1000.0

    async def test_calling_self(self, nursery: trio.Nursery) -> None:
        """A process that calls itself gets CallingSelf instead of a deadlock."""
        pid = await Echo.start_link(nursery=nursery)
        error = await otpy.call(pid, "call_self")
        assert isinstance(error, otpy.CallingSelf)
        assert isinstance(error, otpy.CallError)
        assert error.server is pid


class TestCastSend:
    async def test_cast_never_blocks(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """A cast to a busy server returns at once and queues the message."""
        pid = await Echo.start_link(nursery=nursery)
        otpy.cast(pid, ("sleep", 10))
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(100):
            assert otpy.cast(pid, "inc") is None
        assert trio.current_time() == 0.0
        assert pid.mailbox_size == 100
        assert await otpy.call(pid, "get", timeout=20) == 100

    async def test_cast_and_send_to_a_dead_name_do_nothing(self) -> None:
        """A cast or send to a name nobody holds is a no-op."""
        otpy.cast("nobody", "inc")
        otpy.send("nobody", "hello")
        otpy.exit("nobody", "kill")

    async def test_cast_and_send_to_a_dead_pid_do_nothing(self, nursery: trio.Nursery) -> None:
        """A cast or send to a pid that has exited is a no-op and queues nothing."""
        pid = await Echo.start_link(nursery=nursery)
        await otpy.stop(pid)
        otpy.cast(pid, "inc")
        otpy.send(pid, "hello")
        assert pid.mailbox_size == 0


# --- names ------------------------------------------------------------------------------


class TestNames:
    async def test_registration(self, nursery: trio.Nursery) -> None:
        """A named server is found by whereis and listed by registered."""
        pid = await Echo.start_link(name="reg", nursery=nursery)
        assert otpy.whereis("reg") is pid
        assert pid.name == "reg"
        assert "reg" in otpy.registered()
        assert "reg" in repr(pid)

    async def test_name_is_freed_on_exit(self, nursery: trio.Nursery) -> None:
        """A name is freed when its process exits, and a new process can take it."""
        first = await Echo.start_link(name="reg", nursery=nursery)
        otpy.exit(first, "kill")
        await exited(first)
        assert otpy.whereis("reg") is None
        assert "reg" not in otpy.registered()
        second = await Echo.start_link(name="reg", nursery=nursery)
        assert otpy.whereis("reg") is second

    async def test_taken_name(self, nursery: trio.Nursery) -> None:
        """Starting a second server under a live name raises AlreadyRegistered with the holder."""
        holder = await Echo.start_link(name="reg", nursery=nursery)
        with pytest.raises(otpy.AlreadyRegistered) as info:
            await Echo.start_link(name="reg", nursery=nursery)
        assert info.value.name == "reg"
        assert info.value.pid is holder
        assert otpy.whereis("reg") is holder

    async def test_restarted_incarnation_takes_the_name(self, nursery: trio.Nursery) -> None:
        """A supervised server restarted after a crash is registered under the same name."""
        await otpy.Supervisor.start_link([Echo.child_spec(name="worker")], nursery=nursery)
        first = otpy.whereis("worker")
        assert first is not None
        otpy.exit(first, "boom")
        await exited(first)
        await trio.testing.wait_all_tasks_blocked()
        second = otpy.whereis("worker")
        assert second is not None
        assert second is not first
        assert await otpy.call("worker", "get") == 0

    def test_names_are_isolated_per_run(self) -> None:
        """A name registered in one trio.run is unknown in the next one."""

        async def first() -> None:
            async with trio.open_nursery() as nursery:
                await Echo.start_link(name="shared", nursery=nursery)
                assert otpy.whereis("shared") is not None
                nursery.cancel_scope.cancel()

        async def second() -> None:
            assert otpy.whereis("shared") is None
            assert otpy.registered() == []
            async with trio.open_nursery() as nursery:
                await Echo.start_link(name="shared", nursery=nursery)
                nursery.cancel_scope.cancel()

        trio.run(first)
        trio.run(second)

    async def test_bad_name_type(self, nursery: trio.Nursery) -> None:
        """A name that is neither a str nor via(...) is rejected with TypeError."""
        with pytest.raises(TypeError, match=r"a process name must be a str or otpy\.via\(\.\.\.\), not int: 42"):
            otpy.whereis(42)  # type: ignore[arg-type]


# --- exit reasons -----------------------------------------------------------------------


class TestExitReasons:
    @pytest.mark.parametrize(
        ("reason", "normal"),
        [
            pytest.param("normal", True, id="normal"),
            pytest.param("shutdown", True, id="shutdown"),
            pytest.param(("shutdown", "x"), True, id="shutdown-tuple"),
            pytest.param("killed", False, id="killed"),
            pytest.param("boom", False, id="other-atom"),
            pytest.param(("shutdown",), False, id="one-tuple"),
            pytest.param(("shutdown", 1, 2), False, id="three-tuple"),
            pytest.param(ValueError("x"), False, id="exception"),
        ],
    )
    def test_is_normal_reason(self, reason: object, normal: bool) -> None:
        """is_normal_reason accepts exactly normal, shutdown and ("shutdown", term)."""
        assert otpy.is_normal_reason(reason) is normal

    @pytest.mark.parametrize(
        "reason",
        [
            pytest.param("normal", id="normal"),
            pytest.param("shutdown", id="shutdown"),
            pytest.param(("shutdown", {"k": 1}), id="shutdown-tuple"),
            pytest.param(("custom", 3), id="term"),
        ],
    )
    async def test_reasons_are_data(self, nursery: trio.Nursery, reason: object) -> None:
        """An exit reason given to Stop or ProcessExit is kept as is."""
        for how in ("stop", "exit"):
            pid = await Echo.start(nursery=nursery)
            otpy.cast(pid, (how, reason))
            assert await exited(pid) == reason
            assert pid.exit_reason == reason

    async def test_exception_reason_is_the_exception(self, nursery: trio.Nursery) -> None:
        """A crash leaves the exception object as the exit reason."""
        pid = await Echo.start(nursery=nursery)
        otpy.cast(pid, "raise")
        reason = await exited(pid)
        assert isinstance(reason, ValueError)
        assert pid.exit_reason is reason
        assert "ValueError" in repr(pid)

    async def test_alive_pid_has_no_reason(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """A live pid reports alive and no exit reason."""
        pid = await Echo.start_link(nursery=nursery)
        assert pid.alive
        assert pid.exit_reason is None
        assert pid.parent is None
        assert pid.started_at == trio.current_time()

    def test_process_exit_str(self) -> None:
        """ProcessExit carries its reason and renders it."""
        exc = otpy.ProcessExit(("shutdown", "x"))
        assert exc.reason == ("shutdown", "x")
        assert "shutdown" in str(exc)


# --- exit signals, links, monitors -------------------------------------------------------


class Watcher(otpy.GenServer):
    """Runs link/monitor operations on request and records its messages."""

    trap_exit = True

    async def init(self, trap: bool = True) -> None:
        otpy.trap_exit(trap)
        self.messages: list[Any] = []
        self.refs: list[otpy.MonitorRef] = []

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case ("link", pid):
                otpy.link(pid)
            case ("unlink", pid):
                otpy.unlink(pid)
            case ("monitor", target):
                ref = otpy.monitor(target)
                self.refs.append(ref)
                return ref
            case ("demonitor", ref, flush):
                otpy.demonitor(ref, flush=flush)
            case ("exit", pid, reason):
                otpy.exit(pid, reason)
            case ("start_child", trap):
                self.child = await Trapper.start_link(self.child_events) if trap else await Echo.start_link()
                return self.child
            case ("kill_then_demonitor", target, flush):
                ref = otpy.monitor(target)
                otpy.exit(target, "boom")
                await exited(target)
                queued = otpy.self().mailbox_size
                otpy.demonitor(ref, flush=flush)
                return queued, otpy.self().mailbox_size
            case ("sleep", seconds):
                await trio.sleep(seconds)
            case "messages":
                return self.messages
            case "trap_exit":
                return otpy.trap_exit(False), otpy.trap_exit(True), otpy.self().trap_exit
        return None

    async def handle_cast(self, request: Any) -> None:
        if request[0] == "sleep":
            await trio.sleep(request[1])

    async def handle_info(self, message: Any) -> None:
        self.messages.append(message)

    child_events: list[Any] = []  # noqa: RUF012 (replaced per test)


class TestExitSignals:
    async def test_trapping_server_gets_exit_signal_from_non_parent(self, nursery: trio.Nursery) -> None:
        """A server that traps exits receives ExitSignal(sender, reason) from a non-parent and lives on."""
        events: list[Any] = []
        target = await Trapper.start_link(events, nursery=nursery)
        sender = await Watcher.start_link(nursery=nursery)
        await otpy.call(sender, ("exit", target, "boom"))
        await otpy.call(target, "get")
        assert ("info", otpy.ExitSignal(sender, "boom")) in events
        assert target.alive
        assert target.trap_exit

    async def test_trapping_server_gets_normal_exit_signal(self, nursery: trio.Nursery) -> None:
        """A trapping server receives even a "normal" exit signal as a message."""
        events: list[Any] = []
        target = await Trapper.start_link(events, nursery=nursery)
        sender = await Watcher.start_link(nursery=nursery)
        await otpy.call(sender, ("exit", target, "normal"))
        await otpy.call(target, "get")
        assert ("info", otpy.ExitSignal(sender, "normal")) in events

    async def test_trapping_server_terminates_on_signal_from_parent(self, nursery: trio.Nursery) -> None:
        """A trapping server runs terminate and exits when the signal comes from its parent."""
        Watcher.child_events = events = []
        parent = await Watcher.start_link(nursery=nursery)
        child = await otpy.call(parent, ("start_child", True))
        assert child.parent is parent
        await otpy.call(parent, ("exit", child, ("shutdown", "parent says")))
        assert await exited(child) == ("shutdown", "parent says")
        assert events[-1] == ("terminate", ("shutdown", "parent says"))
        # the trapping parent sees its linked child's exit as a message
        assert otpy.ExitSignal(child, ("shutdown", "parent says")) in await otpy.call(parent, "messages")

    async def test_kill_is_untrappable(self, nursery: trio.Nursery) -> None:
        """ "kill" stops a trapping server with reason "killed" and without terminate."""
        events: list[Any] = []
        target = await Trapper.start_link(events, nursery=nursery)
        otpy.exit(target, "kill")
        assert await exited(target) == "killed"
        assert events == []

    async def test_non_trapping_server_ignores_normal(self, nursery: trio.Nursery) -> None:
        """A server that does not trap exits ignores a "normal" exit signal."""
        events: list[Any] = []
        target = await Echo.start_link(events, nursery=nursery)
        sender = await Watcher.start_link(nursery=nursery)
        await otpy.call(sender, ("exit", target, "normal"))
        otpy.exit(target, "normal")
        assert await otpy.call(target, "get") == 0
        assert target.alive

    async def test_non_trapping_server_dies_without_terminate(self, nursery: trio.Nursery) -> None:
        """A server that does not trap exits dies with any other reason, and terminate does not run."""
        events: list[Any] = []
        target = await Echo.start(events, nursery=nursery)
        otpy.exit(target, ("shutdown", "x"))
        assert await exited(target) == ("shutdown", "x")
        assert events == []

    async def test_exit_self_normal_stops_the_process(self, nursery: trio.Nursery) -> None:
        """A process that sends itself a "normal" exit signal exits with "normal"."""

        class Quitter(otpy.GenServer):
            async def handle_cast(self, request: Any) -> None:
                otpy.exit(otpy.self(), "normal")
                await trio.lowlevel.checkpoint()

        pid = await Quitter.start(nursery=nursery)
        otpy.cast(pid, "quit")
        assert await exited(pid) == "normal"

    async def test_trap_exits_toggles(self, nursery: trio.Nursery) -> None:
        """trap_exit sets the flag and returns the previous setting."""
        pid = await Watcher.start_link(nursery=nursery)
        assert await otpy.call(pid, "trap_exit") == (True, False, True)

    async def test_trap_exits_via_the_function(self, nursery: trio.Nursery) -> None:
        """A server that calls trap_exit() in init receives exit signals as messages."""
        pid = await Watcher.start_link(False, nursery=nursery)
        assert not pid.trap_exit
        otpy.exit(pid, "boom")
        assert await exited(pid) == "boom"


class TestLinks:
    async def test_linked_crash_kills_a_non_trapping_process(self, nursery: trio.Nursery) -> None:
        """When a linked process crashes, a non-trapping process dies with the same reason."""
        a = await Watcher.start(False, nursery=nursery)
        b = await Echo.start(nursery=nursery)
        await otpy.call(a, ("link", b))
        otpy.exit(b, "boom")
        assert await exited(a) == "boom"

    async def test_linked_exit_is_a_message_when_trapping(self, nursery: trio.Nursery) -> None:
        """A trapping process gets ExitSignal from a linked process that exits."""
        a = await Watcher.start(nursery=nursery)
        b = await Echo.start(nursery=nursery)
        await otpy.call(a, ("link", b))
        otpy.cast(b, "raise")
        reason = await exited(b)
        assert await otpy.call(a, "messages") == [otpy.ExitSignal(b, reason)]

    async def test_normal_exit_does_not_kill_linked(self, nursery: trio.Nursery) -> None:
        """A linked process that exits normally does not stop a non-trapping partner."""
        a = await Watcher.start(False, nursery=nursery)
        b = await Echo.start(nursery=nursery)
        await otpy.call(a, ("link", b))
        await otpy.stop(b)
        assert a.alive
        assert await otpy.call(a, "messages") == []

    async def test_links_are_bidirectional(self, nursery: trio.Nursery) -> None:
        """A link propagates a crash from the linking process to the linked one as well."""
        a = await Watcher.start(False, nursery=nursery)
        b = await Echo.start(nursery=nursery)
        await otpy.call(a, ("link", b))
        otpy.exit(a, "boom")
        assert await exited(b) == "boom"

    async def test_unlink(self, nursery: trio.Nursery) -> None:
        """After unlink, a crash no longer propagates."""
        a = await Watcher.start(False, nursery=nursery)
        b = await Echo.start(nursery=nursery)
        await otpy.call(a, ("link", b))
        await otpy.call(a, ("unlink", b))
        otpy.exit(b, "boom")
        await exited(b)
        assert a.alive

    async def test_link_to_a_dead_process_sends_noproc(self, nursery: trio.Nursery) -> None:
        """Linking to a dead process delivers the exit signal "noproc" to the caller."""
        a = await Watcher.start(nursery=nursery)
        b = await Echo.start(nursery=nursery)
        await otpy.stop(b)
        await otpy.call(a, ("link", b))
        assert await otpy.call(a, "messages") == [otpy.ExitSignal(b, "noproc")]

    def test_link_outside_a_process(self) -> None:
        """link, self and trap_exit need a process; current_process is None outside one."""

        async def main() -> None:
            assert otpy.current_process() is None
            with pytest.raises(RuntimeError, match=r"otpy\.self\(\) called outside an otpy process"):
                otpy.self()
            with pytest.raises(RuntimeError, match=r"otpy\.self\(\) called outside an otpy process"):
                otpy.trap_exit()

        trio.run(main)


class TestMonitors:
    async def test_down_carries_the_reason(self, nursery: trio.Nursery) -> None:
        """A monitor delivers Down(ref, pid, reason) when the target exits."""
        watcher = await Watcher.start_link(nursery=nursery)
        target = await Echo.start(nursery=nursery)
        ref = await otpy.call(watcher, ("monitor", target))
        otpy.cast(target, ("stop", ("shutdown", 9)))
        await exited(target)
        assert await otpy.call(watcher, "messages") == [otpy.Down(ref, target, ("shutdown", 9))]
        assert ref.target is target

    async def test_monitor_does_not_link(self, nursery: trio.Nursery) -> None:
        """A monitored crash does not stop a non-trapping watcher."""
        watcher = await Watcher.start_link(False, nursery=nursery)
        target = await Echo.start(nursery=nursery)
        ref = await otpy.call(watcher, ("monitor", target))
        otpy.exit(target, "boom")
        await exited(target)
        assert await otpy.call(watcher, "messages") == [otpy.Down(ref, target, "boom")]

    async def test_monitor_dead_process_is_noproc(self, nursery: trio.Nursery) -> None:
        """Monitoring a dead process or an unknown name delivers Down with "noproc" at once."""
        watcher = await Watcher.start_link(nursery=nursery)
        target = await Echo.start(nursery=nursery)
        await otpy.stop(target)
        ref1 = await otpy.call(watcher, ("monitor", target))
        ref2 = await otpy.call(watcher, ("monitor", "nobody"))
        messages = await otpy.call(watcher, "messages")
        assert messages[0] == otpy.Down(ref1, target, "noproc")
        assert messages[1].ref is ref2
        assert messages[1].reason == "noproc"

    async def test_demonitor(self, nursery: trio.Nursery) -> None:
        """After demonitor, no Down arrives."""
        watcher = await Watcher.start_link(nursery=nursery)
        target = await Echo.start(nursery=nursery)
        ref = await otpy.call(watcher, ("monitor", target))
        await otpy.call(watcher, ("demonitor", ref, False))
        await otpy.stop(target)
        assert await otpy.call(watcher, "messages") == []

    @pytest.mark.parametrize("flush", [True, False])
    async def test_demonitor_flush(self, nursery: trio.Nursery, flush: bool) -> None:
        """demonitor(flush=True) drops a Down already queued; without flush it stays."""
        watcher = await Watcher.start_link(nursery=nursery)
        target = await Echo.start(nursery=nursery)
        before, after = await otpy.call(watcher, ("kill_then_demonitor", target, flush))
        assert before == 1
        assert after == (0 if flush else 1)
        messages = await otpy.call(watcher, "messages")
        assert len(messages) == (0 if flush else 1)

    async def test_monitor_outside_a_process(self, nursery: trio.Nursery) -> None:
        """Outside a process, MonitorRef.wait returns the exit reason."""
        target = await Echo.start_link(nursery=nursery)
        ref = otpy.monitor(target)
        otpy.exit(target, "kill")
        assert await ref.wait() == "killed"

    async def test_monitor_outside_a_process_noproc(self) -> None:
        """Outside a process, monitoring an unknown name gives "noproc" from wait."""
        ref = otpy.monitor("nobody")
        assert await ref.wait() == "noproc"

    async def test_wait_blocks_until_exit(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """MonitorRef.wait blocks until the target exits."""
        target = await Echo.start_link(nursery=nursery)
        ref = otpy.monitor(target)

        async def stop_later() -> None:
            await trio.sleep(4)
            await otpy.stop(target, "shutdown")

        nursery.start_soon(stop_later)
        assert await ref.wait() == "shutdown"
        assert trio.current_time() == 4.0

    async def test_wait_on_an_in_process_monitor(self, nursery: trio.Nursery) -> None:
        """MonitorRef.wait on a monitor taken inside a process raises RuntimeError."""
        watcher = await Watcher.start_link(nursery=nursery)
        target = await Echo.start_link(nursery=nursery)
        ref = await otpy.call(watcher, ("monitor", target))
        with pytest.raises(RuntimeError, match=r"MonitorRef\.wait\(\) is for monitors taken outside a process"):
            await ref.wait()
