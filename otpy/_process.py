"""Processes: identity, mailbox, names, links, monitors and exit signals.

A process is one trio task running a server's loop. Its `Pid` holds everything
other tasks may touch: the mailbox (a deque plus at most one parked receiver), the
links and monitors, and the exit reason once it is gone. Every operation here is
synchronous and O(1) except where it must visit links or monitors at exit.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import math
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar, overload, runtime_checkable

import attrs
import outcome
import trio
from trio.lowlevel import Abort, RunVar, Task, current_task, reschedule, wait_task_rescheduled

from ._exceptions import CallingSelf, CallTimeout, NoProcess, ServerExited, not_in_trio_run
from ._util import check_timeout

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from ._gen_server import ServerBase

# Mailbox item kinds. A call is a `From`; everything else is a tuple whose first
# element is one of these.
CAST: Final = 0
INFO: Final = 1
EXIT: Final = 2  # (EXIT, sender, reason): an exit signal to a process that traps exits
SYS: Final = 3  # (SYS, op, from_or_none, arg): stop / get_state

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

_ids = itertools.count(1)
_SECONDS: Final = (float, int)
_CURRENT: contextvars.ContextVar[Pid | None] = contextvars.ContextVar("otpy_current", default=None)


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Final = _Unset()


class Pid:
    """The identity of a process: what you call, cast to, monitor or link.

    Pids compare by identity, like Erlang pids. A pid stays valid after its process
    exits: `alive` turns false and `exit_reason` tells why it exited. Get one from
    `start_link`, from `whereis`, or from `otpy.self()` inside a process.

    Example::

        pid = await Counter.start_link(name="counter")
        assert otpy.whereis("counter") is pid
        await otpy.stop(pid)
        assert not pid.alive and pid.exit_reason == "normal"
    """

    __slots__ = (
        "__weakref__",
        "_deadlines",
        "_exit_event",
        "_hosted",
        "_kill_reason",
        "_linked_to_trio",
        "_label",
        "_links",
        "_monitors",
        "_name",
        "_nursery",
        "_on_exit",
        "_parent",
        "_pending",
        "_queue",
        "_reason",
        "_scope",
        "_server",
        "_serial",
        "_started_at",
        "_trap_exit",
        "_waiter",
        "_watching",
        "alive",
    )

    def __init__(self, server: ServerBase | None, parent: Pid | None, trap_exit: bool) -> None:
        self._queue: deque[Any] = deque()
        self._waiter: Task | None = None
        self.alive = True
        self._reason: object = UNSET
        self._name: object = None
        self._links: set[Pid] | None = None
        self._monitors: dict[MonitorRef, Pid | None] | None = None
        self._watching: set[MonitorRef] | None = None
        self._scope = trio.CancelScope()
        # A child of a supervisor runs its loop shielded from its nursery's cancellation:
        # only exit signals stop it, so that its supervisor stops the children in order.
        self._hosted = False
        # Started with start_link from plain trio code: a crash is raised into the nursery.
        self._linked_to_trio = False
        self._trap_exit = trap_exit
        self._parent = parent
        self._server = server
        self._exit_event: trio.Event | None = None
        self._kill_reason: object = UNSET
        self._pending: set[From] | None = None
        self._nursery: trio.Nursery | None = None
        self._on_exit: list[Callable[[Pid, object], None]] | None = None
        self._deadlines = _call_deadlines()
        self._label = type(server).__name__ if server is not None else "process"
        self._serial = next(_ids)
        self._started_at = trio.current_time()

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name is not None else ""
        if self.alive:
            state = ""
        elif isinstance(self._reason, BaseException):
            # Only the type: an exception reason may hold this very pid (CallingSelf).
            state = f" exited={type(self._reason).__name__}"
        else:
            state = f" exited={self._reason!r}"
        return f"<Pid {self._label}#{self._serial}{name}{state}>"

    @property
    def name(self) -> object:
        """The registered name, or ``None``."""
        return self._name

    @property
    def exit_reason(self) -> object:
        """The exit reason once the process has exited (``None`` while it is alive)."""
        return None if self._reason is UNSET else self._reason

    @property
    def parent(self) -> Pid | None:
        """The process that started this one (``None`` when started outside any process)."""
        return self._parent

    @property
    def trap_exit(self) -> bool:
        """Whether exit signals arrive as `ExitSignal` messages instead of stopping the process."""
        return self._trap_exit

    @property
    def mailbox_size(self) -> int:
        """How many messages wait in the mailbox."""
        return len(self._queue)

    @property
    def started_at(self) -> float:
        """`trio.current_time` when the process was created."""
        return self._started_at

    async def wait_exited(self) -> object:
        """Wait until the process has exited and return its exit reason.

        Example::

            otpy.exit(pid, "kill")
            assert await pid.wait_exited() == "killed"
        """
        if self.alive:
            if self._exit_event is None:
                self._exit_event = trio.Event()
            await self._exit_event.wait()
        else:
            await trio.lowlevel.checkpoint()
        return self._reason

    # --- the mailbox -------------------------------------------------------------

    def _deliver(self, item: object) -> None:
        """Append ``item`` to the mailbox and wake the process if it waits (internal)."""
        self._queue.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            reschedule(waiter)

    async def _wait_message(self) -> None:
        """Park until something arrives in the mailbox (internal; the mailbox is empty)."""
        self._waiter = current_task()
        await wait_task_rescheduled(self._abort_wait)

    def _abort_wait(self, _raise_cancel: object) -> Abort:
        self._waiter = None
        return Abort.SUCCEEDED

    # --- exit -----------------------------------------------------------------------

    def _kill(self, reason: object) -> None:
        """Stop the process at its next checkpoint with ``reason`` (internal)."""
        if self._kill_reason is UNSET:
            self._kill_reason = reason
        self._scope.cancel()

    def _add_exit_hook(self, hook: Callable[[Pid, object], None]) -> None:
        """Run ``hook(pid, reason)`` synchronously when the process exits (internal)."""
        if not self.alive:
            hook(self, self._reason)
            return
        if self._on_exit is None:
            self._on_exit = []
        self._on_exit.append(hook)

    def _finish(self, reason: object) -> None:
        """Mark the process exited and propagate its exit (internal; idempotent)."""
        if not self.alive:
            return
        self.alive = False
        self._reason = reason
        self._server = None
        if self._name is not None:
            _unregister(self._name, self)
        if self._on_exit is not None:
            hooks, self._on_exit = self._on_exit, None
            for hook in hooks:
                hook(self, reason)
        queue = self._queue
        if queue:
            for item in queue:
                if type(item) is From:
                    item._fail(_exited(self, reason))
                elif type(item) is tuple and item[0] == SYS and item[2] is not None:
                    item[2]._fail(_exited(self, reason))
            queue.clear()
        if self._pending:
            pending, self._pending = self._pending, None
            for from_ in pending:
                from_._fail(_exited(self, reason))
        if self._watching:
            for ref in self._watching:
                target_monitors = ref.target._monitors
                if target_monitors is not None:
                    target_monitors.pop(ref, None)
            self._watching = None
        if self._links:
            links, self._links = self._links, None
            for other in links:
                if other._links is not None:
                    other._links.discard(self)
                send_exit_signal(other, self, reason)
        if self._monitors:
            monitors, self._monitors = self._monitors, None
            for ref, watcher in monitors.items():
                if watcher is not None:
                    if watcher._watching is not None:
                        watcher._watching.discard(ref)
                    watcher._deliver((INFO, Down(ref, self, reason)))
                else:
                    ref._fire(reason)
        if self._exit_event is not None:
            self._exit_event.set()


def _exited(pid: Pid, reason: object) -> ServerExited:
    """The error for a caller whose server exited: the crash, if any, chained as its cause,
    so the caller's traceback shows where the server failed."""
    error = ServerExited(pid, reason)
    if isinstance(reason, BaseException):
        error.__cause__ = reason
    return error


