"""``async with Server.open(...)``: a server or a tree owned by a block, and ``Supervisor.stop`` (issue 8)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

import otpy


class Counter(otpy.GenServer):
    trap_exit: ClassVar[bool] = True
    events: ClassVar[list[tuple[str, object]]] = []

    async def init(self, count: int, label: str = "counter") -> None:
        self.count = count
        self.label = label

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case "get":
                return self.count
            case "crash":
                raise KeyError("crash")
            case "quit":
                return otpy.Stop("normal", reply="bye")
            case _:
                raise ValueError(request)

    async def handle_cast(self, request: Any) -> None:
        self.count += request

    async def terminate(self, reason: object) -> None:
        Counter.events.append((self.label, reason))


class Stubborn(otpy.GenServer):
    async def terminate(self, reason: object) -> None:
        await trio.sleep_forever()


class Broken(otpy.GenServer):
    async def init(self) -> None:
        raise RuntimeError("no database")


@pytest.fixture(autouse=True)
def clear_events() -> None:
    Counter.events.clear()


class TestLoneServer:
    async def test_the_block_owns_the_server(self) -> None:
        """The server runs inside the block, registered; it is stopped with "shutdown" when the block ends."""
        async with Counter.open(5, name="c") as pid:
            assert otpy.whereis("c") is pid
            otpy.cast("c", 2)
            assert await otpy.call("c", "get") == 7
        assert not pid.alive
        assert pid.exit_reason == "shutdown"
        assert Counter.events == [("counter", "shutdown")]
        assert otpy.whereis("c") is None

    async def test_an_error_in_the_block_stops_the_server_and_comes_out(self) -> None:
        """The body's exception leaves the block as from a nursery, after the server is stopped."""
        with pytest.RaisesGroup(ValueError):
            async with Counter.open(0) as pid:
                raise ValueError("body failed")
        assert pid.exit_reason == "shutdown"
        assert Counter.events == [("counter", "shutdown")]

    async def test_cancelling_the_block_stops_the_server(self, autojump_clock: trio.testing.MockClock) -> None:
        """A cancelled block still stops its server (shielded), and the cancellation goes on to its scope."""
        with trio.move_on_after(3) as scope:
            async with Counter.open(0) as pid:
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert pid.exit_reason == "shutdown"
        assert Counter.events == [("counter", "shutdown")]
        assert trio.current_time() == 3

    async def test_a_crash_cancels_the_block_and_surfaces(self) -> None:
        """A server that crashes while the block runs cancels the block; ProcessCrashed carries the cause."""
        reached = False
        with pytest.RaisesGroup(pytest.RaisesExc(otpy.ProcessCrashed)) as info:
            async with Counter.open(0) as pid:
                with pytest.raises(otpy.ServerExited):
                    await otpy.call(pid, "crash")
                await trio.sleep(1)  # the block is cancelled here
                reached = True
        assert not reached
        [crashed] = info.value.exceptions
        assert isinstance(crashed, otpy.ProcessCrashed)
        assert crashed.pid is pid
        assert isinstance(crashed.reason, KeyError)
        assert crashed.__cause__ is crashed.reason

    async def test_a_normal_exit_leaves_the_block_running(self) -> None:
        """A server that stops normally on its own is not an error: the block goes on."""
        async with Counter.open(0) as pid:
            assert await otpy.call(pid, "quit") == "bye"
            await pid.wait_exited()
            await trio.sleep(1)
        assert pid.exit_reason == "normal"

    async def test_a_failed_start_raises_from_the_async_with_line(self) -> None:
        """init's failure is a plain StartError (not a group): the block never ran."""
        with pytest.raises(otpy.StartError) as info:
            async with Broken.open():
                pytest.fail("the block ran")
        assert isinstance(info.value.reason, RuntimeError)

    async def test_a_taken_name_raises_already_registered(self) -> None:
        """A name clash is AlreadyRegistered, as from start_link."""
        async with Counter.open(0, name="c") as first:
            with pytest.raises(otpy.AlreadyRegistered) as info:
                async with Counter.open(1, name="c"):
                    pytest.fail("the block ran")
            assert info.value.pid is first

    async def test_a_server_that_does_not_stop_is_killed_after_shutdown_seconds(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """terminate that never returns: after ``shutdown`` seconds the server is killed."""
        async with Stubborn.open(shutdown=2.5) as pid:
            pass
        assert pid.exit_reason == "killed"
        assert trio.current_time() == 2.5

    async def test_init_gets_the_arguments(self) -> None:
        """Positional and keyword arguments other than the options go to init."""
        async with Counter.open(3, label="mine") as pid:
            assert await otpy.call(pid, "get") == 3
        assert Counter.events == [("mine", "shutdown")]


class TestTree:
    async def test_the_tree_stops_in_reverse_start_order(self) -> None:
        """On leaving the block the supervisor stops its children last-started first."""
        children = [
            Counter.child_spec(0, label="a", id="a"),
            Counter.child_spec(0, label="b", id="b"),
            Counter.child_spec(0, label="c", id="c"),
        ]
        async with otpy.Supervisor.open(children, strategy="one_for_all", name="app") as sup:
            assert otpy.whereis("app") is sup
            assert (await otpy.Supervisor.count_children(sup)).active == 3
        assert sup.exit_reason == "shutdown"
        assert Counter.events == [("c", "shutdown"), ("b", "shutdown"), ("a", "shutdown")]

    async def test_restarts_happen_inside_the_block(self) -> None:
        """A crashing child is restarted by its supervisor; the block is not disturbed."""
        async with otpy.Supervisor.open([Counter.child_spec(0, name="w")], strategy="one_for_one") as sup:
            first = otpy.whereis("w")
            assert first is not None
            with pytest.raises(otpy.ServerExited):
                await otpy.call(first, "crash")
            await otpy.Supervisor.count_children(sup)
            second = otpy.whereis("w")
            assert second is not None
            assert second is not first
        assert not second.alive

    async def test_a_supervisor_that_gives_up_surfaces(self) -> None:
        """Reaching the maximum restart intensity exits with "shutdown", yet it is an error: ProcessCrashed."""
        with pytest.RaisesGroup(pytest.RaisesExc(otpy.ProcessCrashed, check=lambda e: e.reason == "shutdown")):
            async with otpy.Supervisor.open([Counter.child_spec(0, name="w")], max_restarts=0) as sup:
                with pytest.raises(otpy.ServerExited):
                    await otpy.call("w", "crash")
                await trio.sleep_forever()
        assert sup.exit_reason == "shutdown"

    async def test_a_dynamic_supervisor_block(self) -> None:
        """DynamicSupervisor.open, with children started inside the block and stopped with it."""
        async with otpy.DynamicSupervisor.open(max_children=2) as sup:
            pid = await otpy.DynamicSupervisor.start_child(sup, Counter.child_spec(0, label="dyn"))
            assert pid is not None
            assert pid.exit_reason is None  # running
        assert not pid.alive
        assert Counter.events == [("dyn", "shutdown")]


class TestSupervisorStop:
    async def test_supervisor_stop(self, nursery: trio.Nursery) -> None:
        """Supervisor.stop stops the children in order, then the supervisor, with the given reason."""
        children = [Counter.child_spec(0, label="a", id="a"), Counter.child_spec(0, label="b", id="b")]
        sup = await otpy.Supervisor.start_link(children, nursery=nursery)
        await otpy.Supervisor.stop(sup, ("shutdown", "maintenance"))
        assert sup.exit_reason == ("shutdown", "maintenance")
        assert Counter.events == [("b", "shutdown"), ("a", "shutdown")]

    async def test_dynamic_supervisor_stop(self, nursery: trio.Nursery) -> None:
        """DynamicSupervisor.stop is the same function."""
        sup = await otpy.DynamicSupervisor.start_link(name="dyn", nursery=nursery)
        await otpy.DynamicSupervisor.stop("dyn")
        assert sup.exit_reason == "normal"

    async def test_stopping_nothing_raises_no_process(self) -> None:
        """As otpy.stop: a name nobody holds is NoProcess."""
        with pytest.raises(otpy.NoProcess):
            await otpy.Supervisor.stop("nobody", timeout=math.inf)
