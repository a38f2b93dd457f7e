"""The otpy error tree.

::

    OtpError(Exception)
    ├── CallError                  a call produced no reply
    │   ├── NoProcess              nothing registered under that name, or it already exited
    │   ├── CallTimeout            no reply within ``timeout`` (also a trio.TooSlowError)
    │   ├── ServerExited           the server exited while the call was pending; .reason
    │   └── CallingSelf            a process called itself (it would deadlock)
    ├── AlreadyRegistered          a name is taken; .name, .pid
    ├── StartError                 a process failed to start; .child_id, .reason
    ├── InvalidChildSpec           a child spec is malformed; .child_id, .field, .value
    ├── InvalidSupervisorFlags     a supervisor flag is malformed; .flag, .value
    ├── SupervisorError            a supervisor refused a management request
    │   ├── ChildNotFound          no child with that id (or pid)
    │   ├── ChildRunning           the child is running
    │   ├── ChildRestarting        the child is between restart attempts
    │   ├── AlreadyStarted         a child with that id is running; .pid
    │   ├── AlreadyPresent         a stopped child with that id exists
    │   └── MaxChildren            a DynamicSupervisor is full
    ├── UnhandledMessage           a callback's match had no clause for a message; .message
    ├── ProcessCrashed             a process started with start_link from plain trio code crashed; .pid, .reason
    ├── NotInTrioRun               otpy was used outside trio.run (from asyncio, say); also a RuntimeError
    ├── TaskTimeout                a task did not reply within ``timeout`` (also a trio.TooSlowError); .pid
    ├── TaskExited                 a task exited before replying; .pid, .reason       (otpy/_task.py)
    └── ApplicationExited          the top supervisor of otpy.serve exited on its own  (otpy/_application.py)

    ProcessExit(Exception)         raised by a process to exit with a reason (Erlang's exit/1)

Exit reasons are data, not errors: ``"normal"``, ``"shutdown"``, ``("shutdown", term)``,
``"killed"``, any other term, or the exception that crashed the process.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import Hashable

    from ._process import Pid


def format_reason(reason: object) -> str:
    """Render an exit reason for humans: ``KeyError('k')``, ``'shutdown'``, ``('shutdown', 'bye')``."""
    return repr(reason)


@attrs.define(eq=False, init=False, repr=False, slots=False)
class OtpError(Exception):
    """Base class of every error that otpy raises.

    Example::

        try:
            await otpy.call("cache", "get")
        except otpy.OtpError as exc:   # any otpy failure, with its context as attributes
            log.warning("cache unavailable", error=str(exc))
    """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class CallError(OtpError):
    """A call produced no reply: the base of `NoProcess`, `CallTimeout`, `ServerExited`, `CallingSelf`.

    Example::

        try:
            value = await otpy.call("cache", ("get", key))
        except otpy.CallError:
            value = None
    """


@attrs.define(eq=False, repr=False, slots=False)
class NoProcess(CallError):
    """No process is registered under that name, or the process already exited.

    Example::

        with pytest.raises(otpy.NoProcess):
            await otpy.call("nobody", "ping")
    """

    server: object
    request: object = None

    def __str__(self) -> str:
        return f"no process {self.server!r}: it is not registered or has already exited"


@attrs.define(eq=False, repr=False, slots=False)
class CallTimeout(CallError, trio.TooSlowError):
    """The server did not reply within ``timeout`` seconds.

    It also derives from `trio.TooSlowError`, so code written against
    `trio.fail_after` keeps working. A reply that arrives later is dropped.

    Example::

        try:
            await otpy.call(pid, "slow", timeout=0.5)
        except otpy.CallTimeout as exc:
            assert exc.timeout == 0.5
    """

    server: object
    request: object
    timeout: float

    def __str__(self) -> str:
        return f"call to {self.server!r} timed out after {self.timeout:g} s (request {type(self.request).__name__})"


@attrs.define(eq=False, repr=False, slots=False)
class ServerExited(CallError):
    """The server exited before it replied.

    ``reason`` is the server's exit reason: ``"normal"``, ``"shutdown"``, ``"killed"``,
    another term, or the exception that crashed it.

    Example::

        try:
            await otpy.call(pid, "crash")
        except otpy.ServerExited as exc:
            assert isinstance(exc.reason, KeyError)
    """

    server: object
    reason: object

    def __str__(self) -> str:
        return f"server {self.server!r} exited before replying: {format_reason(self.reason)}"


@attrs.define(eq=False, repr=False, slots=False)
class CallingSelf(CallError):
    """A process called itself, which would deadlock until the timeout.

    Example::

        async def handle_cast(self, request):
            await otpy.call(otpy.self(), "get")   # raises CallingSelf
    """

    server: object

    def __str__(self) -> str:
        return f"process {self.server!r} called itself"


@attrs.define(eq=False, repr=False, slots=False)
class AlreadyRegistered(OtpError):
    """The name is already registered by a live process (OTP's ``{already_started, Pid}``).

    Example::

        await Counter.start_link(name="c", nursery=nursery)
        with pytest.raises(otpy.AlreadyRegistered) as info:
            await Counter.start_link(name="c", nursery=nursery)
        assert info.value.pid is otpy.whereis("c")
    """

    name: object
    pid: Pid

    def __str__(self) -> str:
        return f"name {self.name!r} is already registered by {self.pid!r}"


@attrs.define(eq=False, repr=False, slots=False)
class StartError(OtpError):
    """A process did not start: its ``init`` failed or asked to stop.

    ``reason`` is the exit reason of the failed start (an exception is also chained as
    ``__cause__``). ``child_id`` names the child when a supervisor started it.

    Example::

        try:
            await Db.start_link("postgres://nowhere", nursery=nursery)
        except otpy.StartError as exc:
            print("db did not start:", exc.reason)
    """

    child_id: Hashable | None
    reason: object

    def __str__(self) -> str:
        what = f"child {self.child_id!r}" if self.child_id is not None else "process"
        return f"{what} failed to start: {format_reason(self.reason)}"


@attrs.define(eq=False, repr=False, slots=False)
class InvalidChildSpec(OtpError, ValueError):
    """A child spec is malformed; ``field`` names the offending key.

    ``field`` is one of ``"id"``, ``"start"``, ``"restart"``, ``"shutdown"``, ``"type"``,
    ``"significant"`` or ``"spec"`` (the whole value). ``conflict`` is set when
    ``significant`` clashes with another setting: ``("restart", "permanent")`` or
    ``("auto_shutdown", "never")`` (OTP's ``bad_combination``).

    Example::

        with pytest.raises(otpy.InvalidChildSpec) as info:
            otpy.ChildSpec(id="w", start=Worker.start_link, restart="sometimes")
        assert (info.value.child_id, info.value.field) == ("w", "restart")
    """

    child_id: object
    field: str
    value: object
    problem: str
    conflict: tuple[str, str] | None = None

    def __str__(self) -> str:
        return f"invalid child spec {self.child_id!r}: {self.field}={self.value!r}: {self.problem}"


@attrs.define(eq=False, repr=False, slots=False)
class InvalidSupervisorFlags(OtpError, ValueError):
    """A supervisor flag is malformed (OTP's ``{supervisor_data, ...}``).

    It is the reason of the `StartError` that ``start_link`` raises.

    Example::

        with pytest.raises(otpy.StartError) as info:
            await otpy.Supervisor.start_link([], strategy="none_for_one", nursery=nursery)
        assert info.value.reason.flag == "strategy"
    """

    flag: str
    value: object
    problem: str

    def __str__(self) -> str:
        return f"invalid supervisor flag {self.flag}={self.value!r}: {self.problem}"


class SupervisorError(OtpError):
    """A supervisor refused a management request: the base of the errors below.

    Example::

        try:
            await otpy.Supervisor.delete_child(sup, "worker")
        except otpy.SupervisorError as exc:
            print("not deleted:", exc)
    """


@attrs.define(eq=False, repr=False, slots=False)
class ChildNotFound(SupervisorError):
    """The supervisor has no child with that id (or, for DynamicSupervisor, that pid).

    Example::

        with pytest.raises(otpy.ChildNotFound):
            await otpy.Supervisor.terminate_child(sup, "nobody")
    """

    child: object

    def __str__(self) -> str:
        return f"no child {self.child!r}"


@attrs.define(eq=False, repr=False, slots=False)
class ChildRunning(SupervisorError):
    """The child is running, so it cannot be restarted or deleted.

    Example::

        with pytest.raises(otpy.ChildRunning):
            await otpy.Supervisor.delete_child(sup, "worker")   # terminate_child it first
    """

    child_id: object

    def __str__(self) -> str:
        return f"child {self.child_id!r} is running"


@attrs.define(eq=False, repr=False, slots=False)
class ChildRestarting(SupervisorError):
    """The child is between failed restart attempts.

    Example::

        # its restart failed and is being retried
        with pytest.raises(otpy.ChildRestarting):
            await otpy.Supervisor.restart_child(sup, "flaky")
    """

    child_id: object

    def __str__(self) -> str:
        return f"child {self.child_id!r} is restarting"


@attrs.define(eq=False, repr=False, slots=False)
class AlreadyStarted(SupervisorError):
    """A child with that id is already running under the supervisor.

    Example::

        with pytest.raises(otpy.AlreadyStarted) as info:
            await otpy.Supervisor.start_child(sup, Worker.child_spec(id="worker"))
        assert info.value.pid is not None
    """

    child_id: object
    pid: Pid

    def __str__(self) -> str:
        return f"child {self.child_id!r} is already started as {self.pid!r}"


@attrs.define(eq=False, repr=False, slots=False)
class AlreadyPresent(SupervisorError):
    """A child spec with that id exists (stopped); use ``restart_child`` or ``delete_child``.

    Example::

        await otpy.Supervisor.terminate_child(sup, "worker")
        with pytest.raises(otpy.AlreadyPresent):
            await otpy.Supervisor.start_child(sup, Worker.child_spec(id="worker"))
    """

    child_id: object

    def __str__(self) -> str:
        return f"child {self.child_id!r} is already present (not running)"


@attrs.define(eq=False, repr=False, slots=False)
class MaxChildren(SupervisorError):
    """The DynamicSupervisor already has ``max_children`` children.

    Example::

        sup = await otpy.DynamicSupervisor.start_link(max_children=1, nursery=nursery)
        await otpy.DynamicSupervisor.start_child(sup, Worker.child_spec())
        with pytest.raises(otpy.MaxChildren):
            await otpy.DynamicSupervisor.start_child(sup, Worker.child_spec())
    """

    max_children: int

    def __str__(self) -> str:
        return f"the supervisor already has its maximum of {self.max_children} children"


@attrs.define(eq=False, repr=False, slots=False)
class ProcessCrashed(OtpError):
    """A process that plain trio code started with ``start_link`` exited abnormally.

    A process started by another process is linked to it: its crash becomes an exit
    signal there. Plain trio code is not a process, so its link is trio's own: the crash
    is raised from the process's task into the nursery that holds it, as any crashed
    trio task would be, and the ``async with`` block around that nursery fails with it.
    The exception that crashed the process is chained as ``__cause__``. Normal exits
    (``"normal"``, ``"shutdown"``, ``("shutdown", term)``) and ``"killed"`` (an exit
    someone asked for) raise nothing; ``start`` (no link) never raises it.

    Example::

        with pytest.RaisesGroup(otpy.ProcessCrashed):
            async with trio.open_nursery() as nursery:
                pid = await Worker.start_link(nursery=nursery)
                otpy.cast(pid, "crash")            # handle_cast raises KeyError
    """

    pid: Pid
    reason: object

    def __str__(self) -> str:
        return f"process {self.pid!r} crashed: {format_reason(self.reason)}"


@attrs.define(eq=False, repr=False, slots=False)
class UnhandledMessage(OtpError):
    """A callback got a message that none of its clauses handles (see `unhandled`).

    The process crashes with it, as an Elixir server crashes with ``FunctionClauseError``.
    Only the message's type is shown in the text: messages can hold secrets.

    Example::

        with pytest.raises(otpy.ServerExited) as info:
            await otpy.call(pid, "no such request")
        assert isinstance(info.value.reason, otpy.UnhandledMessage)
    """

    message: object

    def __str__(self) -> str:
        return f"no clause handles this message (a {type(self.message).__name__})"


@attrs.define(eq=False, repr=False, slots=False)
class ProcessExit(Exception):
    """Raise it inside a process to exit with ``reason`` (Erlang's ``exit(Reason)``).

    Example::

        async def handle_cast(self, request):
            if request == "quit":
                raise otpy.ProcessExit(("shutdown", "asked to quit"))
    """

    reason: object

    def __str__(self) -> str:
        return f"process exit: {format_reason(self.reason)}"


@attrs.define(eq=False, repr=False, slots=False)
class NotInTrioRun(OtpError, RuntimeError):
    """otpy was used outside ``trio.run``: from asyncio (``asyncio.run``), from another
    thread, or from synchronous code.

    otpy's processes are trio tasks, and its names, timers and call deadlines belong to
    one ``trio.run``. ``what`` says what was attempted. Also a `RuntimeError`, which
    trio's own error for this is, so code that caught that still works.

    Example::

        try:
            asyncio.run(otpy.call("cache", "get"))
        except otpy.NotInTrioRun as exc:
            print(exc)   # otpy was used outside trio.run (in an asyncio event loop) ... docs/asyncio.md
    """

    what: str
    library: str | None = None

    def __str__(self) -> str:
        where = f" (in an {self.library} event loop)" if self.library else ""
        return (
            f"otpy was used outside trio.run{where}: {self.what}. otpy runs only inside trio.run. "
            "Run your otpy code under trio.run(main); from an asyncio program, host the otpy "
            "tree in a thread of its own and call it through trio's thread API, as "
            'docs/asyncio.md ("Calling otpy from asyncio code") shows.'
        )


def not_in_trio_run(what: str) -> NotInTrioRun:
    """The error for ``what`` used outside ``trio.run`` (internal); names the async
    library that is running instead, if one is."""
    library: str | None = None
    asyncio = sys.modules.get("asyncio")  # never imported here: if it is not loaded, it is not running
    if asyncio is not None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            library = "asyncio"
    return NotInTrioRun(what, library)


def require_trio_run(what: str) -> None:
    """Raise `NotInTrioRun` unless called inside ``trio.run`` (internal).

    The one place where trio's ``RuntimeError`` for this becomes otpy's error: the entry
    points that first touch the run (the name table, the timers, the call deadlines,
    ``start_link``, ``open``) call this, or `not_in_trio_run` where trio already raised.
    """
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        raise not_in_trio_run(what) from None
