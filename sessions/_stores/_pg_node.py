"""A PostgresStore's node: its row in ``nodes``, the heartbeat that renews it, and fencing.

Every `PostgresStore` object is a node of a cluster while it is open: a row in the
``nodes`` table whose ``expires_at`` the heartbeat thread pushes to ``now() + lease_ttl``
every ``lease_ttl / 3`` seconds. A node is *live* while its row says ``state = 'up'``
and ``expires_at > now()`` by the database's clock; the leases of a node that is not
live may be taken by any other node.

A node *fences* itself (refuses every append and claim from then on, for good) when

- a renewal finds its row expired, not 'up', or replaced by a newer incarnation of the
  same ``node_id``: the others may already have taken its sessions (it was paused, or
  declared down); or
- renewals have failed (the database is unreachable) until ``expires_at - margin`` by
  the node's own monotonic clock, counted from *before* the last successful renewal was
  sent, which is never later than the database's ``expires_at``: the node stops writing
  before its leases can expire for the others.

The clock check does not need the heartbeat thread to be running: `Node.check` is
called before every append and claim, so a node whose heartbeat is stuck in a connect
that hangs is fenced all the same.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import otpy

if TYPE_CHECKING:
    import psycopg

_log = otpy.get_logger("sessions.stores")

CONNECT_TIMEOUT: Final = 5
"""Seconds libpq waits to connect (libpq counts whole seconds, at least 2)."""


class Node:
    """The node state shared by the trio side, the writer thread and the heartbeat thread."""

    def __init__(self, node_id: str, cluster: str, address: str | None, lease_ttl: float) -> None:
        self.node_id = node_id
        self.cluster = cluster
        self.address = address
        self.lease_ttl = lease_ttl
        self.margin = lease_ttl / 4
        self.incarnation = ""
        self._lock = threading.Lock()
        self._fenced: str | None = None  # the reason, once fenced
        self._deadline = math.inf  # monotonic: fence when reached (only while the row is kept alive)

    @property
    def heartbeat_interval(self) -> float:
        return self.lease_ttl / 3

    def new_incarnation(self) -> str:
        self.incarnation = uuid.uuid4().hex
        return self.incarnation

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` (monotonic) succeeded: the row lives until at
        least ``sent_at + lease_ttl`` by the database's clock."""
        with self._lock:
            if self._fenced is None:
                self._deadline = sent_at + self.lease_ttl - self.margin

    def stopped(self) -> None:
        """The row is no longer kept alive (the store closed): no clock deadline."""
        with self._lock:
            self._deadline = math.inf

    def check(self) -> str | None:
        """The reason this node is fenced, or None; fences it when the clock deadline passed."""
        with self._lock:
            if self._fenced is None and time.monotonic() >= self._deadline:
                since = time.monotonic() - (self._deadline - self.lease_ttl + self.margin)
                self._fence_locked(
                    f"no renewal of the node row succeeded in the {since:.3f} s since the last one was sent"
                    f" (lease_ttl {self.lease_ttl:g} s; a node fences itself {self.margin:g} s before its row"
                    " can expire)"
                )
            return self._fenced

    def fence(self, reason: str) -> None:
        with self._lock:
            self._fence_locked(reason)

    def _fence_locked(self, reason: str) -> None:
        if self._fenced is not None:
            return
        self._fenced = reason
        _log.error("postgres_node_fenced", node_id=self.node_id, cluster=self.cluster, reason=reason)


class Heartbeat:
    """The thread that renews a node's row every ``lease_ttl / 3`` seconds on a connection
    of its own (so a long group commit never delays a renewal)."""

    def __init__(self, node: Node, connect: Callable[[], psycopg.Connection[Any]], nodes_table: str) -> None:
        self.node = node
        self._connect = connect
        self._nodes = nodes_table
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"sessions-pg-heartbeat:{node.node_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _main(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        incarnation = self.node.incarnation
        try:
            try:
                conn = self._connect()  # at once: the next renewal should not wait for a connect
            except Exception as exc:  # noqa: BLE001 (retried at the first renewal)
                _log.warning("postgres_heartbeat_failed", node_id=self.node.node_id, error=" ".join(str(exc).split()))
            while not self._stop.wait(self.node.heartbeat_interval):
                if self.node.check() is not None:
                    return  # fenced for good: nothing left to renew
                sent_at = time.monotonic()
                try:
                    if conn is None or conn.closed:
                        conn = self._connect()
                    row = conn.execute(
                        f"UPDATE {self._nodes} SET heartbeat_at = now(),"
                        " expires_at = now() + make_interval(secs => %s)"
                        " WHERE node_id = %s AND incarnation = %s AND state IN ('up', 'leaving')"
                        " AND expires_at > now() RETURNING state",
                        (self.node.lease_ttl, self.node.node_id, incarnation),
                    ).fetchone()
                except Exception as exc:  # noqa: BLE001 (any failure: count down to the fence)
                    _log.warning(
                        "postgres_heartbeat_failed", node_id=self.node.node_id, error=" ".join(str(exc).split())
                    )
                    if conn is not None:
                        conn.close()
                        conn = None
                    self.node.check()
                    continue
                if row is None:
                    self.node.fence("a renewal found the node row expired, down, or taken by a newer incarnation")
                    return
                self.node.renewed(sent_at)
        finally:
            if conn is not None:
                conn.close()
