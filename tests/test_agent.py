"""Agent: state held by a process, read and changed by functions."""

from __future__ import annotations

import operator
from typing import Any

import pytest
import trio
import trio.testing

import otpy


class TestBasics:
    async def test_get_update_get_and_update_cast(self, nursery: trio.Nursery) -> None:
        """get reads, update replaces, get_and_update does both, cast replaces without waiting."""
        agent = await otpy.Agent.start_link(lambda: 0, nursery=nursery)
        assert await otpy.Agent.get(agent, lambda n: n) == 0
        await otpy.Agent.update(agent, lambda n: n + 1)
        assert await otpy.Agent.get(agent, lambda n: n) == 1
        assert await otpy.Agent.get_and_update(agent, lambda n: (n * 100, n + 1)) == 100
        otpy.Agent.cast(agent, lambda n: n * 10)
        assert await otpy.Agent.get(agent, lambda n: n) == 20

    async def test_extra_arguments(self, nursery: trio.Nursery) -> None:
        """fn(*args) starts the agent and fn(state, *args) reads and updates it."""
        agent = await otpy.Agent.start_link(dict, [("a", 1)], b=2, nursery=nursery)
        assert await otpy.Agent.get(agent, operator.getitem, "b") == 2
        await otpy.Agent.update(agent, lambda d, k, v: {**d, k: v}, "c", 3)
        otpy.Agent.cast(agent, lambda d, k: {**d, k: 0}, "d")
        assert await otpy.Agent.get(agent, sorted) == ["a", "b", "c", "d"]
        assert await otpy.Agent.get_and_update(agent, lambda d, k: (d[k], d), "c") == 3

    async def test_async_functions(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """Every function may be async: the agent awaits it."""

        async def slow_start() -> int:
            await trio.sleep(1)
            return 5

        async def slow_add(state: int, n: int) -> int:
            await trio.sleep(1)
            return state + n

        agent = await otpy.Agent.start_link(slow_start, nursery=nursery)
        assert trio.current_time() == 1
        await otpy.Agent.update(agent, slow_add, 2)
        otpy.Agent.cast(agent, slow_add, 3)

        async def read(state: int) -> int:
            return state

        assert await otpy.Agent.get(agent, read) == 10

        async def pop(state: int) -> tuple[str, int]:
            return "popped", 0

        assert await otpy.Agent.get_and_update(agent, pop) == "popped"
        assert await otpy.Agent.get(agent, lambda n: n) == 0

    async def test_functions_run_one_at_a_time(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Concurrent updates that await inside still see each other's results: they are serialised."""
        agent = await otpy.Agent.start_link(lambda: 0, nursery=nursery)

        async def increment(state: int) -> int:
            await trio.sleep(0.1)
            return state + 1

        async with trio.open_nursery() as callers:
            for _ in range(20):
                callers.start_soon(otpy.Agent.update, agent, increment)
        assert await otpy.Agent.get(agent, lambda n: n) == 20

    async def test_functions_run_inside_the_agent(self, nursery: trio.Nursery) -> None:
        """The function runs in the agent's process, not the caller's."""
        agent = await otpy.Agent.start_link(lambda: None, nursery=nursery)
        assert await otpy.Agent.get(agent, lambda _: otpy.self()) is agent

    async def test_names(self, nursery: trio.Nursery) -> None:
        """An agent can be named with a str or a via name and used through it."""
        await otpy.Agent.start_link(lambda: "a", name="agent", nursery=nursery)
        await otpy.Registry.start_link("unique", name="reg", nursery=nursery)
        via = otpy.Registry.via("reg", "agent")
        await otpy.Agent.start_link(lambda: "b", name=via, nursery=nursery)
        assert await otpy.Agent.get("agent", str.upper) == "A"
        assert await otpy.Agent.get(via, str.upper) == "B"
        with pytest.raises(otpy.AlreadyRegistered):
            await otpy.Agent.start_link(lambda: "c", name="agent", nursery=nursery)


class TestStopAndFailures:
    async def test_stop(self, nursery: trio.Nursery) -> None:
        """stop waits until the agent exits with the reason; afterwards calls raise NoProcess."""
        agent = await otpy.Agent.start_link(lambda: 0, name="agent", nursery=nursery)
        otpy.Agent.cast(agent, lambda n: n + 1)
        await otpy.Agent.stop("agent", ("shutdown", "done"))
        assert agent.exit_reason == ("shutdown", "done")
        with pytest.raises(otpy.NoProcess):
            await otpy.Agent.get("agent", lambda n: n)
        otpy.Agent.cast("agent", lambda n: n)  # a cast to nobody does nothing

    async def test_a_raising_function_crashes_the_agent(self, nursery: trio.Nursery) -> None:
        """If fn raises, the agent crashes with that exception and the caller gets ServerExited."""
        agent = await otpy.Agent.start(dict, nursery=nursery)
        with pytest.raises(otpy.ServerExited) as info:
            await otpy.Agent.get(agent, operator.getitem, "missing")
        assert isinstance(info.value.reason, KeyError)
        assert not agent.alive

    async def test_get_and_update_needs_a_pair(self, nursery: trio.Nursery) -> None:
        """A get_and_update function that returns no 2-tuple stops the agent with ('bad_return_value', result)."""
        agent = await otpy.Agent.start(lambda: 1, nursery=nursery)
        with pytest.raises(otpy.ServerExited) as info:
            await otpy.Agent.get_and_update(agent, lambda n: n)
        assert info.value.reason == ("bad_return_value", 1)
        assert agent.exit_reason == ("bad_return_value", 1)

    async def test_a_failing_start_function(self, nursery: trio.Nursery) -> None:
        """If the start function raises, start_link raises StartError caused by it."""

        def boom() -> None:
            raise OSError("no disk")

        with pytest.raises(otpy.StartError) as info:
            await otpy.Agent.start_link(boom, nursery=nursery)
        assert isinstance(info.value.__cause__, OSError)

    async def test_get_timeout(self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
        """A get that takes longer than timeout raises CallTimeout after timeout seconds."""
        agent = await otpy.Agent.start_link(lambda: 0, nursery=nursery)

        async def slow(state: int) -> int:
            await trio.sleep(10)
            return state

        with pytest.raises(otpy.CallTimeout):
            await otpy.Agent.get(agent, slow, timeout=2)
        assert trio.current_time() == 2

    async def test_unknown_requests_crash_it(self, nursery: trio.Nursery) -> None:
        """An agent answers only its own requests: a plain call crashes it, as any GenServer without a clause."""
        agent = await otpy.Agent.start(lambda: 0, nursery=nursery)
        with pytest.raises(otpy.ServerExited):
            await otpy.call(agent, "hello")


class TestSupervision:
    async def test_child_spec_restarts_with_a_fresh_state(self, nursery: trio.Nursery) -> None:
        """Agent.child_spec starts an agent under a supervisor, which restarts it with fn's state again."""
        spec = otpy.Agent.child_spec(lambda: 0, name="counter")
        assert spec.id == "counter"
        assert otpy.Agent.child_spec(list).id == "Agent"
        await otpy.Supervisor.start_link([spec], nursery=nursery)
        await otpy.Agent.update("counter", lambda n: n + 5)
        first = otpy.whereis("counter")
        assert first is not None
        otpy.exit(first, "kill")
        await first.wait_exited()
        await trio.testing.wait_all_tasks_blocked()
        assert otpy.whereis("counter") not in (None, first)
        assert await otpy.Agent.get("counter", lambda n: n) == 0

    async def test_state_is_the_agent_attribute(self, nursery: trio.Nursery) -> None:
        """get_state shows the agent's state as its `state` attribute (for debugging)."""
        agent = await otpy.Agent.start_link(lambda: [1, 2], nursery=nursery)
        server: Any = await otpy.get_state(agent)
        assert server.state == [1, 2]
