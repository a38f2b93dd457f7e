"""The entry point: run a supervision tree until a signal stops it (Elixir's Application, for one tree).

`serve` starts a top `Supervisor`, waits for SIGINT or SIGTERM, then stops the tree in
order: the top supervisor gets the exit signal ``"shutdown"`` from its parent, as OTP's
application master sends it, and stops its children in reverse start order, each within
its shutdown spec. `run` is `serve` inside `trio.run`, with an exit status.
"""

from __future__ import annotations

import contextlib
import functools
import signal
from collections.abc import AsyncIterator, Iterable, Sequence

import attrs
import trio

from ._child_spec import ChildSpecLike
from ._exceptions import OtpError, format_reason
from ._log import get_logger
from ._process import _CURRENT, Name, Pid, send_exit_signal
from ._slow import SlowCallbacks
from ._supervisor import AutoShutdown, Strategy, Supervisor
from ._tree import child_pids

_log = get_logger("otpy.application")

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


@attrs.define(eq=False, repr=False, slots=False)
class ApplicationExited(OtpError):
    """The top supervisor exited without being asked to: the application is down.

    ``reason`` is its exit reason. ``"shutdown"`` that nobody asked for means the
    supervisor gave up: its children restarted more than ``max_restarts`` times within
    ``max_seconds``. `run` turns this into exit status 1.

    Example::

        try:
            await otpy.serve(children, max_restarts=3, max_seconds=5)
        except otpy.ApplicationExited as exc:
            print("the tree gave up:", exc.reason)
    """

    supervisor: Pid
    reason: object

    def __str__(self) -> str:
        name = self.supervisor.name
        what = f"{name!r}" if name is not None else repr(self.supervisor)
        why = format_reason(self.reason)
        if self.reason == "shutdown":
            why += " (it reached its maximum restart intensity)"
        return f"the top supervisor {what} exited without being asked to: {why}"


@attrs.define(eq=False)
class _Stop:
    top: Pid | None = None
    requested: bool = False
    signal: int | None = None
    starting: trio.CancelScope = attrs.Factory(trio.CancelScope)


