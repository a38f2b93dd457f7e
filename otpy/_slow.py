"""SlowCallbacks: report callbacks that hold the trio run too long (asyncio's debug mode, for otpy)."""

from __future__ import annotations

import math
import time
from typing import Final

import trio

from ._log import get_logger
from ._process import _CURRENT, CAST, EXIT, INFO, From
from ._util import check_timeout

_log = get_logger("otpy.slow")

_CALLBACKS: Final = frozenset(
    {"init", "handle_call", "handle_cast", "handle_info", "handle_continue", "terminate", "_otp_init"}
)
_KINDS: Final = {CAST: "handle_cast", INFO: "handle_info", EXIT: "handle_info"}


class SlowCallbacks(trio.abc.Instrument):
    """A trio instrument that reports every task step longer than ``threshold`` seconds.

    trio cannot preempt: a callback that runs sync code for half a second freezes every
    process for that half second, and calls time out late, timers fire late. This
    instrument finds such steps and logs a ``slow_callback`` warning naming the process,
    the callback (``handle_call``, ``init``...) and the message type it was handling,
    so you can move that work to a thread (`trio.to_thread.run_sync`) or a `Task`.

    It measures wall-clock time (`time.perf_counter`), not trio's clock, and costs two
    clock reads per task step: use it in development and tests, or in production with
    a threshold that only real stalls cross.

    Args:
        threshold: seconds a single step may hold the run before it is reported.

    Example::

        trio.run(main, instruments=[otpy.SlowCallbacks(threshold=0.1)])
        # or: otpy.run(children, slow_callback_threshold=0.1)
        # logs: slow_callback process=<Pid Cache#3 'cache'> callback=Cache.handle_call
        #       message_type=Refresh seconds=0.503 threshold=0.1
    """

    def __init__(self, threshold: float = 0.1) -> None:
        check_timeout(threshold, "threshold")
        self.threshold = threshold
        self._step_started = math.inf  # added in the middle of a step: that step is not measured

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        """Note when the step starts (trio calls it)."""
        self._step_started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        """Report the step if it took too long (trio calls it)."""
        elapsed = time.perf_counter() - self._step_started
        if elapsed >= self.threshold:
            self._report(task, elapsed)

    def _report(self, task: trio.lowlevel.Task, elapsed: float) -> None:
        pid = task.context.get(_CURRENT)
        callback, message_type = _where(task)
        _log.warning(
            "slow_callback",
            process=pid,
            task=task.name,
            callback=callback,
            message_type=message_type,
            seconds=round(elapsed, 6),
            threshold=self.threshold,
        )


def _where(task: trio.lowlevel.Task) -> tuple[str | None, str | None]:
    """The callback a task is in (or has just left) and the type of message it handles.

    After the step the task is parked: its coroutine chain shows the callback if the
    callback is still running (it awaited after the slow part); if it had returned, the
    process loop's frame still holds the message it was handling.
    """
    frames = []
    coro: object = task.coro
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    message = frames[0].f_locals.get("message") if frames and frames[0].f_code.co_name == "_serve" else None
    message_type = None
    if type(message) is From:
        message_type = type(message.request).__name__ if message.request is not None else None
    elif type(message) is tuple and len(message) > 1:
        message_type = type(message[1]).__name__
    for frame in reversed(frames):
        if frame.f_code.co_name in _CALLBACKS:
            return frame.f_code.co_qualname, message_type
    if type(message) is From:
        return "handle_call", message_type
    if type(message) is tuple and message:
        return _KINDS.get(message[0]), message_type
    return None, None
