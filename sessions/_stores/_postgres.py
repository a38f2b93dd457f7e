"""PostgresStore: every session's log in PostgreSQL, with group commit, leases and fencing.

Why psycopg's synchronous API on a writer thread, and not its async API: measured
(bench/postgres_driver.py, psycopg 3.3.9 on libpq 18, PostgreSQL 15 on 127.0.0.1, the
project's shared 2-core machine at load average 8.5 to 9.5, 2026-12-08, medians of 3
interleaved rounds):

- ``psycopg.AsyncConnection`` cannot run under trio at all: its waits go through
  asyncio's loop (``psycopg.waiting`` calls ``asyncio.get_running_loop()``), and under
  ``trio.run`` connecting fails with ``RuntimeError: no running event loop``. Using it
  would mean an asyncio loop beside trio (trio-asyncio, or a loop on a thread: a thread
  hop again) or driving psycopg's private generators by hand.
- One read at a time, the thread hop costs little next to the round trip:
  ``PostgresStore.load`` of a two-record log from a trio task took 959 us (rounds 494 to
  1,475) against 591 us for the same SELECT on an ``AsyncConnection`` under plain asyncio.
- What a session store needs is durable turns under concurrency, and there the one
  writer thread wins by batching: 100 sessions appending two records per turn made
  2,465 durable turns/s through PostgresStore (one connection, every waiting append in
  one transaction and one commit) against 685 turns/s for the async API used the usual
  way (an ``AsyncConnection`` per session, one commit per turn) under asyncio: 3.6x.

So: one writer thread owns one connection (`BatchWorker`, shared with SqliteStore), and
a second thread of the store renews the node row on its own connection (`_pg_node`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

import attrs
import trio

import otpy

from .._errors import CorruptRecord, InvalidOption, LeaseLost, SessionInUse, StoreError
from ._base import Record
from ._claims import CLAIM_WAIT, ClaimTable, SessionClaim
from ._common import check_loaded, check_records, gap_error, json_text, utf8
from ._pg_node import CONNECT_TIMEOUT, Heartbeat, Node
from ._writer import BatchWorker, Handler, Job

if TYPE_CHECKING:
    import psycopg

_log = otpy.get_logger("sessions.stores")

SCHEMA_VERSION: Final = 1
"""The table layout this release writes, kept in the ``meta`` table."""

DEFAULT_DSN: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
"""The DSN used when neither ``dsn`` nor ``OTPY_POSTGRES_DSN`` is given."""

_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_FIRST_POLL: Final = 0.01
_LAST_POLL: Final = 0.25


@attrs.frozen
class NodeInfo:
    """A node of a cluster, as its row in the ``nodes`` table says.

    ``state`` is ``"up"``, ``"leaving"`` or ``"down"``; a node is live while it is up
    and ``expires_at`` (the database's clock) has not passed.

    Example::

        me = await store.node_info()
        print(me.node_id, me.address, me.expires_at)
    """

    node_id: str
    cluster: str
    address: str | None
    started_at: datetime.datetime
    expires_at: datetime.datetime
    state: str = "up"


@attrs.frozen
class Lease:
    """Who owns a session: its row in the ``leases`` table.

    ``node_id`` None means released (passivated or handed over); ``epoch`` grows by one
    with every claim; ``active`` says the session should be kept running by the cluster;
    ``holder_live`` whether ``node_id`` names a live node now.

    Example::

        lease = await store.lease("s1")
        if lease is not None and not lease.holder_live:
            claim = await store.claim("s1")   # takes it over, with epoch lease.epoch + 1
    """

    session_id: str
    node_id: str | None
    epoch: int
    active: bool
    holder_live: bool


_TABLES: Final = """
CREATE TABLE IF NOT EXISTS {s}.records (
    session_id text NOT NULL,
    seq        bigint NOT NULL,
    v          integer NOT NULL,
    ts         double precision NOT NULL,
    kind       text NOT NULL,
    data       text NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE IF NOT EXISTS {s}.nodes (
    node_id      text PRIMARY KEY,
    cluster      text NOT NULL,
    address      text,
    incarnation  text NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    state        text NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.leases (
    session_id text PRIMARY KEY,
    node_id    text,
    epoch      bigint NOT NULL,
    active     boolean NOT NULL,
    updated_at timestamptz NOT NULL
);
-- the orphan scan reads active leases only, oldest first: a cluster with most of its
-- sessions passivated (active = false) keeps them out of every scan
CREATE INDEX IF NOT EXISTS leases_active ON {s}.leases (updated_at, session_id) WHERE active;
CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO {s}.meta (key, value) VALUES ('schema_version', '1') ON CONFLICT DO NOTHING
"""

# The live-node condition, the database's clock: the one definition every query uses.
_LIVE: Final = "n.state = 'up' AND n.expires_at > now()"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _store_error(where: str, doing: str, exc: BaseException) -> StoreError:
    error = StoreError(f"{where}: {doing} failed: {_one_line(exc)}")
    error.__cause__ = exc
    return error


class _BulkFailed(Exception):
    """The batch's one INSERT failed: do the batch again statement by statement."""


class _JobFailed(Exception):
    """One job's statement failed for a reason of its own (not the transaction's)."""

    def __init__(self, job: Job, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.job = job
        self.cause = cause


class _PgHandler(Handler):
    """Runs on the writer thread: owns the store's writing connection and its heartbeat."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.node = store._node
        self.s = f'"{store.schema}"'
        self.conn: psycopg.Connection[Any] | None = None
        self.heartbeat: Heartbeat | None = None

    # --- connections ---------------------------------------------------------------------

    def connect(self, role: str = "writer") -> psycopg.Connection[Any]:
        """A connection named ``otpy-sessions:<role>:<node_id>`` (``pg_stat_activity``).

        The writer's sessions end on the server when they sit in an open transaction for
        a lease (a paused node cannot keep the lease rows it locked for longer than its
        lease lasts anyway); the heartbeat's statements give up after a third of one. Over
        TCP, a connection whose packets go nowhere (a partition that drops them, rather than
        refusing) fails within about a lease (``tcp_user_timeout`` and keepalives), so a
        node cut off that way can still end its threads and close.
        """
        import psycopg

        ttl_ms = max(1, int(self.node.lease_ttl * 1000))
        if role == "writer":
            options = f"-c idle_in_transaction_session_timeout={ttl_ms}"
        else:
            options = f"-c statement_timeout={max(1, ttl_ms // 3)}"
        return psycopg.connect(
            self.store._dsn,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=f"otpy-sessions:{role}:{self.node.node_id}"[:63],
            options=options,
            keepalives=1,
            keepalives_idle=max(1, round(self.node.lease_ttl)),
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=max(1000, ttl_ms),
        )

    def open(self) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(
                f"PostgresStore needs psycopg 3: pip install 'otpy-sessions[postgres]' ({_one_line(exc)})"
            ) from exc
        where = self.store._where
        try:
            conn = self.connect()
        except psycopg.Error as exc:
            raise _store_error(where, "connecting", exc) from exc
        fenced = self.node.check() is not None
        try:
            self._migrate(conn)
            sent_at = time.monotonic()
            conn.execute(
                f"INSERT INTO {self.s}.nodes AS n (node_id, cluster, address, incarnation, started_at,"
                " heartbeat_at, expires_at, state)"
                " VALUES (%s, %s, %s, %s, now(), now(), now() + make_interval(secs => %s), %s)"
                " ON CONFLICT (node_id) DO UPDATE SET cluster = EXCLUDED.cluster, address = EXCLUDED.address,"
                " incarnation = EXCLUDED.incarnation, started_at = now(), heartbeat_at = now(),"
                " expires_at = EXCLUDED.expires_at, state = EXCLUDED.state",
                (
                    self.node.node_id,
                    self.node.cluster,
                    self.node.address,
                    self.node.new_incarnation(),
                    self.node.lease_ttl,
                    "down" if fenced else "up",  # a fenced node reads and closes, never counts as live again
                ),
            )
        except psycopg.Error as exc:
            conn.close()
            raise _store_error(where, "opening", exc) from exc
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        if fenced:
            return
        self.node.renewed(sent_at)
        _log.info(
            "postgres_node_up",
            node_id=self.node.node_id,
            cluster=self.node.cluster,
            address=self.node.address,
            lease_ttl=self.node.lease_ttl,
        )
        self.heartbeat = Heartbeat(self.node, lambda: self.connect("heartbeat"), f"{self.s}.nodes")
        self.heartbeat.start()

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Create the tables unless they are there at the current version."""
        import psycopg

        try:  # the usual case, one statement and no transaction: the tables are there
            row = conn.execute(f"SELECT value FROM {self.s}.meta WHERE key = 'schema_version'").fetchone()
        except psycopg.errors.UndefinedTable:
            row = None
        if row is not None and int(row[0]) == SCHEMA_VERSION:
            return
        with conn.transaction():
            # Creating the tables is a transaction of about ten statements: a process slow
            # between two of them (a loaded machine) must not have it ended by the writer's
            # idle-in-transaction limit of one lease. It holds no lease row, only the lock
            # that makes two stores creating one schema at once take turns.
            limit = max(10_000, int(self.node.lease_ttl * 1000))
            conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {limit}")
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"otpy_sessions:{self.store.schema}",))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.s}")
            for statement in _TABLES.format(s=self.s).split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute(f"SELECT value FROM {self.s}.meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.store._where} has schema version {version};"
                    f" this release of sessions reads up to {SCHEMA_VERSION}"
                )

    def close(self) -> None:
        heartbeat, self.heartbeat = self.heartbeat, None
        if heartbeat is not None:
            heartbeat.stop()
        self.node.stopped()
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            # A fenced node's row is not live already (expired, taken over, or about to
            # expire while the database is out of reach): no statement that could hang.
            if not conn.closed and self.node.check() is None:
                conn.execute(
                    f"UPDATE {self.s}.nodes SET state = 'down', expires_at = now()"
                    " WHERE node_id = %s AND incarnation = %s",
                    (self.node.node_id, self.node.incarnation),
                )
                _log.info("postgres_node_down", node_id=self.node.node_id, cluster=self.node.cluster)
        except Exception as exc:  # noqa: BLE001 (the row expires by itself)
            _log.warning("postgres_node_down_failed", node_id=self.node.node_id, error=_one_line(exc))
        finally:
            conn.close()

    def _conn(self) -> psycopg.Connection[Any]:
        """The connection, made again if the last one broke."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            self.conn = self.connect()
        return self.conn

    # --- batches -------------------------------------------------------------------------

    def process(self, jobs: Sequence[Job]) -> None:
        import psycopg

        pending: list[Job] = []
        for job in jobs:
            if job.op in ("append", "delete"):
                pending.append(job)
                continue
            self._commit(pending)
            pending = []
            try:
                job.result = self._read_or_lease(job)
            except psycopg.Error as exc:
                job.error = _store_error(self.store._where, job.op, exc)
            except StoreError as exc:
                job.error = exc
            job.settled = True
        self._commit(pending)

    def _read_or_lease(self, job: Job) -> Any:
        conn = self._conn()
        s, me = self.s, self.node.node_id
        if job.op == "load":
            return self._load(conn, job.args[0])
        if job.op == "list":
            return [row[0] for row in conn.execute(f"SELECT DISTINCT session_id FROM {s}.records ORDER BY 1")]
        if job.op == "claim":
            return self._claim(conn, job.args[0])
        if job.op == "release":
            session_id, epoch, active, done = job.args
            try:
                if active is None:
                    conn.execute(
                        f"UPDATE {s}.leases SET node_id = NULL, updated_at = now()"
                        " WHERE session_id = %s AND node_id = %s AND epoch = %s",
                        (session_id, me, epoch),
                    )
                else:
                    conn.execute(
                        f"UPDATE {s}.leases SET node_id = NULL, active = %s, updated_at = now()"
                        " WHERE session_id = %s AND node_id = %s AND epoch = %s",
                        (active, session_id, me, epoch),
                    )
            finally:
                done.set()
            return None
        if job.op == "set_active":
            session_id, active = job.args
            row = conn.execute(
                f"UPDATE {s}.leases SET active = %s, updated_at = now() WHERE session_id = %s AND node_id = %s"
                " RETURNING session_id",
                (active, session_id, me),
            ).fetchone()
            return row is not None
        if job.op == "release_all":
            (active,) = job.args
            rows = conn.execute(
                f"UPDATE {s}.leases SET node_id = NULL, active = coalesce(%s, active), updated_at = now()"
                " WHERE node_id = %s RETURNING session_id",
                (active, me),
            ).fetchall()
            return [row[0] for row in rows]
        if job.op == "release_stale":
            (kept,) = job.args
            rows = conn.execute(
                f"UPDATE {s}.leases SET node_id = NULL, updated_at = now()"
                " WHERE node_id = %s AND NOT (session_id = ANY(%s)) RETURNING session_id",
                (me, kept),
            ).fetchall()
            return sorted(row[0] for row in rows)
        if job.op == "node_info":
            row = conn.execute(
                f"SELECT node_id, cluster, address, started_at, expires_at, state FROM {s}.nodes WHERE node_id = %s",
                (me,),
            ).fetchone()
            if row is None:
                raise StoreError(f"{self.store._where}: the row of node {me!r} is gone")
            return NodeInfo(*row)
        if job.op == "live_nodes":
            rows = conn.execute(
                f"SELECT node_id, cluster, address, started_at, expires_at, state FROM {s}.nodes n"
                f" WHERE cluster = %s AND {_LIVE} ORDER BY node_id",
                (self.node.cluster,),
            ).fetchall()
            return [NodeInfo(*row) for row in rows]
        if job.op == "lease":
            row = conn.execute(
                f"SELECT l.session_id, l.node_id, l.epoch, l.active, n.node_id IS NOT NULL FROM {s}.leases l"
                f" LEFT JOIN {s}.nodes n ON n.node_id = l.node_id AND {_LIVE} WHERE l.session_id = %s",
                (job.args[0],),
            ).fetchone()
            return None if row is None else Lease(*row)
        if job.op == "orphans":
            (limit,) = job.args
            rows = conn.execute(
                f"SELECT l.session_id, l.node_id, l.epoch, l.active, false FROM {s}.leases l"
                f" WHERE l.active AND (l.node_id IS NULL OR NOT EXISTS"
                f" (SELECT 1 FROM {s}.nodes n WHERE n.node_id = l.node_id AND {_LIVE}))"
                " ORDER BY l.updated_at, l.session_id LIMIT %s",
                (limit,),
            ).fetchall()
            return [Lease(*row) for row in rows]
        if job.op == "set_address":
            (address,) = job.args
            conn.execute(
                f"UPDATE {s}.nodes SET address = %s WHERE node_id = %s AND incarnation = %s",
                (address, me, self.node.incarnation),
            )
            return None
        if job.op == "leave":
            conn.execute(
                f"UPDATE {s}.nodes SET state = 'leaving' WHERE node_id = %s AND incarnation = %s AND state = 'up'",
                (me, self.node.incarnation),
            )
            _log.info("postgres_node_leaving", node_id=me, cluster=self.node.cluster)
            return None
        raise AssertionError(f"unknown job {job.op!r}")

    def _claim(self, conn: psycopg.Connection[Any], session_id: str) -> tuple[int | None, str | None]:
        """Take the lease: ``(epoch, None)``, or ``(None, holder)`` when a live node holds it.

        One statement: the row is locked by the upsert, and its condition is evaluated
        again on the newest version of the row, so of two concurrent claimers exactly
        one gets a row back.
        """
        s, me = self.s, self.node.node_id
        row = conn.execute(
            f"INSERT INTO {s}.leases AS l (session_id, node_id, epoch, active, updated_at)"
            " VALUES (%(sid)s, %(me)s, 1, true, now())"
            " ON CONFLICT (session_id) DO UPDATE SET node_id = %(me)s, epoch = l.epoch + 1, active = true,"
            " updated_at = now()"
            " WHERE l.node_id IS NULL OR l.node_id = %(me)s"
            f" OR NOT EXISTS (SELECT 1 FROM {s}.nodes n WHERE n.node_id = l.node_id AND {_LIVE})"
            " RETURNING epoch",
            {"sid": session_id, "me": me},
        ).fetchone()
        if row is not None:
            return int(row[0]), None
        held = conn.execute(
            f"SELECT l.node_id, l.epoch, n.address FROM {s}.leases l LEFT JOIN {s}.nodes n"
            " ON n.node_id = l.node_id WHERE l.session_id = %s",
            (session_id,),
        ).fetchone()
        if held is None:
            return None, "a node that just released it"
        node_id, epoch, address = held
        at = f" at {address}" if address else ""
        return None, f"node {node_id!r}{at} (epoch {epoch})"

    def _commit(self, jobs: list[Job]) -> None:
        """Write ``jobs`` in one transaction (one commit), each job with its own outcome.

        A failure that belongs to one job (a row PostgreSQL refuses, a seq taken by a
        concurrent writer) fails that job alone and the rest are written in a new
        transaction; a failure of the transaction (the connection lost) fails every job
        of it. A job refused for its lease (`LeaseLost`) writes nothing, and the others
        commit.
        """
        import psycopg

        if not jobs:
            return
        durable = any(job.durable for job in jobs)
        remaining = jobs
        # Several appends and no delete: a few statements for the whole batch. Otherwise,
        # or when the batch's INSERT fails, statement by statement, to find the culprit.
        bulk = len(jobs) > 1 and all(job.op == "append" for job in jobs)
        while remaining:
            for job in remaining:
                job.error = None
            try:
                if bulk:
                    self._bulk_transaction(remaining, durable)
                else:
                    self._transaction(remaining, durable)
                break
            except _BulkFailed:
                bulk = False
            except _JobFailed as failed:
                failed.job.error = self._job_error(failed.job, failed.cause)
                failed.job.settled = True
                remaining = [job for job in remaining if job is not failed.job]
            except psycopg.Error as exc:
                error = _store_error(self.store._where, "writing", exc)
                for job in remaining:
                    job.error = error
                break
        for job in jobs:
            job.settled = True

    def _job_error(self, job: Job, exc: BaseException) -> StoreError:
        session_id, first_seq, rows, _epoch = job.args
        error = StoreError(
            f"{self.store._where}: writing {session_id!r}#{first_seq}..{first_seq + len(rows) - 1}"
            f" failed: {_one_line(exc)}"
        )
        error.__cause__ = exc
        return error

    def _flush_promise(self, conn: psycopg.Connection[Any]) -> None:
        """Make this durable transaction's COMMIT wait for the WAL flush even if it writes
        nothing: a transaction without a transaction id commits without a commit record,
        so without a flush, and an empty durable append must still make the appends
        before it durable."""
        conn.execute("SELECT pg_current_xact_id()")

    def _bulk_transaction(self, jobs: list[Job], durable: bool) -> None:
        """The batch's appends in one transaction of five statements, however many there are:
        lock and read the lease rows, read each session's last seq, insert every accepted row.

        Raises:
            _BulkFailed: the INSERT failed (a row PostgreSQL refuses, a seq taken by a
                concurrent writer): the batch is done again statement by statement.
        """
        import psycopg

        conn = self._conn()
        fenced = self.node.check()
        sids = sorted({job.args[0] for job in jobs})
        with conn.transaction():
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            leases: dict[str, tuple[str | None, int]] = {
                sid: (node_id, int(epoch))
                for sid, node_id, epoch in conn.execute(
                    f"SELECT session_id, node_id, epoch FROM {self.s}.leases WHERE session_id = ANY(%s)"
                    " ORDER BY session_id FOR SHARE",
                    (sids,),
                )
            }
            lasts: dict[str, int] = {
                sid: int(last)
                for sid, last in conn.execute(
                    f"SELECT s.sid, (SELECT coalesce(max(seq), 0) FROM {self.s}.records r WHERE r.session_id = s.sid)"
                    " FROM unnest(%s::text[]) AS s(sid)",
                    (sids,),
                )
            }
            accepted: list[tuple[Any, ...]] = []
            for job in jobs:
                session_id, first_seq, rows, epoch = job.args
                if fenced is not None:
                    job.error = LeaseLost(
                        session_id, epoch, None, None, f"node {self.node.node_id!r} is fenced: {fenced}"
                    )
                    continue
                job.error = self._lease_error(session_id, epoch, leases.get(session_id))
                if job.error is not None or first_seq is None:
                    continue
                last = lasts.get(session_id, 0)
                if first_seq != last + 1:
                    job.error = gap_error(session_id, last, first_seq)
                    continue
                accepted.extend(rows)
                lasts[session_id] = rows[-1][1]
            if not accepted:
                if durable:
                    self._flush_promise(conn)
                return
            try:  # on failure the transaction rolls back, and the batch is done again
                conn.execute(
                    f"INSERT INTO {self.s}.records (session_id, seq, v, ts, kind, data)"
                    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::integer[], %s::double precision[],"
                    " %s::text[], %s::text[])",
                    tuple(list(column) for column in zip(*accepted, strict=True)),
                )
            except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
                raise _BulkFailed from exc

    def _transaction(self, jobs: list[Job], durable: bool) -> None:
        import psycopg

        conn = self._conn()
        fenced = self.node.check()
        with conn.transaction():
            if not durable:
                # Committed (visible, surviving this process) without waiting for the WAL
                # flush; the next durable commit's flush covers it.
                conn.execute("SET LOCAL synchronous_commit = off")
            wrote = False
            for job in jobs:
                if job.op == "delete":
                    deleted = conn.execute(f"DELETE FROM {self.s}.records WHERE session_id = %s", (job.args[0],))
                    wrote = wrote or deleted.rowcount > 0
                    continue
                session_id, first_seq, rows, epoch = job.args
                if fenced is not None:
                    job.error = LeaseLost(
                        session_id, epoch, None, None, f"node {self.node.node_id!r} is fenced: {fenced}"
                    )
                    continue
                if not self._lease_ok(conn, job):
                    continue
                if first_seq is None:
                    continue
                try:
                    row = conn.execute(
                        f"SELECT coalesce(max(seq), 0) FROM {self.s}.records WHERE session_id = %s", (session_id,)
                    ).fetchone()
                    last = int(row[0]) if row else 0
                    if first_seq != last + 1:
                        job.error = gap_error(session_id, last, first_seq)
                        continue
                    # One statement for the append's rows. Not executemany: psycopg runs it in
                    # pipeline mode, after which the server does not arm the idle-in-transaction
                    # timeout (measured on PostgreSQL 15), and a writer paused there would keep
                    # the lease row locked for good.
                    conn.execute(
                        f"INSERT INTO {self.s}.records (session_id, seq, v, ts, kind, data)"
                        " SELECT %s, * FROM unnest(%s::bigint[], %s::integer[], %s::double precision[],"
                        " %s::text[], %s::text[])",
                        (session_id, *(list(column) for column in list(zip(*rows, strict=True))[1:])),
                    )
                    wrote = True
                except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
                    raise _JobFailed(job, exc) from exc
            if durable and not wrote:
                self._flush_promise(conn)

    def _lease_ok(self, conn: psycopg.Connection[Any], job: Job) -> bool:
        """Check the append's epoch under a share lock of the session's lease row (held to
        the commit, so no claim can take the session over between this check and the
        commit). Sets the job's `LeaseLost` and returns False when it is stale."""
        session_id, _first, _rows, epoch = job.args
        row = conn.execute(
            f"SELECT node_id, epoch FROM {self.s}.leases WHERE session_id = %s FOR SHARE", (session_id,)
        ).fetchone()
        job.error = self._lease_error(session_id, epoch, None if row is None else (row[0], int(row[1])))
        return job.error is None

    def _lease_error(
        self, session_id: str, epoch: int | None, lease: tuple[str | None, int] | None
    ) -> LeaseLost | None:
        """Why an append carrying ``epoch`` may not write under ``lease`` (its row's
        ``(node_id, epoch)``, None if there is none), or None when it may."""
        if lease is None:
            if epoch is None:
                return None  # plain use: a session nobody ever claimed
            return LeaseLost(session_id, epoch, None, None, "the lease row is gone")
        holder, current = lease
        if epoch is not None and current == epoch and holder == self.node.node_id:
            return None
        detail = "the session was claimed, append through a claim" if epoch is None else ""
        return LeaseLost(session_id, epoch, current, holder, detail)

    def _load(self, conn: psycopg.Connection[Any], session_id: str) -> list[Record]:
        location = f"{self.store._where} (table records, session {session_id!r})"
        rows = conn.execute(
            f"SELECT seq, v, ts, kind, data FROM {self.s}.records WHERE session_id = %s ORDER BY seq", (session_id,)
        ).fetchall()
        records: list[Record] = []
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


class _LeaseLock:
    """The claim table's hook: releasing a claim releases its lease in the database."""

    def __init__(self, store: PostgresStore, key: tuple[str, str, str, str], session_id: str) -> None:
        self.store = store
        self.key = key
        self.session_id = session_id
        self.epoch: int | None = None  # set once the lease is taken

    def try_acquire(self) -> str | None:
        return None  # the lease is taken after the table's claim, by PostgresStore.claim

    def release(self) -> None:
        epoch, self.epoch = self.epoch, None
        if epoch is None:
            return
        self.store._forget(self.session_id, epoch)
        done = threading.Event()
        with _PENDING_LOCK:
            _PENDING[self.key] = done
        if not self.store._worker.post(Job("release", (self.session_id, epoch, None, done))):
            done.set()  # the store is closed: its node is down, and its leases are free anyway


_CLAIMS: Final = ClaimTable()
"""The PostgresStore claims of this process, keyed by (store object, session)."""

_PENDING_LOCK: Final = threading.Lock()
_PENDING: dict[tuple[str, str, str, str], threading.Event] = {}
"""Lease releases handed to a writer thread and not yet done, by claim key: a claimer in
this process waits for them, so a session released here can be claimed at once."""


async def _await_release(key: tuple[str, str, str, str]) -> None:
    with _PENDING_LOCK:
        done = _PENDING.get(key)
    poll = 0.001
    with trio.move_on_after(CLAIM_WAIT):
        while done is not None and not done.is_set():
            await trio.sleep(poll)
            poll = min(2 * poll, 0.02)
    with _PENDING_LOCK:
        if done is not None and _PENDING.get(key) is done and done.is_set():
            del _PENDING[key]


class PostgresStore:
    """A `Store` keeping every session's log in PostgreSQL, with leases for a cluster.

    Write-up in docs/stores.md ("PostgresStore"). Records are rows of
    ``records(session_id, seq, v, ts, kind, data)`` in the store's ``schema``; one writer
    thread owns one connection and takes every append waiting for it as one transaction
    (group commit), and a durable append returns once that transaction is committed
    (``synchronous_commit`` on). Appends without ``durable`` commit with
    ``synchronous_commit = off``: visible at once, made durable by the next durable commit.

    Each store object is a node (a row in ``nodes``, renewed every ``lease_ttl / 3``
    seconds by a heartbeat thread of its own), and `claim` takes a *lease* on the
    session (a row in ``leases``) with an epoch that grows with every claim. Every
    append carries the epoch of the store's claim, and is refused with `LeaseLost` once
    another node has taken the session over: the check runs under a lock of the lease
    row inside the commit's transaction, so no takeover can slip between check and
    commit. A node that cannot renew its row in time, or finds it expired, fences
    itself (`fenced`): it refuses every append and claim.

    An append with no claim held is allowed only for a session that was never claimed
    (no lease row): plain single-process use. Anything else is refused with `LeaseLost`.

    Args:
        dsn: a libpq connection string; default ``OTPY_POSTGRES_DSN`` from the environment,
            else ``postgresql://postgres@127.0.0.1:5432/postgres``.
        schema: the schema that holds the tables (created on first use).
        node_id: this node's id (default: a fresh random one). A node that restarts with
            the same id takes its old leases back at once, without waiting for them to expire.
        cluster: the cluster's name (`live_nodes` lists this cluster's nodes).
        address: where other nodes reach this one (the cluster layer's business).
        lease_ttl: seconds a node's row lives without a renewal.

    Example::

        store = sessions.PostgresStore("postgresql://postgres@127.0.0.1/app", schema="agents")
        with await store.claim("s1"):
            await store.append("s1", [sessions.Record("s1", 1, "session_started")], durable=True)
        await store.aclose()
    """

    # Once handed to the writer an append is waited for, even if its caller is cancelled:
    # the SessionServer need not wrap each append in a shielded scope of its own.
    _append_never_cancelled = True

    DEFAULT_DSN: ClassVar[str] = DEFAULT_DSN
    """The DSN used when neither ``dsn`` nor ``OTPY_POSTGRES_DSN`` is given."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str = "otpy_sessions",
        node_id: str | None = None,
        cluster: str = "default",
        address: str | None = None,
        lease_ttl: float = 3.0,
    ) -> None:
        if dsn is None:
            dsn = os.environ.get("OTPY_POSTGRES_DSN") or DEFAULT_DSN
        given: tuple[object, object, object] = (dsn, schema, node_id)  # the checks are for untyped callers
        if not isinstance(given[0], str):
            raise InvalidOption("dsn", dsn, "expected a libpq connection string")
        if not isinstance(given[1], str) or not _SCHEMA_NAME.fullmatch(schema):
            raise InvalidOption("schema", schema, "expected a lower-case SQL identifier ([a-z_][a-z0-9_]*, <= 63)")
        if given[2] is not None and (not isinstance(given[2], str) or not node_id):
            raise InvalidOption("node_id", node_id, "expected a non-empty string")
        checked: object = lease_ttl
        if isinstance(checked, bool) or not isinstance(checked, (int, float)) or not math.isfinite(lease_ttl):
            raise InvalidOption("lease_ttl", lease_ttl, "expected a finite number of seconds > 0")
        if lease_ttl <= 0:
            raise InvalidOption("lease_ttl", lease_ttl, "expected a finite number of seconds > 0")
        self._dsn = dsn
        self.schema = schema
        self.node_id: str = node_id or f"node-{uuid.uuid4().hex[:12]}"
        self._node = Node(self.node_id, cluster, address, float(lease_ttl))
        self._where = f"PostgreSQL schema {schema!r}"
        self._key = uuid.uuid4().hex  # this object's claims in the process's claim table
        self._epochs: dict[str, int] = {}  # the epoch of this store's claim of each session
        self._epochs_lock = threading.Lock()
        self._worker = BatchWorker(f"sessions-pg:{self.node_id}", lambda: _PgHandler(self), idle_seconds=math.inf)

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r}, node_id={self.node_id!r})"

    @property
    def fenced(self) -> bool:
        """Whether this node has fenced itself (it refuses every append and claim, for good).

        Example::

            if store.fenced:
                await stop_every_session()   # another node owns them now
        """
        return self._node.check() is not None

    @property
    def cluster(self) -> str:
        """The cluster this node belongs to.

        Example::

            assert store.cluster == "default"
        """
        return self._node.cluster

    @property
    def lease_ttl(self) -> float:
        """Seconds a node's row (and so its leases) lives without a renewal.

        Example::

            await trio.sleep(store.lease_ttl)
        """
        return self._node.lease_ttl

    def _check_fence(self, session_id: str) -> None:
        reason = self._node.check()
        if reason is not None:
            with self._epochs_lock:
                epoch = self._epochs.get(session_id)
            raise LeaseLost(session_id, epoch, None, None, f"node {self.node_id!r} is fenced: {reason}")

    def _forget(self, session_id: str, epoch: int) -> None:
        with self._epochs_lock:
            if self._epochs.get(session_id) == epoch:
                del self._epochs[session_id]

    # --- the Store protocol ----------------------------------------------------------------

    async def append(self, session_id: str, records: Sequence[Record], *, durable: bool = False) -> None:
        """Insert ``records`` after the session's last; with ``durable`` wait for the commit.

        The append carries the epoch of this store's claim of the session, checked in
        the commit's transaction. Once handed to the writer it is waited for even if the
        caller is cancelled.

        Raises:
            LeaseLost: the session's lease moved on (another node claimed it, or this
                node is fenced), or it was claimed and this store holds no claim of it.
            UnstorableRecord: a record is not JSON, or holds a lone surrogate.
            StoreError: the records do not follow the log, or the database failed.

        Example::

            await store.append("s1", [sessions.Record("s1", 1, "session_started")], durable=True)
        """
        _check_id(session_id)
        check_records(session_id, records)
        self._check_fence(session_id)
        if not records and not durable:
            await trio.lowlevel.checkpoint()
            return
        rows: list[tuple[Any, ...]] = []
        for r in records:
            if not r.kind.isascii():
                utf8(session_id, r.seq, r.kind, r.kind, "kind")
            if "\x00" in r.kind:
                from .._errors import UnstorableRecord

                raise UnstorableRecord(session_id, r.seq, "in PostgreSQL: kind holds a NUL character")
            rows.append((session_id, r.seq, r.version, r.ts, r.kind, json_text(session_id, r.seq, r.data)))
        with self._epochs_lock:
            epoch = self._epochs.get(session_id)
        first = records[0].seq if records else None
        await self._worker.submit(Job("append", (session_id, first, rows, epoch), durable=durable), shield=True)

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
        """Delete the session's records (no error if there are none); its lease stays.

        Example::

            await store.delete("s1")
        """
        _check_id(session_id)
        await self._worker.submit(Job("delete", (session_id,)), shield=True)

    async def claim(self, session_id: str, *, wait: float = CLAIM_WAIT) -> SessionClaim:
        """Take the session's lease: become its one writer in the whole cluster.

        Succeeds when the session has no lease, a released one, or one held by a node
        that is not live (or by an earlier incarnation of this node id); the lease's
        epoch grows by one, in one statement, so of concurrent claimers exactly one wins.
        A lease held by a live node is polled for up to ``wait`` seconds. Inside this
        process a second claim (through any store object on the same database and
        schema) is refused as with the other stores. The claim's ``epoch`` is the
        lease's; `SessionClaim.release` releases the lease (``node_id`` NULL, epoch kept).

        Raises:
            SessionInUse: a live node (or a claim in this process) holds it after ``wait`` s.
            LeaseLost: this node is fenced.

        Example::

            claim = await store.claim("s1")
            print(claim.epoch)
        """
        _check_id(session_id)
        self._check_fence(session_id)
        key = ("pg", self._dsn, self.schema, session_id)
        await _await_release(key)  # a release by any store object of this process, still on its way
        start = trio.current_time()
        lock = _LeaseLock(self, key, session_id)
        # The table holds this store object's claims (its node's, in this process); the
        # lease in the database excludes every other node, in this process or not.
        claim = await _CLAIMS.claim((self._key, session_id), session_id, self._where, wait, lambda: lock)
        poll = _FIRST_POLL
        try:
            while True:
                self._check_fence(session_id)
                # Shielded: a claim handed to the writer may take the lease; its caller must
                # learn the epoch (and release it), never leave a live lease nobody holds.
                epoch, holder = await self._worker.submit(Job("claim", (session_id,)), shield=True)
                if epoch is not None:
                    break
                waited = trio.current_time() - start
                if waited >= wait:
                    raise SessionInUse(session_id, self._where, holder or "another node", waited)
                await trio.sleep(min(poll, wait - waited))
                poll = min(2 * poll, _LAST_POLL)
        except BaseException:
            claim.release()  # the table's claim only: no lease was taken
            raise
        with self._epochs_lock:
            self._epochs[session_id] = epoch
        lock.epoch = epoch
        claim.epoch = epoch
        _log.debug("postgres_lease_claimed", session_id=session_id, node_id=self.node_id, epoch=epoch)
        return claim

    async def aclose(self) -> None:
        """Commit what is pending, mark this node down, end the heartbeat and the writer
        thread and close both connections; the store can be used again (as a new
        incarnation of the node). Claims are not released, but a node that is down holds
        no lease the others cannot take.

        Example::

            await store.aclose()
        """
        await self._worker.aclose()

    # --- membership, for the cluster layer --------------------------------------------------

    async def node_info(self) -> NodeInfo:
        """This node's row.

        Example::

            me = await store.node_info()
            assert me.node_id == store.node_id
        """
        result: NodeInfo = await self._worker.submit(Job("node_info", ()))
        return result

    async def live_nodes(self) -> list[NodeInfo]:
        """The live nodes of this store's cluster (state up, not expired by the database's
        clock), sorted by ``node_id``; this node among them while it is live.

        Example::

            addresses = [n.address for n in await store.live_nodes()]
        """
        result: list[NodeInfo] = await self._worker.submit(Job("live_nodes", ()))
        return result

    async def lease(self, session_id: str) -> Lease | None:
        """The session's lease, or None if it was never claimed.

        Example::

            lease = await store.lease("s1")
            owner = lease.node_id if lease and lease.holder_live else None
        """
        _check_id(session_id)
        result: Lease | None = await self._worker.submit(Job("lease", (session_id,)))
        return result

    async def orphans(self, *, limit: int = 100) -> list[Lease]:
        """Active leases with no live holder (their node died or left, or they were
        handed over): the sessions the cluster should start again somewhere, oldest first.

        Example::

            for lease in await store.orphans():
                await activate(lease.session_id)
        """
        checked: object = limit
        if isinstance(checked, bool) or not isinstance(checked, int) or limit < 1:
            raise InvalidOption("limit", limit, "expected an integer >= 1")
        result: list[Lease] = await self._worker.submit(Job("orphans", (limit,)))
        return result

    async def set_address(self, address: str | None) -> None:
        """Publish where other nodes reach this one.

        Example::

            await store.set_address("http://127.0.0.1:8401")
        """
        self._node.address = address
        await self._worker.submit(Job("set_address", (address,)))

    async def leave(self) -> None:
        """Mark this node as leaving: no longer live for the others (they may take its
        leases), while its heartbeat goes on and it is not fenced.

        Example::

            await store.leave()
            await store.release_all(active=True)   # hand every session over
        """
        await self._worker.submit(Job("leave", ()))

    async def set_active(self, session_id: str, active: bool) -> bool:
        """Set the ``active`` flag of a lease this node holds; False if it holds none of ``session_id``.

        ``active`` False says the cluster need not bring the session back by itself once it
        is released (a passivated session: the next call activates it); True, that it should
        (`orphans` lists a released active lease).

        Example::

            await store.set_active("s1", False)   # then stop the session: it stays released
        """
        _check_id(session_id)
        result: bool = await self._worker.submit(Job("set_active", (session_id, bool(active))))
        return result

    async def release_all(self, *, active: bool | None = None) -> list[str]:
        """Release every lease this node holds (``active`` None keeps each lease's flag);
        returns the released sessions. The claims of this process are not touched.

        Example::

            handed_over = await store.release_all(active=True)
        """
        with self._epochs_lock:
            self._epochs.clear()
        result: list[str] = await self._worker.submit(Job("release_all", (active,)))
        return result

    async def release_stale(self) -> list[str]:
        """Release the leases held under this node's id that this store object does not
        claim (each lease keeps its ``active`` flag); returns their sessions, sorted.

        They are an earlier incarnation's: a node SIGKILLed and started again under the
        same ``node_id`` is the live holder of the leases it held before, so they are no
        orphans, yet nothing runs them. Released, the active ones are orphans again.

        Example::

            recovered = await store.release_stale()   # at a node's start
        """
        with self._epochs_lock:
            kept = sorted(self._epochs)
        result: list[str] = await self._worker.submit(Job("release_stale", (kept,)))
        return result


def _check_id(session_id: object) -> None:
    if not isinstance(session_id, str) or not session_id:
        raise InvalidOption("session_id", session_id, "must be a non-empty string")
    if "\x00" in session_id:
        raise InvalidOption("session_id", session_id, "must not hold a NUL character (PostgreSQL text)")
    if not session_id.isascii():
        try:
            session_id.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidOption("session_id", session_id, "must be valid Unicode (no lone surrogates)") from None