# --- messages a process may receive -------------------------------------------------


@attrs.frozen
class ExitSignal:
    """An exit signal, received as a message by a process that traps exits.

    Elixir's ``{:EXIT, pid, reason}``. ``pid`` is the sender (``None`` when the signal
    came from outside any process).

    Example::

        async def handle_info(self, message):
            match message:
                case otpy.ExitSignal(pid=pid, reason=reason):
                    print(f"linked process {pid} exited: {reason!r}")
    """

    pid: Pid | None
    reason: object


@attrs.frozen(eq=False)
class MonitorRef:
    """The reference returned by `monitor`; pass it to `demonitor`.

    Example::

        ref = otpy.monitor(worker)
        otpy.demonitor(ref, flush=True)
    """

    target: Pid
    _event: trio.Event | None = attrs.field(default=None, alias="_event", repr=False)
    _reason: list[object] = attrs.field(factory=list, alias="_reason", repr=False)

    def _fire(self, reason: object) -> None:
        """Record the target's exit for a monitor held outside any process (internal)."""
        self._reason.append(reason)
        if self._event is not None:
            self._event.set()

    async def wait(self) -> object:
        """Wait for the monitored process to exit and return its reason.

        Only for monitors taken outside any process; inside a process the exit arrives
        as a `Down` message instead.

        Example::

            ref = otpy.monitor(pid)
            otpy.exit(pid, "kill")
            assert await ref.wait() == "killed"
        """
        if not self._reason:
            if self._event is None:
                raise RuntimeError("MonitorRef.wait() is for monitors taken outside a process")
            await self._event.wait()
        else:
            await trio.lowlevel.checkpoint()
        return self._reason[0]


