"""Supervisor: strategies, restart types, intensity, start and shutdown order, the management API."""

from __future__ import annotations

import collections
import math
from typing import Any

import attrs
import pytest
import structlog
import structlog.testing
import trio
import trio.testing

import otpy


async def exited(pid: otpy.Pid) -> object:
    """Wait for ``pid`` to exit (failing instead of hanging) and return its exit reason."""
    with trio.fail_after(30):
        return await pid.wait_exited()


# --- a scripted worker and the log it writes ----------------------------------------------


@attrs.define(eq=False)
class Log:
    """What the workers did, in order, and how the next starts and stops should go."""

    nursery: trio.Nursery
    events: list[tuple[Any, ...]] = attrs.Factory(list)
    failing: dict[str, tuple[object, float]] = attrs.Factory(dict)  # id -> (reason, attempts left)
    ignoring: set[str] = attrs.Factory(set)
    init_delay: dict[str, float] = attrs.Factory(dict)
    terminate_delay: dict[str, float] = attrs.Factory(dict)
    attempts: collections.Counter[str] = attrs.Factory(collections.Counter)

    def fail(self, wid: str, reason: object = "init_failed", times: float = math.inf) -> None:
        self.failing[wid] = (reason, times)

    def started(self, wid: str, pid: otpy.Pid) -> None:
        self.events.append(("start", wid))
        self.nursery.start_soon(self._watch, wid, pid)

    async def _watch(self, wid: str, pid: otpy.Pid) -> None:
        reason = await pid.wait_exited()
        self.events.append(("exit", wid, reason))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e[1:] for e in self.events if e[0] == kind]

    def ids(self, kind: str) -> list[str]:
        return [e[1] for e in self.events if e[0] == kind]

    def clear(self) -> None:
        self.events.clear()


class Worker(otpy.GenServer):
    """A worker scripted by its Log; traps exits unless told otherwise."""

    trap_exit = True

    async def init(self, log: Log, wid: str, trap: bool = True) -> Any:
        self.log, self.wid, self.count = log, wid, 0
        otpy.trap_exit(trap)
        log.attempts[wid] += 1
        delay = log.init_delay.get(wid)
        if delay:
            await trio.sleep(delay)
        if wid in log.failing:
            reason, left = log.failing[wid]
            if left <= 1:
                del log.failing[wid]
            else:
                log.failing[wid] = (reason, left - 1)
            log.events.append(("init_fail", wid))
            if isinstance(reason, BaseException):
                raise reason
            return otpy.Stop(reason)
        if wid in log.ignoring:
            log.events.append(("init_ignore", wid))
            return otpy.Ignore()
        log.started(wid, otpy.self())
        return None

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        if request == "get":
            return self.count
        return None

    async def handle_cast(self, request: Any) -> None:
        match request:
            case "inc":
                self.count += 1
            case ("exit", reason):
                raise otpy.ProcessExit(reason)
            case "raise":
                raise RuntimeError(f"{self.wid} crashed")

    async def terminate(self, reason: object) -> None:
        self.log.events.append(("terminate", self.wid, reason))
        delay = self.log.terminate_delay.get(self.wid)
        if delay is not None:
            await trio.sleep(delay)


def w(log: Log, wid: str, trap: bool = True, **kwargs: Any) -> otpy.ChildSpec:
    """A child spec for a Worker registered under its id."""
    return Worker.child_spec(log, wid, trap, id=wid, name=wid, **kwargs)


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


def pid_of(name: str) -> otpy.Pid:
    pid = otpy.whereis(name)
    assert pid is not None, f"{name} is not running"
    return pid


async def crash(wid: str, reason: object = "boom") -> None:
    """Make worker ``wid`` stop itself with ``reason`` (terminate runs) and let the tree react."""
    pid = pid_of(wid)
    if reason == "killed":
        otpy.exit(pid, "kill")
    else:
        otpy.cast(pid, ("exit", reason))
    await exited(pid)
    await settle()


@pytest.fixture(name="log")
def _log(nursery: trio.Nursery) -> Log:
    return Log(nursery)


async def start_sup(log: Log, ids: str = "abc", **flags: Any) -> otpy.Pid:
    return await otpy.Supervisor.start_link([w(log, i) for i in ids], name="sup", nursery=log.nursery, **flags)


# --- strategies ---------------------------------------------------------------------------


