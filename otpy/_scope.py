"""``async with Server.open(...) as pid``: a process, or a whole tree, owned by a block.

`trio.open_nursery` is how trio code owns tasks: they start inside the block, an error
in any of them cancels the block and comes out of it, and the block does not end until
they have. ``open`` gives a server (and, with a supervisor, a tree) the same shape:

- it opens a nursery of its own, starts the server in it (``start``: the block, not a
  link, owns it) and yields its pid once ``init`` has run;
- when the block ends, normally, by an exception or by cancellation, it stops the
  server with `otpy.stop` and the reason ``"shutdown"`` (what a parent sends its
  children, so a supervisor stops its children in reverse start order), shielded from
  the cancellation and bounded by ``shutdown`` seconds, after which it is killed;
- if the server exits on its own while the block runs, abnormally or (a supervisor)
  because it reached its maximum restart intensity, the block is cancelled and
  `ProcessCrashed` comes out of it, in an `ExceptionGroup` as from any nursery; a normal
  exit (``Stop("normal")``, an ``auto_shutdown``) leaves the block running;
- a failed start raises `StartError` (or `AlreadyRegistered`) from the ``async with``
  line itself, not in a group: the block never ran.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._exceptions import CallError, OtpError, ProcessCrashed, require_trio_run
from ._gen_server import is_normal_reason
from ._gen_server import stop as _stop
from ._process import exit as _exit

if TYPE_CHECKING:
    from ._gen_server import ServerBase
    from ._process import Name, Pid


@attrs.define
class _State:
    stopping: bool = False


def _gave_up(server: object) -> bool:
    """Whether a supervisor stopped because it reached its maximum restart intensity."""
    intensity = getattr(server, "_intensity", None)
    return intensity is not None and len(intensity.restarts) > intensity.max_restarts


async def _watch(pid: Pid, server: object, state: _State) -> None:
    reason = await pid.wait_exited()
    if state.stopping:
        return
    if is_normal_reason(reason) and not _gave_up(server):
        return
    raise ProcessCrashed(pid, reason) from (reason if isinstance(reason, BaseException) else None)


async def _shut_down(pid: Pid, shutdown: float) -> None:
    """`otpy.stop` with ``"shutdown"`` within ``shutdown`` seconds, then ``"kill"``; shielded."""
    with trio.CancelScope(shield=True):
        if not pid.alive:
            return
        # NoProcess: it exited meanwhile. ServerExited: terminate crashed (its crash
        # report says so). CallTimeout: it did not stop in time, and is killed below.
        with contextlib.suppress(CallError):
            await _stop(pid, "shutdown", timeout=shutdown)
        if pid.alive:
            _exit(pid, "kill")
            await pid.wait_exited()


@contextlib.asynccontextmanager
async def open_server(
    cls: type[ServerBase],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    name: Name | None,
    shutdown: float | None,
) -> AsyncIterator[Pid]:
    """The implementation of ``ServerBase.open`` (see the module docstring)."""
    require_trio_run(f"{cls.__name__}.open() was entered")
    if shutdown is None:
        shutdown = math.inf if cls.child_type == "supervisor" else 5.0
    state = _State()
    failure: OtpError | None = None
    async with trio.open_nursery() as nursery:
        try:
            pid = await cls.start(*args, name=name, nursery=nursery, **kwargs)
        except OtpError as exc:
            failure = exc  # raised below, outside the nursery: a plain error, not a group
        else:
            nursery.start_soon(_watch, pid, pid._server, state)
            try:
                yield pid
            finally:
                state.stopping = True
                await _shut_down(pid, shutdown)
                nursery.cancel_scope.cancel()  # the watcher
    if failure is not None:
        raise failure