async def serve(
    children: Sequence[ChildSpecLike],
    *,
    strategy: Strategy = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5,
    auto_shutdown: AutoShutdown = "never",
    name: Name | None = None,
    signals: Iterable[int] = DEFAULT_SIGNALS,
    task_status: trio.TaskStatus[Pid] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start ``children`` under a top supervisor and run until a signal stops them.

    The first SIGINT or SIGTERM stops the tree in order (reverse start order, each
    child within its shutdown spec) and `serve` returns. A second signal while it
    stops kills every process in the tree at once. A signal that comes while the tree
    is still starting kills the half-started tree. Cancelling `serve` also stops the
    tree in order, then re-raises the cancellation. With ``nursery.start(otpy.serve,
    children)`` you get the top supervisor's pid.

    Args:
        children: the top supervisor's child specs, started in order.
        strategy, max_restarts, max_seconds, auto_shutdown: the top supervisor's flags.
        name: a name for the top supervisor.
        signals: the signals that stop the tree; ``()`` listens to none (stop it by
            cancelling `serve`, or with ``otpy.stop(top)``).

    Returns:
        When the tree stopped because it was asked to: a signal, ``otpy.stop(top)``
        (reason ``"normal"`` or ``"shutdown"``), or, with ``auto_shutdown``, its
        significant children finished.

    Raises:
        StartError: the tree failed to start (``reason`` says which child and why).
        ApplicationExited: the top supervisor exited on its own, typically because it
            reached its maximum restart intensity.

    Example::

        async def main():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(web_server)
                await otpy.serve([Cache.child_spec(name="cache"), Worker.child_spec()])

        trio.run(main)
    """
    wanted = tuple(signals)
    stop = _Stop()
    failure: OtpError | None = None
    exit_reason: object = None
    server: object = None
    async with _signal_receiver(wanted) as received, trio.open_nursery() as nursery:
        if received is not None:
            nursery.start_soon(_stop_on_signals, received, stop)
        with stop.starting:
            try:
                stop.top = await Supervisor.start_link(
                    list(children),
                    strategy=strategy,
                    max_restarts=max_restarts,
                    max_seconds=max_seconds,
                    auto_shutdown=auto_shutdown,
                    name=name,
                    nursery=nursery,
                )
            except OtpError as exc:
                # Raised outside the nursery below, so it is a plain error, not a group.
                failure = exc
        top = stop.top
        if top is not None:
            server = top._server
            _log.debug("application_started", supervisor=top, children=len(children))
            task_status.started(top)
            exit_reason = await top.wait_exited()
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if top is None:
        # A signal came while the tree was starting: the half-started tree was killed.
        _log.info("application_stopped", reason="signal during start", signal=stop.signal)
        return
    # A supervisor that gives up exits with "shutdown", as one that is asked to stop
    # does: what tells them apart is that nobody asked, and its restart record.
    gave_up = not isinstance(server, Supervisor) or _gave_up(server)
    if stop.requested or exit_reason == "normal" or (exit_reason == "shutdown" and not gave_up):
        _log.info("application_stopped", supervisor=top, reason=exit_reason, signal=stop.signal)
        return
    _log.error("application_exited", supervisor=top, reason=exit_reason)
    raise ApplicationExited(top, exit_reason)


def _gave_up(server: Supervisor) -> bool:
    """Whether the supervisor stopped because it reached its maximum restart intensity."""
    intensity = getattr(server, "_intensity", None)
    return intensity is not None and len(intensity.restarts) > intensity.max_restarts


@contextlib.asynccontextmanager
async def _signal_receiver(signals: tuple[int, ...]) -> AsyncIterator[AsyncIterator[int] | None]:
    if not signals:
        yield None
        return
    with trio.open_signal_receiver(*signals) as received:
        yield received


async def _stop_on_signals(received: AsyncIterator[int], stop: _Stop) -> None:
    async for signum in received:
        top = stop.top
        if not stop.requested:
            stop.requested = True
            stop.signal = signum
            _log.info("application_stopping", supervisor=top, signal=_signal_name(signum))
            if top is None:
                stop.starting.cancel()  # still starting: the half-started tree is killed
            else:
                # OTP's application master: an exit signal "shutdown" from the parent
                # makes the top supervisor stop its children in reverse start order.
                send_exit_signal(top, top.parent, "shutdown")
        elif top is not None:
            _log.warning("application_killed", supervisor=top, signal=_signal_name(signum))
            kill_tree(top)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def kill_tree(top: Pid) -> None:
    """Send ``"kill"`` to every process under ``top`` and to ``top`` (internal).

    A supervisor that is stopping no longer lists the children it is shutting down, so
    the processes are found where they live: the tasks of each supervisor's children
    nursery, each running under its process's identity.
    """
    found: dict[Pid, None] = {}
    stack = [top]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found[pid] = None
        stack.extend(child_pids(pid))
        server = pid._server
        nursery = pid._nursery
        if server is not None and type(server)._hosts_children and nursery is not None:
            for task in nursery.child_tasks:
                child = task.context.get(_CURRENT)
                if child is not None and child is not pid and child.alive:
                    stack.append(child)
    for pid in reversed(found):
        send_exit_signal(pid, None, "kill")


def run(
    children: Sequence[ChildSpecLike],
    *,
    strategy: Strategy = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5,
    auto_shutdown: AutoShutdown = "never",
    name: Name | None = None,
    signals: Iterable[int] = DEFAULT_SIGNALS,
    slow_callback_threshold: float | None = None,
) -> None:
    """Run a supervision tree in `trio.run` until SIGINT or SIGTERM stops it: your program's ``main``.

    It blocks. After a signal the tree stops in order and `run` returns, so the
    program exits with status 0. If the tree fails to start, or the top supervisor
    gives up (too many restarts), it raises `SystemExit` with a message, so the
    program exits with status 1; the original error is chained as ``__cause__``.

    The arguments are those of `serve`, and ``slow_callback_threshold``: seconds after
    which a callback that holds the run is reported (`SlowCallbacks`); ``None`` (the
    default) measures nothing. Use `serve` instead inside a program that already runs
    trio (and pass ``instruments=[otpy.SlowCallbacks(...)]`` to your `trio.run`).

    Example::

        # app.py
        import otpy

        if __name__ == "__main__":
            otpy.run([Cache.child_spec(name="cache"), Worker.child_spec()], max_restarts=5)
    """
    try:
        trio.run(
            functools.partial(
                serve,
                children,
                strategy=strategy,
                max_restarts=max_restarts,
                max_seconds=max_seconds,
                auto_shutdown=auto_shutdown,
                name=name,
                signals=signals,
            ),
            instruments=[SlowCallbacks(slow_callback_threshold)] if slow_callback_threshold is not None else [],
        )
    except OtpError as exc:
        raise SystemExit(f"otpy: {exc}") from exc