class TestStrategies:
    async def test_one_for_one_restarts_only_the_crashed_child(self, log: Log) -> None:
        """one_for_one restarts the crashed child; its siblings keep their pids and state."""
        await start_sup(log)
        a, c = pid_of("a"), pid_of("c")
        otpy.cast("a", "inc")
        old_b = pid_of("b")
        log.clear()
        await crash("b")
        assert log.ids("start") == ["b"]
        assert log.of("terminate") == [("b", "boom")]
        assert pid_of("b") is not old_b
        assert pid_of("a") is a
        assert pid_of("c") is c
        assert await otpy.call("a", "get") == 1

    async def test_one_for_all_restarts_everyone(self, log: Log) -> None:
        """one_for_all stops the others in reverse start order, then starts all in start order."""
        await start_sup(log, strategy="one_for_all")
        log.clear()
        await crash("b")
        assert [e for e in log.events if e[0] != "exit"] == [
            ("terminate", "b", "boom"),
            ("terminate", "c", "shutdown"),
            ("terminate", "a", "shutdown"),
            ("start", "a"),
            ("start", "b"),
            ("start", "c"),
        ]

    async def test_rest_for_one_restarts_the_rest(self, log: Log) -> None:
        """rest_for_one restarts the crashed child and those started after it."""
        await start_sup(log, "abcd", strategy="rest_for_one")
        a = pid_of("a")
        log.clear()
        await crash("b")
        assert [e for e in log.events if e[0] != "exit"] == [
            ("terminate", "b", "boom"),
            ("terminate", "d", "shutdown"),
            ("terminate", "c", "shutdown"),
            ("start", "b"),
            ("start", "c"),
            ("start", "d"),
        ]
        assert pid_of("a") is a

    async def test_rest_for_one_last_child(self, log: Log) -> None:
        """rest_for_one with the last child crashing restarts only it."""
        await start_sup(log, strategy="rest_for_one")
        log.clear()
        await crash("c")
        assert log.ids("start") == ["c"]
        assert log.ids("terminate") == ["c"]

    async def test_one_for_all_temporary_bystander_is_removed(self, log: Log) -> None:
        """A temporary child stopped as a one_for_all bystander is not restarted and its spec is removed."""
        children = [w(log, "a"), w(log, "t", restart="temporary"), w(log, "c")]
        sup = await otpy.Supervisor.start_link(children, strategy="one_for_all", nursery=log.nursery)
        log.clear()
        await crash("a")
        assert log.ids("start") == ["a", "c"]
        assert [info.id for info in await otpy.Supervisor.which_children(sup)] == ["c", "a"]

    async def test_temporary_exit_does_not_restart_siblings(self, log: Log) -> None:
        """A temporary child's exit leaves its one_for_all siblings alone."""
        children = [w(log, "a"), w(log, "t", restart="temporary"), w(log, "c")]
        await otpy.Supervisor.start_link(children, strategy="one_for_all", nursery=log.nursery)
        log.clear()
        await crash("t")
        assert log.ids("start") == []
        assert log.ids("terminate") == ["t"]

    async def test_one_for_all_restarts_terminated_siblings(self, log: Log) -> None:
        """one_for_all also starts a sibling stopped with terminate_child."""
        sup = await start_sup(log, strategy="one_for_all")
        await otpy.Supervisor.terminate_child(sup, "c")
        log.clear()
        await crash("a")
        assert log.ids("start") == ["a", "b", "c"]

    async def test_one_for_all_retry_stops_the_restarted_siblings(self, log: Log) -> None:
        """A one_for_all retry after a failed restart first stops the siblings already restarted."""
        await start_sup(log, strategy="one_for_all")
        log.fail("b", times=1)
        log.clear()
        await crash("a")
        assert [e for e in log.events if e[0] != "exit"] == [
            ("terminate", "a", "boom"),
            ("terminate", "c", "shutdown"),
            ("terminate", "b", "shutdown"),
            ("start", "a"),
            ("init_fail", "b"),
            ("terminate", "a", "shutdown"),
            ("start", "a"),
            ("start", "b"),
            ("start", "c"),
        ]

    async def test_rest_for_one_retry_starts_from_the_failed_child(self, log: Log) -> None:
        """A rest_for_one retry restarts from the child whose restart failed, not from the crashed one."""
        await start_sup(log, strategy="rest_for_one")
        log.fail("c", times=1)
        log.clear()
        await crash("b")
        assert [e for e in log.events if e[0] != "exit"] == [
            ("terminate", "b", "boom"),
            ("terminate", "c", "shutdown"),
            ("start", "b"),
            ("init_fail", "c"),
            ("start", "c"),
        ]

    async def test_restarted_child_keeps_its_place(self, log: Log) -> None:
        """A restarted child keeps its place in start and shutdown order."""
        sup = await start_sup(log)
        await crash("a")
        log.clear()
        await otpy.stop(sup)
        assert log.ids("terminate") == ["c", "b", "a"]

    async def test_supervisor_reports_child_terminated(self, log: Log) -> None:
        """A crash of a child is reported as child_terminated with the supervisor, id and reason."""
        await start_sup(log)
        with structlog.testing.capture_logs() as logs:
            await crash("b", ("custom", 1))
        reports = [e for e in logs if e["event"] == "child_terminated"]
        assert len(reports) == 1
        assert reports[0]["supervisor"] == "sup"
        assert reports[0]["child_id"] == "b"
        assert reports[0]["reason"] == ("custom", 1)
        assert reports[0]["restart"] == "permanent"
        assert reports[0]["log_level"] == "error"

    async def test_exception_crash_is_reported_with_exc_info(self, log: Log) -> None:
        """A child that raises is restarted; both reports carry the exception, only the crash report its traceback."""
        await start_sup(log)
        old = pid_of("a")
        with structlog.testing.capture_logs() as logs:
            otpy.cast("a", "raise")
            await exited(old)
            await settle()
        [report] = [e for e in logs if e["event"] == "child_terminated"]
        assert isinstance(report["reason"], RuntimeError)
        assert "exc_info" not in report
        [crashed] = [e for e in logs if e["event"] == "server_crashed"]
        assert crashed["exc_info"] is report["reason"]
        assert pid_of("a") is not old


# --- restart types x exit reasons ----------------------------------------------------------

REASONS = [
    pytest.param("normal", True, id="normal"),
    pytest.param("shutdown", True, id="shutdown"),
    pytest.param(("shutdown", "x"), True, id="shutdown-tuple"),
    pytest.param("boom", False, id="abnormal"),
    pytest.param("killed", False, id="killed"),
]


class TestRestartTypes:
    @pytest.mark.parametrize(("reason", "normal"), REASONS)
    async def test_permanent_is_always_restarted(self, log: Log, reason: object, normal: bool) -> None:
        """A permanent child is restarted after any exit."""
        sup = await otpy.Supervisor.start_link([w(log, "a")], nursery=log.nursery)
        log.clear()
        with structlog.testing.capture_logs() as logs:
            await crash("a", reason)
        assert log.ids("start") == ["a"]
        assert (await otpy.Supervisor.count_children(sup)).active == 1
        assert [e["reason"] for e in logs if e["event"] == "child_terminated"] == [reason]

    @pytest.mark.parametrize(("reason", "normal"), REASONS)
    async def test_transient_is_restarted_after_abnormal_exits(self, log: Log, reason: object, normal: bool) -> None:
        """A transient child is restarted only after an abnormal exit; after a normal one its spec stays."""
        sup = await otpy.Supervisor.start_link([w(log, "a", restart="transient")], nursery=log.nursery)
        log.clear()
        with structlog.testing.capture_logs() as logs:
            await crash("a", reason)
        assert log.ids("start") == ([] if normal else ["a"])
        [info] = await otpy.Supervisor.which_children(sup)
        assert info.id == "a"
        assert (info.child is None) is normal
        reports = [e for e in logs if e["event"] == "child_terminated"]
        assert len(reports) == (0 if normal else 1)

    @pytest.mark.parametrize(("reason", "normal"), REASONS)
    async def test_temporary_is_never_restarted(self, log: Log, reason: object, normal: bool) -> None:
        """A temporary child is never restarted and its spec is removed on any exit."""
        sup = await otpy.Supervisor.start_link([w(log, "a", restart="temporary")], nursery=log.nursery)
        log.clear()
        await crash("a", reason)
        assert log.ids("start") == []
        assert await otpy.Supervisor.which_children(sup) == []
        with pytest.raises(otpy.ChildNotFound):
            await otpy.Supervisor.restart_child(sup, "a")
        assert await otpy.Supervisor.start_child(sup, w(log, "a", restart="temporary")) is not None


