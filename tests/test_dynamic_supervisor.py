"""DynamicSupervisor: children on demand, max_children, restart types, intensity, shutdown all at once."""

from __future__ import annotations

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


@attrs.define(eq=False)
class Script:
    """What the jobs did, and how their next starts and stops should go."""

    events: list[tuple[Any, ...]] = attrs.Factory(list)
    failing: dict[str, float] = attrs.Factory(dict)  # job -> failing attempts left
    ignoring: set[str] = attrs.Factory(set)
    init_delay: dict[str, float] = attrs.Factory(dict)
    terminate_delay: dict[str, float] = attrs.Factory(dict)
    attempts: dict[str, int] = attrs.Factory(dict)

    def ids(self, kind: str) -> list[str]:
        return [e[1] for e in self.events if e[0] == kind]


class Job(otpy.GenServer):
    """A trapping worker scripted by a Script."""

    trap_exit = True

    async def init(self, script: Script, job: str) -> Any:
        self.script, self.job = script, job
        script.attempts[job] = script.attempts.get(job, 0) + 1
        if job in script.init_delay:
            await trio.sleep(script.init_delay[job])
        left = script.failing.get(job, 0)
        if left > 0:
            script.failing[job] = left - 1
            script.events.append(("init_fail", job))
            return otpy.Stop(("init_failed", job))
        if job in script.ignoring:
            return otpy.Ignore()
        script.events.append(("start", job))
        return None

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return self.job

    async def handle_cast(self, request: Any) -> None:
        raise otpy.ProcessExit(request)

    async def terminate(self, reason: object) -> None:
        self.script.events.append(("terminate", self.job, reason))
        delay = self.script.terminate_delay.get(self.job)
        if delay is not None:
            await trio.sleep(delay)


def job(script: Script, name: str, **kwargs: Any) -> otpy.ChildSpec:
    return Job.child_spec(script, name, id=name, **kwargs)


async def stop_child(pid: otpy.Pid, reason: object) -> None:
    """Make a child stop itself (or be killed) with ``reason`` and let the supervisor react."""
    if reason == "killed":
        otpy.exit(pid, "kill")
    else:
        otpy.cast(pid, reason)
    await exited(pid)
    await trio.testing.wait_all_tasks_blocked()


async def pids(sup: otpy.Pid) -> list[Any]:
    return [info.child for info in await otpy.DynamicSupervisor.which_children(sup)]


@pytest.fixture(name="script")
def _script() -> Script:
    return Script()


class TestChildren:
    async def test_start_child(self, nursery: trio.Nursery, script: Script) -> None:
        """start_child starts a child linked to the supervisor and returns its pid."""
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        pid = await otpy.DynamicSupervisor.start_child(sup, job(script, "j1"))
        assert isinstance(pid, otpy.Pid)
        assert pid.parent is sup
        assert await otpy.call(pid, "job") == "j1"
        assert await otpy.DynamicSupervisor.which_children(sup) == [otpy.ChildInfo(None, pid, "worker")]

    async def test_ids_are_not_used(self, nursery: trio.Nursery, script: Script) -> None:
        """Children with the same spec id start side by side; they are known by pid."""
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        first = await otpy.DynamicSupervisor.start_child(sup, job(script, "same"))
        second = await otpy.DynamicSupervisor.start_child(sup, job(script, "same"))
        assert first is not second
        assert sorted(map(repr, await pids(sup))) == sorted([repr(first), repr(second)])

    async def test_count_children(self, nursery: trio.Nursery, script: Script) -> None:
        """count_children counts children, running ones, and children by type."""
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        for name in ("a", "b"):
            await otpy.DynamicSupervisor.start_child(sup, job(script, name))
        await otpy.DynamicSupervisor.start_child(sup, otpy.DynamicSupervisor.child_spec(id="inner"))
        assert await otpy.DynamicSupervisor.count_children(sup) == otpy.ChildCounts(
            specs=3, active=3, supervisors=1, workers=2
        )

    async def test_terminate_child(self, nursery: trio.Nursery, script: Script) -> None:
        """terminate_child stops the child with "shutdown" and forgets it."""
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        pid = await otpy.DynamicSupervisor.start_child(sup, job(script, "a"))
        assert pid is not None
        await otpy.DynamicSupervisor.terminate_child(sup, pid)
        assert not pid.alive
        assert script.events[-1] == ("terminate", "a", "shutdown")
        assert await pids(sup) == []
        assert script.ids("start") == ["a"]  # not restarted

    async def test_terminate_child_not_found(self, nursery: trio.Nursery, script: Script) -> None:
        """terminate_child of a pid that is not (or no longer) a child raises ChildNotFound."""
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        pid = await otpy.DynamicSupervisor.start_child(sup, job(script, "a"))
        assert pid is not None
        await otpy.DynamicSupervisor.terminate_child(sup, pid)
        with pytest.raises(otpy.ChildNotFound) as info:
            await otpy.DynamicSupervisor.terminate_child(sup, pid)
        assert info.value.child is pid
        with pytest.raises(otpy.ChildNotFound):
            await otpy.DynamicSupervisor.terminate_child(sup, "a")  # type: ignore[arg-type]
        stranger = await Job.start_link(script, "x", nursery=nursery)
        with pytest.raises(otpy.ChildNotFound):
            await otpy.DynamicSupervisor.terminate_child(sup, stranger)

    async def test_start_child_failure(self, nursery: trio.Nursery, script: Script) -> None:
        """start_child of a child whose init fails raises StartError and adds nothing."""
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        script.failing["a"] = 1
        with pytest.raises(otpy.StartError) as info:
            await otpy.DynamicSupervisor.start_child(sup, job(script, "a"))
        assert info.value.reason == ("init_failed", "a")
        assert await pids(sup) == []

    async def test_start_child_ignore(self, nursery: trio.Nursery, script: Script) -> None:
        """start_child of a child that ignores returns None and adds nothing."""
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        script.ignoring.add("a")
        assert await otpy.DynamicSupervisor.start_child(sup, job(script, "a")) is None
        assert (await otpy.DynamicSupervisor.count_children(sup)).specs == 0

    async def test_start_child_invalid_spec(self, nursery: trio.Nursery) -> None:
        """start_child of a malformed spec raises InvalidChildSpec and the supervisor lives on."""
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        with pytest.raises(otpy.InvalidChildSpec) as info:
            await otpy.DynamicSupervisor.start_child(sup, {"id": "x", "start": 42})
        assert info.value.field == "start"
        assert sup.alive


