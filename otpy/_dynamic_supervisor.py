"""DynamicSupervisor: a supervisor that starts its children on demand (Elixir's)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, overload

import attrs
import trio

from ._child_spec import ChildSpec, to_child_spec
from ._exceptions import ChildNotFound, InvalidChildSpec, InvalidSupervisorFlags, MaxChildren
from ._gen_server import Ignore, Stop, is_normal_reason
from ._log import get_logger
from ._process import ExitSignal, From, Name, Pid, Server, call, link_pair, send
from ._restarts import _listeners as _restart_listeners
from ._restarts import report_restart
from ._supervisor import (
    RESTARTING,
    ChildCounts,
    ChildInfo,
    RestartIntensity,
    SupervisorBase,
    _Failure,
    _unwrap,
    check_restart_flags,
    shutdown_child,
    start_child_process,
    start_failure,
    unlink_child,
)

if TYPE_CHECKING:
    from collections.abc import Hashable
    from contextlib import AbstractAsyncContextManager

    from ._child_spec import ChildSpecLike, Restart, ShutdownSpec

_log = get_logger("otpy.dynamic_supervisor")


@attrs.frozen
class DynamicSupervisorSpec:
    """What a DynamicSupervisor's ``init`` returns (Elixir's ``DynamicSupervisor.init/1``).

    Example::

        class Sessions(otpy.DynamicSupervisor):
            async def init(self):
                return otpy.DynamicSupervisorSpec(max_children=100)
    """

    max_children: float = math.inf
    max_restarts: int = 3
    max_seconds: float = 5
    strategy: Literal["one_for_one"] = "one_for_one"


@attrs.define(eq=False)
class _DynChild:
    spec: ChildSpec
    restarting: bool = False
    restarts: int = 0  # processes started for this child after its first (read by otpy.tree)


@attrs.frozen
class _Restart:
    key: Pid


class DynamicSupervisor(SupervisorBase):
    """A supervisor with no children at start: you add them with `start_child`.

    Children are independent (``one_for_one``); there are no ids, each child is known
    by its pid. On exit all children are asked to stop at once and waited for, each
    within its shutdown spec.

    Example::

        async def main():
            async with trio.open_nursery() as nursery:
                sup = await otpy.DynamicSupervisor.start_link(max_children=100, nursery=nursery)
                pid = await otpy.DynamicSupervisor.start_child(sup, Session.child_spec("alice"))
                await otpy.DynamicSupervisor.terminate_child(sup, pid)
                await otpy.stop(sup)

        trio.run(main)

    Restart types:
        A ``permanent`` child is always restarted, a ``transient`` one only after an
        abnormal exit, a ``temporary`` one never. A child that is not restarted is
        removed. Restarts count towards ``max_restarts`` within ``max_seconds``.
    """

    _children: dict[Pid, _DynChild]
    _max_children: float

    async def init(
        self,
        *,
        max_children: float = math.inf,
        max_restarts: int = 3,
        max_seconds: float = 5,
        strategy: Literal["one_for_one"] = "one_for_one",
    ) -> DynamicSupervisorSpec | Ignore:
        """Return the flags. Override it for a module-based DynamicSupervisor."""
        return DynamicSupervisorSpec(
            max_children=max_children, max_restarts=max_restarts, max_seconds=max_seconds, strategy=strategy
        )

    # --- typed start functions: the flags are checked (Literal strategies, keyword-only flags) ---
    # As Supervisor's: the default init's flags, or a module-based init's positional arguments.

    @overload  # type: ignore[override]  # narrower on purpose: the flags are checked
    @classmethod
    async def start_link(
        cls,
        *,
        max_children: float = ...,
        max_restarts: int = ...,
        max_seconds: float = ...,
        strategy: Literal["one_for_one"] = ...,
        name: Name | None = ...,
        nursery: trio.Nursery | None = ...,
    ) -> Pid: ...
    @overload
    @classmethod
    async def start_link(cls, *args: Any, name: Name | None = ..., nursery: trio.Nursery | None = ...) -> Pid: ...
    @classmethod
    async def start_link(
        cls, *args: Any, name: Name | None = None, nursery: trio.Nursery | None = None, **kwargs: Any
    ) -> Pid:
        """Start a DynamicSupervisor linked to the calling process, with no children yet.

        The flags go to ``init`` (see `DynamicSupervisorSpec`).

        Raises:
            StartError: a flag is invalid; ``reason`` says which.
            AlreadyRegistered: ``name`` is taken by a live process.

        Example::

            sup = await otpy.DynamicSupervisor.start_link(max_children=100, name="sessions", nursery=nursery)
        """
        return await super().start_link(*args, name=name, nursery=nursery, **kwargs)

    @overload  # type: ignore[override]
    @classmethod
    async def start(
        cls,
        *,
        max_children: float = ...,
        max_restarts: int = ...,
        max_seconds: float = ...,
        strategy: Literal["one_for_one"] = ...,
        name: Name | None = ...,
        nursery: trio.Nursery | None = ...,
    ) -> Pid: ...
    @overload
    @classmethod
    async def start(cls, *args: Any, name: Name | None = ..., nursery: trio.Nursery | None = ...) -> Pid: ...
    @classmethod
    async def start(
        cls, *args: Any, name: Name | None = None, nursery: trio.Nursery | None = None, **kwargs: Any
    ) -> Pid:
        """Like `start_link`, without the link.

        Example::

            sup = await otpy.DynamicSupervisor.start(nursery=nursery)
        """
        return await super().start(*args, name=name, nursery=nursery, **kwargs)

    @overload  # type: ignore[override]
    @classmethod
    def open(
        cls,
        *,
        max_children: float = ...,
        max_restarts: int = ...,
        max_seconds: float = ...,
        strategy: Literal["one_for_one"] = ...,
        name: Name | None = ...,
        shutdown: float | None = ...,
    ) -> AbstractAsyncContextManager[Pid]: ...
    @overload
    @classmethod
    def open(
        cls, *args: Any, name: Name | None = ..., shutdown: float | None = ...
    ) -> AbstractAsyncContextManager[Pid]: ...
    @classmethod
    def open(
        cls, *args: Any, name: Name | None = None, shutdown: float | None = None, **kwargs: Any
    ) -> AbstractAsyncContextManager[Pid]:
        """Run the supervisor for the length of an ``async with`` block; stop it and its children when it ends.

        See `GenServer.open`: the supervisor is stopped with ``"shutdown"``, and stops its
        children all at once, each within its shutdown spec.

        Example::

            async with otpy.DynamicSupervisor.open(max_children=10) as sup:
                await otpy.DynamicSupervisor.start_child(sup, Worker.child_spec())
        """
        return super().open(*args, name=name, shutdown=shutdown, **kwargs)

    @overload  # type: ignore[override]
    @classmethod
    def child_spec(
        cls,
        *,
        max_children: float = ...,
        max_restarts: int = ...,
        max_seconds: float = ...,
        strategy: Literal["one_for_one"] = ...,
        id: Hashable = ...,
        restart: Restart = ...,
        shutdown: ShutdownSpec | None = ...,
        significant: bool = ...,
        name: Name | None = ...,
    ) -> ChildSpec: ...
    @overload
    @classmethod
    def child_spec(
        cls,
        *args: Any,
        id: Hashable = ...,
        restart: Restart = ...,
        shutdown: ShutdownSpec | None = ...,
        significant: bool = ...,
        name: Name | None = ...,
    ) -> ChildSpec: ...
    @classmethod
    def child_spec(cls, *args: Any, **kwargs: Any) -> ChildSpec:
        """A child spec that starts this supervisor with ``start_link(...)`` (see `GenServer.child_spec`).

        Example::

            sessions = otpy.DynamicSupervisor.child_spec(max_children=100, name="sessions")
        """
        return super().child_spec(*args, **kwargs)

    async def _otp_init(self, *args: Any, **kwargs: Any) -> object:
        spec: object = await self.init(*args, **kwargs)
        if isinstance(spec, Ignore):
            return spec
        if not isinstance(spec, DynamicSupervisorSpec):
            return Stop(TypeError(f"{type(self).__name__}.init returned {spec!r}, not a DynamicSupervisorSpec"))
        try:
            if spec.strategy != "one_for_one":
                raise InvalidSupervisorFlags("strategy", spec.strategy, "a DynamicSupervisor is always 'one_for_one'")
            check_restart_flags(spec.max_restarts, spec.max_seconds)
            if spec.max_children != math.inf and (type(spec.max_children) is not int or spec.max_children < 0):
                raise InvalidSupervisorFlags("max_children", spec.max_children, "must be an int >= 0 or math.inf")
        except InvalidSupervisorFlags as exc:
            return Stop(exc)
        self._children = {}
        self._max_children = spec.max_children
        self._intensity = RestartIntensity(spec.max_restarts, spec.max_seconds)
        return None

    def _save(self, pid: Pid, child: _DynChild) -> None:
        self._children[pid] = child
        link_pair(self._pid, pid)

    async def handle_call(self, request: Any, from_: From) -> Any:
        if type(request) is tuple and request[0] == "start_child":
            return await self._handle_start_child(request[1])
        if type(request) is tuple and request[0] == "terminate_child":
            return await self._handle_terminate_child(request[1])
        if request == "which_children":
            return [
                ChildInfo(None, RESTARTING if child.restarting else pid, child.spec.type)
                for pid, child in self._children.items()
            ]
        if request == "count_children":
            active = sum(1 for child in self._children.values() if not child.restarting)
            supervisors = sum(1 for child in self._children.values() if child.spec.type == "supervisor")
            specs = len(self._children)
            return ChildCounts(specs, active, supervisors, specs - supervisors)
        raise ValueError(f"unknown DynamicSupervisor request {request!r}")

    async def _handle_start_child(self, spec_like: object) -> Any:
        try:
            spec = to_child_spec(spec_like)
        except InvalidChildSpec as exc:
            return _Failure(exc)
        if len(self._children) >= self._max_children:
            return _Failure(MaxChildren(int(self._max_children)))
        pid, failure = await start_child_process(spec)
        if failure is not None:
            return _Failure(start_failure(None, failure))
        if pid is not None:
            self._save(pid, _DynChild(spec))
        return pid

    async def _handle_terminate_child(self, pid: object) -> Any:
        child = self._children.get(pid) if isinstance(pid, Pid) else None
        if child is None:
            return _Failure(ChildNotFound(pid))
        assert isinstance(pid, Pid)
        del self._children[pid]
        if not child.restarting:
            await self._stop_child(pid, child.spec)
        return None

    async def handle_info(self, message: Any) -> Stop | None:
        if type(message) is ExitSignal:
            pid = message.pid
            child = self._children.get(pid) if pid is not None else None
            if child is None or child.restarting:
                return None
            assert pid is not None
            restart = child.spec.restart
            if restart != "permanent" and is_normal_reason(message.reason):
                del self._children[pid]
                return None
            self._report_terminated(child.spec, message.reason)
            if restart == "temporary":
                del self._children[pid]
                return None
            return Stop("shutdown") if await self._restart(pid, child) else None
        if type(message) is _Restart:
            child = self._children.get(message.key)
            if child is not None and child.restarting and await self._restart(message.key, child):
                return Stop("shutdown")
            return None
        _log.error("unexpected_message", supervisor=self._label(), message_type=type(message).__name__)
        return None

    async def _restart(self, key: Pid, child: _DynChild) -> bool:
        if not self._may_restart(child.spec):
            del self._children[key]
            return True
        pid, failure = await self._start_reported(child.spec)
        if failure is not None:
            child.restarting = True
            send(self._pid, _Restart(key))
            return False
        del self._children[key]
        if pid is not None:
            child.restarting = False
            child.restarts += 1
            self._save(pid, child)
            if _restart_listeners:
                report_restart(self._label(), child.spec.id, pid, child.restarts)
        return False

    async def terminate(self, reason: object) -> None:
        children = getattr(self, "_children", {})
        running = [(pid, child) for pid, child in children.items() if not child.restarting]
        children.clear()
        for pid, _child in running:
            unlink_child(self._pid, pid)
        # All at once, as Elixir does: signal every child first, then wait for each
        # within its own shutdown spec.
        async with trio.open_nursery() as nursery:
            for pid, child in running:
                nursery.start_soon(shutdown_child, self._pid, pid, child.spec, self._label())

    # --- the client API -------------------------------------------------------------------

    @staticmethod
    async def start_child(supervisor: Server, spec: ChildSpecLike) -> Pid | None:
        """Start a child from ``spec``; return its pid (``None`` if its ``init`` ignored).

        The spec's ``id`` is not used: children are known by pid.

        Raises:
            MaxChildren: the supervisor is full.
            StartError: the child failed to start.
            InvalidChildSpec: the spec is malformed.

        Example::

            pid = await otpy.DynamicSupervisor.start_child(sup, Worker.child_spec(job))
        """
        return _unwrap(await call(supervisor, ("start_child", spec), math.inf))  # type: ignore[no-any-return]

    @staticmethod
    async def terminate_child(supervisor: Server, pid: Pid) -> None:
        """Stop the child ``pid`` by its shutdown spec and forget it.

        Raises:
            ChildNotFound: ``pid`` is not a child of this supervisor.

        Example::

            await otpy.DynamicSupervisor.terminate_child(sup, pid)
        """
        _unwrap(await call(supervisor, ("terminate_child", pid), math.inf))

    @staticmethod
    async def which_children(supervisor: Server) -> list[ChildInfo]:
        """List the children (``id`` is always ``None``).

        Example::

            pids = [info.child for info in await otpy.DynamicSupervisor.which_children(sup)]
        """
        return await call(supervisor, "which_children", math.inf)  # type: ignore[no-any-return]

    @staticmethod
    async def count_children(supervisor: Server) -> ChildCounts:
        """Count the children; restarting ones are not active.

        Example::

            assert (await otpy.DynamicSupervisor.count_children(sup)).active == 3
        """
        return await call(supervisor, "count_children", math.inf)  # type: ignore[no-any-return]
