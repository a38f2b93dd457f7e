"""SqliteStore: every session's log in one SQLite file, with group commit."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import trio

import otpy

from .._errors import CorruptRecord, InvalidOption, StoreError
from ._base import Record
from ._claims import CLAIM_WAIT, FILE_CLAIMS, SessionClaim
from ._common import check_loaded, check_records, gap_error, json_text, utf8
from ._writer import BatchWorker, Handler, Job

_log = otpy.get_logger("sessions.stores")

SCHEMA_VERSION: Final = 1
"""The table layout this release writes, kept in ``PRAGMA user_version``."""

CLAIMS_SUFFIX: Final = "-claims"
"""The directory beside the database that holds the lock files of claimed sessions."""

BUSY_TIMEOUT_MS: Final = 30_000
"""How long a statement waits for a lock held by another connection or process."""

# Rows go in append order (an integer primary key) so that a commit writes a few
# consecutive pages plus the small index pages it touches; a table clustered by
# (session_id, seq) would rewrite one leaf page per session in every group commit.
_SCHEMA_V1: Final = """
CREATE TABLE IF NOT EXISTS records (
    id         INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    ts         REAL NOT NULL,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS records_by_session ON records (session_id, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('created_by', 'sessions.SqliteStore');
"""

MIGRATIONS: Final[dict[int, Callable[[sqlite3.Connection], None]]] = {}
"""``{from_version: step}``: each step upgrades the tables by one schema version, in the
transaction that also sets the new ``user_version``. Empty while there is one version."""


class _SqliteHandler(Handler):
    """Runs on the writer thread: owns the store's only connection.

    sqlite3 connections belong to the thread that made them (``check_same_thread``), and
    this one is made on the writer thread and used by it alone, so no lock is needed and
    no two writers inside this process ever contend for the database: that is what keeps
    "database is locked" away however many sessions append at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None
        self.synchronous = ""
        self.unsynced = False  # a NORMAL commit has not been synced by a FULL one since

    def open(self) -> None:
        try:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {self.path}: {_describe(exc)}") from exc
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Two stores opening one new file at once (two processes, say): switching to
            # WAL and creating the tables take locks for which SQLite may report "database
            # is locked" at once instead of waiting out busy_timeout. Opening is rare and
            # runs on the writer thread, so wait and try again, within busy_timeout.
            deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
            while True:
                try:
                    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if mode.lower() != "wal" and str(self.path) != ":memory:":
                        raise StoreError(f"{self.path}: SQLite refused WAL mode (journal_mode is {mode})")
                    self._set_synchronous(db, "FULL")
                    _migrate(db, self.path)
                    break
                except sqlite3.OperationalError as exc:
                    if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
        except sqlite3.Error as exc:  # a damaged file ("file is not a database"), a full or read-only disk
            db.close()
            raise StoreError(f"cannot open {self.path}: {_describe(exc)}") from exc
        except BaseException:
            db.close()
            raise
        self.db = db

    def close(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            try:
                # Anything appended without ``durable`` becomes durable now: a checkpoint
                # syncs the WAL, copies it into the database and syncs that.
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # another connection is reading: sync the WAL itself
                _log.warning("sqlite_checkpoint_failed", path=str(self.path), error=str(exc))
                _fsync_file(Path(f"{self.path}-wal"))
            finally:
                db.close()

    def _set_synchronous(self, db: sqlite3.Connection, level: str) -> None:
        if self.synchronous != level:
            db.execute(f"PRAGMA synchronous = {level}")
            self.synchronous = level

    def process(self, jobs: Sequence[Job]) -> None:
        db = self.db
        assert db is not None
        pending: list[Job] = []  # writes in the open transaction
        for job in jobs:
            if job.op in ("append", "delete"):
                pending.append(job)
                continue
            self._commit(db, pending)  # a read sees every write handed over before it
            pending = []
            try:
                if job.op == "load":
                    job.result = self._load(db, job.args[0])
                elif job.op == "list":
                    job.result = [row[0] for row in db.execute("SELECT DISTINCT session_id FROM records ORDER BY 1")]
                else:
                    raise AssertionError(f"unknown job {job.op!r}")
            except sqlite3.Error as exc:
                job.error = _store_error(self.path, exc, "reading")
            except StoreError as exc:
                job.error = exc
            job.settled = True
        self._commit(db, pending)

    def _commit(self, db: sqlite3.Connection, jobs: list[Job]) -> None:
        """Write ``jobs`` in one transaction: one commit, and one fsync if any is durable.

        Every job leaves settled, with its own outcome: a failure that belongs to one
        job (a record SQLite refuses) fails that job alone and the others are written
        in a new transaction; a failure of the transaction (a full disk, an I/O error,
        a damaged file) fails every job of this transaction and no other.
        """
        durable = any(job.durable for job in jobs)
        remaining = jobs
        while remaining:
            for job in remaining:
                job.error = None  # a gap found in a rolled back attempt is checked again
            try:
                self._transaction(db, remaining, durable)
                break
            except _JobFailed as failed:
                failed.job.error = _store_error(self.path, failed.cause, "writing", failed.job)
                failed.job.settled = True
                remaining = [job for job in remaining if job is not failed.job]
            except (sqlite3.Error, OSError) as exc:
                error = _store_error(self.path, exc, "writing")
                for job in remaining:
                    job.error = error
                break
        for job in jobs:
            job.settled = True

    def _transaction(self, db: sqlite3.Connection, jobs: list[Job], durable: bool) -> None:
        # In WAL mode, FULL syncs the WAL at commit; NORMAL does not, and the next FULL
        # commit's sync covers the frames written before it.
        self._set_synchronous(db, "FULL" if durable else "NORMAL")
        changes = db.total_changes
        db.execute("BEGIN IMMEDIATE")
        try:
            for job in jobs:
                try:
                    if job.op == "append":
                        self._append(db, job)
                    else:
                        db.execute("DELETE FROM records WHERE session_id = ?", (job.args[0],))
                except (sqlite3.Error, ValueError, OverflowError) as exc:
                    if not _job_specific(exc):
                        raise
                    raise _JobFailed(job, exc) from exc
            db.execute("COMMIT")
        except BaseException as exc:
            self._rollback(db, exc)
            raise
        if db.total_changes != changes:
            self.unsynced = not durable
        elif durable and self.unsynced:
            # Nothing written, so the commit synced nothing: an empty durable append
            # still promises that the appends before it are durable.
            _fsync_file(Path(f"{self.path}-wal"))
            self.unsynced = False

    def _rollback(self, db: sqlite3.Connection, cause: BaseException) -> None:
        """Roll back what is left of a failed transaction, keeping ``cause`` as the error.

        After some errors (a full disk, an I/O error) SQLite has already rolled the
        transaction back, and a ROLLBACK would fail with "no transaction is active",
        hiding what really happened.
        """
        if not db.in_transaction:
            return
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            _log.warning("sqlite_rollback_failed", path=str(self.path), error=str(exc), cause=repr(cause))

    def _append(self, db: sqlite3.Connection, job: Job) -> None:
        session_id, first_seq, rows = job.args
        if first_seq is None:
            return  # an empty durable append: the commit's sync is all it asks
        (last,) = db.execute("SELECT coalesce(max(seq), 0) FROM records WHERE session_id = ?", (session_id,)).fetchone()
        if first_seq != last + 1:
            job.error = gap_error(session_id, last, first_seq)
            return
        db.executemany("INSERT INTO records (session_id, seq, version, ts, kind, data) VALUES (?,?,?,?,?,?)", rows)

    def _load(self, db: sqlite3.Connection, session_id: str) -> list[Record]:
        records: list[Record] = []
        location = f"{self.path} (table records, session {session_id!r})"
        rows = db.execute(
            "SELECT seq, version, ts, kind, data FROM records WHERE session_id = ? ORDER BY seq", (session_id,)
        ).fetchall()  # all at once: a statement left open mid-way would hold a lock
        for seq, version, ts, kind, data in rows:
            try:
                decoded = json.loads(data)
            except (TypeError, ValueError) as exc:
                raise CorruptRecord(location, seq, f"data is not JSON ({exc})") from None
            raw = {"v": version, "sid": session_id, "seq": seq, "ts": ts, "kind": kind, "data": decoded}
            record = Record.from_dict(raw, location=location, line=seq)
            check_loaded(session_id, record, len(records) + 1, location, seq)
            records.append(record)
        return records


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _JobFailed(Exception):
    """One job's statement failed for a reason of its own (not the transaction's)."""

    def __init__(self, job: Job, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.job = job
        self.cause = cause


# Errors that belong to one statement's values, not to the database: SQLite refused a
# value (too big, a constraint) or Python could not bind it. Anything else (SQLITE_FULL,
# SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_NOTADB, SQLITE_READONLY, ...) fails the transaction.
_JOB_SPECIFIC_CODES: Final = frozenset({"SQLITE_TOOBIG", "SQLITE_CONSTRAINT", "SQLITE_MISMATCH", "SQLITE_RANGE"})


def _job_specific(exc: BaseException) -> bool:
    if isinstance(exc, (ValueError, OverflowError, sqlite3.InterfaceError, sqlite3.ProgrammingError)):
        return True
    name = getattr(exc, "sqlite_errorname", None) or ""
    return any(name == code or name.startswith(f"{code}_") for code in _JOB_SPECIFIC_CODES)


def _describe(exc: BaseException) -> str:
    """``exc`` with SQLite's error code when it has one: "database or disk is full (SQLITE_FULL)"."""
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


def _store_error(path: Path, exc: BaseException, doing: str, job: Job | None = None) -> StoreError:
    """The `StoreError` for a failed read or write of ``path``, with ``exc`` as its cause."""
    if job is not None and job.op == "append":
        session_id, first_seq, rows = job.args
        error = StoreError(
            f"{path}: {doing} {session_id!r}#{first_seq}..{first_seq + len(rows) - 1} failed: {_describe(exc)}"
        )
    else:
        error = StoreError(f"{path}: {doing} failed: {_describe(exc)}")
    error.__cause__ = exc
    return error


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables, or bring an older layout up to `SCHEMA_VERSION`."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return  # nothing to write: a store opens, and reads, on a full or read-only disk too
    db.execute("BEGIN IMMEDIATE")
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {version}; this release of sessions reads up to {SCHEMA_VERSION}"
            )
        if version == 0:
            for statement in _SCHEMA_V1.split(";"):  # not executescript, which would COMMIT first
                if statement.strip():
                    db.execute(statement)
        while 0 < version < SCHEMA_VERSION:
            MIGRATIONS[version](db)
            version += 1
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class SqliteStore:
    """A `Store` keeping every session's log in one SQLite database (the durable default).

    It uses the standard library's ``sqlite3`` in WAL mode with ``synchronous=FULL``.
    One writer thread owns the only connection and takes every append waiting for it
    as one transaction: *group commit*. Many sessions' turns are made durable by one
    commit and one fsync, and each durable append returns only after the commit that
    holds it. Appends without ``durable`` are committed at once without waiting for the
    disk (they survive the process dying, not the machine) and become durable with the
    next durable commit. No two connections of the store contend, so hundreds of
    concurrent sessions never see "database is locked".

    Records are rows of ``records(session_id, seq, version, ts, kind, data)``, with the
    record format's ``version`` in each row and the table layout's version in
    ``PRAGMA user_version``, so a later release can migrate the file in place.

    The store may be created anywhere (outside ``trio.run``, in a child spec), shared
    by many sessions and their restarts, and closed with `aclose`, after which it can
    be used again.

    Example::

        store = sessions.SqliteStore("agents.db")
        children = [SessionServer.child_spec(name="a", provider=p, store=store)]
        ...
        await store.aclose()
    """

    # An append that writes anything is never cancelled: its wait for the writer is
    # shielded, so a turn task needs no shield of its own around it (sessions._turn).
    _append_never_cancelled = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        given: object = path  # typed callers cannot get this wrong; the check is for the rest
        if not isinstance(given, str | os.PathLike) or isinstance(os.fspath(given), bytes):
            raise InvalidOption("path", path, "expected a file path (a str or os.PathLike)")
        self.path = Path(path)
        if str(self.path) == ":memory:":
            raise InvalidOption("path", path, "an in-memory SQLite database is not durable; use InMemoryStore")
        self._worker = BatchWorker(f"sessions-sqlite:{self.path}", lambda: _SqliteHandler(self.path))

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    async def append(self, session_id: str, records: Sequence[Record], *, durable: bool = False) -> None:
        """Insert ``records`` after the session's last; with ``durable`` wait for the fsync.

        Once handed to the writer, the append is waited for even if the caller is
        cancelled, so the caller never goes on not knowing whether it happened.

        Raises:
            UnstorableRecord: a record is not JSON, or holds a lone surrogate (not UTF-8).
            StoreError: the records do not follow the log (a gap, a repeat, another
                session's record), or the database cannot be written (naming the file
                and SQLite's error, such as ``SQLITE_FULL``).

        Example::

            await store.append("s1", [sessions.Record("s1", 1, "session_started")], durable=True)
        """
        _check_id(session_id)
        check_records(session_id, records)
        if not records and not durable:
            await trio.lowlevel.checkpoint()
            return
        # Encoded and checked here, before the batch: a record SQLite could not take
        # fails this append alone, never the commit it would have shared.
        rows: list[tuple[Any, ...]] = []
        for r in records:
            if not r.kind.isascii():
                utf8(session_id, r.seq, r.kind, r.kind, "kind")
            rows.append((session_id, r.seq, r.version, r.ts, r.kind, json_text(session_id, r.seq, r.data)))
        first = records[0].seq if records else None
        await self._worker.submit(Job("append", (session_id, first, rows), durable=durable), shield=True)

    async def load(self, session_id: str) -> list[Record]:
        """The session's records in ``seq`` order; ``[]`` for an unknown session.

        Raises:
            CorruptRecord: a row cannot be read (``line`` is its ``seq``).

        Example::

            records = await store.load("s1")
        """
        _check_id(session_id)
        result: list[Record] = await self._worker.submit(Job("load", (session_id,)))
        return result

    async def list_sessions(self) -> list[str]:
        """The sessions with at least one record, sorted.

        Example::

            assert "s1" in await store.list_sessions()
        """
        result: list[str] = await self._worker.submit(Job("list", ()))
        return result

    async def delete(self, session_id: str) -> None:
        """Delete the session's records (no error if there are none).

        Example::

            await store.delete("s1")
        """
        _check_id(session_id)
        await self._worker.submit(Job("delete", (session_id,)), shield=True)

    async def claim(self, session_id: str, *, wait: float = CLAIM_WAIT) -> SessionClaim:
        """Become the one writer of ``session_id`` in this database (see `Store.claim`).

        The claim is an exclusive ``flock`` on a lock file of the session in
        ``<path>-claims/`` (removed at release), so a second store object or another OS
        process on the same database is refused too; the kernel drops the lock if the
        process dies, so a crash never leaves a session claimed.

        Raises:
            SessionInUse: another writer still holds it after ``wait`` seconds.

        Example::

            async def init(self):
                self.claim = await store.claim("s1")   # released when this process exits
        """
        _check_id(session_id)
        digest = hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:40]
        lock_path = Path(f"{self.path}{CLAIMS_SUFFIX}") / f"{digest}.lock"
        return await FILE_CLAIMS.claim_file(lock_path, session_id, str(self.path), wait)

    async def aclose(self) -> None:
        """Commit, checkpoint the WAL into the database, close the connection and end
        the writer thread; the store stays usable.

        Example::

            await store.aclose()
        """
        await self._worker.aclose()


def _check_id(session_id: object) -> None:
    if not isinstance(session_id, str) or not session_id:
        raise InvalidOption("session_id", session_id, "must be a non-empty string")
    if not session_id.isascii():
        try:
            session_id.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidOption("session_id", session_id, "must be valid Unicode (no lone surrogates)") from None