@attrs.frozen
class Down:
    """The message a monitor delivers when the monitored process exits.

    Elixir's ``{:DOWN, ref, :process, pid, reason}``. ``reason`` is ``"noproc"`` when the
    process was already dead when the monitor was taken.

    Example::

        ref = otpy.monitor(worker)
        ...
        async def handle_info(self, message):
            match message:
                case otpy.Down(ref=ref, reason=reason):
                    ...
    """

    ref: MonitorRef
    pid: Pid
    reason: object


# --- replies ------------------------------------------------------------------------


class From:
    """Who is waiting for a reply: the second argument of ``handle_call``.

    Keep it and answer later with `reply` to defer a reply (return `NoReply` from
    ``handle_call``). A reply to a caller that has timed out is dropped.

    ``caller`` is the calling process (Elixir's ``from`` is ``{caller_pid, tag}``), or
    ``None`` when plain trio code called; ``pid`` is the server that owes the reply.
    ``request`` is the request while the call is pending; once the call is answered,
    has failed or its caller gave up, the `From` lets go of it (``None``), so a `From`
    kept around never keeps a large request alive.

    Example::

        async def handle_call(self, request, from_):
            self.waiting.append(from_)
            if from_.caller is not None:
                otpy.monitor(from_.caller)    # know if the caller goes away
            return otpy.NoReply()

        async def handle_cast(self, request):
            otpy.reply(self.waiting.pop(0), request)
    """

    __slots__ = ("_deadline", "_deferred", "_server", "_task", "_timeout", "caller", "pid", "request")

    _deadline: float  # set for timed calls only, with _server and _timeout
    _server: object
    _timeout: float

    def __init__(self, pid: Pid, task: Task | None, request: object, caller: Pid | None = None) -> None:
        self.pid = pid
        self._task = task
        self.request = request
        self.caller = caller
        self._deferred = False

    def _timed_out(self) -> None:
        """The call's deadline passed: fail the caller with `CallTimeout` (internal)."""
        if self._task is not None:
            self._fail(CallTimeout(self._server, self.request, self._timeout))

    def __repr__(self) -> str:
        return f"<From {type(self.request).__name__} to {self.pid!r}>"

    @property
    def waiting(self) -> bool:
        """Whether the caller still waits for a reply."""
        return self._task is not None

    def _abort(self, _raise_cancel: object) -> Abort:
        """The caller stopped waiting (timeout or cancellation)."""
        self._task = None
        if self._deferred:
            self._release()
        return Abort.SUCCEEDED

    def _defer(self) -> None:
        """Remember this call until it is answered, so an exit can fail it (internal)."""
        if self._task is None:
            self.request = None  # the caller gave up while handle_call ran
            return
        if self._deferred:
            return
        self._deferred = True
        pending = self.pid._pending
        if pending is None:
            pending = self.pid._pending = set()
        pending.add(self)

    def _fail(self, error: BaseException) -> None:
        """Raise ``error`` in the waiting caller (internal)."""
        task = self._task
        if task is not None:
            self._task = None
            if self._deferred:  # still queued, the server will get the request anyway, as in OTP
                self._release()
            reschedule(task, outcome.Error(error))

    def _release(self) -> None:
        """The call is over: leave the server's pending set and let go of the request."""
        self.request = None
        if self._deferred:
            self._deferred = False
            pending = self.pid._pending
            if pending is not None:
                pending.discard(self)