# --- restart intensity ----------------------------------------------------------------------


class TestIntensity:
    async def test_three_crashes_in_the_window_give_up(self, log: Log, autojump_clock: trio.testing.MockClock) -> None:
        """Three crashes 1 s apart with max_restarts=2, max_seconds=5 make the supervisor give up."""
        sup = await start_sup(log, max_restarts=2, max_seconds=5)
        await crash("b")
        await trio.sleep(1)
        await crash("b")
        await trio.sleep(1)
        assert sup.alive
        log.clear()
        with structlog.testing.capture_logs() as logs:
            await crash("b")
        assert await exited(sup) == "shutdown"
        assert trio.current_time() == 2.0
        assert log.ids("start") == []
        assert log.of("terminate") == [("b", "boom"), ("c", "shutdown"), ("a", "shutdown")]
        [gave_up] = [e for e in logs if e["event"] == "supervisor_gave_up"]
        assert gave_up["supervisor"] == "sup"
        assert gave_up["max_restarts"] == 2
        assert gave_up["max_seconds"] == 5
        assert gave_up["reason"] == "reached_max_restart_intensity"
        assert otpy.whereis("sup") is None

    async def test_crashes_six_seconds_apart_never_give_up(
        self, log: Log, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A crash every 6 s never exceeds max_restarts=2 within max_seconds=5."""
        sup = await start_sup(log, max_restarts=2, max_seconds=5)
        for _ in range(10):
            await crash("b")
            await trio.sleep(6)
        assert sup.alive
        assert log.ids("start").count("b") == 11
        assert trio.current_time() == 60.0

    @pytest.mark.parametrize(
        ("first", "second", "gives_up"),
        [
            pytest.param(0.0, 2.5, True, id="2.5s-apart-same-window"),
            pytest.param(0.9, 2.99, True, id="floors-0-and-2"),
            pytest.param(0.9, 3.0, False, id="floors-0-and-3"),
            pytest.param(0.0, 1.0, True, id="1s-apart"),
        ],
    )
    async def test_window_has_whole_second_granularity(
        self, log: Log, autojump_clock: trio.testing.MockClock, first: float, second: float, gives_up: bool
    ) -> None:
        """Restarts are kept while floor(now) - floor(t) <= max_seconds, as OTP does."""
        sup = await start_sup(log, "a", max_restarts=1, max_seconds=2)
        await trio.sleep(first)
        await crash("a")
        await trio.sleep(second - first)
        await crash("a")
        assert sup.alive is not gives_up

    async def test_default_intensity(self, log: Log) -> None:
        """By default a supervisor allows 3 restarts in 5 seconds and gives up on the fourth."""
        sup = await start_sup(log, "a")
        for _ in range(3):
            await crash("a")
        assert sup.alive
        await crash("a")
        assert await exited(sup) == "shutdown"

    async def test_max_restarts_zero(self, log: Log) -> None:
        """With max_restarts=0 the first restart-worthy exit stops the supervisor."""
        sup = await start_sup(log, max_restarts=0)
        await crash("a")
        assert await exited(sup) == "shutdown"

    async def test_intensity_counts_all_children(self, log: Log) -> None:
        """Restarts of different children count toward the same intensity."""
        sup = await start_sup(log, max_restarts=2)
        await crash("a")
        await crash("b")
        assert sup.alive
        await crash("c")
        assert await exited(sup) == "shutdown"

    async def test_group_restart_counts_once(self, log: Log) -> None:
        """A one_for_all group restart counts as one restart."""
        sup = await start_sup(log, strategy="one_for_all", max_restarts=1)
        await crash("a")
        assert sup.alive
        assert log.ids("start") == ["a", "b", "c", "a", "b", "c"]
        await crash("c")
        assert not sup.alive

    async def test_manual_operations_do_not_count(self, log: Log) -> None:
        """terminate_child, restart_child and transient normal exits do not count as restarts."""
        children = [w(log, "a"), w(log, "t", restart="transient")]
        sup = await otpy.Supervisor.start_link(children, max_restarts=0, nursery=log.nursery)
        for _ in range(3):
            await otpy.Supervisor.terminate_child(sup, "a")
            await otpy.Supervisor.restart_child(sup, "a")
        await crash("t", "normal")
        assert sup.alive

    async def test_failed_restart_attempts_count(self, log: Log) -> None:
        """Each failed restart attempt counts, so a child that cannot start makes the supervisor give up."""
        sup = await start_sup(log, max_restarts=3)
        log.fail("b")
        log.clear()
        await crash("b")
        assert await exited(sup) == "shutdown"
        assert log.ids("init_fail") == ["b", "b", "b"]
        assert log.of("terminate") == [("b", "boom"), ("c", "shutdown"), ("a", "shutdown")]

    async def test_retry_succeeds_within_intensity(self, log: Log) -> None:
        """A restart that fails is retried and the child comes back if a retry succeeds."""
        sup = await start_sup(log, max_restarts=3)
        log.fail("b", times=2)
        log.clear()
        await crash("b")
        assert sup.alive
        assert log.ids("init_fail") == ["b", "b"]
        assert log.ids("start") == ["b"]


# --- start and shutdown -------------------------------------------------------------------


class TestStartAndShutdown:
    async def test_children_start_in_order_and_stop_in_reverse(self, log: Log) -> None:
        """Children start in spec order and stop in reverse order, each with reason "shutdown"."""
        sup = await start_sup(log)
        assert log.ids("start") == ["a", "b", "c"]
        await otpy.stop(sup, ("shutdown", "maintenance"))
        assert log.of("terminate") == [("c", "shutdown"), ("b", "shutdown"), ("a", "shutdown")]
        assert sup.exit_reason == ("shutdown", "maintenance")
        await settle()
        assert log.of("exit") == [("c", "shutdown"), ("b", "shutdown"), ("a", "shutdown")]

    async def test_start_link_returns_after_all_children_started(
        self, log: Log, autojump_clock: trio.testing.MockClock
    ) -> None:
        """start_link returns once every child's init has run."""
        log.init_delay.update(a=1, b=2, c=3)
        await start_sup(log)
        assert trio.current_time() == 6.0
        assert log.ids("start") == ["a", "b", "c"]

    async def test_non_trapping_children_skip_terminate(self, log: Log) -> None:
        """A child that does not trap exits stops with "shutdown" without running terminate."""
        children = [w(log, "a", trap=False), w(log, "b", trap=False)]
        sup = await otpy.Supervisor.start_link(children, nursery=log.nursery)
        await otpy.stop(sup)
        await settle()
        assert log.of("terminate") == []
        assert log.of("exit") == [("b", "shutdown"), ("a", "shutdown")]

    async def test_brutal_kill(self, log: Log) -> None:
        """A brutal_kill child is killed at once: reason "killed" and no terminate."""
        children = [w(log, "a"), w(log, "b", shutdown="brutal_kill"), w(log, "c")]
        sup = await otpy.Supervisor.start_link(children, nursery=log.nursery)
        with structlog.testing.capture_logs() as logs:
            await otpy.stop(sup)
        await settle()
        assert log.of("terminate") == [("c", "shutdown"), ("a", "shutdown")]
        assert log.of("exit") == [("c", "shutdown"), ("b", "killed"), ("a", "shutdown")]
        assert [e for e in logs if e["event"] == "child_shutdown_failed"] == []

    async def test_shutdown_timeout_kills_a_hanging_child(
        self, log: Log, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child whose terminate outlasts its shutdown seconds is killed after exactly that long."""
        log.terminate_delay["b"] = math.inf
        log.terminate_delay["c"] = 1
        children = [w(log, "a"), w(log, "b", shutdown=2), w(log, "c")]
        sup = await otpy.Supervisor.start_link(children, nursery=log.nursery)
        with structlog.testing.capture_logs() as logs:
            await otpy.stop(sup)
        assert trio.current_time() == 3.0  # c takes 1 s, b is killed after 2 s, a is quick
        await settle()
        assert log.of("exit") == [("c", "shutdown"), ("b", "killed"), ("a", "shutdown")]
        [failed] = [e for e in logs if e["event"] == "child_shutdown_failed"]
        assert failed["child_id"] == "b"
        assert failed["reason"] == "killed"

    async def test_default_worker_shutdown_is_five_seconds(
        self, log: Log, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A worker without a shutdown spec gets 5 seconds before it is killed."""
        log.terminate_delay["a"] = math.inf
        sup = await start_sup(log, "a")
        await otpy.stop(sup)
        assert trio.current_time() == 5.0
        await settle()
        assert log.of("exit") == [("a", "killed")]

    @pytest.mark.parametrize("shutdown", ["infinity", math.inf])
    async def test_infinity_waits(self, log: Log, autojump_clock: trio.testing.MockClock, shutdown: object) -> None:
        """An infinity shutdown waits for the child however long terminate takes."""
        log.terminate_delay["a"] = 1000
        sup = await otpy.Supervisor.start_link([w(log, "a", shutdown=shutdown)], nursery=log.nursery)
        await otpy.stop(sup)
        assert trio.current_time() == 1000.0
        await settle()
        assert log.of("exit") == [("a", "shutdown")]

    async def test_start_failure_stops_started_children(self, log: Log) -> None:
        """A child that fails to start stops the children already started and fails the supervisor's start."""
        log.fail("b", "bad_config")
        with structlog.testing.capture_logs() as logs, pytest.raises(otpy.StartError) as info:
            await start_sup(log)
        assert info.value.reason == ("shutdown", ("failed_to_start_child", "b", "bad_config"))
        assert log.ids("start") == ["a"]
        assert log.of("terminate") == [("a", "shutdown")]
        assert "c" not in log.attempts
        assert otpy.whereis("sup") is None
        assert otpy.whereis("a") is None
        [report] = [e for e in logs if e["event"] == "child_start_failed"]
        assert report["child_id"] == "b"

    async def test_start_failure_with_exception(self, log: Log) -> None:
        """A child whose init raises fails the supervisor's start with the exception inside the reason."""
        error = KeyError("missing")
        log.fail("a", error)
        with pytest.raises(otpy.StartError) as info:
            await start_sup(log)
        assert info.value.reason == ("shutdown", ("failed_to_start_child", "a", error))

    async def test_start_failure_on_a_taken_name(self, log: Log) -> None:
        """A child whose name is taken fails the start with ("already_started", holder)."""
        holder = await Worker.start_link(log, "x", name="b", nursery=log.nursery)
        with pytest.raises(otpy.StartError) as info:
            await start_sup(log)
        assert info.value.reason == ("shutdown", ("failed_to_start_child", "b", ("already_started", holder)))

    async def test_ignore_at_start(self, log: Log) -> None:
        """A child that ignores at start is kept not running, unless it is temporary (dropped)."""
        log.ignoring.update({"b", "t"})
        children = [w(log, "a"), w(log, "b"), w(log, "t", restart="temporary")]
        sup = await otpy.Supervisor.start_link(children, nursery=log.nursery)
        infos = await otpy.Supervisor.which_children(sup)
        assert [(i.id, i.child is None) for i in infos] == [("b", True), ("a", False)]

    async def test_restart_that_ignores_leaves_the_child_stopped(self, log: Log) -> None:
        """An automatic restart that returns Ignore leaves the child stopped, without retries."""
        sup = await start_sup(log, "ab")
        log.ignoring.add("a")
        await crash("a")
        infos = {i.id: i.child for i in await otpy.Supervisor.which_children(sup)}
        assert infos["a"] is None
        assert log.ids("init_ignore") == ["a"]
        counts = await otpy.Supervisor.count_children(sup)
        assert (counts.specs, counts.active) == (2, 1)

    async def test_nested_shutdown_is_depth_first(self, log: Log) -> None:
        """Stopping a tree stops each subtree's children before moving to the earlier siblings."""
        inner = otpy.Supervisor.child_spec([w(log, "x"), w(log, "y")], id="inner", name="inner")
        sup = await otpy.Supervisor.start_link([w(log, "a"), inner, w(log, "z")], nursery=log.nursery)
        assert log.ids("start") == ["a", "x", "y", "z"]
        await otpy.stop(sup)
        assert log.ids("terminate") == ["z", "y", "x", "a"]

    async def test_cancelling_the_nursery_stops_children_in_order(self) -> None:
        """Cancelling the nursery that hosts a supervisor stops its children in reverse order, running terminate."""
        async with trio.open_nursery() as outer:
            log = Log(outer)
            children = [w(log, "a"), w(log, "b", trap=False), w(log, "c")]
            sup = await otpy.Supervisor.start_link(children, nursery=outer)
            log.clear()
            outer.cancel_scope.cancel()
        assert log.of("terminate") == [("c", "shutdown"), ("a", "shutdown")]
        assert not sup.alive
        assert sup.exit_reason == "shutdown"
        for name in "abc":
            assert otpy.whereis(name) is None

    async def test_kill_supervisor_children_get_killed(self, log: Log) -> None:
        """Killing a supervisor sends its trapping children the exit signal "killed" from their parent."""
        sup = await start_sup(log)
        a = pid_of("a")
        otpy.exit(sup, "kill")
        assert await exited(sup) == "killed"
        assert await exited(a) == "killed"
        await settle()
        assert sorted(log.of("terminate")) == [("a", "killed"), ("b", "killed"), ("c", "killed")]

    async def test_exit_signal_from_a_stranger_is_ignored(self, log: Log) -> None:
        """A supervisor ignores an exit signal from a process that is neither its parent nor a child."""

        class Stranger(otpy.GenServer):
            async def handle_call(self, request: Any, from_: otpy.From) -> None:
                otpy.exit(request, "boom")

        sup = await start_sup(log)
        stranger = await Stranger.start_link(nursery=log.nursery)
        await otpy.call(stranger, sup)
        assert await otpy.Supervisor.count_children(sup) == otpy.ChildCounts(3, 3, 0, 3)

    async def test_exit_signal_from_the_parent_stops_the_supervisor(self, log: Log) -> None:
        """An exit signal from outside any process (the parent of a top supervisor) stops it in order."""
        sup = await start_sup(log)
        otpy.exit(sup, ("shutdown", "bye"))
        assert await exited(sup) == ("shutdown", "bye")
        assert log.ids("terminate") == ["c", "b", "a"]


# --- the management API -------------------------------------------------------------------


class TestManagementApi:
    async def test_which_children_most_recent_first(self, log: Log) -> None:
        """which_children lists children most recently added first, with pid and type."""
        sup = await start_sup(log, "ab")
        pid = await otpy.Supervisor.start_child(sup, w(log, "c"))
        infos = await otpy.Supervisor.which_children(sup)
        assert infos == [
            otpy.ChildInfo("c", pid, "worker"),
            otpy.ChildInfo("b", pid_of("b"), "worker"),
            otpy.ChildInfo("a", pid_of("a"), "worker"),
        ]

    async def test_count_children(self, log: Log) -> None:
        """count_children counts specs, running children, and specs by type."""
        inner = otpy.Supervisor.child_spec([], id="inner")
        sup = await otpy.Supervisor.start_link([w(log, "a"), w(log, "b"), inner], nursery=log.nursery)
        await otpy.Supervisor.terminate_child(sup, "b")
        assert await otpy.Supervisor.count_children(sup) == otpy.ChildCounts(
            specs=3, active=2, supervisors=1, workers=2
        )

    async def test_start_child_appends(self, log: Log) -> None:
        """start_child starts the child and adds it last in start order."""
        sup = await start_sup(log, "ab")
        pid = await otpy.Supervisor.start_child(sup, w(log, "c"))
        assert pid is pid_of("c")
        assert pid.alive
        await otpy.stop(sup)
        assert log.ids("terminate") == ["c", "b", "a"]

    async def test_start_child_already_started(self, log: Log) -> None:
        """start_child of a running id raises AlreadyStarted with the running pid."""
        sup = await start_sup(log, "a")
        with pytest.raises(otpy.AlreadyStarted) as info:
            await otpy.Supervisor.start_child(sup, w(log, "a"))
        assert info.value.pid is pid_of("a")
        assert info.value.child_id == "a"
        assert isinstance(info.value, otpy.SupervisorError)

    async def test_start_child_already_present(self, log: Log) -> None:
        """start_child of a stopped id raises AlreadyPresent."""
        sup = await start_sup(log, "a")
        await otpy.Supervisor.terminate_child(sup, "a")
        with pytest.raises(otpy.AlreadyPresent) as info:
            await otpy.Supervisor.start_child(sup, w(log, "a"))
        assert info.value.child_id == "a"

    async def test_start_child_failure(self, log: Log) -> None:
        """start_child of a child whose init fails raises StartError naming it, and adds nothing."""
        sup = await start_sup(log, "a")
        log.fail("b", "nope")
        with pytest.raises(otpy.StartError) as info:
            await otpy.Supervisor.start_child(sup, w(log, "b"))
        assert info.value.child_id == "b"
        assert info.value.reason == "nope"
        assert [i.id for i in await otpy.Supervisor.which_children(sup)] == ["a"]

    async def test_start_child_name_taken(self, log: Log) -> None:
        """start_child of a child whose name another process holds raises AlreadyRegistered with the holder."""
        sup = await start_sup(log, "a")
        holder = await Worker.start_link(log, "x", name="b", nursery=log.nursery)
        with pytest.raises(otpy.AlreadyRegistered) as info:
            await otpy.Supervisor.start_child(sup, w(log, "b"))
        assert info.value.pid is holder
        assert [i.id for i in await otpy.Supervisor.which_children(sup)] == ["a"]

    async def test_start_child_ignore(self, log: Log) -> None:
        """start_child of a child that ignores returns None; a permanent spec is kept, a temporary one is not."""
        sup = await start_sup(log, "a")
        log.ignoring.update({"b", "t"})
        assert await otpy.Supervisor.start_child(sup, w(log, "b")) is None
        assert await otpy.Supervisor.start_child(sup, w(log, "t", restart="temporary")) is None
        latest = (await otpy.Supervisor.which_children(sup))[0]
        assert (latest.id, latest.child) == ("b", None)
        assert (await otpy.Supervisor.count_children(sup)).specs == 2

    async def test_terminate_child_keeps_the_spec(self, log: Log) -> None:
        """terminate_child stops the child with "shutdown" and keeps its spec, stopped."""
        sup = await start_sup(log)
        log.clear()
        await otpy.Supervisor.terminate_child(sup, "b")
        assert log.of("terminate") == [("b", "shutdown")]
        assert log.ids("start") == []  # not restarted
        infos = {i.id: i.child for i in await otpy.Supervisor.which_children(sup)}
        assert infos["b"] is None
        assert otpy.whereis("b") is None

    async def test_terminate_child_is_idempotent(self, log: Log) -> None:
        """terminate_child of a stopped child succeeds again."""
        sup = await start_sup(log)
        await otpy.Supervisor.terminate_child(sup, "b")
        await otpy.Supervisor.terminate_child(sup, "b")
        assert (await otpy.Supervisor.count_children(sup)).active == 2

    async def test_terminate_child_not_found(self, log: Log) -> None:
        """terminate_child of an unknown id, or by pid, raises ChildNotFound."""
        sup = await start_sup(log)
        with pytest.raises(otpy.ChildNotFound) as info:
            await otpy.Supervisor.terminate_child(sup, "zzz")
        assert info.value.child == "zzz"
        with pytest.raises(otpy.ChildNotFound):
            await otpy.Supervisor.terminate_child(sup, pid_of("a"))
        with pytest.raises(otpy.ChildNotFound):
            await otpy.Supervisor.terminate_child(sup, ["unhashable"])

    async def test_terminate_child_with_another_exit_reason(self, log: Log) -> None:
        """A child that exits with another reason while being stopped is reported, and terminate_child succeeds."""

        class Grumpy(Worker):
            async def terminate(self, reason: object) -> None:
                raise otpy.ProcessExit("grumpy")

        spec = Grumpy.child_spec(log, "g", id="g", name="g")
        sup = await otpy.Supervisor.start_link([spec], name="sup", nursery=log.nursery)
        g = pid_of("g")
        with structlog.testing.capture_logs() as logs:
            await otpy.Supervisor.terminate_child(sup, "g")
        assert g.exit_reason == "grumpy"
        [report] = [e for e in logs if e["event"] == "child_shutdown_failed"]
        assert report["reason"] == "grumpy"
        assert report["supervisor"] == "sup"

    async def test_terminate_temporary_child_removes_it(self, log: Log) -> None:
        """terminate_child of a temporary child removes its spec."""
        sup = await otpy.Supervisor.start_link([w(log, "t", restart="temporary")], nursery=log.nursery)
        await otpy.Supervisor.terminate_child(sup, "t")
        assert await otpy.Supervisor.which_children(sup) == []

    async def test_restart_child(self, log: Log) -> None:
        """restart_child starts a stopped child again and returns the new pid."""
        sup = await start_sup(log)
        old = pid_of("b")
        await otpy.Supervisor.terminate_child(sup, "b")
        pid = await otpy.Supervisor.restart_child(sup, "b")
        assert pid is pid_of("b")
        assert pid is not old
        assert await otpy.call("b", "get") == 0

    async def test_restart_child_errors(self, log: Log) -> None:
        """restart_child raises ChildRunning for a running child and ChildNotFound for an unknown one."""
        sup = await start_sup(log)
        with pytest.raises(otpy.ChildRunning) as info:
            await otpy.Supervisor.restart_child(sup, "a")
        assert info.value.child_id == "a"
        with pytest.raises(otpy.ChildNotFound):
            await otpy.Supervisor.restart_child(sup, "zzz")

    async def test_restart_child_init_fails(self, log: Log) -> None:
        """restart_child of a child whose init fails raises StartError with the plain reason."""
        sup = await start_sup(log)
        await otpy.Supervisor.terminate_child(sup, "b")
        log.fail("b", "nope", times=1)
        with pytest.raises(otpy.StartError) as info:
            await otpy.Supervisor.restart_child(sup, "b")
        assert info.value.reason == "nope"
        assert info.value.child_id == "b"
        assert sup.alive
        assert {i.id: i.child for i in await otpy.Supervisor.which_children(sup)}["b"] is None

    async def test_delete_child(self, log: Log) -> None:
        """delete_child forgets a stopped child; start_child with that id then adds it last."""
        sup = await start_sup(log)
        await otpy.Supervisor.terminate_child(sup, "a")
        await otpy.Supervisor.delete_child(sup, "a")
        assert [i.id for i in await otpy.Supervisor.which_children(sup)] == ["c", "b"]
        await otpy.Supervisor.start_child(sup, w(log, "a"))
        assert [i.id for i in await otpy.Supervisor.which_children(sup)] == ["a", "c", "b"]
        log.clear()
        await otpy.stop(sup)
        assert log.ids("terminate") == ["a", "c", "b"]

    async def test_delete_child_errors(self, log: Log) -> None:
        """delete_child raises ChildRunning for a running child and ChildNotFound for an unknown one."""
        sup = await start_sup(log)
        with pytest.raises(otpy.ChildRunning):
            await otpy.Supervisor.delete_child(sup, "a")
        with pytest.raises(otpy.ChildNotFound):
            await otpy.Supervisor.delete_child(sup, "zzz")

    async def test_restarting_state(self, log: Log, autojump_clock: trio.testing.MockClock) -> None:
        """Between failed restart attempts the child is "restarting" and the API answers accordingly."""
        sup = await start_sup(log, max_restarts=100, max_seconds=1000)
        log.fail("b")
        log.init_delay["b"] = 1.0
        old = pid_of("b")
        otpy.cast(old, ("exit", "boom"))
        await exited(old)
        await trio.sleep(0.5)  # the first restart attempt is in progress until t=1

        async def expect(exc_type: type[Exception], op: Any, *args: Any) -> None:
            with pytest.raises(exc_type):
                await op(sup, *args)

        await expect(otpy.ChildRestarting, otpy.Supervisor.restart_child, "b")
        assert trio.current_time() == 1.0
        assert {i.id: i.child for i in await otpy.Supervisor.which_children(sup)}["b"] == "restarting"
        await expect(otpy.ChildRestarting, otpy.Supervisor.delete_child, "b")
        await expect(otpy.AlreadyPresent, otpy.Supervisor.start_child, w(log, "b"))
        counts = await otpy.Supervisor.count_children(sup)
        assert (counts.specs, counts.active) == (3, 2)
        await otpy.Supervisor.terminate_child(sup, "b")
        attempts = log.attempts["b"]
        await trio.sleep(10)
        assert log.attempts["b"] == attempts  # the retries were cancelled
        assert {i.id: i.child for i in await otpy.Supervisor.which_children(sup)}["b"] is None
        assert sup.alive

    async def test_unknown_request(self, log: Log) -> None:
        """An unknown request crashes the supervisor with ValueError, as OTP's missing clause does."""
        sup = await otpy.Supervisor.start([w(log, "a")], nursery=log.nursery)  # unlinked: it crashes
        with pytest.raises(otpy.ServerExited) as info:
            await otpy.call(sup, "what?")
        assert isinstance(info.value.reason, ValueError)


# --- auto_shutdown ------------------------------------------------------------------------


class TestAutoShutdown:
    async def test_any_significant_normal_exit(self, log: Log) -> None:
        """With any_significant, a significant transient child's normal exit stops the supervisor."""
        children = [w(log, "a"), w(log, "s", restart="transient", significant=True), w(log, "c")]
        sup = await otpy.Supervisor.start_link(children, auto_shutdown="any_significant", nursery=log.nursery)
        log.clear()
        await crash("s", "normal")
        assert await exited(sup) == "shutdown"
        assert log.of("terminate") == [("s", "normal"), ("c", "shutdown"), ("a", "shutdown")]

    async def test_any_significant_abnormal_exit_restarts(self, log: Log) -> None:
        """A significant transient child that crashes is restarted, not a reason to stop."""
        children = [w(log, "s", restart="transient", significant=True)]
        sup = await otpy.Supervisor.start_link(children, auto_shutdown="any_significant", nursery=log.nursery)
        await crash("s", "boom")
        assert sup.alive
        assert log.ids("start") == ["s", "s"]

    async def test_temporary_significant_any_reason(self, log: Log) -> None:
        """A significant temporary child stops the supervisor whatever its reason, even "killed"."""
        children = [w(log, "a"), w(log, "t", restart="temporary", significant=True)]
        sup = await otpy.Supervisor.start_link(children, auto_shutdown="any_significant", nursery=log.nursery)
        await crash("t", "killed")
        assert await exited(sup) == "shutdown"

    async def test_all_significant(self, log: Log) -> None:
        """With all_significant, the supervisor stops when the last significant child has exited."""
        children = [
            w(log, "a"),
            w(log, "s1", restart="transient", significant=True),
            w(log, "s2", restart="transient", significant=True),
        ]
        sup = await otpy.Supervisor.start_link(children, auto_shutdown="all_significant", nursery=log.nursery)
        await crash("s1", "normal")
        assert sup.alive
        await crash("s2", ("shutdown", "done"))
        assert await exited(sup) == "shutdown"

    async def test_all_significant_counts_terminated_children_as_stopped(self, log: Log) -> None:
        """A significant child stopped by terminate_child counts as not running for all_significant."""
        children = [
            w(log, "s1", restart="transient", significant=True),
            w(log, "s2", restart="transient", significant=True),
        ]
        sup = await otpy.Supervisor.start_link(children, auto_shutdown="all_significant", nursery=log.nursery)
        await otpy.Supervisor.terminate_child(sup, "s1")
        assert sup.alive
        await crash("s2", "normal")
        assert await exited(sup) == "shutdown"

    async def test_auto_shutdown_cascades(self, log: Log) -> None:
        """A supervisor that auto-shuts down, as a significant transient child, can stop its parent in turn."""
        inner = otpy.Supervisor.child_spec(
            [w(log, "s", restart="transient", significant=True)],
            id="inner",
            name="inner",
            restart="transient",
            significant=True,
            auto_shutdown="any_significant",
        )
        outer = await otpy.Supervisor.start_link(
            [w(log, "a"), inner], auto_shutdown="any_significant", nursery=log.nursery
        )
        inner_pid = pid_of("inner")
        await crash("s", "normal")
        assert await exited(inner_pid) == "shutdown"
        assert await exited(outer) == "shutdown"
        assert log.of("terminate") == [("s", "normal"), ("a", "shutdown")]

    async def test_terminate_child_does_not_trigger(self, log: Log) -> None:
        """terminate_child of a significant child does not stop the supervisor."""
        children = [w(log, "a"), w(log, "s", restart="transient", significant=True)]
        sup = await otpy.Supervisor.start_link(children, auto_shutdown="any_significant", nursery=log.nursery)
        await otpy.Supervisor.terminate_child(sup, "s")
        await settle()
        assert sup.alive

    async def test_non_significant_exit_does_not_trigger(self, log: Log) -> None:
        """A non-significant child's exit does not stop an auto_shutdown supervisor."""
        children = [w(log, "n", restart="transient"), w(log, "s", restart="transient", significant=True)]
        sup = await otpy.Supervisor.start_link(children, auto_shutdown="any_significant", nursery=log.nursery)
        await crash("n", "normal")
        assert sup.alive

    async def test_bystander_does_not_trigger(self, log: Log) -> None:
        """A significant child stopped as a rest_for_one bystander does not stop the supervisor."""
        children = [w(log, "a"), w(log, "s", restart="transient", significant=True)]
        sup = await otpy.Supervisor.start_link(
            children, strategy="rest_for_one", auto_shutdown="any_significant", nursery=log.nursery
        )
        await crash("a")
        assert sup.alive
        assert log.ids("start") == ["a", "s", "a", "s"]


# --- nesting ------------------------------------------------------------------------------


class TestNesting:
    async def test_permanent_child_supervisor_is_restarted(self, log: Log) -> None:
        """A child supervisor that gives up exits with "shutdown" and its permanent spec restarts it."""
        inner = otpy.Supervisor.child_spec([w(log, "x"), w(log, "y")], id="inner", name="inner", max_restarts=0)
        outer = await otpy.Supervisor.start_link([w(log, "a"), inner], name="outer", nursery=log.nursery)
        first_inner = pid_of("inner")
        await otpy.Supervisor.start_child("inner", w(log, "extra"))
        log.clear()
        with structlog.testing.capture_logs() as logs:
            await crash("x")
        assert await exited(first_inner) == "shutdown"
        assert outer.alive
        assert pid_of("inner") is not first_inner
        assert log.ids("start") == ["x", "y"]  # the added child is lost
        assert [i.id for i in await otpy.Supervisor.which_children("inner")] == ["y", "x"]
        reports = [(e["event"], e["supervisor"]) for e in logs if e.get("report") == "supervisor"]
        assert ("supervisor_gave_up", "inner") in reports
        assert ("child_terminated", "outer") in reports

    async def test_transient_child_supervisor_is_not_restarted(self, log: Log) -> None:
        """A transient child supervisor that gives up is not restarted: "shutdown" is a normal exit."""
        inner = otpy.Supervisor.child_spec([w(log, "x")], id="inner", name="inner", max_restarts=0, restart="transient")
        outer = await otpy.Supervisor.start_link([w(log, "a"), inner], nursery=log.nursery)
        log.clear()
        await crash("x")
        assert outer.alive
        assert otpy.whereis("inner") is None
        assert log.ids("start") == []
        assert {i.id: i.child for i in await otpy.Supervisor.which_children(outer)}["inner"] is None

    async def test_escalation_counts_as_one_restart_of_the_parent(self, log: Log) -> None:
        """An escalating child supervisor counts toward its parent's intensity, which may give up in turn."""
        inner = otpy.Supervisor.child_spec([w(log, "x")], id="inner", name="inner", max_restarts=0)
        outer = await otpy.Supervisor.start_link([inner], max_restarts=1, nursery=log.nursery)
        await crash("x")
        assert outer.alive
        await crash("x")
        assert await exited(outer) == "shutdown"

    async def test_child_supervisor_type(self, log: Log) -> None:
        """A supervisor's child spec has type "supervisor" and infinity shutdown by default."""
        spec = otpy.Supervisor.child_spec([], id="inner")
        assert spec.type == "supervisor"
        assert spec.shutdown_seconds == math.inf
        sup = await otpy.Supervisor.start_link([spec], nursery=log.nursery)
        [info] = await otpy.Supervisor.which_children(sup)
        assert info.type == "supervisor"


# --- module-based supervisors -------------------------------------------------------------


class TestModuleBased:
    async def test_init_returns_a_spec(self, log: Log) -> None:
        """A Supervisor subclass returns its children and flags from init."""

        class App(otpy.Supervisor):
            async def init(self, log: Log) -> otpy.SupervisorSpec:  # type: ignore[override]
                return otpy.SupervisorSpec([w(log, "a"), w(log, "b")], strategy="one_for_all")

        sup = await App.start_link(log, nursery=log.nursery)
        assert await otpy.call(sup, "strategy") == "one_for_all"
        log.clear()
        await crash("a")
        assert log.ids("start") == ["a", "b"]

    async def test_init_ignore(self, log: Log) -> None:
        """A supervisor whose init returns Ignore raises StartIgnored."""

        class Off(otpy.Supervisor):
            async def init(self) -> otpy.Ignore:  # type: ignore[override]
                return otpy.Ignore()

        with pytest.raises(otpy.StartIgnored):
            await Off.start_link(nursery=log.nursery)

    async def test_init_bad_return(self, log: Log) -> None:
        """A supervisor whose init returns something else fails to start with a TypeError reason."""

        class Bad(otpy.Supervisor):
            async def init(self) -> Any:  # type: ignore[override]
                return [1, 2]

        with pytest.raises(otpy.StartError) as info:
            await Bad.start_link(nursery=log.nursery)
        assert isinstance(info.value.reason, TypeError)

    async def test_class_and_tuple_child_specs(self, log: Log) -> None:
        """A server class or a (class, arg) pair is accepted as a child spec."""

        class Plain(otpy.GenServer):
            async def init(self, arg: object = None) -> None:
                self.arg = arg

            async def handle_call(self, request: Any, from_: otpy.From) -> Any:
                return self.arg

        sup = await otpy.Supervisor.start_link([Plain], nursery=log.nursery)
        [info] = await otpy.Supervisor.which_children(sup)
        assert info.id == Plain.__qualname__
        await otpy.Supervisor.terminate_child(sup, info.id)
        await otpy.Supervisor.delete_child(sup, info.id)
        pid = await otpy.Supervisor.start_child(sup, (Plain, 42))
        assert pid is not None
        assert await otpy.call(pid, "arg") == 42


# --- restart listeners --------------------------------------------------------------------


@pytest.fixture
def restarts() -> Any:
    """The ChildRestarted values every supervisor reports while the test runs."""
    seen: list[otpy.ChildRestarted] = []
    otpy.add_restart_listener(seen.append)
    yield seen
    otpy.remove_restart_listener(seen.append)


class TestRestartListeners:
    async def test_each_restart_is_reported_once_with_its_supervisor_and_child(
        self, log: Log, restarts: list[otpy.ChildRestarted]
    ) -> None:
        """A child crashed three times gives three ChildRestarted, numbered, with the new pids;
        its siblings, never restarted, give none."""
        await start_sup(log, max_restarts=10)
        new_pids = []
        for _ in range(3):
            await crash("b")
            new_pids.append(pid_of("b"))
        assert restarts == [otpy.ChildRestarted("sup", "b", pid, n) for n, pid in enumerate(new_pids, 1)]

    async def test_one_for_all_reports_every_child_it_restarts(
        self, log: Log, restarts: list[otpy.ChildRestarted]
    ) -> None:
        await start_sup(log, strategy="one_for_all")
        await crash("b")
        assert [(r.supervisor, r.child_id, r.restarts) for r in restarts] == [
            ("sup", "a", 1),
            ("sup", "b", 1),
            ("sup", "c", 1),
        ]

    async def test_a_supervisor_without_a_name_is_its_pid(self, log: Log, restarts: list[otpy.ChildRestarted]) -> None:
        sup = await otpy.Supervisor.start_link([w(log, "a")], nursery=log.nursery)
        await crash("a")
        assert [(r.supervisor, r.child_id) for r in restarts] == [(repr(sup), "a")]

    async def test_a_dynamic_supervisor_reports_its_restarts(
        self, log: Log, restarts: list[otpy.ChildRestarted]
    ) -> None:
        await otpy.DynamicSupervisor.start_link(name="dyn", nursery=log.nursery)
        await otpy.DynamicSupervisor.start_child("dyn", w(log, "d"))
        await crash("d")
        await crash("d")
        assert [(r.supervisor, r.child_id, r.pid, r.restarts) for r in restarts] == [
            ("dyn", "d", restarts[0].pid, 1),
            ("dyn", "d", pid_of("d"), 2),
        ]

    async def test_a_failing_listener_is_logged_and_the_supervisor_goes_on(
        self, log: Log, restarts: list[otpy.ChildRestarted]
    ) -> None:
        def broken(restart: otpy.ChildRestarted) -> None:
            raise ValueError("listener bug")

        otpy.add_restart_listener(broken)
        otpy.add_restart_listener(broken)  # once is enough
        try:
            await start_sup(log, "a")
            with structlog.testing.capture_logs() as logs:
                await crash("a")
        finally:
            otpy.remove_restart_listener(broken)
        assert len(restarts) == 1  # the other listener still heard it
        assert await otpy.call("a", "get") == 0
        failed = [e for e in logs if e["event"] == "restart_listener_failed"]
        assert len(failed) == 1
        assert failed[0]["child_id"] == "a"
        assert "listener bug" in failed[0]["error"]

    async def test_a_removed_listener_hears_nothing(self, log: Log) -> None:
        seen: list[otpy.ChildRestarted] = []
        otpy.add_restart_listener(seen.append)
        otpy.remove_restart_listener(seen.append)
        otpy.remove_restart_listener(seen.append)  # not there: nothing
        await start_sup(log, "a")
        await crash("a")
        assert seen == []
