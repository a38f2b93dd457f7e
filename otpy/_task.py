"""Task and Task.Supervisor: one function in its own process, and its result (Elixir's Task).

A task is an otpy process whose whole life is one async function. `Task.async_` starts
it linked to the caller and monitored by it; `Task.await_` waits for the reply. The
reply is kept on the `Task` handle and, when the owner is a process, also sent to its
mailbox as a `TaskReply`, followed by a `Down` when the task exits, exactly as Elixir
sends ``{ref, result}`` and ``{:DOWN, ref, ...}``. `Task.await_` and friends remove
both messages again, so a GenServer that awaits sees neither in ``handle_info``.

Tasks are processes: links, monitors, exit signals and supervisors apply to them as to
any GenServer. `TaskSupervisor` (also ``Task.Supervisor``) is a `DynamicSupervisor`
whose children are tasks.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Hashable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar, TypeVarTuple, Unpack, cast

import attrs
import trio

from ._child_spec import ChildSpec
from ._dynamic_supervisor import DynamicSupervisor
from ._exceptions import OtpError, ProcessExit, format_reason
from ._gen_server import ServerBase, is_normal_reason
from ._log import get_logger
from ._process import (
    _CURRENT,
    INFO,
    UNSET,
    Down,
    MonitorRef,
    Pid,
    Server,
    demonitor,
    link_pair,
    monitor,
    send_exit_signal,
)
from ._process import link as _link
from ._process import unlink as _unlink
from ._util import check_timeout

if TYPE_CHECKING:
    from types import TracebackType

    from ._child_spec import Restart, ShutdownSpec

_log = get_logger("otpy.task")

R = TypeVar("R")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


# --- results, messages and errors -------------------------------------------------------


@attrs.frozen
class TaskOk(Generic[R]):
    """The task replied with ``value`` (Elixir's ``{:ok, value}``).

    Returned by `Task.yield_`, `Task.yield_many` and `Task.shutdown`, and yielded by
    `Task.async_stream`.

    Example::

        match await task.yield_(1.0):
            case otpy.TaskOk(value):
                print("done:", value)
            case otpy.TaskExit(reason):
                print("crashed:", reason)
            case None:
                print("still running")
    """

    value: R


@attrs.frozen
class TaskExit:
    """The task exited without replying (Elixir's ``{:exit, reason}``).

    ``reason`` is the exit reason: the exception that crashed it, ``"killed"``, a term
    given to `ProcessExit`, or ``"timeout"`` for an `Task.async_stream` item that ran
    out of time.

    Example::

        async for result in otpy.Task.async_stream(urls, fetch, timeout=2):
            if isinstance(result, otpy.TaskExit):
                print("failed:", result.reason)
    """

    reason: object


@attrs.frozen
class TaskReply:
    """The message a task's owner process gets when the task replies (Elixir's ``{ref, result}``).

    ``ref`` is the task's `Task.ref`. A `Down` for the same ref follows when the task
    exits. `Task.await_`, `Task.yield_` and `Task.shutdown` remove both from the
    mailbox; a GenServer that does not await handles them in ``handle_info``.

    Example::

        class Crawler(otpy.GenServer):
            async def handle_cast(self, url):
                self.task = await otpy.TaskSupervisor.async_nolink("tasks", fetch, url)

            async def handle_info(self, message):
                match message:
                    case otpy.TaskReply(ref=ref, value=page) if ref is self.task.ref:
                        otpy.demonitor(ref, flush=True)      # we don't need the Down
                        self.pages.append(page)
                    case otpy.Down(ref=ref, reason=reason) if ref is self.task.ref:
                        print("fetch crashed:", reason)
    """

    ref: MonitorRef
    value: object


@attrs.define(eq=False, repr=False, slots=False)
class TaskTimeout(OtpError, trio.TooSlowError):
    """The task did not reply within ``timeout`` seconds.

    Raised by `Task.await_`; the task keeps running (in Elixir the caller exits, and the
    task dies with it only through the link). Stop it with `Task.shutdown`. It is also
    a `trio.TooSlowError`.

    Example::

        try:
            await task.await_(timeout=1)
        except otpy.TaskTimeout:
            await task.shutdown()
    """

    pid: Pid
    timeout: float

    def __str__(self) -> str:
        return f"task {self.pid!r} did not reply within {self.timeout:g} s"


@attrs.define(eq=False, repr=False, slots=False)
class TaskExited(OtpError):
    """The task exited before it replied; ``reason`` is its exit reason.

    When the task crashed, ``reason`` is the exception, also chained as ``__cause__``.

    Example::

        try:
            await task.await_()
        except otpy.TaskExited as exc:
            print("the task crashed:", exc.reason)
    """

    pid: Pid
    reason: object

    def __str__(self) -> str:
        return f"task {self.pid!r} exited before replying: {format_reason(self.reason)}"


def _exited(pid: Pid, reason: object) -> TaskExited:
    error = TaskExited(pid, reason)
    if isinstance(reason, BaseException):
        error.__cause__ = reason
    return error


# --- the process --------------------------------------------------------------------------


class _TaskState:
    """What the task's process shares with its handle: the reply and the exit reason."""

    __slots__ = ("abandoned", "deliver_to", "done", "exited", "has_value", "notify", "reason", "ref", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.has_value = False
        self.value: object = None
        self.exited = False
        self.reason: object = None
        self.abandoned = False
        self.deliver_to: Pid | None = None
        self.ref: MonitorRef | None = None
        self.notify: Callable[[], None] | None = None

    def reply(self, value: object) -> None:
        self.has_value = True
        self.value = value
        owner, ref = self.deliver_to, self.ref
        if owner is not None and ref is not None and owner.alive:
            owner._deliver((INFO, TaskReply(ref, value)))
        self.done.set()
        if self.notify is not None:
            self.notify()

    def exited_with(self, _pid: Pid, reason: object) -> None:
        self.exited = True
        self.reason = reason
        self.done.set()
        if self.notify is not None:
            self.notify()

    def result(self) -> TaskOk[Any] | TaskExit:
        return TaskOk(self.value) if self.has_value else TaskExit(self.reason)


class _TaskRunner(ServerBase):
    """The server object of a task process, so observers can see what it runs."""

    def __init__(self, fn: Callable[..., Awaitable[object]]) -> None:
        self.fn = fn


def _fn_name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)


def _spawn(
    fn: Callable[..., Awaitable[object]],
    args: tuple[Any, ...],
    *,
    nursery: trio.Nursery | None,
    link: bool,
    state: _TaskState,
    go: trio.Event | None = None,
) -> Pid:
    """Create a task process and schedule it; it runs once the caller yields (internal)."""
    parent = _CURRENT.get()
    if nursery is None:
        if parent is None:
            raise RuntimeError("a task started outside an otpy process needs nursery=")
        nursery = parent._nursery
        if nursery is None:
            raise RuntimeError(f"process {parent!r} cannot start processes: it has no nursery")
    runner = _TaskRunner(fn)
    pid = Pid(runner, parent, False)
    runner._pid = pid
    pid._label = "Task"
    pid._nursery = nursery
    nursery.start_soon(_run_task, pid, fn, args, state, go, name=f"otpy.Task {_fn_name(fn)}")
    if link and parent is not None:
        link_pair(parent, pid)
    pid._add_exit_hook(state.exited_with)
    return pid


async def _run_task(
    pid: Pid,
    fn: Callable[..., Awaitable[object]],
    args: tuple[Any, ...],
    state: _TaskState,
    go: trio.Event | None,
) -> None:
    _CURRENT.set(pid)
    reason: object = UNSET
    crashed = False
    try:
        with pid._scope:
            if go is not None:
                await go.wait()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            if state.abandoned:
                reason = "normal"
            else:
                try:
                    value = await fn(*args)
                except ProcessExit as exc:
                    reason, crashed = exc.reason, not is_normal_reason(exc.reason)
                except Exception as exc:  # noqa: BLE001 (a crash: the exception is the exit reason)
                    reason, crashed = exc, True
                else:
                    state.reply(value)
                    reason = "normal"
        if pid._scope.cancelled_caught:
            reason = pid._kill_reason
            crashed = False
    finally:
        if pid.alive:
            if reason is UNSET:
                reason = "shutdown"  # the nursery holding the task was cancelled
            if crashed:
                _log.error(
                    "task_crashed",
                    report="crash",
                    task=pid,
                    function=_fn_name(fn),
                    parent=pid.parent,
                    reason=reason,
                    exc_info=reason if isinstance(reason, BaseException) else None,
                )
            pid._finish(reason)


async def _start_linked(fn: Callable[..., Awaitable[object]], args: tuple[Any, ...]) -> Pid:
    await trio.lowlevel.checkpoint()
    return _spawn(fn, args, nursery=None, link=True, state=_TaskState())


async def _start_under(
    supervisor: Server,
    fn: Callable[..., Awaitable[object]],
    args: tuple[Any, ...],
    state: _TaskState,
    go: trio.Event | None,
    shutdown: ShutdownSpec,
) -> Pid:
    """Start a temporary task under a DynamicSupervisor; it waits for ``go`` if given."""

    async def start() -> Pid:
        await trio.lowlevel.checkpoint()
        return _spawn(fn, args, nursery=None, link=True, state=state, go=go)

    pid: Pid | None = None
    try:
        pid = await DynamicSupervisor.start_child(
            supervisor, ChildSpec(id="Task", start=start, restart="temporary", shutdown=shutdown)
        )
    finally:
        if pid is None and go is not None:
            # We were cancelled (or the start failed): a task that was started anyway
            # exits without running the function.
            state.abandoned = True
            go.set()
    if pid is None:  # pragma: no cover (start() never returns None)
        raise RuntimeError("the task supervisor returned no pid")
    return pid


# --- the handle ------------------------------------------------------------------------------


@attrs.frozen(eq=False, repr=False)
class Task(Generic[R]):
    """A function running in its own process, whose result you await (Elixir's ``Task``).

    ``Task.async_(fn, *args)`` starts ``fn(*args)`` in a new process linked to the caller
    and monitored by it, and returns this handle at once. ``await task.await_()`` (or
    ``await Task.await_(task)``) waits for the result.

    Example:
        Two lookups at the same time::

            async def main():
                async with trio.open_nursery() as nursery:
                    a = otpy.Task.async_(lookup, "alice", nursery=nursery)
                    b = otpy.Task.async_(lookup, "bob", nursery=nursery)
                    print(await a.await_(), await b.await_())

            trio.run(main)

        Inside a process (a GenServer callback, or another task) ``nursery=`` is not
        needed: the task lives where the process starts its processes.

    Links and crashes:
        The task is linked to the process that started it. If it crashes, the owner
        gets the exit signal: a GenServer that does not trap exits stops with the
        task's reason, as in Elixir. Outside any process (or in a process that traps
        exits) `await_` raises `TaskExited` with the reason. If the owner crashes, the
        task is stopped too. Use `TaskSupervisor.async_nolink` for work that may fail
        without taking the caller down.

    Timeouts:
        `await_` raises `TaskTimeout` after ``timeout`` seconds (5 by default). The task
        keeps running: call `shutdown` to stop it, or `yield_` to poll without raising.

    Owner only:
        `await_`, `yield_`, `yield_many` and `shutdown` must run in the process that
        started the task (or, for a task started outside any process, outside any
        process), as Elixir requires; otherwise they raise `RuntimeError`.

    Attributes:
        pid: the task's process.
        ref: the owner's monitor of the task; it tags `TaskReply` and `Down` messages.
        owner: the process that started the task (``None`` outside any process).
    """

    pid: Pid
    ref: MonitorRef
    owner: Pid | None
    _state: _TaskState = attrs.field(alias="_state")

    Supervisor: ClassVar[type[TaskSupervisor]]
    """`TaskSupervisor`, spelled as in Elixir."""

    def __repr__(self) -> str:
        owner = f" owner={self.owner!r}" if self.owner is not None else ""
        return f"<Task {self.pid!r}{owner}>"

    # --- starting -------------------------------------------------------------------------

    @staticmethod
    def async_(fn: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts, nursery: trio.Nursery | None = None) -> Task[T]:
        """Run ``fn(*args)`` in a new process linked to and monitored by the caller (``Task.async/1``).

        It returns at once; the task starts running at the caller's next checkpoint.

        Args:
            fn: an async function.
            args: its positional arguments.
            nursery: where the task's trio task lives. Inside a process it defaults to
                the process's nursery; outside one it is required.

        Raises:
            RuntimeError: outside any process without ``nursery=``.

        Example::

            task = otpy.Task.async_(fetch, "https://example.com", nursery=nursery)
            page = await task.await_(timeout=10)
        """
        owner = _CURRENT.get()
        state = _TaskState()
        pid = _spawn(fn, args, nursery=nursery, link=True, state=state)
        ref = monitor(pid)
        state.deliver_to, state.ref = owner, ref
        return Task(pid, ref, owner, _state=state)

    @staticmethod
    async def start_link(
        fn: Callable[[Unpack[Ts]], Awaitable[object]], *args: *Ts, nursery: trio.Nursery | None = None
    ) -> Pid:
        """Run ``fn(*args)`` in a new process linked to the caller, for its side effects (``Task.start_link``).

        Nobody awaits it: its result is dropped. This is the start function that
        `child_spec` uses, so a supervisor can run a task as a child.

        Example::

            pid = await otpy.Task.start_link(warm_cache, nursery=nursery)
        """
        await trio.lowlevel.checkpoint()
        return _spawn(fn, args, nursery=nursery, link=True, state=_TaskState())

    @staticmethod
    def child_spec(
        fn: Callable[[Unpack[Ts]], Awaitable[object]],
        *args: *Ts,
        id: Hashable = None,  # noqa: A002 (Elixir's :id)
        restart: Restart = "temporary",
        shutdown: ShutdownSpec = 5.0,
    ) -> ChildSpec:
        """A child spec that runs ``fn(*args)`` as a supervised task (Elixir's ``{Task, fun}``).

        ``restart`` defaults to ``"temporary"`` as in Elixir: a task that finishes is
        gone. Use ``"transient"`` to run it again after a crash, ``"permanent"`` for a
        loop that must always run. ``id`` defaults to the function's qualified name.

        Example::

            children = [otpy.Task.child_spec(poll_forever, "https://example.com", restart="permanent")]
            await otpy.Supervisor.start_link(children, nursery=nursery)
        """
        child_id: Hashable = id if id is not None else _fn_name(fn)
        return ChildSpec(
            id=child_id,
            start=functools.partial(_start_linked, fn, args),
            restart=restart,
            shutdown=shutdown,
        )

    @staticmethod
    def async_stream(
        items: Iterable[T] | AsyncIterable[T],
        fn: Callable[[T], Awaitable[R]],
        *,
        max_concurrency: int | None = None,
        ordered: bool = True,
        timeout: float = 5.0,
        on_timeout: Literal["kill_task", "exit"] = "kill_task",
        nursery: trio.Nursery | None = None,
    ) -> TaskStream[R]:
        """Run ``fn(item)`` for each item in its own task, at most ``max_concurrency`` at a time.

        Returns a `TaskStream`: an async iterator of `TaskOk` (the value) or `TaskExit`
        (the reason) per item, in the order of ``items`` unless ``ordered=False``. A
        crash is reported for its own item only; the tasks are monitored, not linked.
        Nothing starts until you iterate.

        Args:
            items: an iterable or async iterable.
            fn: an async function of one item.
            max_concurrency: how many tasks run at once (default: ``os.cpu_count()``,
                as Elixir defaults to the number of schedulers).
            ordered: emit results in input order (finished results wait for earlier
                ones) or as they finish.
            timeout: seconds each task may run, from its start (``math.inf``: no limit).
            on_timeout: ``"kill_task"`` kills the task and emits ``TaskExit("timeout")``;
                ``"exit"`` kills every task and raises `TaskTimeout` from the iterator.
            nursery: where the tasks live; required outside an otpy process.

        Example::

            async with otpy.Task.async_stream(urls, fetch, max_concurrency=4, timeout=10) as results:
                async for result in results:
                    match result:
                        case otpy.TaskOk(page):
                            save(page)
                        case otpy.TaskExit(reason):
                            log_failure(reason)
        """
        check_timeout(timeout, "timeout")
        return TaskStream(
            items,
            fn,
            max_concurrency=max_concurrency,
            ordered=ordered,
            timeout=timeout,
            on_timeout=on_timeout,
            nursery=nursery,
            supervisor=None,
        )

    # --- awaiting ------------------------------------------------------------------------------

    def _check_owner(self, operation: str) -> None:
        current = _CURRENT.get()
        if current is not self.owner:
            where = repr(current) if current is not None else "outside any process"
            owner = repr(self.owner) if self.owner is not None else "outside any process"
            raise RuntimeError(f"{self!r} must be queried by its owner ({owner}), but {operation} ran in {where}")

    def _flush(self) -> None:
        """Drop this task's `TaskReply` and `Down` from the owner's mailbox (the owner calls it)."""
        if self.owner is None:
            return
        ref = self.ref
        demonitor(ref, flush=True)
        queue = self.owner._queue
        if queue:
            for item in [i for i in queue if type(i) is tuple and i[0] == INFO]:
                message = item[1]
                if (type(message) is TaskReply or type(message) is Down) and message.ref is ref:
                    queue.remove(item)

    async def await_(self, timeout: float = 5.0) -> R:  # noqa: ASYNC109 (Elixir's await timeout)
        """Wait for the task's result (``Task.await/2``).

        Args:
            timeout: seconds to wait; ``math.inf`` waits forever.

        Raises:
            TaskTimeout: no reply within ``timeout``; the task keeps running.
            TaskExited: the task exited without replying (it crashed, was killed, or
                exited through `ProcessExit`). Inside a process that does not trap
                exits, a crash of the linked task stops the process first, with the
                task's reason, so this is not raised there.
            RuntimeError: called outside the owner.

        Example::

            task = otpy.Task.async_(compute, 21, nursery=nursery)
            assert await otpy.Task.await_(task) == 42
        """
        check_timeout(timeout, "timeout")
        self._check_owner("await_")
        state = self._state
        if not state.done.is_set():
            with trio.move_on_after(timeout):
                await state.done.wait()
            if not state.done.is_set():
                raise TaskTimeout(self.pid, timeout)
        else:
            await trio.lowlevel.checkpoint()
        if state.has_value:
            self._flush()
            return cast("R", state.value)
        # The task exited without a reply. If that crash stopped us through the link,
        # this checkpoint is where we stop, with the task's reason, as in Elixir.
        await trio.lowlevel.checkpoint()
        self._flush()
        raise _exited(self.pid, state.reason)

    async def yield_(self, timeout: float = 5.0) -> TaskOk[R] | TaskExit | None:  # noqa: ASYNC109 (Elixir's yield timeout)
        """Wait up to ``timeout`` seconds: `TaskOk`, `TaskExit`, or ``None`` if still running (``Task.yield/2``).

        Unlike `await_` it never raises for a crash or a timeout, so you can poll and
        then decide, typically ``await task.yield_(t) or await task.shutdown()``.

        Example::

            result = await task.yield_(1.0) or await task.shutdown()
            if result is None:
                print("gave up on the task")
        """
        check_timeout(timeout, "timeout")
        self._check_owner("yield_")
        state = self._state
        with trio.move_on_after(timeout):
            await state.done.wait()
        if not state.done.is_set():
            return None
        if not state.has_value:
            await trio.lowlevel.checkpoint()  # a linked crash stops us here, as in await_
        self._flush()
        return cast("TaskOk[R] | TaskExit", state.result())

    @staticmethod
    async def yield_many(
        tasks: Sequence[Task[R]],
        timeout: float = 5.0,  # noqa: ASYNC109 (Elixir's yield_many timeout)
    ) -> list[TaskOk[R] | TaskExit | None]:
        """Wait up to ``timeout`` seconds for all ``tasks``; one result per task, in order (``Task.yield_many/2``).

        Each entry is `TaskOk`, `TaskExit`, or ``None`` for a task still running.

        Example::

            tasks = [otpy.Task.async_(fetch, url, nursery=nursery) for url in urls]
            for task, result in zip(tasks, await otpy.Task.yield_many(tasks, 2.0)):
                if result is None:
                    await task.shutdown(timeout="brutal_kill")
        """
        check_timeout(timeout, "timeout")
        for task in tasks:
            task._check_owner("yield_many")
        with trio.move_on_after(timeout):
            for task in tasks:
                await task._state.done.wait()
        await trio.lowlevel.checkpoint()
        results: list[TaskOk[R] | TaskExit | None] = []
        for task in tasks:
            state = task._state
            if state.done.is_set():
                task._flush()
                results.append(cast("TaskOk[R] | TaskExit", state.result()))
            else:
                results.append(None)
        return results

    async def shutdown(self, timeout: float | Literal["brutal_kill"] = 5.0) -> TaskOk[R] | TaskExit | None:  # noqa: ASYNC109 (Elixir's shutdown timeout)
        """Stop the task: unlink, exit signal ``"shutdown"``, then ``"kill"`` after ``timeout`` (``Task.shutdown/2``).

        Returns:
            `TaskOk` if the task had replied before it stopped, ``None`` if it stopped
            because we asked, and `TaskExit` if it exited for another reason (it had
            crashed, or it had to be killed after ``timeout``: ``TaskExit("killed")``).
            ``timeout="brutal_kill"`` kills at once.

        On trio a kill takes effect at the task's next checkpoint: a task that never
        awaits (a CPU loop) cannot be stopped, and this waits for it.

        Example::

            if await task.yield_(1.0) is None:
                await task.shutdown(timeout=2)
        """
        if timeout != "brutal_kill":
            check_timeout(timeout, "timeout")
        self._check_owner("shutdown")
        pid = self.pid
        me = _CURRENT.get()
        if me is not None:
            _unlink(pid)
        brutal = timeout == "brutal_kill"
        if pid.alive:
            if brutal:
                send_exit_signal(pid, me, "kill")
            else:
                send_exit_signal(pid, me, "shutdown")
                with trio.move_on_after(cast("float", timeout)):
                    await pid.wait_exited()
                if pid.alive:
                    send_exit_signal(pid, me, "kill")
        await pid.wait_exited()
        self._flush()
        state = self._state
        if state.has_value:
            return TaskOk(cast("R", state.value))
        reason = state.reason
        if (reason == "shutdown" and not brutal) or (reason == "killed" and brutal):
            return None
        return TaskExit(reason)


# --- async_stream ----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Slot:
    pid: Pid
    state: _TaskState
    deadline: float


class TaskStream(Generic[R]):
    """The async iterator that `Task.async_stream` returns: one `TaskOk` or `TaskExit` per item.

    Use it as an async context manager to be sure that the tasks still running are
    killed when you stop early (``break``, an exception, a cancellation). Without it,
    they are killed only when the iterator itself fails or is cancelled while it
    waits. Inside a process, the tasks are also killed if that process exits.

    Example::

        async with otpy.Task.async_stream(range(10), square, max_concurrency=3) as results:
            values = [r.value async for r in results if isinstance(r, otpy.TaskOk)]
    """

    def __init__(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        fn: Callable[[Any], Awaitable[R]],
        *,
        max_concurrency: int | None,
        ordered: bool,
        timeout: float,
        on_timeout: Literal["kill_task", "exit"],
        nursery: trio.Nursery | None,
        supervisor: Server | None,
        shutdown: ShutdownSpec = 5.0,
    ) -> None:
        if max_concurrency is None:
            max_concurrency = os.cpu_count() or 1
        if type(max_concurrency) is not int or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, not {max_concurrency!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be seconds > 0 or math.inf, not {timeout!r}")
        if on_timeout not in ("kill_task", "exit"):
            raise ValueError(f"on_timeout must be 'kill_task' or 'exit', not {on_timeout!r}")
        owner = _CURRENT.get()
        if supervisor is None and nursery is None:
            if owner is None:
                raise RuntimeError("Task.async_stream() outside an otpy process needs nursery=")
            nursery = owner._nursery
        self._iter: Iterator[Any] | None = None
        self._aiter: AsyncIterator[Any] | None = None
        if isinstance(items, AsyncIterable):
            self._aiter = aiter(items)
        else:
            self._iter = iter(items)
        self._fn = fn
        self._max = max_concurrency
        self._ordered = ordered
        self._timeout = timeout
        self._on_timeout = on_timeout
        self._nursery = nursery
        self._supervisor = supervisor
        self._shutdown = shutdown
        self._owner = owner
        self._exhausted = False
        self._closed = False
        self._spawned = 0
        self._emitted = 0
        self._pending: dict[int, _Slot] = {}
        self._ready_in_order: dict[int, TaskOk[R] | TaskExit] = {}
        self._ready: deque[TaskOk[R] | TaskExit] = deque()
        self._changed = trio.Event()
        self._alive = 0
        self._watcher: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<TaskStream of {_fn_name(self._fn)}: {len(self._pending)} running, {self._emitted} emitted>"

    def __aiter__(self) -> TaskStream[R]:
        return self

    async def __anext__(self) -> TaskOk[R] | TaskExit:
        if self._closed:
            raise StopAsyncIteration
        ok = False
        try:
            result = await self._next()
            ok = True
            return result
        finally:
            if not ok:
                self._kill_running()

    async def __aenter__(self) -> TaskStream[R]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Kill the tasks still running and wait for them to exit; the stream then ends.

        Example::

            results = otpy.Task.async_stream(items, work, nursery=nursery)
            first = await anext(results)
            await results.aclose()
        """
        for pid in self._kill_running():
            await pid.wait_exited()
        await trio.lowlevel.checkpoint()

    # --- internals -------------------------------------------------------------------------

    def _wake(self) -> None:
        self._changed.set()

    def _task_exited(self, _pid: Pid, _reason: object) -> None:
        self._alive -= 1
        if self._alive == 0 and self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def _kill_running(self) -> list[Pid]:
        self._closed = True
        pids = [slot.pid for slot in self._pending.values()]
        self._pending.clear()
        me = _CURRENT.get()
        for pid in pids:
            send_exit_signal(pid, me, "kill")
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        return pids

    async def _watch_owner(self, owner: Pid, scope: trio.CancelScope) -> None:
        with scope:
            await owner.wait_exited()
            self._kill_running()

    async def _next(self) -> TaskOk[R] | TaskExit:
        await trio.lowlevel.checkpoint()
        while True:
            await self._fill()
            self._collect()
            if self._ordered:
                if self._emitted in self._ready_in_order:
                    result = self._ready_in_order.pop(self._emitted)
                    self._emitted += 1
                    return result
            elif self._ready:
                self._emitted += 1
                return self._ready.popleft()
            if not self._pending:
                # Exhausted: nothing is running and nothing is ready.
                self._closed = True
                raise StopAsyncIteration
            deadline = min(slot.deadline for slot in self._pending.values())
            self._changed = trio.Event()
            with trio.move_on_at(deadline):
                await self._changed.wait()

    async def _fill(self) -> None:
        while not self._exhausted and len(self._pending) < self._max:
            if self._aiter is not None:
                try:
                    item = await anext(self._aiter)
                except StopAsyncIteration:
                    self._exhausted = True
                    return
            else:
                assert self._iter is not None
                try:
                    item = next(self._iter)
                except StopIteration:
                    self._exhausted = True
                    return
            await self._spawn(item)

    async def _spawn(self, item: object) -> None:
        state = _TaskState()
        state.notify = self._wake
        if self._supervisor is not None:
            pid = await _start_under(self._supervisor, self._fn, (item,), state, None, self._shutdown)
        else:
            pid = _spawn(self._fn, (item,), nursery=self._nursery, link=False, state=state)
        self._pending[self._spawned] = _Slot(pid, state, trio.current_time() + self._timeout)
        self._spawned += 1
        self._alive += 1
        pid._add_exit_hook(self._task_exited)
        owner = self._owner
        if owner is not None and self._watcher is None and pid.alive:
            nursery = self._nursery if self._nursery is not None else owner._nursery
            if nursery is not None:
                self._watcher = trio.CancelScope()
                nursery.start_soon(self._watch_owner, owner, self._watcher)

    def _collect(self) -> None:
        now = trio.current_time()
        for index, slot in list(self._pending.items()):
            state = slot.state
            result: TaskOk[R] | TaskExit
            if state.has_value or state.exited:
                result = cast("TaskOk[R] | TaskExit", state.result())
            elif now >= slot.deadline:
                if self._on_timeout == "exit":
                    pid = slot.pid
                    self._kill_running()
                    raise TaskTimeout(pid, self._timeout)
                send_exit_signal(slot.pid, _CURRENT.get(), "kill")
                result = TaskExit("timeout")
            else:
                continue
            del self._pending[index]
            if self._ordered:
                self._ready_in_order[index] = result
            else:
                self._ready.append(result)


# --- Task.Supervisor ---------------------------------------------------------------------------


class TaskSupervisor(DynamicSupervisor):
    """A DynamicSupervisor for tasks (Elixir's ``Task.Supervisor``; also ``otpy.Task.Supervisor``).

    Its children are task processes, ``temporary`` by default: a task that finishes or
    crashes is simply gone. Start one in your tree, then run work under it.

    Example::

        async def main():
            async with trio.open_nursery() as nursery:
                await otpy.TaskSupervisor.start_link(name="tasks", nursery=nursery)
                # fire and forget: a crash is logged, nobody else is affected
                await otpy.TaskSupervisor.start_child("tasks", send_email, "alice")
                # a result, without a link: a crash comes back as TaskExited
                task = await otpy.TaskSupervisor.async_nolink("tasks", fetch, url)
                try:
                    page = await task.await_()
                except otpy.TaskExited as exc:
                    page = None
                await otpy.stop("tasks")

            trio.run(main)

    In a supervision tree, use ``otpy.TaskSupervisor.child_spec(name="tasks")``.

    When it stops, running tasks get the exit signal ``"shutdown"`` and are killed
    after their ``shutdown`` timeout (5 s by default).
    """

    @staticmethod
    async def start_child(  # type: ignore[override] # Task.Supervisor.start_child takes a function
        supervisor: Server,
        fn: Callable[[Unpack[Ts]], Awaitable[object]],
        *args: *Ts,
        restart: Restart = "temporary",
        shutdown: ShutdownSpec = 5.0,
    ) -> Pid:
        """Run ``fn(*args)`` as a child of ``supervisor``, not linked to the caller; return its pid.

        Its result is dropped. ``restart="transient"`` runs it again after a crash.

        Example::

            pid = await otpy.TaskSupervisor.start_child("tasks", send_email, "alice")
        """
        spec = ChildSpec(
            id="Task", start=functools.partial(_start_linked, fn, args), restart=restart, shutdown=shutdown
        )
        pid = await DynamicSupervisor.start_child(supervisor, spec)
        if pid is None:  # pragma: no cover (a task never ignores its start)
            raise RuntimeError("the task supervisor returned no pid")
        return pid

    @staticmethod
    async def async_nolink(
        supervisor: Server,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        *args: *Ts,
        shutdown: ShutdownSpec = 5.0,
    ) -> Task[T]:
        """Run ``fn(*args)`` under ``supervisor``, monitored by the caller but not linked (``async_nolink``).

        A crash does not reach the caller: `Task.await_` raises `TaskExited`, and
        `Task.yield_` returns `TaskExit`. A GenServer that does not await gets a
        `TaskReply` and then a `Down` in ``handle_info``.

        Example::

            task = await otpy.TaskSupervisor.async_nolink("tasks", fetch, url)
            match await task.yield_(5.0) or await task.shutdown():
                case otpy.TaskOk(page):
                    ...
        """
        return await _supervised_task(supervisor, fn, args, linked=False, shutdown=shutdown)

    @staticmethod
    async def async_(
        supervisor: Server,
        fn: Callable[[Unpack[Ts]], Awaitable[T]],
        *args: *Ts,
        shutdown: ShutdownSpec = 5.0,
    ) -> Task[T]:
        """Like `async_nolink`, but the task is also linked to the caller (``Task.Supervisor.async``).

        Example::

            task = await otpy.TaskSupervisor.async_("tasks", compute, 42)
            value = await task.await_()
        """
        return await _supervised_task(supervisor, fn, args, linked=True, shutdown=shutdown)

    @staticmethod
    def async_stream_nolink(
        supervisor: Server,
        items: Iterable[T] | AsyncIterable[T],
        fn: Callable[[T], Awaitable[R]],
        *,
        max_concurrency: int | None = None,
        ordered: bool = True,
        timeout: float = 5.0,
        on_timeout: Literal["kill_task", "exit"] = "kill_task",
        shutdown: ShutdownSpec = 5.0,
    ) -> TaskStream[R]:
        """`Task.async_stream`, with each task a child of ``supervisor`` (``async_stream_nolink``).

        No ``nursery=`` is needed: the tasks live under the supervisor.

        Example::

            async with otpy.TaskSupervisor.async_stream_nolink("tasks", urls, fetch) as results:
                async for result in results:
                    print(result)
        """
        return TaskStream(
            items,
            fn,
            max_concurrency=max_concurrency,
            ordered=ordered,
            timeout=timeout,
            on_timeout=on_timeout,
            nursery=None,
            supervisor=supervisor,
            shutdown=shutdown,
        )

    @staticmethod
    async def children(supervisor: Server) -> list[Pid]:
        """The pids of the tasks running under ``supervisor`` (``Task.Supervisor.children/1``).

        Example::

            for pid in await otpy.TaskSupervisor.children("tasks"):
                otpy.exit(pid, "kill")
        """
        return [
            info.child for info in await DynamicSupervisor.which_children(supervisor) if isinstance(info.child, Pid)
        ]


async def _supervised_task(
    supervisor: Server,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    *,
    linked: bool,
    shutdown: ShutdownSpec,
) -> Task[Any]:
    state = _TaskState()
    go = trio.Event()
    pid = await _start_under(supervisor, fn, args, state, go, shutdown)
    # The task waits for `go`, so it cannot finish before the monitor (and link) exist.
    owner = _CURRENT.get()
    ref = monitor(pid)
    if linked and owner is not None:
        _link(pid)
    state.deliver_to, state.ref = owner, ref
    go.set()
    return Task(pid, ref, owner, _state=state)


Task.Supervisor = TaskSupervisor
