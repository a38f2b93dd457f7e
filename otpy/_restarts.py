"""Restart listeners: a hook for metrics on supervisors' restarts.

otpy imports no metrics library. A program (or a library such as ``sessions``' telemetry)
that wants to count restarts adds a listener; supervisors call every listener, in the
supervisor's own process, each time they start a new process for a child whose process
had exited. With no listener the restart path pays one truthiness test of a list.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Final

import attrs

from ._log import get_logger
from ._process import Pid

_log = get_logger("otpy.supervisor")

_listeners: Final[list[Callable[[ChildRestarted], object]]] = []


@attrs.frozen
class ChildRestarted:
    """A supervisor restarted a child: it started a new process for it after its process exited.

    ``supervisor`` is the supervisor's registered name, or its pid's repr when it has none
    (the ``supervisor`` of otpy's reports); ``child_id`` the child spec's id; ``pid`` the
    new process; ``restarts`` how many processes were started for this child after its
    first, this one included (`otpy.tree`'s count). A ``one_for_all`` or ``rest_for_one``
    restart restarts several children: one `ChildRestarted` for each.

    Example::

        def count(restart: otpy.ChildRestarted) -> None:
            print(restart.supervisor, restart.child_id, restart.restarts)

        otpy.add_restart_listener(count)
    """

    supervisor: str
    child_id: Hashable
    pid: Pid
    restarts: int


def add_restart_listener(listener: Callable[[ChildRestarted], object]) -> None:
    """Call ``listener`` with a `ChildRestarted` each time any supervisor restarts a child.

    It runs synchronously inside the supervisor, so it must be quick and must not block
    (count, or hand the value to a channel with ``send_nowait``); an exception it raises
    is logged (``restart_listener_failed``) and never reaches the supervisor. Listeners
    are process-wide, for every supervisor and `DynamicSupervisor` of every trio run;
    adding the same listener twice calls it once. `remove_restart_listener` takes it away.

    Example::

        restarts = collections.Counter()
        otpy.add_restart_listener(lambda r: restarts.update([(r.supervisor, r.child_id)]))
        # ... later: restarts[("app", "worker")] is how often "worker" was restarted
    """
    if listener not in _listeners:
        _listeners.append(listener)


def remove_restart_listener(listener: Callable[[ChildRestarted], object]) -> None:
    """Stop calling a listener that `add_restart_listener` added (nothing if it was not added).

    Example::

        otpy.add_restart_listener(count)
        ...
        otpy.remove_restart_listener(count)
    """
    if listener in _listeners:
        _listeners.remove(listener)


def report_restart(supervisor: str, child_id: Hashable, pid: Pid, restarts: int) -> None:
    """Tell every listener about a restart (the supervisors call it only when there is one)."""
    event = ChildRestarted(supervisor, child_id, pid, restarts)
    for listener in tuple(_listeners):
        try:
            listener(event)
        except Exception as exc:  # noqa: BLE001 (a listener's bug never takes a supervisor down)
            _log.error(
                "restart_listener_failed",
                supervisor=supervisor,
                child_id=child_id,
                listener=repr(listener),
                error=repr(exc),
            )