def reply(from_: From, value: object) -> None:
    """Send ``value`` to a caller whose ``handle_call`` deferred its reply.

    Replying twice, or to a caller that has timed out, does nothing: the late reply
    is dropped, as Elixir drops it.

    Example::

        async def handle_call(self, request, from_):
            if request == "next_job":
                self.idle_workers.append(from_)   # answered when a job arrives
                return otpy.NoReply()

        async def handle_cast(self, job):
            otpy.reply(self.idle_workers.pop(0), job)
    """
    task = from_._task
    if task is None:
        return
    from_._task = None
    from_._release()
    reschedule(task, outcome.Value(value))


# --- names ----------------------------------------------------------------------------


@runtime_checkable
class ViaRegistry(Protocol):
    """**Protocol**: a registry that can hold process names (Elixir's ``:via`` module).

    `otpy.Registry` implements it; any object with these three methods works.

    Example::

        class Table:
            def __init__(self):
                self.pids = {}
            def register_name(self, key, pid):
                return self.pids.setdefault(key, pid) is pid
            def unregister_name(self, key):
                self.pids.pop(key, None)
            def whereis_name(self, key):
                return self.pids.get(key)

        await Worker.start_link(name=otpy.via(Table(), "w1"), nursery=nursery)
    """

    def register_name(self, key: Hashable, pid: Pid) -> bool:
        """Register ``pid`` under ``key``; return False if the key is taken."""
        ...

    def unregister_name(self, key: Hashable) -> None:
        """Remove ``key``."""
        ...

    def whereis_name(self, key: Hashable) -> Pid | None:
        """Return the live pid under ``key``, or None."""
        ...


@attrs.frozen
class Via:
    """A name held by a `ViaRegistry` instead of the local name table. See `via`.

    Example::

        name = otpy.via(registry, ("room", 42))
        await Room.start_link(name=name, nursery=nursery)
        await otpy.call(name, "members")
    """

    registry: ViaRegistry | Pid | str
    key: Hashable


def via(registry: ViaRegistry | Pid | str, key: Hashable) -> Via:
    """Name a process through ``registry`` (Elixir's ``{:via, Registry, {registry, key}}``).

    ``registry`` is a `ViaRegistry` object, or the pid or registered name of a process
    whose server is one (an `otpy.Registry`); a pid or name is looked up each time the
    via name is used. Works wherever a name works: ``start_link(name=...)``, `call`,
    `cast`, child specs.

    Example::

        registry = await otpy.Registry.start_link(keys="unique", name="sessions", nursery=nursery)
        await Session.start_link(name=otpy.via(registry, "alice"), nursery=nursery)
        await otpy.call(otpy.via("sessions", "alice"), "hello")
    """
    return Via(registry, key)


