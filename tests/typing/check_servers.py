"""GenServer start functions, `open`, pids and agents as the checkers see them."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, assert_type

import trio

import otpy


class Counter(otpy.GenServer):
    async def init(self, start: int, *, step: int = 1) -> None:
        self.count = start
        self.step = step

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        assert_type(from_.pid, otpy.Pid)
        return self.count


async def servers(nursery: trio.Nursery) -> None:
    pid = await Counter.start_link(0, step=2, name="counter", nursery=nursery)
    assert_type(pid, otpy.Pid)
    assert_type(await Counter.start(0, nursery=nursery), otpy.Pid)
    assert_type(Counter.child_spec(0, name="counter", restart="transient"), otpy.ChildSpec)
    assert_type(Counter.open(0, name="c"), AbstractAsyncContextManager[otpy.Pid])
    async with Counter.open(0, step=3, shutdown=1.0) as counter:
        assert_type(counter, otpy.Pid)
    assert_type(pid.alive, bool)
    assert_type(await pid.wait_exited(), object)
    assert_type(otpy.whereis("counter"), otpy.Pid | None)
    await otpy.stop(pid, ("shutdown", "bye"), timeout=5)


async def unchecked_init_arguments(nursery: trio.Nursery) -> None:
    # What is NOT checked, on purpose (docs/genserver.md, "What the type checkers check"):
    # a GenServer's init arguments pass through start_link/start/open/child_spec as
    # *args/**kwargs. ParamSpec cannot type them while name=/nursery= stay keywords:
    # PEP 612 forbids keyword parameters after *args: P.args, and both checkers reject
    # such a signature. If this ever becomes checked, these lines fail the suite.
    await Counter.start_link("not an int", stepp=2, nursery=nursery)
    Counter.child_spec(object())


def restart_types() -> None:
    Counter.child_spec(0, restart="sometimes")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    otpy.ChildSpec(id="x", start=Counter.start_link, shutdown="never")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def double(count: int) -> int:
    return 2 * count


async def agents(nursery: trio.Nursery) -> None:
    agent = await otpy.Agent.start_link(int, name="n", nursery=nursery)
    assert_type(await otpy.Agent.get(agent, double), int)
    await otpy.Agent.update(agent, double)
    await otpy.Agent.stop(agent)
