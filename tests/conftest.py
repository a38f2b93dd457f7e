"""Shared test setup: structlog's configuration, and a timeout that a hang inside trio obeys."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest
import pytest_timeout
import structlog
import trio


def _drop(_logger: object, _method: str, _event: object) -> object:
    raise structlog.DropEvent


# Keep otpy's reports out of the test output. Every level passes the filter and the
# processor chain drops each event, so that structlog.testing.capture_logs(), which
# swaps the processors, sees every report.
structlog.configure(
    processors=[_drop],
    wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    cache_logger_on_first_use=False,
)


# --- every test has a timeout (pyproject.toml: timeout), and a hang fails only its own test ---
#
# pytest-timeout's signal method raises pytest's Failed from a SIGALRM handler. A hung
# trio test sits in trio's scheduler, waiting for I/O, so that is where the alarm lands:
# the exception escapes trio's run loop, the run is abandoned half-way, and every later
# trio test fails with "Attempted to call run() from inside a run()". pytest-trio's own
# timeout support (python-trio/pytest-trio#136) is not released, hence this hook, which
# does what that proposal does: the alarm asks trio's scheduler (TrioToken.run_sync_soon
# is safe to call from a signal handler) to crash the test from inside the run, as a
# crashing task in the test's nursery would, and the run ends cleanly.

HANG_GRACE = 10.0  # seconds trio's scheduler has to answer before the alarm raises directly
HANG_POLL = 0.1  # once a test has timed out, how soon each later trio run of it is crashed (hypothesis reruns)
HANG_ASKS = 600  # how many times one test is interrupted before the alarm gives up


class TestHung(Exception):
    """A test still ran when its timeout (pytest-timeout's) expired: most likely a hang."""

    __test__ = False  # not a test class, whatever its name


class _Alarm:
    """The SIGALRM handler of one test."""

    def __init__(self, item: pytest.Item, settings: Any) -> None:
        self.item = item
        self.settings = settings
        self.asks = 0
        self.asked_at = 0.0
        self.answered = True

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        __tracebackhide__ = True
        self.asks += 1
        if self.asks <= HANG_ASKS:
            if trio.lowlevel.in_trio_run():
                if self.answered:
                    self.answered = False
                    self.asked_at = time.monotonic()
                    trio.lowlevel.current_trio_token().run_sync_soon(self.crash_the_test)
                    signal.setitimer(signal.ITIMER_REAL, HANG_POLL)  # hypothesis runs it again
                    return
                if time.monotonic() - self.asked_at < HANG_GRACE:
                    signal.setitimer(signal.ITIMER_REAL, HANG_POLL)
                    return
            elif self.asks > 1:  # between two trio runs of a test that timed out (hypothesis)
                signal.setitimer(signal.ITIMER_REAL, HANG_POLL)
                return
        # No trio run, or its scheduler does not answer (a loop without checkpoints, a
        # blocking call): pytest-timeout's own way, which raises wherever the test is.
        pytest_timeout.timeout_sigalrm(self.item, self.settings)

    def crash_the_test(self) -> None:
        """Run by trio's scheduler: print every task's stack (once), then crash the test's nursery."""
        self.answered = True
        tasks = list(_tasks(trio.lowlevel.current_root_task()))
        if self.asks == 1:
            _print_stacks(tasks, f"{self.item.nodeid}: still running after {self.settings.timeout:g} s")
        error = TestHung(
            f"{self.item.nodeid} still ran after its timeout of {self.settings.timeout:g} s (pytest-timeout): "
            "a hang; every trio task's stack is in the captured stderr"
        )

        async def crash() -> None:
            raise error

        test_tasks = list(_test_tasks(tasks))
        for task in test_tasks:
            if task.child_nurseries:
                try:
                    task.child_nurseries[0].start_soon(crash, name="hang guard")
                except RuntimeError:  # that nursery is closed to new tasks
                    continue
                return
        if not test_tasks:
            # Not a pytest-trio test (a test that calls trio.run itself): a crashing system
            # task ends the run with TrioInternalError, whose cause is the message above.
            trio.lowlevel.spawn_system_task(crash, name="hang guard")


def _print_stacks(tasks: list[trio.lowlevel.Task], title: str) -> None:
    print(f"\n+++ {title}; the stacks of its trio tasks:", file=sys.stderr)
    for task in tasks:
        stack = traceback.StackSummary.extract(task.iter_await_frames())
        print(f"--- trio task {task.name!r}\n{''.join(stack.format())}", end="", file=sys.stderr)


def _tasks(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    yield task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _tasks(child)


def _test_tasks(tasks: list[trio.lowlevel.Task]) -> Iterator[trio.lowlevel.Task]:
    """pytest-trio's task of the test itself, whose first nursery is the `nursery` fixture's,
    then the task that runs the test and its fixtures."""
    yield from (task for task in tasks if task.name.startswith("<test "))
    yield from (task for task in tasks if task.name.endswith("._bootstrap_fixtures_and_run_test"))


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's thread method

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout's cancel hook calls it
    signal.signal(signal.SIGALRM, _Alarm(item, settings))
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True