def _via_registry(name: Via) -> ViaRegistry | None:
    """The registry object behind a via name (``None`` if its registry process is gone)."""
    registry = name.registry
    if isinstance(registry, (Pid, str)):
        pid = registry if isinstance(registry, Pid) else _name_table().get(registry)
        server: object = pid._server if pid is not None and pid.alive else None
        return server if isinstance(server, ViaRegistry) else None
    return registry


Name = str | Via
_NAMES: RunVar[dict[str, Pid]] = RunVar("otpy_names")


def _name_table() -> dict[str, Pid]:
    try:
        return _NAMES.get()
    except LookupError:
        table: dict[str, Pid] = {}
        _NAMES.set(table)
        return table
    except RuntimeError:  # trio's "Cannot be used outside of a run context"
        raise not_in_trio_run("a process name was looked up (otpy.call, cast, send, whereis...)") from None


def register(name: Name, pid: Pid) -> Pid | None:
    """Register ``pid`` under ``name``; return the pid that holds it already, if any."""
    if type(name) is str:
        table = _name_table()
        existing = table.get(name)
        if existing is not None and existing.alive:
            return existing
        table[name] = pid
    elif isinstance(name, Via):
        registry = _via_registry(name)
        if registry is None:
            raise NoProcess(name.registry, "register_name")
        if not registry.register_name(name.key, pid):
            holder = registry.whereis_name(name.key)
            return holder if holder is not None else pid
    else:
        raise TypeError(f"a process name must be a str or otpy.via(...), not {type(name).__name__}: {name!r}")
    pid._name = name
    return None


def _unregister(name: object, pid: Pid) -> None:
    if type(name) is str:
        table = _name_table()
        if table.get(name) is pid:
            del table[name]
    elif isinstance(name, Via):
        registry = _via_registry(name)
        if registry is not None and registry.whereis_name(name.key) is pid:
            registry.unregister_name(name.key)


def whereis(name: Name) -> Pid | None:
    """Return the live process registered under ``name``, or ``None``.

    Example::

        await Counter.start_link(name="counter")
        assert otpy.whereis("counter") is not None
        assert otpy.whereis("nobody") is None
    """
    if type(name) is str:
        pid = _name_table().get(name)
    elif isinstance(name, Via):
        registry = _via_registry(name)
        pid = registry.whereis_name(name.key) if registry is not None else None
    else:
        raise TypeError(f"a process name must be a str or otpy.via(...), not {type(name).__name__}: {name!r}")
    if pid is not None and pid.alive:
        return pid
    return None


def registered() -> list[str]:
    """The locally registered names of live processes (Erlang's ``registered/0``).

    Example::

        await Counter.start_link(name="counter", nursery=nursery)
        assert "counter" in otpy.registered()
    """
    return [name for name, pid in _name_table().items() if pid.alive]


Server = Pid | str | Via


def resolve(server: Server) -> Pid | None:
    """The pid behind a pid or a name (``None`` if no live process has that name)."""
    if type(server) is Pid:
        return server
    if isinstance(server, (str, Via)):
        return whereis(server)
    raise TypeError(f"expected a Pid, a name or otpy.via(...), not {type(server).__name__}: {server!r}")


def self() -> Pid:
    """The pid of the calling process (Elixir's ``self()``).

    Raises:
        RuntimeError: when called outside any otpy process.

    Example::

        async def init(self):
            print("I am", otpy.self())
    """
    pid = _CURRENT.get()
    if pid is None:
        raise RuntimeError("otpy.self() called outside an otpy process")
    return pid


def trap_exit(enabled: bool = True) -> bool:
    """Set whether the calling process traps exits; return the previous setting.

    Erlang's ``process_flag(trap_exit, enabled)``. A process that traps exits receives
    exit signals as `ExitSignal` messages instead of being stopped by them (``"kill"``
    still stops it). A GenServer class can set ``trap_exit = True`` instead.

    Example::

        async def init(self):
            otpy.trap_exit()          # terminate() will run on shutdown
    """
    pid = self()
    previous = pid._trap_exit
    pid._trap_exit = enabled
    return previous


