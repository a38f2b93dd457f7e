"""Supervisor: starts children, restarts them by strategy, and stops them in order."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, overload

import attrs
import trio

from ._child_spec import ChildSpec, ChildType, to_child_spec
from ._exceptions import (
    AlreadyPresent,
    AlreadyRegistered,
    AlreadyStarted,
    ChildNotFound,
    ChildRestarting,
    ChildRunning,
    InvalidChildSpec,
    InvalidSupervisorFlags,
    OtpError,
    StartError,
)
from ._gen_server import Ignore, ServerBase, StartIgnored, Stop, is_normal_reason
from ._gen_server import stop as _stop
from ._log import get_logger
from ._process import ExitSignal, From, Name, Pid, Server, call, cast, link_pair, send_exit_signal
from ._restarts import _listeners as _restart_listeners
from ._restarts import report_restart

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from ._child_spec import ChildSpecLike, Restart, ShutdownSpec

_log = get_logger("otpy.supervisor")

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
AutoShutdown = Literal["never", "any_significant", "all_significant"]
RESTARTING: Final = "restarting"

_STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
_AUTO_SHUTDOWNS = ("never", "any_significant", "all_significant")


@attrs.frozen
class SupervisorSpec:
    """What a supervisor's ``init`` returns: its children and flags (Elixir's ``Supervisor.init/2``).

    Attributes:
        children: child specs, started in this order.
        strategy: ``"one_for_one"``, ``"one_for_all"`` or ``"rest_for_one"``.
        max_restarts: at most this many restarts ...
        max_seconds: ... within this many seconds, or the supervisor gives up.
        auto_shutdown: ``"never"``, ``"any_significant"`` or ``"all_significant"``.

    Example::

        class App(otpy.Supervisor):
            async def init(self):
                return otpy.SupervisorSpec(
                    [Cache.child_spec(name="cache"), Worker.child_spec(name="worker")],
                    strategy="rest_for_one",
                )
    """

    children: Sequence[ChildSpecLike] = ()
    strategy: Strategy = "one_for_one"
    max_restarts: int = 3
    max_seconds: float = 5
    auto_shutdown: AutoShutdown = "never"


@attrs.frozen
class ChildInfo:
    """One row of `Supervisor.which_children`.

    ``child`` is the running `Pid`, ``"restarting"`` between failed restart attempts,
    or ``None`` when the child is not running.

    Example::

        running = [info.id for info in await otpy.Supervisor.which_children(sup) if info.child]
    """

    id: Hashable
    child: Pid | Literal["restarting"] | None
    type: ChildType


@attrs.frozen
class ChildCounts:
    """What `Supervisor.count_children` returns.

    ``specs`` counts every child spec, running or not; ``active`` the running
    processes; ``supervisors`` and ``workers`` the specs by type.

    Example::

        counts = await otpy.Supervisor.count_children(sup)
        print(f"{counts.active}/{counts.specs} children running")
    """

    specs: int
    active: int
    supervisors: int
    workers: int


@attrs.frozen
class _Failure:
    error: OtpError


def _unwrap(result: Any) -> Any:
    if type(result) is _Failure:
        raise result.error
    return result


def check_restart_flags(max_restarts: object, max_seconds: object) -> None:
    """Raise InvalidSupervisorFlags for a bad restart intensity (shared by both supervisors)."""
    if type(max_restarts) is not int or max_restarts < 0:
        raise InvalidSupervisorFlags("max_restarts", max_restarts, "must be an int >= 0")
    if type(max_seconds) not in (int, float) or not max_seconds > 0:  # type: ignore[operator]
        raise InvalidSupervisorFlags("max_seconds", max_seconds, "must be a number of seconds > 0")


class RestartIntensity:
    """OTP's restart intensity: at most ``max_restarts`` within ``max_seconds``.

    Timestamps are whole seconds of `trio.current_time`, kept while
    ``now - t <= max_seconds``, exactly as ``supervisor.erl``'s ``add_restart``; so the
    window is effectively between ``max_seconds`` and ``max_seconds + 1``.
    """

    __slots__ = ("max_restarts", "max_seconds", "restarts")

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.restarts: list[int] = []

    def add(self) -> bool:
        """Record a restart now; False means the supervisor must give up."""
        now = math.floor(trio.current_time())
        threshold = now - self.max_seconds
        self.restarts = [t for t in self.restarts if t >= threshold]
        self.restarts.append(now)
        return len(self.restarts) <= self.max_restarts


async def start_child_process(spec: ChildSpec) -> tuple[Pid | None, object]:
    """Run ``spec.start``: ``(pid or None for ignore, None)`` or ``(None, failure reason)``.

    A name clash (`AlreadyRegistered`, OTP's ``{already_started, Pid}``) is returned as
    the failure itself, so the API can raise it as it is.
    """
    try:
        pid: object = await spec.start()
    except StartIgnored:
        return None, None
    except StartError as exc:
        return None, exc.reason
    except Exception as exc:  # noqa: BLE001 (a start function that raises fails the start)
        return None, exc
    if pid is None:
        return None, None
    if not isinstance(pid, Pid):
        return None, TypeError(f"the start function of {spec.id!r} returned {pid!r}, not a Pid or None")
    return pid, None


def start_failure(child_id: object, reason: object) -> OtpError:
    """The error a management call raises when a child did not start."""
    if isinstance(reason, AlreadyRegistered):
        return reason
    error = StartError(child_id, reason)
    if isinstance(reason, BaseException):
        error.__cause__ = reason
    return error


async def shutdown_child(supervisor: Pid, pid: Pid, spec: ChildSpec, supervisor_name: str) -> None:
    """Stop one child by its shutdown spec and wait for it (OTP's ``shutdown/1``)."""
    if not pid.alive:
        await trio.lowlevel.checkpoint()
        reason = pid._reason
    elif spec.shutdown_seconds == "brutal_kill":
        send_exit_signal(pid, supervisor, "kill")
        reason = await pid.wait_exited()
    else:
        send_exit_signal(pid, supervisor, "shutdown")
        with trio.move_on_after(spec.shutdown_seconds):
            await pid.wait_exited()
        if pid.alive:
            send_exit_signal(pid, supervisor, "kill")
        reason = await pid.wait_exited()
    expected = reason in ("killed", "shutdown") if spec.shutdown_seconds == "brutal_kill" else reason == "shutdown"
    if not expected and not (spec.restart != "permanent" and is_normal_reason(reason)):
        _log.error(
            "child_shutdown_failed",
            report="supervisor",
            supervisor=supervisor_name,
            child_id=spec.id,
            reason=reason,
            shutdown=spec.shutdown_seconds,
        )


def unlink_child(supervisor: Pid, pid: Pid) -> None:
    if supervisor._links is not None:
        supervisor._links.discard(pid)
    if pid._links is not None:
        pid._links.discard(supervisor)


@attrs.define(eq=False)
class _Child:
    spec: ChildSpec
    pid: Pid | Literal["restarting"] | None = None
    started: bool = False
    restarts: int = 0  # processes started for this child after its first (read by otpy.tree)


@attrs.frozen
class _StartChild:
    spec: object


@attrs.frozen
class _ById:
    op: str
    child_id: object


@attrs.frozen
class _TryAgain:
    child_id: Hashable


class SupervisorBase(ServerBase):
    """What both supervisors share: they trap exits, host their children, and stop them (internal)."""

    trap_exit: ClassVar[bool] = True
    child_type: ClassVar[Literal["worker", "supervisor"]] = "supervisor"
    _hosts_children: ClassVar[bool] = True
    _intensity: RestartIntensity

    @staticmethod
    async def stop(supervisor: Server, reason: object = "normal", timeout: float = math.inf) -> None:  # noqa: ASYNC109 (OTP's stop timeout)
        """Stop the supervisor with ``reason`` and wait until it has exited (Elixir's ``Supervisor.stop``).

        It stops its children first, in reverse start order, each by its shutdown spec.
        The same as `otpy.stop`, under the name Elixir users look for.

        Raises:
            NoProcess: no such supervisor.
            CallTimeout: it had not exited within ``timeout``.

        Example::

            await otpy.Supervisor.stop(sup)
            await otpy.DynamicSupervisor.stop("sessions", ("shutdown", "maintenance"), timeout=30)
        """
        await _stop(supervisor, reason, timeout)

    def _label(self) -> str:
        name = self._pid.name
        return str(name) if isinstance(name, str) else repr(self._pid)

    async def _stop_child(self, pid: Pid, spec: ChildSpec) -> None:
        """Stop a child by its shutdown spec; its exit is not handled as a crash."""
        unlink_child(self._pid, pid)
        await shutdown_child(self._pid, pid, spec, self._label())

    async def _start_reported(self, spec: ChildSpec) -> tuple[Pid | None, object]:
        """Start a child from ``spec`` for a restart, reporting a failure (OTP's start_error)."""
        pid, failure = await start_child_process(spec)
        if isinstance(failure, AlreadyRegistered):
            failure = ("already_started", failure.pid)  # OTP's term, inside exit reasons
        if failure is not None:
            _log.error(
                "child_start_failed",
                report="supervisor",
                supervisor=self._label(),
                child_id=spec.id,
                reason=failure,
                exc_info=failure if isinstance(failure, BaseException) else None,
            )
        return pid, failure

    def _report_terminated(self, spec: ChildSpec, reason: object) -> None:
        """OTP's child_terminated report (the crash report holds the traceback)."""
        _log.error(
            "child_terminated",
            report="supervisor",
            supervisor=self._label(),
            child_id=spec.id,
            restart=spec.restart,
            reason=reason,
        )

    def _tearing_down(self) -> bool:
        """Whether the nursery holding the children is being torn down: an exception
        escaped one of them (``SystemExit``, ``KeyboardInterrupt``) and trio is cancelling
        the rest. The supervisor then restarts nothing; it stops what is left, in order."""
        nursery = self._pid._nursery
        return nursery is not None and nursery.cancel_scope.cancel_called

    def _may_restart(self, spec: ChildSpec) -> bool:
        """Count a restart; False (reported) when the restart intensity is exceeded."""
        if self._tearing_down():
            return False
        if self._intensity.add():
            return True
        _log.error(
            "supervisor_gave_up",
            report="supervisor",
            supervisor=self._label(),
            child_id=spec.id,
            max_restarts=self._intensity.max_restarts,
            max_seconds=self._intensity.max_seconds,
            reason="reached_max_restart_intensity",
        )
        return False


class Supervisor(SupervisorBase):
    """A process that starts children, restarts them when they exit, and stops them in order.

    Example:
        Two counters under one supervisor; when one crashes, only it is restarted::

            async def main():
                async with trio.open_nursery() as nursery:
                    children = [Counter.child_spec(name="c1"), Counter.child_spec(name="c2")]
                    sup = await otpy.Supervisor.start_link(children, strategy="one_for_one", nursery=nursery)
                    otpy.exit(otpy.whereis("c1"), "boom")     # c1 is restarted, c2 keeps its state
                    await otpy.stop(sup)

            trio.run(main)

        A module-based supervisor overrides ``init`` and returns a `SupervisorSpec`::

            class App(otpy.Supervisor):
                async def init(self, config):
                    return otpy.SupervisorSpec([Db.child_spec(config)], strategy="one_for_all")

    Strategies:
        - ``"one_for_one"``: only the child that exited is restarted.
        - ``"one_for_all"``: the other children are stopped (reverse start order) and all
          are started again (start order).
        - ``"rest_for_one"``: the children started after the one that exited are stopped,
          and it and they are started again.

    Restart intensity:
        More than ``max_restarts`` restarts within ``max_seconds`` (counted over all
        children, 1-second granularity as in OTP) make the supervisor stop its children
        and exit with reason ``"shutdown"``, which its own supervisor sees.

    Start and shutdown:
        Children start in order; `start_link` returns once all of them have started. If
        one fails, those already started are stopped and `start_link` raises
        `StartError`. On exit the children are stopped in reverse start order, each by
        its shutdown spec. Cancelling the nursery that holds a supervisor does the same
        (it becomes an exit signal ``"shutdown"`` from the parent).
    """

    _children: list[_Child]
    _by_id: dict[Hashable, _Child]
    _by_pid: dict[Pid, _Child]
    _strategy: Strategy
    _auto_shutdown: AutoShutdown

    async def init(
        self,
        children: Sequence[ChildSpecLike] = (),
        /,
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5,
        auto_shutdown: AutoShutdown = "never",
    ) -> SupervisorSpec | Ignore:
        """Return the children and flags. Override it for a module-based supervisor.

        The default takes them from the arguments of `start_link`, so
        ``Supervisor.start_link(children, strategy="one_for_all")`` just works.
        """
        return SupervisorSpec(
            list(children),
            strategy=strategy,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            auto_shutdown=auto_shutdown,
        )

    # --- typed start functions: the flags are checked (Literal strategies, keyword-only flags) ---
    # The first overload is the default init's signature. The second is for a module-based
    # supervisor whose own init takes other arguments, positionally: it has no **kwargs, so
    # a misspelt or mistyped flag matches neither overload and is reported.

    @overload  # type: ignore[override]  # narrower on purpose: the flags are checked
    @classmethod
    async def start_link(
        cls,
        children: Sequence[ChildSpecLike] = (),
        /,
        *,
        strategy: Strategy = ...,
        max_restarts: int = ...,
        max_seconds: float = ...,
        auto_shutdown: AutoShutdown = ...,
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
        """Start a supervisor linked to the calling process; return once all its children have started.

        ``children`` and the flags go to ``init`` (see `SupervisorSpec` for their meaning).

        Raises:
            StartError: a child failed to start, or a flag is invalid; ``reason`` says which.
            AlreadyRegistered: ``name`` is taken by a live process.

        Example::

            sup = await otpy.Supervisor.start_link(children, strategy="one_for_all", nursery=nursery)
        """
        return await super().start_link(*args, name=name, nursery=nursery, **kwargs)

    @overload  # type: ignore[override]
    @classmethod
    async def start(
        cls,
        children: Sequence[ChildSpecLike] = (),
        /,
        *,
        strategy: Strategy = ...,
        max_restarts: int = ...,
        max_seconds: float = ...,
        auto_shutdown: AutoShutdown = ...,
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

            sup = await otpy.Supervisor.start(children, nursery=nursery)
        """
        return await super().start(*args, name=name, nursery=nursery, **kwargs)

    @overload  # type: ignore[override]
    @classmethod
    def open(
        cls,
        children: Sequence[ChildSpecLike] = (),
        /,
        *,
        strategy: Strategy = ...,
        max_restarts: int = ...,
        max_seconds: float = ...,
        auto_shutdown: AutoShutdown = ...,
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
        """Start the tree for the length of an ``async with`` block; stop it in order when the block ends.

        See `GenServer.open`: the supervisor is stopped with ``"shutdown"``, so its children
        stop in reverse start order.

        Example::

            async with otpy.Supervisor.open(children, strategy="one_for_one") as sup:
                ...
        """
        return super().open(*args, name=name, shutdown=shutdown, **kwargs)

    @overload  # type: ignore[override]
    @classmethod
    def child_spec(
        cls,
        children: Sequence[ChildSpecLike] = (),
        /,
        *,
        strategy: Strategy = ...,
        max_restarts: int = ...,
        max_seconds: float = ...,
        auto_shutdown: AutoShutdown = ...,
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
        """A child spec that starts this supervisor with ``start_link(children, ...)`` (see `GenServer.child_spec`).

        Example::

            storage = otpy.Supervisor.child_spec([Db.child_spec()], id="storage", strategy="rest_for_one")
        """
        return super().child_spec(*args, **kwargs)

    async def _otp_init(self, *args: Any, **kwargs: Any) -> object:
        spec: object = await self.init(*args, **kwargs)
        if isinstance(spec, Ignore):
            return spec
        if not isinstance(spec, SupervisorSpec):
            return Stop(TypeError(f"{type(self).__name__}.init returned {spec!r}, not a SupervisorSpec or Ignore"))
        try:
            if spec.strategy not in _STRATEGIES:
                raise InvalidSupervisorFlags(
                    "strategy", spec.strategy, "must be 'one_for_one', 'one_for_all' or 'rest_for_one'"
                )
            check_restart_flags(spec.max_restarts, spec.max_seconds)
            if spec.auto_shutdown not in _AUTO_SHUTDOWNS:
                raise InvalidSupervisorFlags(
                    "auto_shutdown", spec.auto_shutdown, "must be 'never', 'any_significant' or 'all_significant'"
                )
        except InvalidSupervisorFlags as exc:
            return Stop(exc)
        self._strategy = spec.strategy
        self._intensity = RestartIntensity(spec.max_restarts, spec.max_seconds)
        self._auto_shutdown = spec.auto_shutdown
        self._children, self._by_id, self._by_pid = [], {}, {}
        try:
            specs = [to_child_spec(child, spec.auto_shutdown) for child in spec.children]
        except InvalidChildSpec as exc:
            return Stop(exc)
        for child_spec in specs:
            if child_spec.id in self._by_id:
                return Stop(InvalidChildSpec(child_spec.id, "id", child_spec.id, "is used by two children"))
            child = _Child(child_spec)
            self._children.append(child)
            self._by_id[child_spec.id] = child
        failed = await self._start_children(list(self._children))
        if failed is not None:
            child_id, reason = failed
            await self._terminate_children(list(self._children))
            return Stop(("shutdown", ("failed_to_start_child", child_id, reason)))
        return None

    # --- bookkeeping ---------------------------------------------------------------------

    def _set_pid(self, child: _Child, pid: Pid | Literal["restarting"] | None) -> None:
        old = child.pid
        if isinstance(old, Pid):
            self._by_pid.pop(old, None)
        child.pid = pid
        if isinstance(pid, Pid):
            if child.started:
                child.restarts += 1
                if _restart_listeners:
                    report_restart(self._label(), child.spec.id, pid, child.restarts)
            child.started = True
            self._by_pid[pid] = child
            link_pair(self._pid, pid)

    def _remove(self, child: _Child) -> None:
        self._set_pid(child, None)
        self._children.remove(child)
        del self._by_id[child.spec.id]

    def _del_child(self, child: _Child) -> None:
        """OTP's del_child: a temporary child is forgotten, others are marked not running."""
        if child.spec.restart == "temporary":
            self._remove(child)
        else:
            self._set_pid(child, None)

    async def _start_one(self, child: _Child) -> object:
        """Start ``child``; return None on success (or ignore) or the failure reason."""
        pid, failure = await self._start_reported(child.spec)
        if failure is not None:
            return failure
        if pid is None and child.spec.restart == "temporary":
            self._remove(child)
        else:
            self._set_pid(child, pid)
            if pid is not None:
                _log.debug(
                    "child_started",
                    report="progress",
                    supervisor=self._label(),
                    child_id=child.spec.id,
                    restart=child.spec.restart,
                )
        return None

    async def _start_children(self, group: list[_Child]) -> tuple[Hashable, object] | None:
        for child in group:
            failure = await self._start_one(child)
            if failure is not None:
                return child.spec.id, failure
        return None

    async def _terminate_children(self, group: list[_Child]) -> None:
        for child in reversed(group):
            pid = child.pid
            if isinstance(pid, Pid):
                self._set_pid(child, None)
                await self._stop_child(pid, child.spec)
            if child.spec.id in self._by_id:
                self._del_child(child)

    # --- restarts --------------------------------------------------------------------------

    async def _child_exited(self, child: _Child, reason: object) -> bool:
        """OTP's do_restart. Returns True when the supervisor must shut down."""
        restart = child.spec.restart
        if restart != "permanent" and is_normal_reason(reason):
            self._del_child(child)
            return self._auto_shutdown_triggered(child)
        self._report_terminated(child.spec, reason)
        if restart == "temporary":
            self._del_child(child)
            return self._auto_shutdown_triggered(child)
        return await self._restart(child)

    def _auto_shutdown_triggered(self, child: _Child) -> bool:
        if self._auto_shutdown == "never" or not child.spec.significant:
            return False
        if self._auto_shutdown == "any_significant":
            return True
        return not any(c.pid is not None and c.spec.significant for c in self._children)

    async def _restart(self, child: _Child) -> bool:
        if not self._may_restart(child.spec):
            self._del_child(child)
            return True
        if self._strategy == "one_for_one":
            failure = await self._start_one(child)
            if failure is not None:
                self._set_pid(child, RESTARTING)
                cast(self._pid, _TryAgain(child.spec.id))
            return False
        if self._strategy == "rest_for_one":
            group = self._children[self._children.index(child) :]
        else:
            group = list(self._children)
        self._set_pid(child, None)
        await self._terminate_children(group)
        group = [c for c in group if c.spec.id in self._by_id]
        failed = await self._start_children(group)
        if failed is not None:
            failed_child = self._by_id[failed[0]]
            self._set_pid(failed_child, RESTARTING)
            cast(self._pid, _TryAgain(failed_child.spec.id))
        return False

    # --- the server callbacks ------------------------------------------------------------

    async def handle_info(self, message: Any) -> Stop | None:
        if type(message) is ExitSignal:
            child = self._by_pid.get(message.pid)  # type: ignore[arg-type]
            if child is not None:
                self._set_pid(child, None)
                if await self._child_exited(child, message.reason):
                    return Stop("shutdown")
            return None
        _log.error("unexpected_message", supervisor=self._label(), message_type=type(message).__name__)
        return None

    async def handle_cast(self, request: Any) -> Stop | None:
        if type(request) is _TryAgain:
            child = self._by_id.get(request.child_id)
            if child is not None and child.pid == RESTARTING and await self._restart(child):
                return Stop("shutdown")
        return None

    async def handle_call(self, request: Any, from_: From) -> Any:
        if type(request) is _StartChild:
            return await self._handle_start_child(request.spec)
        if type(request) is _ById:
            return await getattr(self, f"_handle_{request.op}")(request.child_id)
        if request == "which_children":
            return [ChildInfo(c.spec.id, c.pid, c.spec.type) for c in reversed(self._children)]
        if request == "count_children":
            active = sum(1 for c in self._children if isinstance(c.pid, Pid) and c.pid.alive)
            supervisors = sum(1 for c in self._children if c.spec.type == "supervisor")
            return ChildCounts(len(self._children), active, supervisors, len(self._children) - supervisors)
        if request == "strategy":
            return self._strategy
        raise ValueError(f"unknown supervisor request {request!r}")

    async def _handle_start_child(self, spec_like: object) -> Any:
        try:
            spec = to_child_spec(spec_like, self._auto_shutdown)
        except InvalidChildSpec as exc:
            return _Failure(exc)
        existing = self._by_id.get(spec.id)
        if existing is not None:
            if isinstance(existing.pid, Pid):
                return _Failure(AlreadyStarted(spec.id, existing.pid))
            return _Failure(AlreadyPresent(spec.id))
        pid, failure = await start_child_process(spec)
        if failure is not None:
            return _Failure(start_failure(spec.id, failure))
        if pid is None and spec.restart == "temporary":
            return None
        child = _Child(spec)
        self._children.append(child)
        self._by_id[spec.id] = child
        self._set_pid(child, pid)
        return pid

    def _find(self, child_id: object) -> _Child | None:
        if isinstance(child_id, Pid):
            return None
        try:
            return self._by_id.get(child_id)
        except TypeError:
            return None

    async def _handle_terminate_child(self, child_id: object) -> Any:
        child = self._find(child_id)
        if child is None:
            return _Failure(ChildNotFound(child_id))
        pid = child.pid
        if isinstance(pid, Pid):
            self._set_pid(child, None)
            await self._stop_child(pid, child.spec)
        self._del_child(child)
        return None

    def _find_stopped(self, child_id: object) -> _Child | _Failure:
        """The child for restart_child / delete_child, which must exist and not be running."""
        child = self._find(child_id)
        if child is None:
            return _Failure(ChildNotFound(child_id))
        if child.pid == RESTARTING:
            return _Failure(ChildRestarting(child_id))
        if child.pid is not None:
            return _Failure(ChildRunning(child_id))
        return child

    async def _handle_restart_child(self, child_id: object) -> Any:
        child = self._find_stopped(child_id)
        if isinstance(child, _Failure):
            return child
        pid, failure = await start_child_process(child.spec)
        if failure is not None:
            return _Failure(start_failure(child.spec.id, failure))
        self._set_pid(child, pid)
        return pid

    async def _handle_delete_child(self, child_id: object) -> Any:
        child = self._find_stopped(child_id)
        if isinstance(child, _Failure):
            return child
        self._remove(child)
        return None

    async def terminate(self, reason: object) -> None:
        await self._terminate_children(list(self._children) if hasattr(self, "_children") else [])

    # --- the client API -------------------------------------------------------------------

    @staticmethod
    async def start_child(supervisor: Server, spec: ChildSpecLike) -> Pid | None:
        """Add a child spec to ``supervisor`` and start it; return its pid (``None`` if it ignored).

        The new child goes last in start order.

        Raises:
            AlreadyStarted: a child with that id is running.
            AlreadyPresent: a stopped child with that id exists.
            StartError: the child failed to start (``reason`` says why).
            InvalidChildSpec: the spec is malformed.

        Example::

            pid = await otpy.Supervisor.start_child(sup, Counter.child_spec(name="c3"))
        """
        return _unwrap(await call(supervisor, _StartChild(spec), math.inf))  # type: ignore[no-any-return]

    @staticmethod
    async def terminate_child(supervisor: Server, child_id: Hashable) -> None:
        """Stop a child by its shutdown spec. Its spec stays, unless it is temporary.

        Stopping a child that is not running is fine; it also cancels pending restart
        attempts.

        Raises:
            ChildNotFound: no child has that id.

        Example::

            await otpy.Supervisor.terminate_child(sup, "c1")
            await otpy.Supervisor.restart_child(sup, "c1")
        """
        _unwrap(await call(supervisor, _ById("terminate_child", child_id), math.inf))

    @staticmethod
    async def restart_child(supervisor: Server, child_id: Hashable) -> Pid | None:
        """Start a stopped child again from its spec; return its pid (``None`` if it ignored).

        Raises:
            ChildNotFound, ChildRunning, ChildRestarting: as the names say.
            StartError: it failed to start.

        Example::

            pid = await otpy.Supervisor.restart_child(sup, "c1")
        """
        return _unwrap(await call(supervisor, _ById("restart_child", child_id), math.inf))  # type: ignore[no-any-return]

    @staticmethod
    async def delete_child(supervisor: Server, child_id: Hashable) -> None:
        """Forget the spec of a stopped child.

        Raises:
            ChildNotFound, ChildRunning, ChildRestarting: as the names say.

        Example::

            await otpy.Supervisor.terminate_child(sup, "c1")
            await otpy.Supervisor.delete_child(sup, "c1")
        """
        _unwrap(await call(supervisor, _ById("delete_child", child_id), math.inf))

    @staticmethod
    async def which_children(supervisor: Server) -> list[ChildInfo]:
        """List the children, most recently added first.

        Example::

            for info in await otpy.Supervisor.which_children(sup):
                print(info.id, info.child, info.type)
        """
        return await call(supervisor, "which_children", math.inf)  # type: ignore[no-any-return]

    @staticmethod
    async def count_children(supervisor: Server) -> ChildCounts:
        """Count the children (see `ChildCounts`).

        Example::

            counts = await otpy.Supervisor.count_children(sup)
            assert counts.active == counts.specs
        """
        return await call(supervisor, "count_children", math.inf)  # type: ignore[no-any-return]
