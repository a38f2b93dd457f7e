"""GenServer: a process that owns state and serves calls, casts and messages one at a time."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, NoReturn

import attrs
import trio
from outcome import Value as _Value

from ._exceptions import (
    AlreadyRegistered,
    CallingSelf,
    CallTimeout,
    NoProcess,
    ProcessCrashed,
    ProcessExit,
    ServerExited,
    StartError,
    UnhandledMessage,
    require_trio_run,
)
from ._log import get_logger
from ._options import check_init_options
from ._process import (
    _CURRENT,
    CAST,
    EXIT,
    INFO,
    SYS,
    UNSET,
    ExitSignal,
    From,
    Name,
    Pid,
    Server,
    link_pair,
    register,
    reply,
    resolve,
    send_exit_signal,
)
from ._util import check_timeout

if TYPE_CHECKING:
    from collections.abc import Hashable
    from contextlib import AbstractAsyncContextManager

    from ._child_spec import ChildSpec, Restart, ShutdownSpec

_log = get_logger("otpy.gen_server")

# --- what callbacks return ------------------------------------------------------------


def _check_idle_timeout(_instance: object, _attribute: object, value: float | None) -> None:
    check_timeout(value, "timeout", allow_none=True)


@attrs.frozen
class Reply:
    """``handle_call`` answers with ``value`` and goes on (Elixir's ``{:reply, value, state}``).

    A plain return value is the same as ``Reply(value)``; use `Reply` for a value that is
    itself a control object, or to add ``continue_`` or ``timeout``.

    Example::

        async def handle_call(self, request, from_):
            return otpy.Reply(self.count, continue_="persist")
    """

    value: object
    continue_: object = UNSET
    timeout: float | None = attrs.field(default=None, validator=_check_idle_timeout)


@attrs.frozen
class NoReply:
    """Go on without replying now (Elixir's ``{:noreply, state}``).

    From ``handle_call`` it defers the reply: answer later with `reply`. From any
    callback, ``continue_=arg`` runs ``handle_continue(arg)`` before the next message
    (``{:continue, arg}``), and ``timeout=seconds`` delivers `TIMEOUT` to
    ``handle_info`` if no message arrives in time.

    Example::

        async def init(self):
            return otpy.NoReply(continue_="load")   # {:ok, state, {:continue, :load}}
    """

    continue_: object = UNSET
    timeout: float | None = attrs.field(default=None, validator=_check_idle_timeout)


@attrs.frozen
class Stop:
    """Stop the process with ``reason`` after running ``terminate`` (Elixir's ``{:stop, ...}``).

    From ``handle_call``, ``reply=value`` answers the caller after ``terminate``; without
    it the caller fails with `ServerExited`. From ``init`` it makes the start fail with
    `StartError` carrying ``reason``.

    Example::

        async def handle_call(self, request, from_):
            if request == "quit":
                return otpy.Stop("normal", reply="bye")
    """

    reason: object = "normal"
    reply: object = UNSET


@attrs.frozen
class Ignore:
    """From ``init``: do not start, and tell the supervisor so (OTP's ``ignore``).

    Example::

        async def init(self, config):
            if not config.enabled:
                return otpy.Ignore()    # the supervisor keeps the spec, with no process
    """


@attrs.frozen
class InactivityTimeout:
    """The type of `TIMEOUT`: what ``handle_info`` gets when a ``timeout`` passes without messages.

    Example::

        async def handle_info(self, message):
            if message is otpy.TIMEOUT:       # Elixir's :timeout
                return otpy.Stop("normal")    # idle for too long
    """


TIMEOUT: Final = InactivityTimeout()

_CONTROL: Final = frozenset({Reply, NoReply, Stop})


class _Stopping(Exception):
    def __init__(
        self, reason: object, from_: From | None = None, reply_value: object = UNSET, *, requested: bool = False
    ) -> None:
        super().__init__()
        self.reason = reason
        self.from_ = from_
        self.reply_value = reply_value
        self.requested = requested  # by otpy.stop or the parent's exit signal, not the server's own decision


# --- exit reasons --------------------------------------------------------------------


def is_normal_reason(reason: object) -> bool:
    """Whether ``reason`` is a normal exit: ``"normal"``, ``"shutdown"`` or ``("shutdown", term)``.

    A transient child is not restarted after a normal exit, and no crash is reported.

    Example::

        assert otpy.is_normal_reason(("shutdown", "bye"))
        assert not otpy.is_normal_reason("killed")
    """
    if type(reason) is str:
        return reason in ("normal", "shutdown")
    return type(reason) is tuple and len(reason) == 2 and reason[0] == "shutdown"


# --- the server base ----------------------------------------------------------------


class ServerBase:
    """What every otpy process class shares: start functions, child specs and the loop hooks."""

    trap_exit: ClassVar[bool] = False
    """Whether exit signals arrive as `ExitSignal` messages. OTP's default is False:
    set it to True for ``terminate`` to run when the supervisor shuts the server down."""

    child_type: ClassVar[Literal["worker", "supervisor"]] = "worker"
    _hosts_children: ClassVar[bool] = False
    _pid: Pid

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_init_options(cls)  # an init parameter named like a start option is a trap

    @property
    def pid(self) -> Pid:
        """The pid of the process running this server."""
        return self._pid

    async def _otp_init(self, *args: Any, **kwargs: Any) -> object:
        raise NotImplementedError

    async def handle_call(self, request: Any, from_: From) -> Any:
        """Answer a `call`. Override it; the default crashes, as Elixir's does."""
        raise NotImplementedError(f"{type(self).__name__} got a call but defines no handle_call: {request!r}")

    async def handle_cast(self, request: Any) -> NoReply | Stop | None:
        """Handle a `cast`. Override it; the default crashes, as Elixir's does."""
        raise NotImplementedError(f"{type(self).__name__} got a cast but defines no handle_cast: {request!r}")

    async def handle_info(self, message: Any) -> NoReply | Stop | None:
        """Handle any other message (`send`, `Down`, `ExitSignal`, `TIMEOUT`).

        The default logs an ``unexpected_message`` error and ignores the message, as
        Elixir's default ``handle_info`` does: a message nobody handles is a bug to see.
        """
        _log.error("unexpected_message", server=self._pid, message_type=type(message).__name__)
        return None

    async def handle_continue(self, arg: Any) -> NoReply | Stop | None:
        """Run the continuation requested with ``NoReply(continue_=arg)``."""
        raise NotImplementedError(f"{type(self).__name__} asked to continue but defines no handle_continue: {arg!r}")

    async def terminate(self, reason: object) -> None:
        """Clean up before exiting. Runs when a callback stops or crashes, on `stop`, and on a
        shutdown from the supervisor if the server traps exits."""

    @classmethod
    async def start_link(
        cls, *args: Any, name: Name | None = None, nursery: trio.Nursery | None = None, **kwargs: Any
    ) -> Pid:
        """Start the server linked to the calling process; return once ``init`` has run.

        ``args`` and ``kwargs`` go to ``init``. ``name`` registers it (a str or `via`).
        ``nursery`` is where its task lives; inside an otpy process it defaults to the
        process's own nursery, outside one it is required.

        Raises:
            StartError: ``init`` raised or returned `Stop`; ``reason`` says why.
            StartIgnored: ``init`` returned `Ignore`.
            AlreadyRegistered: ``name`` is taken by a live process.

        Example::

            async with trio.open_nursery() as nursery:
                pid = await Counter.start_link(0, name="counter", nursery=nursery)
        """
        return await spawn(cls(), args, kwargs, name=name, nursery=nursery, link=True)

    @classmethod
    async def start(
        cls, *args: Any, name: Name | None = None, nursery: trio.Nursery | None = None, **kwargs: Any
    ) -> Pid:
        """Like `start_link`, without the link (Elixir's ``GenServer.start``)."""
        return await spawn(cls(), args, kwargs, name=name, nursery=nursery, link=False)

    @classmethod
    def open(
        cls, *args: Any, name: Name | None = None, shutdown: float | None = None, **kwargs: Any
    ) -> AbstractAsyncContextManager[Pid]:
        """Start the server for the length of an ``async with`` block, and stop it when the block ends.

        It reads like `trio.open_nursery`: the block owns the server (with a supervisor,
        the whole tree). ``args`` and ``kwargs`` go to ``init``; ``name`` registers it. On
        leaving the block, normally, by an exception or by cancellation, the server is
        stopped with `otpy.stop` and the reason ``"shutdown"`` (a supervisor stops its
        children in reverse start order), within ``shutdown`` seconds (default 5 for a
        worker, ``math.inf`` for a supervisor, whose children have their own limits), and
        then killed. If it exits on its own abnormally while the block runs (or a
        supervisor gives up), the block is cancelled and raises `ProcessCrashed` in an
        `ExceptionGroup`, as a nursery raises its tasks' errors.

        Raises:
            StartError: ``init`` failed; raised by the ``async with`` line itself.
            AlreadyRegistered: ``name`` is taken.

        Example::

            async with Counter.open(0, name="counter") as pid:
                await otpy.call(pid, "increment")
            assert not pid.alive
        """
        from ._scope import open_server

        return open_server(cls, args, kwargs, name=name, shutdown=shutdown)

    @classmethod
    def child_spec(
        cls,
        *args: Any,
        id: Hashable = None,  # noqa: A002 (Elixir's :id)
        restart: Restart = "permanent",
        shutdown: ShutdownSpec | None = None,
        significant: bool = False,
        name: Name | None = None,
        **kwargs: Any,
    ) -> ChildSpec:
        """A child spec that starts this server with ``start_link(*args, name=name, **kwargs)``.

        ``id`` defaults to ``name`` when given, else to the class name.

        Example::

            children = [Counter.child_spec(0, name="c1"), Counter.child_spec(5, name="c2")]
            await otpy.Supervisor.start_link(children, strategy="one_for_one", nursery=nursery)
        """
        from ._child_spec import ChildSpec

        child_id: Hashable = id if id is not None else (name if name is not None else cls.__qualname__)
        return ChildSpec(
            id=child_id,
            start=functools.partial(cls.start_link, *args, name=name, **kwargs),
            restart=restart,
            shutdown=shutdown,
            type=cls.child_type,
            significant=significant,
        )


def unhandled(message: object) -> NoReturn:
    """Crash the process: ``message`` matched no clause (Elixir's ``FunctionClauseError``).

    End every ``match`` of a callback with ``case _: otpy.unhandled(request)``. Without
    it, a ``handle_call`` that matches nothing returns ``None`` and the caller gets a
    silent ``None`` reply; a ``handle_cast`` silently drops the message. Elixir crashes
    the server instead, so the bug shows where it is; so does this.

    Raises:
        UnhandledMessage: always; the server exits with it as its reason, and a caller
            waiting on a call gets `ServerExited` with it as the cause.

    Example::

        async def handle_call(self, request, from_):
            match request:
                case "get":
                    return self.count
                case _:
                    otpy.unhandled(request)
    """
    raise UnhandledMessage(message)


class StartIgnored(StartError):
    """``init`` returned `Ignore`: the process did not start, and that is not an error for a supervisor.

    Example::

        try:
            await Optional.start_link(nursery=nursery)
        except otpy.StartIgnored:
            pass   # disabled by configuration
    """

    def __str__(self) -> str:
        return "init returned Ignore: the process was not started"


async def spawn(
    server: ServerBase,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    name: Name | None,
    nursery: trio.Nursery | None,
    link: bool,
) -> Pid:
    """Run ``server`` in a new process once its ``init`` has run (internal).

    This is `trio.Nursery.start`'s contract without its temporary nursery: ``init``
    runs in the starting task (under the new process's identity and kill scope, and
    under the starter's cancel scopes, as ``start`` runs a child), and only then does
    the process get a task of its own. Its failure comes out of ``start_link``.
    """
    parent = _CURRENT.get()
    if nursery is None:
        if parent is None:
            require_trio_run(f"{type(server).__name__}.start_link() was called")
            raise RuntimeError(f"{type(server).__name__}.start_link() outside an otpy process needs nursery=")
        nursery = parent._nursery
        if nursery is None:
            raise RuntimeError(f"process {parent!r} cannot start processes: it has no nursery")
    pid = Pid(server, parent, type(server).trap_exit)
    server._pid = pid
    pid._hosted = (
        parent is not None and nursery is parent._nursery and getattr(type(parent._server), "_hosts_children", False)
    )
    pid._nursery = nursery
    pid._linked_to_trio = link and parent is None
    link_to = parent if link else None
    result: object
    if type(server)._hosts_children:
        # A supervisor's init starts children into a nursery that its own task owns,
        # so its init runs in its task; the starter waits for the outcome.
        starter = _Starter(trio.lowlevel.current_task(), pid)
        nursery.start_soon(_run_hosting, pid, server, args, kwargs, name, link_to, starter)
        result = await trio.lowlevel.wait_task_rescheduled(starter._abort)
        if isinstance(result, BaseException):
            raise result
        return pid
    token = _CURRENT.set(pid)
    try:
        result = await _init(pid, server, args, kwargs, name, link_to)
        if isinstance(result, BaseException):
            raise result
        # Spawned while the process's identity is current: the task's copy of the
        # context already carries it (one context per process, not two).
        nursery.start_soon(_serve, pid, server, result[0], result[1])
    finally:
        _CURRENT.reset(token)
    return pid


class _Starter:
    """A supervisor's start handshake: the starter parks until its ``init`` has run.

    If the starter is cancelled meanwhile, the half-started process is killed, as
    `trio.Nursery.start` would cancel it.
    """

    __slots__ = ("pid", "task")

    def __init__(self, task: trio.lowlevel.Task, pid: Pid) -> None:
        self.task: trio.lowlevel.Task | None = task
        self.pid = pid

    def started(self, value: object) -> None:
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task, _Value(value))

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self.task = None
        self.pid._kill("killed")
        return trio.lowlevel.Abort.SUCCEEDED


async def _relay_outer_cancel(pid: Pid) -> None:
    try:
        await trio.sleep_forever()
    finally:
        if pid.alive and pid._reason is UNSET:
            send_exit_signal(pid, pid._parent, "shutdown")


async def _run_hosting(
    pid: Pid,
    server: ServerBase,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    name: Name | None,
    link_to: Pid | None,
    starter: _Starter,
) -> None:
    # A process that hosts children (a supervisor) keeps them in a nursery shielded
    # from outside cancellation: cancelling the enclosing nursery becomes an exit signal
    # "shutdown" from the parent, so the children stop in order, per their shutdown specs.
    try:
        async with trio.open_nursery() as guard:
            guard.start_soon(_relay_outer_cancel, pid)
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as children:
                    pid._nursery = children
                    _CURRENT.set(pid)
                    result = await _init(pid, server, args, kwargs, name, link_to)
                    starter.started(result)
                    if not isinstance(result, BaseException):
                        await _serve(pid, server, result[0], result[1])
            guard.cancel_scope.cancel()
    finally:
        # The exit is made known here, with no checkpoint before the task ends: if an
        # exception is tearing the tree down, it reaches the parent's nursery (which then
        # restarts nothing) before the parent can handle this exit as a crash to restart.
        pid._finish(pid._reason if pid._reason is not UNSET else "shutdown")


async def _init(
    pid: Pid,
    server: ServerBase,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    name: Name | None,
    link_to: Pid | None,
) -> tuple[object, float | None] | StartError | AlreadyRegistered:
    """Register the name and run ``init`` in the process's kill scope.

    Returns ``(continue_, idle_timeout)`` when the process may run, or the error that
    ``start_link`` raises (the process has then exited).
    """
    finished = False
    try:
        with pid._scope:
            if name is not None:
                holder = register(name, pid)
                if holder is not None:
                    pid._finish("normal")
                    finished = True
                    return AlreadyRegistered(name, holder)
            try:
                result = await server._otp_init(*args, **kwargs)
            except ProcessExit as exc:
                result = Stop(exc.reason)
            except Exception as exc:  # noqa: BLE001 (an init crash fails the start with the exception)
                result = Stop(exc)
            if result is None:
                outcome: tuple[object, float | None] = (UNSET, None)
            elif isinstance(result, NoReply):
                outcome = (result.continue_, result.timeout)
            elif isinstance(result, Ignore):
                pid._finish("normal")
                finished = True
                return StartIgnored(None, "ignore")
            elif isinstance(result, Stop):
                failure = StartError(None, result.reason)
                if isinstance(result.reason, BaseException):
                    failure.__cause__ = result.reason
                pid._finish(result.reason)
                finished = True
                return failure
            else:
                bad = TypeError(
                    f"{type(server).__name__}.init returned {result!r}; expected None, NoReply, Stop or Ignore"
                )
                pid._finish(bad)
                finished = True
                return StartError(None, bad)
            if link_to is not None and link_to.alive:
                link_pair(link_to, pid)
        if pid._scope.cancelled_caught:
            pid._finish(pid._kill_reason)
            finished = True
            return StartError(None, pid._kill_reason)
        # The loop runs in a fresh kill scope (a scope is entered once); a kill that came
        # during init without a checkpoint after it carries over.
        pid._scope = trio.CancelScope(shield=pid._hosted)
        if pid._kill_reason is not UNSET:
            pid._scope.cancel()
        finished = True
        return outcome
    finally:
        if not finished:
            pid._finish("killed")  # the starter was cancelled during init


def _after(result: object, callback: str) -> tuple[object, float | None]:
    """Interpret what a non-call callback returned: (continue_, idle_timeout)."""
    if result is None:
        return UNSET, None
    result_type = type(result)
    if result_type is NoReply:
        assert isinstance(result, NoReply)
        return result.continue_, result.timeout
    if result_type is Stop:
        assert isinstance(result, Stop)
        raise _Stopping(result.reason)
    raise TypeError(f"{callback} returned {result!r}; expected None, NoReply or Stop")


_CHECKPOINT_EVERY: Final = 256


async def _serve(pid: Pid, server: ServerBase, continue_: object, idle_timeout: float | None) -> None:
    """The process's task: the receive loop, then ``terminate``, then the exit.

    Kept as one flat coroutine: every frame a parked process holds is an object the
    garbage collector walks, and a tree holds many parked processes. The caller has
    made ``pid`` the current process in the context this task runs in.
    """
    reason: object = UNSET
    crashed = False  # exited abnormally by its own doing (not stopped, not killed)
    try:
        with pid._scope:
            from_: From | None = None
            reply_value: object = UNSET
            queue = pid._queue
            served = 0
            try:
                while True:
                    while continue_ is not UNSET:
                        arg, continue_ = continue_, UNSET
                        continue_, idle_timeout = _after(await server.handle_continue(arg), "handle_continue")
                    if not queue:
                        served = 0
                        result = None  # an idle server does not keep its last reply alive
                        if idle_timeout is None:
                            pid._waiter = trio.lowlevel.current_task()
                            await trio.lowlevel.wait_task_rescheduled(pid._abort_wait)
                        else:
                            with trio.move_on_after(idle_timeout):
                                await pid._wait_message()
                            if not queue:
                                continue_, idle_timeout = _after(await server.handle_info(TIMEOUT), "handle_info")
                                continue
                    else:
                        served += 1
                        if served >= _CHECKPOINT_EVERY:
                            served = 0
                            await trio.lowlevel.checkpoint()
                    paused_timeout, idle_timeout = idle_timeout, None
                    message = queue.popleft()
                    if type(message) is From:
                        handled = False
                        try:
                            result = await server.handle_call(message.request, message)
                            handled = True
                        finally:
                            if not handled:
                                # Going down inside handle_call: the exit fails this caller too.
                                message._defer()
                        result_type = type(result)
                        if result_type not in _CONTROL:
                            task = message._task
                            message.request = None  # a finished call pins nothing (the deadline FIFO holds it)
                            if task is not None:
                                message._task = None
                                trio.lowlevel.reschedule(task, _Value(result))
                        elif result_type is Reply:
                            reply(message, result.value)
                            continue_, idle_timeout = result.continue_, result.timeout
                        elif result_type is NoReply:
                            message._defer()
                            continue_, idle_timeout = result.continue_, result.timeout
                        else:
                            # Owed a reply (now or after terminate): if the process dies
                            # first, even killed during terminate, its exit fails the caller.
                            message._defer()
                            raise _Stopping(result.reason, message, result.reply)
                        continue
                    kind = message[0]
                    if kind == CAST:
                        result = await server.handle_cast(message[1])
                        if result is not None:
                            continue_, idle_timeout = _after(result, "handle_cast")
                    elif kind == INFO:
                        result = await server.handle_info(message[1])
                        if result is not None:
                            continue_, idle_timeout = _after(result, "handle_info")
                    elif kind == EXIT:
                        sender, signal = message[1], message[2]
                        if sender is pid._parent:
                            raise _Stopping(signal, requested=True)
                        result = await server.handle_info(ExitSignal(sender, signal))
                        if result is not None:
                            continue_, idle_timeout = _after(result, "handle_info")
                    elif kind == SYS:
                        if message[1] == "get_state":
                            reply(message[2], server)
                            idle_timeout = paused_timeout  # a system message keeps the timeout, restarted
                        elif message[1] == "stop":
                            raise _Stopping(message[3], requested=True)
            except _Stopping as stop:
                reason, from_, reply_value = stop.reason, stop.from_, stop.reply_value
                crashed = not stop.requested
            except ProcessExit as exc:
                reason = exc.reason
                crashed = True
            except Exception as exc:  # noqa: BLE001 (a crash: the exception is the exit reason)
                reason = exc
                crashed = True
            try:
                if type(server)._hosts_children:
                    reason = await _terminate_supervisor(pid, server, reason)
                else:
                    await server.terminate(reason)
            except ProcessExit as exc:
                reason = exc.reason
                crashed = True
            except Exception as exc:  # noqa: BLE001 (a crash in terminate replaces the reason)
                reason = exc
                crashed = True
            if from_ is not None and reply_value is not UNSET:
                reply(from_, reply_value)
            if not is_normal_reason(reason):
                _log.error(
                    "server_crashed",
                    report="crash",
                    server=pid,
                    reason=reason,
                    exc_info=reason if isinstance(reason, BaseException) else None,
                )
        if pid._scope.cancelled_caught:
            reason = pid._kill_reason
            crashed = False
    finally:
        if pid.alive:
            if reason is UNSET:
                # Cancelled from outside (the hosting nursery is going away): like a
                # "shutdown" exit signal from the parent, with a bounded terminate.
                reason = "shutdown"
                try:
                    if type(server)._hosts_children:
                        reason = await _terminate_supervisor(pid, server, reason)
                    elif pid._trap_exit:
                        with trio.move_on_after(5.0, shield=True):
                            await server.terminate(reason)
                except Exception as exc:  # noqa: BLE001 (reported, the exit goes on)
                    _log.error("terminate_failed", server=pid, exc_info=exc)
            nursery = pid._nursery
            if type(server)._hosts_children and nursery is not None and nursery.cancel_scope.cancel_called:
                # An exception is tearing the tree down: _run_hosting makes the exit known
                # once it has left the nursery (see there). Children still running (their
                # supervisor was killed before stopping them) must not keep it open.
                pid._reason = reason
                for other in list(pid._links or ()):
                    if other._parent is pid:
                        send_exit_signal(other, pid, "kill")
            else:
                pid._finish(reason)
    if crashed and pid._linked_to_trio and not is_normal_reason(reason):
        raise ProcessCrashed(pid, reason) from (reason if isinstance(reason, BaseException) else None)


async def _terminate_supervisor(pid: Pid, server: ServerBase, reason: object) -> object:
    """Run a supervisor's ``terminate``, which stops its children in order, to the end.

    It is shielded from the cancellation of the nursery the supervisor lives in (that
    happens when an exception such as ``SystemExit`` escapes a child: the children must
    still stop in reverse order, once), yet an exit signal ``"kill"`` still stops it at
    once, as in OTP; the children then get the exit signal ``"killed"`` through their
    links. Returns the exit reason: ``reason``, or the kill's.
    """
    outer = pid._scope
    scope = pid._scope = trio.CancelScope(shield=True)
    if pid._kill_reason is not UNSET:
        scope.cancel()
    try:
        with scope:
            await server.terminate(reason)
    finally:
        pid._scope = outer
    return pid._kill_reason if scope.cancelled_caught else reason


# --- client functions that need the loop's system messages ----------------------------


async def stop(server: Server, reason: object = "normal", timeout: float = math.inf) -> None:  # noqa: ASYNC109 (OTP's stop timeout)
    """Stop ``server`` with ``reason``: it runs ``terminate(reason)`` and exits (``GenServer.stop``).

    The request is queued behind messages already in the mailbox. It returns once the
    process has exited.

    Raises:
        NoProcess: no such process.
        ServerExited: it exited with another reason (for example ``terminate`` crashed).
        CallTimeout: it had not exited within ``timeout``.

    Example::

        await otpy.stop("counter")
        await otpy.stop(pid, ("shutdown", "maintenance"), timeout=5)
    """
    check_timeout(timeout, "timeout")
    pid = resolve(server)
    if pid is None or not pid.alive:
        raise NoProcess(server, "stop")
    if pid is _CURRENT.get():
        raise CallingSelf(server)
    pid._deliver((SYS, "stop", None, reason))
    with trio.move_on_after(timeout):
        exit_reason = await pid.wait_exited()
        if exit_reason != reason:
            raise ServerExited(server, exit_reason)
        return
    raise CallTimeout(server, "stop", timeout)


async def get_state(server: Server, timeout: float = 5.0) -> Any:  # noqa: ASYNC109 (OTP's sys timeout)
    """Return the server object of a running process (Erlang's ``sys:get_state``).

    The request waits behind the messages already queued, so it also tells you the
    server has handled them. For debugging and tests.

    Example::

        counter = await otpy.get_state("counter")
        assert counter.count == 3
    """
    check_timeout(timeout, "timeout")
    pid = resolve(server)
    if pid is None or not pid.alive:
        raise NoProcess(server, "get_state")
    caller = _CURRENT.get()
    if pid is caller:
        raise CallingSelf(server)
    from_ = From(pid, trio.lowlevel.current_task(), "get_state", caller)
    pid._deliver((SYS, "get_state", from_, None))
    with trio.CancelScope(deadline=trio.current_time() + timeout):
        return await trio.lowlevel.wait_task_rescheduled(from_._abort)
    raise CallTimeout(server, "get_state", timeout)


class GenServer(ServerBase):
    """A process that owns state and answers calls, casts and messages one at a time.

    A GenServer is a class whose callbacks run inside its own trio task. Its state is
    the object's attributes: ``init`` sets them up, and each callback reads and changes
    them. Messages are handled strictly one after another.

    Example:
        A stack. ``init`` runs before `start_link` returns::

            class Stack(otpy.GenServer):
                async def init(self, items=()):
                    self.items = list(items)

                async def handle_call(self, request, from_):
                    match request:
                        case "pop":
                            return self.items.pop()

                async def handle_cast(self, request):
                    match request:
                        case ("push", item):
                            self.items.append(item)

            async def main():
                async with trio.open_nursery() as nursery:
                    stack = await Stack.start_link(["hello"], nursery=nursery)
                    otpy.cast(stack, ("push", "world"))
                    assert await otpy.call(stack, "pop") == "world"
                    await otpy.stop(stack)

            trio.run(main)

    Return values and Elixir's tuples:
        ==================================  =====================================
        Elixir                              otpy
        ==================================  =====================================
        ``{:ok, state}``                    ``init`` returns ``None``
        ``{:ok, state, {:continue, a}}``    ``NoReply(continue_=a)``
        ``{:ok, state, timeout}``           ``NoReply(timeout=seconds)``
        ``:ignore``                         ``Ignore()``
        ``{:stop, reason}``                 ``Stop(reason)`` (or raise)
        ``{:reply, value, state}``          return ``value`` (or ``Reply(value)``)
        ``{:noreply, state}``               ``None`` (cast/info) / ``NoReply()`` (call: defer)
        ``{:stop, reason, reply, state}``   ``Stop(reason, reply=value)``
        ``{:stop, reason, state}``          ``Stop(reason)``
        ==================================  =====================================

    Exit signals:
        By default a GenServer does not trap exits, as in OTP: a supervisor's shutdown
        stops it at its next checkpoint and ``terminate`` does not run (``finally``
        blocks and context managers do). Set ``trap_exit = True`` on the class for
        ``terminate`` to run on shutdown.

    When not to use:
        If you don't need a process, you don't need a process: code that only computes
        needs no mailbox. Use a GenServer to own state or a resource over time.
    """

    async def init(self, *args: Any, **kwargs: Any) -> NoReply | Stop | Ignore | None:
        """Set up the state; `start_link` returns once it has run.

        Return ``None`` to start, `NoReply` to continue or time out, `Stop` to fail the
        start with a reason (raising does the same), or `Ignore` to not start.
        """
        return None

    async def _otp_init(self, *args: Any, **kwargs: Any) -> object:
        return await self.init(*args, **kwargs)