def current_process() -> Pid | None:
    """The pid of the calling process, or ``None`` outside any process.

    Example::

        if otpy.current_process() is None:
            print("called from plain trio code")
    """
    return _CURRENT.get()


# --- client operations --------------------------------------------------------------------


class Call(Generic[R_co]):
    """Base for request types that declare their reply type, so `call` is typed.

    Example::

        @attrs.frozen
        class Get(otpy.Call[int]):
            key: str

        value = await otpy.call(server, Get("a"))   # mypy knows: int
    """


@overload
async def call(server: Server, request: Call[R], timeout: float = ...) -> R: ...  # noqa: ASYNC109
# A typed request whose reply does not fit the expected type lands here, not on the
# `Any` below: mypy retries the overloads when the first fails in the assignment's
# context, and `object` is then what the assignment sees (and rejects).
@overload
async def call(server: Server, request: Call[Any], timeout: float = ...) -> object: ...  # noqa: ASYNC109
@overload
async def call(server: Server, request: object, timeout: float = ...) -> Any: ...  # noqa: ASYNC109


async def call(server: Server, request: object, timeout: float = 5.0) -> Any:  # noqa: ASYNC109 (OTP's call timeout)
    """Send ``request`` to ``server`` and wait for its reply.

    The server answers in ``handle_call``. While the caller waits it effectively
    monitors the server: if the server exits first, the call fails at once with
    `ServerExited` carrying the exit reason. A request that subclasses `Call[R]`
    gives the reply the type ``R``.

    Args:
        server: a `Pid`, a registered name, or `via(...)`.
        request: any value; ``handle_call`` receives it.
        timeout: seconds to wait (``math.inf`` to wait forever). Enclosing trio cancel
            scopes are honoured as well.

    Raises:
        NoProcess: no live process has that name, or the pid has exited.
        CallTimeout: no reply within ``timeout``; a later reply is dropped.
        ServerExited: the server exited before replying.
        CallingSelf: a process called itself.

    Example::

        assert await otpy.call("counter", "get") == 0
    """
    if timeout != math.inf and not (type(timeout) in _SECONDS and timeout >= 0):
        check_timeout(timeout, "timeout")
    pid = server if type(server) is Pid else resolve(server)
    if pid is None or not pid.alive:
        raise NoProcess(server, request)
    caller = _CURRENT.get()
    if pid is caller:
        raise CallingSelf(server)
    from_ = From(pid, current_task(), request, caller)
    pid._queue.append(from_)
    waiter = pid._waiter
    if waiter is not None:
        pid._waiter = None
        reschedule(waiter)
    if timeout != math.inf:
        from_._server = server
        from_._timeout = timeout
        deadlines = pid._deadlines
        deadline = from_._deadline = deadlines.clock.current_time() + timeout
        fifo = deadlines.fifo
        if fifo and deadline >= deadlines.last and len(fifo) < deadlines.limit:
            deadlines.last = deadline  # the common case of _CallDeadlines.add, inlined
            fifo.append(from_)
        else:
            deadlines.add(from_)
    return await wait_task_rescheduled(from_._abort)


