"""Timers: send a message to a process later (Erlang's ``send_after``, ``cancel_timer``, ``read_timer``).

All the timers of one ``trio.run`` live in one heap, served by one trio *system task*:
no task, cancel scope or exit hook per timer, and a pending timer never keeps
``trio.run`` alive (trio cancels system tasks once the main task has returned).
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING, Any, Final

import trio
from trio.lowlevel import RunVar

from ._exceptions import not_in_trio_run, require_trio_run
from ._log import get_logger
from ._process import INFO, Pid, Via, send
from ._util import check_timeout

if TYPE_CHECKING:
    from ._process import Server

_log = get_logger("otpy.timers")

# A timer's states. ACTIVE until it fires (FIRED) or is cancelled (CANCELLED); a timer
# whose destination pid exits is CANCELLED too.
_ACTIVE: Final = 0
_FIRED: Final = 1
_CANCELLED: Final = 2


class TimerRef:
    """The reference `send_after` returns; pass it to `cancel_timer` or `read_timer`.

    Timer references compare by identity, like Erlang's. A reference stays valid after
    its timer has fired or been cancelled: `read_timer` then returns ``None``.

    Example::

        ref = otpy.send_after(otpy.self(), "tick", 1.0)
        assert otpy.read_timer(ref) == 1.0
        otpy.cancel_timer(ref)
        assert otpy.read_timer(ref) is None
    """

    __slots__ = ("_deadline", "_dest", "_message", "_state")

    def __init__(self, deadline: float, dest: Server, message: object) -> None:
        self._deadline = deadline
        self._dest: Server | None = dest
        self._message = message
        self._state = _ACTIVE

    def __repr__(self) -> str:
        state = ("active", "fired", "cancelled")[self._state]
        return f"<TimerRef {state} deadline={self._deadline:g}>"

    @property
    def deadline(self) -> float:
        """The `trio.current_time` at which the message is (or was) due.

        Example::

            ref = otpy.send_after(pid, "wake", 2.0)
            assert ref.deadline == trio.current_time() + 2.0
        """
        return self._deadline

    def _stop(self, state: int) -> None:
        self._state = state
        self._dest = None
        self._message = None  # a cancelled timer waits in the heap: let its message go now


class _Timers:
    """The timers of one trio.run: a heap of (deadline, seq, ref) and one system task.

    Cancelled timers stay in the heap until they come due or the heap is compacted
    (when it holds more than twice the active timers, and at least 1024 entries), so a
    cancellation is O(1) and memory stays proportional to the active timers.

    ``by_pid`` indexes the active timers of each destination pid, so that its exit
    cancels them. The pid's entry stays (possibly empty) until it exits: one exit hook
    per pid, whatever the number of timers it gets over its life.
    """

    __slots__ = ("active", "by_pid", "heap", "limit", "scope", "seq")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, TimerRef]] = []
        self.by_pid: dict[Pid, dict[TimerRef, None]] = {}
        self.active = 0
        self.limit = 1024
        self.seq = 0
        self.scope: trio.CancelScope | None = None

    def add(self, ref: TimerRef, dest_pid: Pid | None) -> None:
        self.seq += 1
        self.active += 1
        heap = self.heap
        heapq.heappush(heap, (ref._deadline, self.seq, ref))
        if dest_pid is not None:
            timers = self.by_pid.get(dest_pid)
            if timers is None:
                timers = self.by_pid[dest_pid] = {}
                dest_pid._add_exit_hook(self._pid_exited)
            timers[ref] = None
        if len(heap) > self.limit:
            self.compact()
        scope = self.scope
        if scope is not None and ref._deadline < scope.deadline:
            scope.deadline = ref._deadline

    def compact(self) -> None:
        heap = self.heap
        heap[:] = [entry for entry in heap if entry[2]._state == _ACTIVE]
        heapq.heapify(heap)
        self.limit = max(1024, 2 * len(heap))

    def discard(self, ref: TimerRef, state: int) -> None:
        """Take an active timer out of service (fired or cancelled)."""
        dest = ref._dest
        if type(dest) is Pid:
            timers = self.by_pid.get(dest)
            if timers is not None:
                timers.pop(ref, None)
        self.active -= 1
        ref._stop(state)

    def _pid_exited(self, pid: Pid, _reason: object) -> None:
        timers = self.by_pid.pop(pid, None)
        if timers:
            for ref in timers:
                if ref._state == _ACTIVE:
                    self.active -= 1
                    ref._stop(_CANCELLED)

    async def serve(self) -> None:
        heap = self.heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                ref = heapq.heappop(heap)[2]
                if ref._state != _ACTIVE:
                    continue
                dest, message = ref._dest, ref._message
                self.discard(ref, _FIRED)
                try:
                    if type(dest) is Pid:
                        if dest.alive:
                            dest._deliver((INFO, message))
                    else:
                        assert dest is not None
                        send(dest, message)  # a name is resolved now, at expiry
                except Exception as exc:  # noqa: BLE001 (a broken via registry must not crash trio.run)
                    _log.error("timer_delivery_failed", dest=dest, exc_info=exc)
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self.scope:
                await trio.sleep_forever()


_TIMERS: RunVar[_Timers] = RunVar("otpy_timers")


def _timers() -> _Timers:
    try:
        return _TIMERS.get()
    except RuntimeError:  # trio's "Cannot be used outside of a run context"
        raise not_in_trio_run("an otpy timer was set") from None
    except LookupError:
        timers = _Timers()
        _TIMERS.set(timers)
        trio.lowlevel.spawn_system_task(timers.serve, name="otpy timers")
        return timers


def send_after(dest: Server, message: Any, seconds: float) -> TimerRef:
    """Send ``message`` to ``dest``'s ``handle_info`` after ``seconds`` (Elixir's ``Process.send_after/3``).

    The message is never sent at once, even with ``seconds=0``: ``dest`` may receive
    other messages in between. Timers that come due at the same time are delivered in
    the order they were created.

    - If ``dest`` is a `Pid`, the timer is cancelled when that process exits (or at
      once if it is already dead), as in Erlang: the timer lives with its destination,
      not with the caller.
    - If ``dest`` is a name (a str or `via`), the name is looked up when the timer
      fires; if nobody holds it then, the message is dropped. Such a timer is not
      cancelled by any exit: cancel it yourself if it must not fire.

    It works inside and outside otpy processes (anywhere inside ``trio.run``). Timers
    cost no task each, and a pending timer does not keep ``trio.run`` alive.

    Args:
        dest: a `Pid`, a registered name, or `via(...)`.
        message: any value; ``handle_info`` receives it.
        seconds: the delay, ``>= 0`` (``math.inf`` for a timer that never fires).

    Returns:
        A `TimerRef` for `cancel_timer` and `read_timer`.

    Raises:
        ValueError: ``seconds`` is not a number of seconds (negative, NaN, not a number).
        TypeError: ``dest`` is not a pid or a name.

    Example::

        class Ticker(otpy.GenServer):
            async def init(self):
                self.ticks = 0
                otpy.send_after(otpy.self(), "tick", 1.0)

            async def handle_info(self, message):
                if message == "tick":
                    self.ticks += 1
                    otpy.send_after(otpy.self(), "tick", 1.0)   # Elixir's periodic-work idiom
    """
    check_timeout(seconds, "seconds")
    dest_type = type(dest)
    if dest_type is not Pid and dest_type is not str and not isinstance(dest, Via):
        raise TypeError(f"send_after needs a Pid, a name or otpy.via(...), not {dest_type.__name__}: {dest!r}")
    require_trio_run("otpy.send_after() was called")
    ref = TimerRef(trio.current_time() + seconds, dest, message)
    if dest_type is Pid:
        assert isinstance(dest, Pid)
        if not dest.alive:
            ref._stop(_CANCELLED)
            return ref
        _timers().add(ref, dest)
    else:
        _timers().add(ref, None)
    return ref


def cancel_timer(ref: TimerRef) -> float | None:
    """Cancel a timer; return the seconds it had left, or ``None`` if it was not active.

    ``None`` means the timer has already fired, was cancelled before, or was cancelled
    because its destination exited (Erlang's ``false``). A timer that has fired may
    have delivered its message already: ``None`` does not say the message is still to
    come, nor that it has been handled.

    Example::

        ref = otpy.send_after(pid, "timeout", 5.0)
        await trio.sleep(2.0)
        assert otpy.cancel_timer(ref) == 3.0   # under a MockClock; and now it never fires
        assert otpy.cancel_timer(ref) is None
    """
    if ref._state != _ACTIVE:
        return None
    remaining = max(0.0, ref._deadline - trio.current_time())
    _timers().discard(ref, _CANCELLED)
    return remaining


def read_timer(ref: TimerRef) -> float | None:
    """Return the seconds left before a timer fires, or ``None`` if it is not active.

    A timer that has come due but is not delivered yet reads ``0.0``.

    Example::

        ref = otpy.send_after(pid, "ping", 10.0)
        await trio.sleep(4.0)
        assert otpy.read_timer(ref) == 6.0   # under a MockClock
    """
    if ref._state != _ACTIVE:
        return None
    return max(0.0, ref._deadline - trio.current_time())
