"""Supervisor flags are checked: Literal strategies, keyword-only flags, no unknown flags."""

from __future__ import annotations

from typing import assert_type

import trio

import otpy


class Worker(otpy.GenServer):
    pass


async def supervisors(nursery: trio.Nursery) -> None:
    children = [Worker.child_spec(name="w")]
    sup = await otpy.Supervisor.start_link(children, strategy="one_for_all", max_restarts=5, nursery=nursery)
    assert_type(sup, otpy.Pid)
    assert_type(await otpy.Supervisor.start(children, auto_shutdown="never", nursery=nursery), otpy.Pid)
    assert_type(otpy.Supervisor.child_spec(children, id="inner", strategy="rest_for_one"), otpy.ChildSpec)
    async with otpy.Supervisor.open(children, strategy="one_for_one", name="app") as top:
        assert_type(top, otpy.Pid)
    await otpy.Supervisor.stop(sup, ("shutdown", "bye"), timeout=5)


async def bad_flags(nursery: trio.Nursery) -> None:
    children = [Worker.child_spec(name="w")]
    await otpy.Supervisor.start_link(children, strategy="one_for_al", nursery=nursery)  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
    await otpy.Supervisor.start_link(children, max_restart=5, nursery=nursery)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    await otpy.Supervisor.start_link(children, max_restarts="5", nursery=nursery)  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
    await otpy.Supervisor.start_link(children, auto_shutdown="always", nursery=nursery)  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
    otpy.Supervisor.child_spec(children, strategy="one_for_none")  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
    otpy.Supervisor.child_spec(children, restart="sometimes")  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    otpy.Supervisor.open(children, strategy="all_for_one")  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
    await otpy.DynamicSupervisor.start_link(strategy="one_for_all", nursery=nursery)  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
    await otpy.DynamicSupervisor.start_link(max_child=3, nursery=nursery)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]


async def dynamic_supervisors(nursery: trio.Nursery) -> None:
    sup = await otpy.DynamicSupervisor.start_link(max_children=10, max_restarts=1, name="dyn", nursery=nursery)
    assert_type(await otpy.DynamicSupervisor.start_child(sup, Worker.child_spec()), otpy.Pid | None)
    async with otpy.DynamicSupervisor.open(max_children=3) as dyn:
        assert_type(dyn, otpy.Pid)
    await otpy.DynamicSupervisor.stop(sup)


class App(otpy.Supervisor):
    """A module-based supervisor: its own init arguments are passed by position."""

    async def init(self, size: int) -> otpy.SupervisorSpec:  # type: ignore[override]  # pyright: ignore[reportIncompatibleMethodOverride]
        return otpy.SupervisorSpec([Worker.child_spec(name=f"w{n}") for n in range(size)])


async def module_based(nursery: trio.Nursery) -> None:
    assert_type(await App.start_link(3, name="app", nursery=nursery), otpy.Pid)
    assert_type(App.child_spec(3, id="app"), otpy.ChildSpec)