class TestMaxChildren:
    async def test_max_children(self, nursery: trio.Nursery, script: Script) -> None:
        """start_child beyond max_children raises MaxChildren; a free slot can be reused."""
        sup = await otpy.DynamicSupervisor.start_link(max_children=2, nursery=nursery)
        first = await otpy.DynamicSupervisor.start_child(sup, job(script, "a"))
        await otpy.DynamicSupervisor.start_child(sup, job(script, "b"))
        with pytest.raises(otpy.MaxChildren) as info:
            await otpy.DynamicSupervisor.start_child(sup, job(script, "c"))
        assert info.value.max_children == 2
        assert isinstance(info.value, otpy.SupervisorError)
        assert script.attempts.get("c") is None
        assert first is not None
        await otpy.DynamicSupervisor.terminate_child(sup, first)
        assert await otpy.DynamicSupervisor.start_child(sup, job(script, "c")) is not None

    async def test_max_children_zero(self, nursery: trio.Nursery, script: Script) -> None:
        """max_children=0 refuses every child."""
        sup = await otpy.DynamicSupervisor.start_link(max_children=0, nursery=nursery)
        with pytest.raises(otpy.MaxChildren):
            await otpy.DynamicSupervisor.start_child(sup, job(script, "a"))

    async def test_restarting_children_count(
        self, nursery: trio.Nursery, script: Script, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A child between failed restart attempts still counts toward max_children, and is not active."""
        sup = await otpy.DynamicSupervisor.start_link(
            max_children=1, max_restarts=100, max_seconds=1000, nursery=nursery
        )
        pid = await otpy.DynamicSupervisor.start_child(sup, job(script, "a"))
        assert pid is not None
        script.failing["a"] = math.inf
        script.init_delay["a"] = 1
        otpy.cast(pid, "boom")
        await exited(pid)
        await trio.sleep(0.5)
        with pytest.raises(otpy.MaxChildren):
            await otpy.DynamicSupervisor.start_child(sup, job(script, "b"))
        assert trio.current_time() == 1.0
        assert await pids(sup) == ["restarting"]
        counts = await otpy.DynamicSupervisor.count_children(sup)
        assert (counts.specs, counts.active) == (1, 0)
        await otpy.DynamicSupervisor.terminate_child(sup, pid)  # cancels the retries
        attempts = script.attempts["a"]
        await trio.sleep(10)
        assert script.attempts["a"] == attempts
        assert await pids(sup) == []
        assert sup.alive


REASONS = [
    pytest.param("normal", True, id="normal"),
    pytest.param("shutdown", True, id="shutdown"),
    pytest.param(("shutdown", 1), True, id="shutdown-tuple"),
    pytest.param("boom", False, id="abnormal"),
    pytest.param("killed", False, id="killed"),
]


class TestRestartTypes:
    @pytest.mark.parametrize(("reason", "normal"), REASONS)
    @pytest.mark.parametrize("restart", ["permanent", "transient", "temporary"])
    async def test_restart_type_decides(
        self, nursery: trio.Nursery, script: Script, restart: str, reason: object, normal: bool
    ) -> None:
        """permanent restarts always, transient after abnormal exits, temporary never; others are removed."""
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        pid = await otpy.DynamicSupervisor.start_child(sup, job(script, "a", restart=restart))
        assert pid is not None
        await stop_child(pid, reason)
        restarted = restart == "permanent" or (restart == "transient" and not normal)
        assert script.ids("start") == (["a", "a"] if restarted else ["a"])
        children = await pids(sup)
        if restarted:
            assert len(children) == 1
            assert children[0] is not pid
            assert children[0].alive
        else:
            assert children == []

    async def test_crash_is_reported(self, nursery: trio.Nursery, script: Script) -> None:
        """A crashed child is reported as child_terminated."""
        sup = await otpy.DynamicSupervisor.start_link(name="dyn", nursery=nursery)
        pid = await otpy.DynamicSupervisor.start_child(sup, job(script, "a"))
        assert pid is not None
        with structlog.testing.capture_logs() as logs:
            await stop_child(pid, "boom")
        [report] = [e for e in logs if e["event"] == "child_terminated"]
        assert report["supervisor"] == "dyn"
        assert report["reason"] == "boom"


class TestIntensity:
    async def test_gives_up(
        self, nursery: trio.Nursery, script: Script, autojump_clock: trio.testing.MockClock
    ) -> None:
        """More than max_restarts restarts within max_seconds stop the supervisor with "shutdown"."""
        sup = await otpy.DynamicSupervisor.start_link(max_restarts=1, max_seconds=5, name="dyn", nursery=nursery)
        other = await otpy.DynamicSupervisor.start_child(sup, job(script, "other"))
        pid = await otpy.DynamicSupervisor.start_child(sup, job(script, "a"))
        assert pid is not None
        assert other is not None
        await stop_child(pid, "boom")
        await trio.sleep(1)
        [pid] = [p for p in await pids(sup) if p is not other]
        with structlog.testing.capture_logs() as logs:
            await stop_child(pid, "boom")
        assert await exited(sup) == "shutdown"
        assert not other.alive
        assert ("terminate", "other", "shutdown") in script.events
        [report] = [e for e in logs if e["event"] == "supervisor_gave_up"]
        assert report["supervisor"] == "dyn"
        assert report["max_restarts"] == 1

    async def test_slow_crashes_never_give_up(
        self, nursery: trio.Nursery, script: Script, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A crash every 7 s never exceeds max_restarts=1 within max_seconds=5."""
        sup = await otpy.DynamicSupervisor.start_link(max_restarts=1, max_seconds=5, nursery=nursery)
        await otpy.DynamicSupervisor.start_child(sup, job(script, "a"))
        for _ in range(5):
            [pid] = await pids(sup)
            await stop_child(pid, "boom")
            await trio.sleep(7)
        assert sup.alive
        assert script.ids("start") == ["a"] * 6

    async def test_failed_restarts_count(self, nursery: trio.Nursery, script: Script) -> None:
        """A child that cannot restart exhausts the intensity and stops the supervisor."""
        sup = await otpy.DynamicSupervisor.start_link(max_restarts=2, nursery=nursery)
        pid = await otpy.DynamicSupervisor.start_child(sup, job(script, "a"))
        assert pid is not None
        script.failing["a"] = math.inf
        await stop_child(pid, "boom")
        assert await exited(sup) == "shutdown"
        assert script.ids("init_fail") == ["a", "a"]


class TestShutdown:
    async def test_children_stop_all_at_once(
        self, nursery: trio.Nursery, script: Script, autojump_clock: trio.testing.MockClock
    ) -> None:
        """On exit all children are asked to stop at once, so hanging ones cost one timeout, not one each."""
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        started = []
        for name in ("a", "b", "c"):
            script.terminate_delay[name] = math.inf
            started.append(await otpy.DynamicSupervisor.start_child(sup, job(script, name, shutdown=2)))
        await otpy.stop(sup)
        assert trio.current_time() == 2.0
        assert sorted(script.ids("terminate")) == ["a", "b", "c"]
        assert [p.exit_reason for p in started if p is not None] == ["killed"] * 3

    async def test_mixed_shutdown_specs(
        self, nursery: trio.Nursery, script: Script, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Each child stops by its own shutdown spec: brutal_kill at once, seconds, then infinity."""
        sup = await otpy.DynamicSupervisor.start_link(nursery=nursery)
        script.terminate_delay.update(slow=math.inf, patient=30)
        brutal = await otpy.DynamicSupervisor.start_child(sup, job(script, "brutal", shutdown="brutal_kill"))
        slow = await otpy.DynamicSupervisor.start_child(sup, job(script, "slow", shutdown=3))
        patient = await otpy.DynamicSupervisor.start_child(sup, job(script, "patient", shutdown="infinity"))
        await otpy.stop(sup, ("shutdown", "bye"))
        assert trio.current_time() == 30.0
        assert sup.exit_reason == ("shutdown", "bye")
        assert [p.exit_reason for p in (brutal, slow, patient) if p is not None] == ["killed", "killed", "shutdown"]
        assert sorted(e for e in script.events if e[0] == "terminate") == [
            ("terminate", "patient", "shutdown"),
            ("terminate", "slow", "shutdown"),
        ]

    async def test_cancelling_the_nursery_stops_children(self, script: Script) -> None:
        """Cancelling the nursery that hosts a DynamicSupervisor stops its children, running terminate."""
        async with trio.open_nursery() as outer:
            sup = await otpy.DynamicSupervisor.start_link(nursery=outer)
            for name in ("a", "b"):
                await otpy.DynamicSupervisor.start_child(sup, job(script, name))
            outer.cancel_scope.cancel()
        assert sorted(script.ids("terminate")) == ["a", "b"]
        assert sup.exit_reason == "shutdown"

    async def test_nested_under_a_supervisor_loses_its_children(self, nursery: trio.Nursery, script: Script) -> None:
        """A DynamicSupervisor restarted by its parent starts again with no children."""
        spec = otpy.DynamicSupervisor.child_spec(id="dyn", name="dyn")
        outer = await otpy.Supervisor.start_link([spec], nursery=nursery)
        await otpy.DynamicSupervisor.start_child("dyn", job(script, "a"))
        first = otpy.whereis("dyn")
        assert first is not None
        otpy.exit(first, "kill")
        await exited(first)
        await trio.testing.wait_all_tasks_blocked()
        assert outer.alive
        assert otpy.whereis("dyn") not in (None, first)
        assert await pids("dyn") == []  # type: ignore[arg-type]


class TestFlags:
    async def test_module_based(self, nursery: trio.Nursery, script: Script) -> None:
        """A DynamicSupervisor subclass returns its flags from init."""

        class Pool(otpy.DynamicSupervisor):
            async def init(self) -> otpy.DynamicSupervisorSpec:  # type: ignore[override]
                return otpy.DynamicSupervisorSpec(max_children=1)

        sup = await Pool.start_link(nursery=nursery)
        await otpy.DynamicSupervisor.start_child(sup, job(script, "a"))
        with pytest.raises(otpy.MaxChildren):
            await otpy.DynamicSupervisor.start_child(sup, job(script, "b"))

    async def test_init_ignore(self, nursery: trio.Nursery) -> None:
        """A DynamicSupervisor whose init returns Ignore raises StartIgnored."""

        class Off(otpy.DynamicSupervisor):
            async def init(self) -> otpy.Ignore:  # type: ignore[override]
                return otpy.Ignore()

        with pytest.raises(otpy.StartIgnored):
            await Off.start_link(nursery=nursery)

    @pytest.mark.parametrize(
        ("flags", "flag"),
        [
            pytest.param({"max_children": -1}, "max_children", id="negative-max-children"),
            pytest.param({"max_children": 2.5}, "max_children", id="float-max-children"),
            pytest.param({"max_restarts": -1}, "max_restarts", id="negative-max-restarts"),
            pytest.param({"max_seconds": 0}, "max_seconds", id="zero-max-seconds"),
            pytest.param({"strategy": "one_for_all"}, "strategy", id="strategy"),
        ],
    )
    async def test_invalid_flags(self, nursery: trio.Nursery, flags: dict[str, Any], flag: str) -> None:
        """An invalid flag fails the start with InvalidSupervisorFlags naming it."""
        with pytest.raises(otpy.StartError) as info:
            await otpy.DynamicSupervisor.start_link(nursery=nursery, **flags)
        assert isinstance(info.value.reason, otpy.InvalidSupervisorFlags)
        assert info.value.reason.flag == flag
        assert info.value.reason.value == flags[flag]
