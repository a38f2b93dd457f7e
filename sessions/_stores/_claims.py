"""One writer per session per store: the claim a SessionServer holds on its session's log.

A claim is held in two places. Inside the OS process, a table maps each claimed session
(of one store location) to its `SessionClaim`; a second claimer in the process sees it
there, whichever store object it uses. Across OS processes, the durable stores also hold
an exclusive ``flock`` on a lock file of the session; a second process finds it locked.

Neither outlives its owner. The kernel drops a ``flock`` when the process that holds it
dies, however it dies (SIGKILL included), so no crash leaves a session locked, and no
lease has to expire. Inside the process, a claim made by an otpy process (the
SessionServer's ``init``) is released when that process exits, normally, by a crash or
killed, because a system task of the trio run waits for the exit; and every claim is
released when its trio run ends. A lease row in the database would need an expiry
instead, and a crashed owner would keep the session locked until then: that is why the
lock is a file lock, for `SqliteStore` too.

``flock`` is advisory and local: it binds only processes on one machine that ask for it
(every store of this package does). On a network file system it may not bind at all.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, Protocol

import trio

import otpy

from .._errors import InvalidOption, SessionInUse, StoreError

CLAIM_WAIT: Final = 5.0
"""How long `claim` waits, by default, for the session's current writer to let go."""

_FIRST_POLL: Final = 0.002
_LAST_POLL: Final = 0.05


