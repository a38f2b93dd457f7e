"""The shared group-commit writer of the durable stores.

One dedicated OS thread owns a store's files or its SQLite connection and does all of
its I/O. Trio tasks hand it jobs through a queue and park until it wakes them; the thread
takes *every* job waiting in the queue as one batch, so while one batch is being made
durable (one commit, one fsync per file) the next one fills up. That is group commit:
under load, many sessions' turns share one fsync, and each durable append is
acknowledged only after the fsync that covers it.

Why a thread of our own rather than `trio.to_thread.run_sync`: a store outlives any one
trio run (it is made in a child spec and shared by sessions, their restarts and separate
``trio.run`` calls), sqlite3 connections belong to the thread that made them, and after
`BatchWorker.aclose` no thread may be left behind, while trio's thread cache keeps idle
workers alive. The thread starts on first use and ends at ``aclose`` (or after
`IDLE_SECONDS` with nothing to do); using the store again starts a new one. Each job
carries the trio token of the run that submitted it, so the thread wakes the right run,
and a run that has gone away is simply not woken.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import trio

import otpy

from .._errors import StoreError

_log = otpy.get_logger("sessions.stores")

MAX_BATCH: Final = 4096
"""Most jobs handled in one batch (one transaction, one round of fsyncs)."""

IDLE_SECONDS: float = 30.0
"""A writer thread with nothing to do for this long releases its files and ends, as if
the store were closed (a store that nobody closes holds no thread for long); the next
call starts a new one."""


@attrs.define(eq=False)
class Job:
    """One request to the writer thread: ``op`` and ``args`` are the store's own.

    The handler sets ``result`` or ``error``, and ``settled`` once that outcome is
    final (a write committed or refused); the worker wakes the submitter: ``task``, parked
    in `BatchWorker.submit` (None once woken or no longer waiting), or ``done``.
    """

    op: str
    args: tuple[Any, ...]
    durable: bool = False
    result: Any = None
    error: BaseException | None = None
    settled: bool = False
    token: trio.lowlevel.TrioToken | None = None
    done: trio.Event | None = None
    task: trio.lowlevel.Task | None = None


class Handler:
    """What a store does on the writer thread. Every method runs on that thread only."""

    def open(self) -> None:
        """Acquire files or connections (called on the thread, before the first batch)."""

    def process(self, jobs: Sequence[Job]) -> None:
        """Do ``jobs`` in order, setting each job's ``result`` or ``error``."""
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release everything (called on the thread, after the last batch)."""


class BatchWorker:
    """A lazily started thread running a `Handler` over batches of jobs.

    Example::

        worker = BatchWorker("sessions-sqlite", handler)
        records = await worker.submit(Job("load", ("s1",)))
        await worker.aclose()
    """

    def __init__(self, name: str, make_handler: Callable[[], Handler], *, idle_seconds: float | None = None) -> None:
        self._name = name
        self._make_handler = make_handler
        self._idle_seconds = idle_seconds  # None: IDLE_SECONDS; math.inf: the thread lives until aclose
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Job] | None = None
        self._thread: threading.Thread | None = None
        self._last: threading.Thread | None = None  # the latest thread, perhaps still closing

    @property
    def thread(self) -> threading.Thread | None:
        """The running writer thread, if any (for tests)."""
        return self._thread

    async def submit(self, job: Job, *, shield: bool = False) -> Any:
        """Hand ``job`` to the thread and wait for its result (or raise its error).

        With ``shield`` the wait cannot be cancelled: a write that was handed over is
        always waited for, so the caller never goes on not knowing whether it happened.

        The task parks on trio's lowlevel wait, and the thread reschedules it: no
        `trio.Event` and no cancel scope per job (a scope costs more instructions than
        the rest of the hand-over). Shielded, the wait refuses to be aborted, which is
        what a shielded scope around it would do; a cancellation surfaces at the
        caller's next checkpoint.
        """
        job.token = trio.lowlevel.current_trio_token()
        job.task = trio.lowlevel.current_task()
        with self._lock:
            if self._queue is None:
                self._start()
            assert self._queue is not None
            self._queue.put(job)

        def abort(_: object) -> trio.lowlevel.Abort:
            if shield:
                return trio.lowlevel.Abort.FAILED  # the thread's wake-up will come
            job.task = None  # cancelled: the outcome is dropped, the wake-up ignored
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if job.error is not None:
            raise job.error
        return job.result

    def post(self, job: Job) -> bool:
        """Hand ``job`` to the running thread without waiting for it (from any thread);
        False, and nothing done, when no thread runs (the store is closed)."""
        with self._lock:
            if self._queue is None:
                return False
            self._queue.put(job)
            return True

    async def aclose(self) -> None:
        """Finish every job handed over so far, release the handler, and end the thread."""
        with self._lock:
            thread, q, last = self._thread, self._queue, self._last
            self._thread = self._queue = None
        if thread is None or q is None:
            # No thread, or one that went idle and may still be releasing its files.
            while last is not None and last.is_alive():  # noqa: ASYNC110 (a thread's end has no trio event)
                await trio.sleep(0.001)
            await trio.lowlevel.checkpoint()
            return
        stop = Job("stop", ())
        stop.token = trio.lowlevel.current_trio_token()
        stop.done = trio.Event()
        q.put(stop)
        with trio.CancelScope(shield=True):
            await stop.done.wait()
        # The thread set ``stop.done`` as its very last act; joining takes microseconds.
        thread.join()
        if stop.error is not None:
            raise stop.error

    def _start(self) -> None:
        previous = self._last
        q: queue.SimpleQueue[Job] = queue.SimpleQueue()
        thread = threading.Thread(target=self._main, args=(q, previous), name=self._name, daemon=True)
        self._queue, self._thread, self._last = q, thread, thread
        thread.start()

    def _main(self, q: queue.SimpleQueue[Job], previous: threading.Thread | None) -> None:
        if previous is not None:  # a closing thread may still be finishing its last batch
            previous.join()
        handler: Handler | None = None
        stops: list[Job] = []
        while not stops:
            try:
                idle = IDLE_SECONDS if self._idle_seconds is None else self._idle_seconds
                jobs = [q.get(timeout=None if math.isinf(idle) else idle)]
            except queue.Empty:
                with self._lock:  # submit puts under this lock: nothing can slip in after the check
                    idle = self._queue is q and q.empty()
                    if idle:
                        self._queue = self._thread = None
                if idle:
                    break
                continue
            while len(jobs) < MAX_BATCH:
                try:
                    jobs.append(q.get_nowait())
                except queue.Empty:
                    break
            stops = [job for job in jobs if job.op == "stop"]
            handler = self._run_batch(handler, [job for job in jobs if job.op != "stop"])
        # Jobs that raced in after the stop are still done, then the handler is released.
        leftovers: list[Job] = []
        while True:
            try:
                leftovers.append(q.get_nowait())
            except queue.Empty:
                break
        handler = self._run_batch(handler, leftovers)
        if handler is not None:
            try:
                handler.close()
            except Exception as exc:  # noqa: BLE001 (reported to aclose, the thread still ends)
                _log.error("store_close_failed", thread=self._name, exc_info=exc)
                for stop in stops:
                    stop.error = StoreError(f"store could not close cleanly: {exc!r}")
        _wake(stops)

    def _run_batch(self, handler: Handler | None, jobs: list[Job]) -> Handler | None:
        """Do one batch, opening the handler first if it is not open (a failed open is
        retried at the next batch). Returns the handler, open or None."""
        if not jobs:
            return handler
        if handler is None:
            try:
                handler = self._make_handler()
                handler.open()
            except Exception as exc:  # noqa: BLE001 (the batch fails; the next batch tries again)
                _log.error("store_open_failed", thread=self._name, exc_info=exc)
                error = exc if isinstance(exc, StoreError) else _wrapped(f"{self._name}: could not open: {exc!r}", exc)
                for job in jobs:
                    job.error = error
                _wake(jobs)
                return None
        self._process(handler, jobs)
        _wake(jobs)
        return handler

    def _process(self, handler: Handler, jobs: list[Job]) -> None:
        try:
            handler.process(jobs)
        except Exception as exc:  # noqa: BLE001 (a handler bug or an I/O failure: fail the batch, keep serving)
            _log.error("store_batch_failed", thread=self._name, jobs=len(jobs), exc_info=exc)
            error = exc if isinstance(exc, StoreError) else _wrapped(f"{self._name}: batch failed: {exc!r}", exc)
            for job in jobs:
                # A settled job keeps its outcome: a write that was committed is never reported failed.
                if not job.settled and job.error is None:
                    job.error = error
                    job.result = None


def _wrapped(message: str, cause: BaseException) -> StoreError:
    error = StoreError(message)
    error.__cause__ = cause
    return error


def _wake(jobs: Sequence[Job]) -> None:
    """Wake the submitters of ``jobs``, once per trio run (one ``run_sync_soon`` each)."""
    by_token: dict[trio.lowlevel.TrioToken, list[Job]] = {}
    for job in jobs:
        if job.token is not None and (job.task is not None or job.done is not None):
            by_token.setdefault(job.token, []).append(job)
    for token, woken in by_token.items():
        with contextlib.suppress(trio.RunFinishedError):  # the run that asked has ended: nobody waits
            token.run_sync_soon(_wake_all, woken)


def _wake_all(jobs: list[Job]) -> None:
    """In the trio thread: reschedule each parked submitter that still waits, set each event."""
    for job in jobs:
        task = job.task
        if task is not None:
            job.task = None
            trio.lowlevel.reschedule(task)
        if job.done is not None:
            job.done.set()