class _CallDeadlines:
    """The deadlines of pending calls in one trio.run, served by one system task.

    A cancel scope per call would cost more than the rest of the call; instead each
    timed call records its deadline here, and the task fails the callers whose deadline
    has passed with `CallTimeout`. Calls with the same timeout arrive in deadline order,
    so they go to a FIFO (O(1), the `From` itself); a deadline earlier than the last one
    goes to a heap. Entries of answered calls are dropped lazily: when a queue outgrows
    its limit it is compacted, so memory stays within about twice the pending calls.
    """

    __slots__ = ("clock", "fifo", "heap", "last", "limit", "scope", "seq")

    def __init__(self) -> None:
        # The run's clock, read directly: trio.current_time() costs a microsecond more.
        self.clock = trio.lowlevel.current_clock()
        self.fifo: deque[From] = deque()
        self.heap: list[tuple[float, int, From]] = []
        self.last = -math.inf
        self.limit = 1024
        self.scope: trio.CancelScope | None = None
        self.seq = 0

    def add(self, from_: From) -> None:
        deadline = from_._deadline
        fifo = self.fifo
        if deadline >= self.last:
            self.last = deadline
            if fifo:
                fifo.append(from_)
                if len(fifo) > self.limit:
                    self.fifo = deque(entry for entry in fifo if entry._task is not None)
                    self.limit = max(1024, 2 * len(self.fifo))
                return  # not earlier than the FIFO's head, which the task already waits for
            fifo.append(from_)
        else:
            self.seq += 1
            heap = self.heap
            heapq.heappush(heap, (deadline, self.seq, from_))
            if len(heap) > 1024 and len(heap) > 2 * len(fifo):
                heap[:] = [entry for entry in heap if entry[2]._task is not None]
                heapq.heapify(heap)
        scope = self.scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def serve(self) -> None:
        while True:
            now = trio.current_time()
            fifo, heap = self.fifo, self.heap
            while fifo and fifo[0]._deadline <= now:
                fifo.popleft()._timed_out()
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2]._timed_out()
            if not fifo:
                self.last = -math.inf
            next_deadline = min(fifo[0]._deadline if fifo else math.inf, heap[0][0] if heap else math.inf)
            # Not held while asleep: add() may replace the queues with compacted ones, and
            # the old ones would otherwise keep answered calls (and their servers) alive.
            del fifo, heap
            with trio.CancelScope(deadline=next_deadline) as self.scope:
                await trio.sleep_forever()


_DEADLINES: RunVar[_CallDeadlines] = RunVar("otpy_call_deadlines")


def _call_deadlines() -> _CallDeadlines:
    try:
        return _DEADLINES.get()
    except RuntimeError:  # trio's "Cannot be used outside of a run context"
        raise not_in_trio_run("otpy.call() was called") from None
    except LookupError:
        deadlines = _CallDeadlines()
        _DEADLINES.set(deadlines)
        trio.lowlevel.spawn_system_task(deadlines.serve, name="otpy call deadlines")
        return deadlines


def cast(server: Server, request: Any) -> None:
    """Send ``request`` to ``server``'s ``handle_cast`` without waiting.

    A cast never blocks, and a cast to a name that nobody holds, or to a dead pid, does
    nothing, as in OTP.

    Example::

        otpy.cast("counter", "increment")
    """
    pid = server if type(server) is Pid else resolve(server)
    if pid is None or not pid.alive:
        return
    pid._queue.append((CAST, request))
    waiter = pid._waiter
    if waiter is not None:
        pid._waiter = None
        reschedule(waiter)


def send(server: Server, message: Any) -> None:
    """Send ``message`` to ``server``'s ``handle_info`` (Erlang's ``!``).

    Like `cast`, it never blocks and sending to a dead process does nothing.

    Example::

        otpy.send(pid, ("tick", 1))
    """
    pid = server if type(server) is Pid else resolve(server)
    if pid is None or not pid.alive:
        return
    pid._deliver((INFO, message))


def send_exit_signal(target: Pid, sender: Pid | None, reason: object) -> None:
    """Deliver an exit signal with OTP's rules (internal; see `exit`)."""
    if not target.alive:
        return
    if type(reason) is str and reason == "kill":
        target._kill("killed")
    elif target._trap_exit:
        target._deliver((EXIT, sender, reason))
    elif type(reason) is str and reason == "normal" and sender is not target:
        return
    else:
        target._kill(reason)