class SessionClaim:
    """The right to write one session's log in one store, held until `release`.

    A store hands one out from its ``claim`` method; while it is held, a second
    ``claim`` of the session in the same store — through the same store object, another
    store object on the same file or directory, or another OS process — waits, then
    raises `SessionInUse`. A claim made inside an otpy process is also released when
    that process exits (however it exits), every claim when its trio run ends, and the
    durable stores' claims when the OS process dies. `add_owner` ties the claim to more
    processes: it is then released when the last of them has exited.

    A claim is a context manager that releases it on exit.

    Example::

        with await store.claim("s1"):
            records = await store.load("s1")
            await store.append("s1", [sessions.Record("s1", len(records) + 1, "session_resumed")])
    """

    def __init__(self, session_id: str, store: str, release: Callable[[], None]) -> None:
        self.session_id = session_id
        self.store = store
        self._release = release
        self._held = True
        self._owners: list[otpy.Pid] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._released: trio.Event | None = None
        self._watcher: trio.CancelScope | None = None
        self._owners_changed: trio.Event | None = None
        self.epoch: int | None = None
        """The lease's epoch, for a store whose claims are leases with epochs
        (`PostgresStore`); None for the others."""

    def __repr__(self) -> str:
        state = "held" if self._held else "released"
        return f"<SessionClaim {self.session_id!r} in {self.store} {state}>"

    def __enter__(self) -> SessionClaim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        """Whether the claim is still held.

        Example::

            claim = await store.claim("s1")
            claim.release()
            assert not claim.held
        """
        return self._held

    @property
    def owners(self) -> tuple[otpy.Pid, ...]:
        """The otpy processes whose exit releases the claim (empty: only `release` and the end of the run).

        Example::

            async def init(self):
                claim = await store.claim("s1")
                assert claim.owners == (otpy.self(),)
        """
        return tuple(self._owners)

    def add_owner(self, pid: otpy.Pid) -> None:
        """Hold the claim until ``pid`` has exited too (a task that writes for the owner).

        Example::

            claim.add_owner(turn_task.pid)   # released once the server and its task are gone
        """
        if self._held and pid not in self._owners:
            self._owners.append(pid)
            self._wake_watcher()

    def release(self) -> None:
        """Let the session go (a second call does nothing). Call it from the trio run
        that made the claim, or from any thread once that run has ended.

        Example::

            claim.release()
        """
        if not self._held:
            return
        self._held = False
        try:
            self._release()
        finally:
            if self._released is not None:
                self._in_run(self._released.set)
            if self._watcher is not None:
                self._in_run(self._watcher.cancel)

    # --- the claim table's side ---------------------------------------------------------

    def _holder(self) -> str:
        """Who holds the claim, for `SessionInUse`."""
        live = [pid for pid in self._owners if pid.alive]
        if live:
            return f"{', '.join(map(repr, live))} in this process"
        return "a task of this process"

    def _abandoned(self) -> bool:
        """Whether the claim had owners and every one of them has exited."""
        return bool(self._owners) and not any(pid.alive for pid in self._owners)

    def _bind(self) -> None:
        """Tie the claim to the calling otpy process and trio run (from `ClaimTable.claim`)."""
        self._token = trio.lowlevel.current_trio_token()
        self._released = trio.Event()
        self._owners_changed = trio.Event()
        owner = otpy.current_process()  # None from plain trio code: no owner
        if owner is not None:
            self._owners.append(owner)
        self._watcher = trio.CancelScope()
        trio.lowlevel.spawn_system_task(self._watch, name=f"session claim {self.session_id!r}")

    async def _watch(self) -> None:
        """Release the claim once every owner has exited, or when the run ends."""
        assert self._watcher is not None
        try:
            with self._watcher:
                while not self._abandoned():
                    self._owners_changed = changed = trio.Event()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_cancel_after, changed.wait, nursery.cancel_scope)
                        for pid in self._owners:
                            if pid.alive:
                                nursery.start_soon(_cancel_after, pid.wait_exited, nursery.cancel_scope)
        finally:
            self.release()

    def _wake_watcher(self) -> None:
        if self._owners_changed is not None:
            self._in_run(self._owners_changed.set)

    def _in_run(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` (a trio object's method) in the claim's own run."""
        try:
            here = trio.lowlevel.current_trio_token()
        except RuntimeError:
            here = None
        if here is self._token:
            fn()
        elif self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(fn)


async def _cancel_after(wait: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
    await wait()
    scope.cancel()


class ProcessLock(Protocol):
    """What a claim holds across OS processes besides its place in the claim table."""

    def try_acquire(self) -> str | None:
        """Take the lock, or return who holds it."""
        ...

    def release(self) -> None:
        """Let it go (called once, under the table's lock)."""
        ...


class FileLock:
    """An exclusive ``flock`` on a lock file, for claims across OS processes.

    The file holds the owner's OS pid (for the error of the refused). It is removed when
    the lock is released; a claimer that locked a file just unlinked by its holder sees
    that the path no longer leads to its file and tries again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def try_acquire(self) -> str | None:
        """Lock the file, or return who holds it. Raises `StoreError` when it cannot be made."""
        for _ in range(100):  # each round is lost only to a holder that released at that moment
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as exc:
                raise StoreError(f"cannot create the lock file {self.path}: {exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise StoreError(f"cannot lock {self.path}: {exc}") from exc
                return self._holder()
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # its holder removed it while we opened it: lock the file that is there now
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.fd = fd
            return None
        raise StoreError(f"cannot lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            with contextlib.suppress(OSError):  # a lock file left behind is harmless: the next claim locks it
                os.unlink(self.path)  # still locked: whoever opens it now retries (see try_acquire)
        finally:
            os.close(fd)  # drops the flock

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return f"OS process {pid}" if pid.isdigit() else "another OS process"


class ClaimTable:
    """The claims held in this OS process, by key (a store location and a session)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # claims may come from trio runs in several threads
        self._held: dict[object, SessionClaim] = {}

    async def claim_file(self, lock_path: Path, session_id: str, store: str, wait: float) -> SessionClaim:
        """Claim a session of a durable store: in this process's table, keyed by its lock
        file, and by an exclusive ``flock`` on that file against other OS processes."""
        return await self.claim(_file_key(lock_path), session_id, store, wait, lambda: FileLock(lock_path))

    async def claim(
        self,
        key: object,
        session_id: str,
        store: str,
        wait: float,
        file_lock: Callable[[], ProcessLock] | None = None,
    ) -> SessionClaim:
        """Claim ``key``, waiting up to ``wait`` seconds for its holder to let go.

        Raises:
            SessionInUse: the holder did not let go in time.
            InvalidOption: ``wait`` is not a finite number >= 0.
        """
        checked: object = wait
        if isinstance(checked, bool) or not isinstance(checked, (int, float)) or not math.isfinite(wait) or wait < 0:
            raise InvalidOption("wait", wait, "expected a finite number of seconds >= 0")
        start = trio.current_time()
        poll = _FIRST_POLL
        while True:
            outcome = self._try(key, session_id, store, file_lock)
            if isinstance(outcome, SessionClaim):
                outcome._bind()
                await trio.lowlevel.checkpoint()
                return outcome
            holder, released = outcome
            waited = trio.current_time() - start
            if waited >= wait:
                await trio.lowlevel.checkpoint()
                raise SessionInUse(session_id, store, holder, waited)
            with trio.move_on_after(min(poll, wait - waited)):
                if released is not None:
                    await released.wait()  # a holder in this run: woken at once when it lets go
                else:
                    await trio.sleep_forever()
            poll = min(2 * poll, _LAST_POLL)

    def _try(
        self, key: object, session_id: str, store: str, file_lock: Callable[[], ProcessLock] | None
    ) -> SessionClaim | tuple[str, trio.Event | None]:
        with self._lock:
            current = self._held.get(key)
            if current is not None:  # its watcher releases it as soon as its owners are gone
                released = current._released
                same_run = current._token is _token_or_none()
                return current._holder(), released if same_run else None
            lock = file_lock() if file_lock is not None else None
            if lock is not None:
                holder = lock.try_acquire()
                if holder is not None:
                    return holder, None

            def release() -> None:
                with self._lock:
                    if self._held.get(key) is claim:
                        del self._held[key]
                    if lock is not None:
                        lock.release()

            claim = SessionClaim(session_id, store, release)
            self._held[key] = claim
            return claim

    def held(self) -> list[SessionClaim]:
        """The claims held now (for tests)."""
        with self._lock:
            return list(self._held.values())


def _file_key(lock_path: Path) -> object:
    """The table's key for a lock file: its absolute path, symbolic links resolved, so
    that two store objects that name one location differently share their claims."""
    return ("file", os.path.realpath(lock_path))


def _token_or_none() -> trio.lowlevel.TrioToken | None:
    try:
        return trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None


FILE_CLAIMS: Final = ClaimTable()
"""The claims of the durable stores in this process, keyed by lock file: shared by every
store object, so two objects on one file or directory see each other's claims."""