def exit(pid: Server, reason: object) -> None:  # noqa: A001 (Elixir's Process.exit/2)
    """Send an exit signal to ``pid`` (Elixir's ``Process.exit/2``).

    - ``"kill"`` stops it unconditionally with reason ``"killed"``; ``terminate`` does
      not run. On trio the stop happens at the process's next checkpoint: a task that
      never reaches one cannot be killed.
    - If it traps exits, any other reason arrives as an `ExitSignal` message (a
      GenServer whose *parent* sends it runs ``terminate`` and exits with that reason).
    - Otherwise ``"normal"`` is ignored and any other reason stops it with that reason.

    Example::

        otpy.exit(pid, "shutdown")
    """
    target = pid if type(pid) is Pid else resolve(pid)
    if target is None:
        return
    send_exit_signal(target, _CURRENT.get(), reason)


def link(pid: Pid) -> None:
    """Link the calling process with ``pid``: when either exits, the other gets an exit signal.

    Linking to a process that is already dead is OTP's ``noproc`` case: a caller that
    traps exits gets ``ExitSignal(pid, "noproc")`` as a message; any other caller gets
    `NoProcess` raised, which it may catch (uncaught, it crashes the caller), as
    ``Process.link/1`` raises in Elixir.

    Raises:
        NoProcess: ``pid`` has exited and the caller does not trap exits.

    Example::

        otpy.link(worker)   # if worker crashes, so do we (unless we trap exits)
    """
    me = self()
    if pid is me:
        return
    if not pid.alive:
        if not me._trap_exit:
            raise NoProcess(pid, "link")
        me._deliver((EXIT, pid, "noproc"))
        return
    if me._links is None:
        me._links = set()
    if pid._links is None:
        pid._links = set()
    me._links.add(pid)
    pid._links.add(me)


def unlink(pid: Pid) -> None:
    """Remove the link between the calling process and ``pid`` (no-op if none).

    Example::

        otpy.link(helper)
        ...
        otpy.unlink(helper)   # helper's exit no longer affects us
    """
    me = self()
    if me._links is not None:
        me._links.discard(pid)
    if pid._links is not None:
        pid._links.discard(me)


def link_pair(a: Pid, b: Pid) -> None:
    """Link two processes (internal: used when a process starts another)."""
    if a._links is None:
        a._links = set()
    if b._links is None:
        b._links = set()
    a._links.add(b)
    b._links.add(a)


def monitor(pid: Server) -> MonitorRef:
    """Watch ``pid``: when it exits, the caller gets a `Down` message with the reason.

    Outside any process, await `MonitorRef.wait` instead. Monitoring a process that is
    already dead (or a name nobody holds) delivers ``Down(..., reason="noproc")`` at once.

    Example::

        ref = otpy.monitor(worker)
        # later, in handle_info: Down(ref=ref, pid=worker, reason=...)
    """
    watcher = _CURRENT.get()
    target = pid if type(pid) is Pid else resolve(pid)
    if target is None:
        target = Pid(None, None, False)
        target._finish("noproc")
    ref = MonitorRef(target, None if watcher is not None else trio.Event())
    if not target.alive:
        reason = "noproc"
        if watcher is not None:
            watcher._deliver((INFO, Down(ref, target, reason)))
        else:
            ref._fire(reason)
        return ref
    if target._monitors is None:
        target._monitors = {}
    target._monitors[ref] = watcher
    if watcher is not None:
        if watcher._watching is None:
            watcher._watching = set()
        watcher._watching.add(ref)
    return ref


def demonitor(ref: MonitorRef, *, flush: bool = False) -> None:
    """Stop watching; with ``flush=True`` also drop a `Down` for ``ref`` already queued.

    Example::

        ref = otpy.monitor(worker)
        result = await otpy.call(worker, "job")
        otpy.demonitor(ref, flush=True)
    """
    monitors = ref.target._monitors
    watcher = None
    if monitors is not None:
        watcher = monitors.pop(ref, None)
    if watcher is None:
        watcher = _CURRENT.get()
    if watcher is not None:
        if watcher._watching is not None:
            watcher._watching.discard(ref)
        if flush:
            queue = watcher._queue
            for item in list(queue):
                if type(item) is tuple and item[0] == INFO and isinstance(item[1], Down) and item[1].ref is ref:
                    queue.remove(item)
