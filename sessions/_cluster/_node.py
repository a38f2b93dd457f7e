"""ClusterNode: one OS process's share of a cluster of sessions on PostgreSQL.

A node joins the cluster through a `PostgresStore` (its row in ``nodes``, renewed by the
store's heartbeat), serves the other nodes over HTTP, runs the sessions it owns under
``DynamicSupervisor`` shards, and routes the client functions of `SessionServer` by name:

1. a session registered in this process under that name: called directly;
2. else the owner named by the session's lease, when that node is live: called over HTTP;
3. else (no lease, released, or its holder is not live) activated here: a SessionServer is
   started under the node's supervisor with the options the user's ``session_factory``
   gives for that id; its ``init`` claims the lease (a new epoch). A claim lost to a
   concurrent claimer is routed to the winner.

Idle sessions are passivated (stopped, the lease released with ``active = false``) and
reactivated by the next call; orphans (active leases of nodes that are not live, and
sessions handed over by a node that stopped cleanly) are activated by the live node that
rendezvous hashing picks for each. A node whose store fenced itself stops its sessions.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import trio
from trio.lowlevel import RunVar

import otpy

from .. import _server
from .._errors import (
    ClusterUnavailable,
    InvalidOption,
    LeaseLost,
    SessionError,
    SessionInUse,
    StoreError,
)
from .._events import EventsDropped
from .._server import SessionServer, SessionStatus, _Get, _Put, _Rewind, _Send, _Subscribe
from .._stores._base import Record
from .._stores._claims import SessionClaim
from .._subscribers import SubscriberBuffer, Subscription
from ._wire import NotHere, _Stop

if TYPE_CHECKING:
    from collections.abc import Sequence

    import httpx

_log = otpy.get_logger("sessions.cluster")

SessionFactory = Callable[[str], Mapping[str, Any]]
"""``session_factory(session_id) -> options``: the `SessionServer` options (``provider``,
``query_opts``, budgets, ...) of the session ``session_id``, on this node. The node adds
``name``, ``session_id`` and ``store``."""

_CURRENT: RunVar[ClusterNode | None] = RunVar("sessions_cluster_node", default=None)
_CLAIM_WAIT: Final = 0.5  # how long an activation waits for a claim held by a live other node
_NODE_KEYS: Final = frozenset({"name", "session_id", "store"})
_SHARDS: Final = 4  # DynamicSupervisors of sessions per node: activations run this many at a time
_OWNERS_KEPT: Final = 100_000  # routed sessions whose owner a node remembers (then it forgets them all)
_STREAM_READ: Final = 10.0  # a subscribe stream silent this long (its owner pings every second) is cut


# --- the router that SessionServer's client functions call -------------------------------------


async def _routed_call(server: Any, request: Any, timeout: float = 5.0) -> Any:  # noqa: ASYNC109 (otpy.call's)
    if type(server) is str:
        node = _CURRENT.get()
        if node is not None:
            return await node.call(server, request, timeout)
    return await otpy.call(server, request, timeout)


async def _routed_stop(server: Any, reason: object = "normal") -> None:
    if type(server) is str:
        node = _CURRENT.get()
        if node is not None:
            await node.call(server, _Stop(reason), math.inf)
            return
    await otpy.stop(server, reason)


def rendezvous(session_id: str, node_ids: Sequence[str]) -> str | None:
    """The node of ``node_ids`` that rendezvous (highest random weight) hashing picks for
    ``session_id``: every node that sees the same live nodes picks the same one, and a node
    that leaves moves only its own share.

    Example::

        assert rendezvous("s1", ["a", "b"]) == rendezvous("s1", ["b", "a"])
    """
    if not node_ids:
        return None
    return max(node_ids, key=lambda node: hashlib.blake2b(f"{node}\0{session_id}".encode(), digest_size=8).digest())


class _NodeStore:
    """The node's store as its sessions see it: the same store, whose ``claim`` waits at most
    ``_CLAIM_WAIT`` for a live other holder (the caller routes to the winner instead)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __repr__(self) -> str:
        return repr(self.store)

    async def append(self, session_id: str, records: Sequence[Record], *, durable: bool = False) -> None:
        await self.store.append(session_id, records, durable=durable)

    async def load(self, session_id: str) -> list[Record]:
        records: list[Record] = await self.store.load(session_id)
        return records

    async def list_sessions(self) -> list[str]:
        found: list[str] = await self.store.list_sessions()
        return found

    async def delete(self, session_id: str) -> None:
        await self.store.delete(session_id)

    async def claim(self, session_id: str, *, wait: float = _CLAIM_WAIT) -> SessionClaim:
        claim: SessionClaim = await self.store.claim(session_id, wait=min(wait, _CLAIM_WAIT))
        return claim

    async def aclose(self) -> None:
        pass  # the node closes the store


class ClusterNode:
    """One node of a cluster of sessions: it owns some sessions, and reaches every other one by name.

    Sessions are addressed by one string, both their registered name and their session
    id. Inside the trio run of a node, every client function of `SessionServer` called
    with a str works from any node: the session is called where it lives (here, or on its
    owner node over HTTP), and a session that lives nowhere is activated here from the
    store, with the options ``session_factory(session_id)`` gives. Names registered in
    this process (a `SessionServer.child_spec(name=...)` under your own supervisor) are
    called directly, as without a cluster.

    What works across nodes: `SessionServer.send_message`, ``session_id``, ``history``,
    ``last_result``, ``messages``, ``total_cost``, ``turn_count``, ``usage``, ``status``,
    ``get_session``, ``put_session``, ``rewind``, ``interrupt``, ``stop`` (which
    passivates: the session stops and is not brought back until the next call), and
    ``subscribe``: on another node than the owner, the `Subscription` reads the owner's
    events over one HTTP stream (a task of this node, ended by closing the subscription
    or stopping the node), with the same buffer and `EventsDropped`; it ends when the
    session's server on the owner exits (passivated, handed over, stopped) or the owner
    node is lost. ``follow`` follows the server registered under the name in this
    process, across its restarts here; it ends after its ``restart_timeout`` when the
    session is passivated, handed over, or lives on another node.

    Ownership: a session runs on one node at a time, the holder of its lease in the
    store; every append carries the lease's epoch and the store refuses a stale one, so a
    node that lost its lease (paused, cut off) never writes again. A node whose store
    fences itself stops all its sessions (``cluster_node_fenced``).

    Options:
        ``store``: the node's `PostgresStore` (one per node; the node closes it).
        ``session_factory``: ``session_id -> dict`` of `SessionServer` options (not
        ``name``, ``session_id``, ``store``: the node sets them). ``token``: the
        cluster's shared secret (at least 16 characters), sent as a bearer token
        between nodes, over plain HTTP: keep the nodes on a private network. ``host`` /
        ``port``: where the node's HTTP server listens (127.0.0.1, a free port).
        ``advertise``: the base URL the other nodes use to reach this one (default: the
        one it listens on; give it when ``host`` is ``0.0.0.0`` or behind NAT, e.g.
        ``"http://10.0.0.5:8401"``). ``idle_timeout`` (300 s): a session with no call for
        that long, idle and without subscribers, is passivated; ``math.inf`` never.
        ``route_timeout``: how long a call may wait to be placed (an owner that died,
        a failover in progress) before `ClusterUnavailable` (default ``4 * lease_ttl``,
        at least 10 s). ``drain_timeout`` (30 s): how long a clean stop waits for
        running turns. ``scan_interval``: how often orphans are looked for (default
        ``lease_ttl / 3``).

    Example::

        store = sessions.PostgresStore(dsn, lease_ttl=3.0)

        def options(session_id):
            return {"provider": sessions.ClaudeCode(), "max_cost_usd": 5.0}

        async with sessions.ClusterNode.open(store, options, token=token) as node:
            result = await SessionServer.send_message("user-42", "What changed?")
            print(node.node_id, node.address)
    """

    def __init__(
        self,
        store: Any,
        session_factory: SessionFactory,
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
        idle_timeout: float = 300.0,
        route_timeout: float | None = None,
        drain_timeout: float = 30.0,
        scan_interval: float | None = None,
    ) -> None:
        url: object = advertise
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            raise InvalidOption("advertise", advertise, "expected a base URL such as 'http://10.0.0.5:8401'")
        checked: object = token
        if not isinstance(checked, str) or len(checked) < 16:
            raise InvalidOption("token", "<hidden>", "expected a str of at least 16 characters")
        if not callable(session_factory):
            raise InvalidOption("session_factory", session_factory, "expected a callable: session_id -> options")
        for option, value in (("idle_timeout", idle_timeout), ("drain_timeout", drain_timeout)):
            number: object = value
            if isinstance(number, bool) or not isinstance(number, int | float) or not number > 0:
                raise InvalidOption(option, value, "expected a number > 0 (math.inf for never)")
        ttl = float(getattr(store, "lease_ttl", 3.0))
        self.store = store
        self.session_factory = session_factory
        self.token = token
        self.host = host
        self.port = port
        self.advertise = advertise
        self.idle_timeout = float(idle_timeout)
        self.route_timeout = float(route_timeout) if route_timeout is not None else max(10.0, 4 * ttl)
        self.drain_timeout = float(drain_timeout)
        self.scan_interval = float(scan_interval) if scan_interval is not None else ttl / 3
        self.address: str | None = None
        self.stop_reason: str | None = None
        self._sessions_store = _NodeStore(store)
        self._sup: otpy.Pid | None = None
        self._shards: list[otpy.Pid] = []
        self._client: httpx.AsyncClient | None = None
        self._state = "new"  # new, up, draining, stopped
        self._stopped = trio.Event()
        self._stopping: dict[str, trio.Event] = {}  # sessions being passivated or handed over
        self._activating: dict[str, trio.Event] = {}
        self._retired: dict[otpy.Pid, float] = {}  # servers this node stopped on purpose
        self._last_used: dict[str, float] = {}
        self._addresses: dict[str, str] = {}
        self._owners: dict[str, str] = {}  # session -> the node that served its last routed call
        self._nursery: trio.Nursery | None = None
        self._leaving = False
        self._serving = 0  # HTTP calls in progress
        self._streams: set[trio.CancelScope] = set()  # this node's subscriptions to other nodes' sessions

    def __repr__(self) -> str:
        return f"<ClusterNode {self.node_id} {self._state} at {self.address}>"

    @property
    def node_id(self) -> str:
        """This node's id in the cluster (its store's).

        Example::

            print(node.node_id)
        """
        return str(self.store.node_id)

    @property
    def supervisor(self) -> otpy.Pid | None:
        """The root of the sessions this node runs (for ``otpy.tree``): a ``Supervisor`` of
        four ``DynamicSupervisor`` shards, so that activations (each a claim, a load and a
        durable append in the session's ``init``) run four at a time.

        Example::

            print(otpy.tree(node.supervisor))
        """
        return self._sup

    @property
    def running(self) -> bool:
        """Whether the node is up (not draining, stopped or fenced).

        Example::

            assert node.running
        """
        return self._state == "up"

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, store: Any, session_factory: SessionFactory, **options: Any) -> AsyncIterator[ClusterNode]:
        """Run a node for the length of an ``async with`` block (see the class for the options).

        On exit the node stops cleanly (`stop`): its sessions finish their running turn
        and are handed over to the other nodes, and the store is closed.

        Raises:
            InvalidOption: a malformed option, or a second node in the same trio run.

        Example::

            async with sessions.ClusterNode.open(store, options, token=token) as node:
                await node.wait_stopped()
        """
        node = cls(store, session_factory, **options)
        failed: Exception | None = None
        async with trio.open_nursery() as nursery:
            try:
                await node._start(nursery)
            except Exception as exc:  # noqa: BLE001 (raised below, outside the nursery: not in a group)
                failed = exc
                if _CURRENT.get() is node:
                    _CURRENT.set(None)  # a node that did not start leaves the run as it found it
                with trio.CancelScope(shield=True):
                    await node._close()
                node._finish("failed")
                nursery.cancel_scope.cancel()
            else:
                try:
                    yield node
                finally:
                    with trio.CancelScope(shield=True):
                        await node.stop()
                    _CURRENT.set(None)  # calls by name are plain otpy.call again; another node may start
                    nursery.cancel_scope.cancel()
        if failed is not None:
            raise failed

    async def _start(self, nursery: trio.Nursery) -> None:
        if _CURRENT.get() is not None:
            raise InvalidOption("store", self.store, "this trio run already has a ClusterNode (one node per run)")
        import httpx

        from ._http import create_node_app, serve_node_app

        _CURRENT.set(self)
        _server._route_through(_routed_call, _routed_stop)
        self._nursery = nursery
        shards = [
            otpy.DynamicSupervisor.child_spec(max_restarts=100, max_seconds=10, id=f"sessions-{n}")
            for n in range(_SHARDS)
        ]
        self._sup = await otpy.Supervisor.start(shards, strategy="one_for_one", nursery=nursery)
        self._client = httpx.AsyncClient(
            headers={"authorization": f"Bearer {self.token}"},
            timeout=httpx.Timeout(5.0, connect=1.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        app = create_node_app(self)
        bound = await nursery.start(functools.partial(serve_node_app, app, host=self.host, port=self.port))
        self.address = self.advertise.rstrip("/") if self.advertise else bound
        await self.store.set_address(self.address)
        # A node that starts runs nothing of the cluster's yet: the leases held under its id
        # that its store does not claim are an earlier incarnation's (SIGKILLed and started
        # again before another node took them). Released, the active ones are orphans again,
        # for the scan (spread by rendezvous hashing), and a call activates any of them.
        recovered = await self.store.release_stale()
        if recovered:
            _log.info("cluster_leases_recovered", node_id=self.node_id, sessions=len(recovered))
        self._state = "up"
        nursery.start_soon(self._watch_fence)
        nursery.start_soon(self._scan_orphans)
        if math.isfinite(self.idle_timeout):
            nursery.start_soon(self._reap_idle)
        _log.info("cluster_node_started", node_id=self.node_id, address=self.address)

    async def wait_stopped(self) -> str:
        """Wait until the node has stopped (`stop`, or fenced); return why.

        Example::

            reason = await node.wait_stopped()   # "stopped" or "fenced"
        """
        await self._stopped.wait()
        return self.stop_reason or "stopped"

    async def stop(self) -> None:
        """Stop the node cleanly (a deploy, SIGTERM): calls for its sessions are held, each
        session finishes its running and queued turns (up to ``drain_timeout``), stops and
        releases its lease still active, and the held calls go on to the node that takes
        the session over. Then the node leaves the cluster and closes its store.

        Example::

            await node.stop()
        """
        if self._state in ("draining", "stopped"):
            await self._stopped.wait()
            return
        if self._state == "new":
            self._finish("stopped")
            return
        self._state = "draining"
        started = trio.current_time()
        _log.info("cluster_node_stopping", node_id=self.node_id, sessions=len(self._local()))
        with trio.move_on_after(self.drain_timeout):
            async with trio.open_nursery() as nursery:
                for name, pid in self._local().items():
                    nursery.start_soon(functools.partial(self._retire, name, pid, active=True, why="handover"))
        await self._stop_supervisor("shutdown")
        self._leaving = True  # from here the store may see its row 'leaving' and fence itself: expected
        with trio.move_on_after(5.0):
            with contextlib.suppress(SessionError, OSError):
                await self.store.leave()
        with trio.move_on_after(self.drain_timeout):  # calls still being served here, or sent on
            while True:
                if not self._serving:
                    break
                await trio.sleep(0.02)
        await self._close()
        _log.info("cluster_node_stopped", node_id=self.node_id, took=round(trio.current_time() - started, 3))
        self._finish("stopped")

    def _finish(self, reason: str) -> None:
        self._state = "stopped"
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stopped.set()

    async def _close(self) -> None:
        for scope in list(self._streams):  # their subscriptions end
            scope.cancel()
        client, self._client = self._client, None
        if client is not None:
            with trio.move_on_after(1.0):
                await client.aclose()
        with trio.move_on_after(5.0):
            with contextlib.suppress(SessionError, OSError):
                await self.store.aclose()

    async def _stop_supervisor(self, reason: object) -> None:
        sup = self._sup
        if sup is not None and sup.alive:
            with contextlib.suppress(otpy.NoProcess, otpy.ServerExited):
                await otpy.stop(sup, reason)

    async def _watch_fence(self) -> None:
        """Stop every session of this node once its store has fenced itself (it can write no
        more), or once its supervisor of sessions has given up."""
        reason = "fenced"
        while not getattr(self.store, "fenced", False):
            if self._state == "stopped":
                return
            sup = self._sup
            if sup is not None and not sup.alive and self._state == "up":
                _log.error("cluster_supervisor_exited", node_id=self.node_id, reason=repr(sup.exit_reason))
                reason = "supervisor_exited"
                break
            await trio.sleep(0.05)
        if self._state == "stopped" or self._leaving:
            return
        if reason == "fenced":
            _log.error("cluster_node_fenced", node_id=self.node_id, sessions=len(self._local()))
        self._state = "stopped"
        self.stop_reason = reason
        await self._stop_supervisor(reason)
        if reason != "fenced":  # its leases go to the others at once
            with trio.move_on_after(5.0):
                with contextlib.suppress(SessionError, OSError):
                    await self.store.leave()
        await self._close()
        self._finish(reason)

    # --- routing -------------------------------------------------------------------------------

    async def call(self, name: str, request: Any, timeout: float = 5.0, *, forwarded: bool = False) -> Any:  # noqa: ASYNC109
        """Call the session ``name`` wherever it lives (what the client functions do by name).

        ``forwarded``: the call came from another node, which routes it again when this
        node does not hold the session (`NotHere`), instead of being sent on.
        """
        deadline = trio.current_time() + self.route_timeout
        delay = 0.01
        why = "no node took the call"
        while True:
            if self._state == "stopped":
                pid = otpy.whereis(name)
                if pid is not None and not forwarded:  # a session of the application's own tree
                    return await self._call_local(name, pid, request, timeout)
                if forwarded:
                    raise NotHere(why)
                raise ClusterUnavailable(name, f"this node has stopped ({self.stop_reason})")
            hold = self._stopping.get(name)
            if hold is not None and isinstance(request, _Send | _Put | _Rewind | _Stop | _Subscribe):
                await hold.wait()  # passivated or handed over: then found again, elsewhere or here
                continue
            pid = otpy.whereis(name)
            if pid is not None:
                try:
                    return await self._call_local(name, pid, request, timeout)
                except otpy.NoProcess:
                    pass
                except otpy.ServerExited as exc:
                    if exc.server not in self._retired:
                        raise
                await trio.lowlevel.checkpoint()
                continue
            activation = self._activating.get(name)
            if activation is not None:
                await activation.wait()
                continue
            cached = self._owners.get(name) if not forwarded and not isinstance(request, _Subscribe) else None
            if cached is not None:  # the owner that served the last call: no lease read (it says if it moved)
                try:
                    return await self._remote(cached, name, request, timeout)
                except NotHere:
                    self._owners.pop(name, None)
                    continue
                except otpy.ServerExited:
                    self._owners.pop(name, None)
                    raise
            try:
                owner = await self._owner(name)
            except (StoreError, OSError) as exc:
                owner, why = None, f"the store failed: {exc}"
            else:
                if owner is not None and owner != self.node_id:
                    if forwarded:
                        raise NotHere(f"owned by {owner}")
                    if isinstance(request, _Subscribe):
                        try:
                            return await self._subscribe_remote(owner, name, request)
                        except NotHere as exc:
                            why = f"node {owner}: {exc}"
                    else:
                        if len(self._owners) >= _OWNERS_KEPT:
                            self._owners.clear()
                        self._owners[name] = owner
                        try:
                            return await self._remote(owner, name, request, timeout)
                        except NotHere as exc:
                            self._owners.pop(name, None)
                            why = f"node {owner}: {exc}"
                        except otpy.ServerExited:
                            self._owners.pop(name, None)
                            raise
                elif owner == self.node_id:
                    why = "its previous server here is still letting go"  # released in a moment
                elif isinstance(request, _Stop):
                    return None  # it runs nowhere: stopped already
                elif self._state == "draining":
                    if forwarded:
                        raise NotHere("this node is leaving")
                    peer = await self._peer_for(name)
                    if peer is not None:
                        try:
                            if isinstance(request, _Subscribe):
                                return await self._subscribe_remote(peer, name, request)
                            return await self._remote(peer, name, request, timeout)
                        except NotHere as exc:
                            why = f"node {peer}: {exc}"
                    else:
                        why = "no other live node to hand it to"
                elif await self._activate(name, "call"):
                    continue
                else:
                    why = "another node won its claim, or this node cannot start it now"
            if trio.current_time() >= deadline:
                if forwarded:
                    raise NotHere(why)
                raise ClusterUnavailable(name, why)
            await trio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _call_local(self, name: str, pid: otpy.Pid, request: Any, timeout: float) -> Any:  # noqa: ASYNC109
        self._last_used[name] = trio.current_time()
        if isinstance(request, _Stop):
            sup = self._sup
            if sup is not None and self._ours(pid) and otpy.is_normal_reason(request.reason):
                await self._retire(name, pid, active=False, why="stopped")  # stop = passivate now
            else:
                await otpy.stop(pid, request.reason)
            return None
        return await otpy.call(pid, request, timeout)

    async def _owner(self, name: str) -> str | None:
        """The live node that holds ``name``'s lease, or None (no lease, released, holder not live)."""
        lease = await self.store.lease(name)
        if lease is None or lease.node_id is None or not lease.holder_live:
            return None
        return str(lease.node_id)

    async def _address(self, node_id: str) -> str | None:
        address = self._addresses.get(node_id)
        if address is None:
            await self._refresh_nodes()
            address = self._addresses.get(node_id)
        return address

    async def _refresh_nodes(self) -> list[str]:
        nodes = await self.store.live_nodes()
        self._addresses = {str(n.node_id): str(n.address) for n in nodes if n.address}
        return [str(n.node_id) for n in nodes]

    async def _peer_for(self, name: str) -> str | None:
        """The live node other than this one that rendezvous hashing picks for ``name``."""
        try:
            live = await self._refresh_nodes()
        except (StoreError, OSError):
            return None
        return rendezvous(name, [node for node in live if node != self.node_id])

    async def _remote(self, node_id: str, name: str, request: Any, timeout: float) -> Any:  # noqa: ASYNC109
        """Call ``name`` on ``node_id`` over HTTP.

        Raises:
            NotHere: that node does not hold the session, or could not be reached before
                the request was sent (the caller routes again).
            otpy.ServerExited: the node was lost after a turn (or a put) was sent to it:
                the turn may or may not have run (send again with the same idempotency key).
        """
        import httpx

        from ._wire import decode_reply, encode_request

        address = await self._address(node_id)
        client = self._client
        if address is None or client is None:
            raise NotHere(f"no address for node {node_id}")
        body = {
            "request": encode_request(request),
            "timeout": timeout if math.isfinite(timeout) else None,
            "forwarded": True,
        }
        read = None if not math.isfinite(timeout) else timeout + 5.0
        try:
            response = await client.post(
                f"{address}/v1/call/{_quote(name)}",
                json=body,
                timeout=httpx.Timeout(5.0, connect=1.0, read=read),
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self._addresses.pop(node_id, None)
            raise NotHere(f"unreachable: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            self._addresses.pop(node_id, None)
            if isinstance(request, _Send | _Put | _Rewind):
                _log.warning("cluster_call_cut", session_id=name, node_id=node_id, error=type(exc).__name__)
                raise otpy.ServerExited(name, ("node_lost", node_id)) from None
            raise NotHere(f"lost during the call: {type(exc).__name__}") from None
        if response.status_code == 409:
            raise NotHere(str(response.json().get("detail", "not here")))
        if response.status_code == 401:
            raise ClusterUnavailable(name, f"node {node_id} refused this node's token")
        if response.status_code != 200:
            raise NotHere(f"HTTP {response.status_code}")
        return decode_reply(response.json(), name)

    async def _subscribe_remote(self, node_id: str, name: str, request: _Subscribe) -> Subscription:
        """Subscribe to ``name`` on ``node_id``: a task of this node reads the events it
        streams into the returned subscription's buffer.

        Raises:
            NotHere: that node does not hold the session, or could not be reached (the
                caller routes again).
        """
        address = await self._address(node_id)
        nursery = self._nursery
        if address is None or self._client is None or nursery is None:
            raise NotHere(f"no address for node {node_id}")
        subscription: Subscription = await nursery.start(self._pump, node_id, address, name, request.buffer)
        return subscription

    async def _pump(
        self,
        node_id: str,
        address: str,
        name: str,
        buffer: int | None,
        task_status: trio.TaskStatus[Subscription] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read ``name``'s event stream from ``node_id`` into a local buffer, until the stream
        ends (the session's server there exited), breaks (that node is lost, or silent for
        ``_STREAM_READ`` s), the subscription is closed, or this node stops."""
        import httpx

        from ._wire import decode_error, decode_event

        client = self._client
        if client is None:
            raise NotHere("this node has stopped")
        scope = trio.CancelScope()
        inner: _RemoteBuffer | None = None
        params = {} if buffer is None else {"buffer": str(buffer)}
        self._streams.add(scope)
        try:
            with scope:
                async with client.stream(
                    "GET",
                    f"{address}/v1/subscribe/{_quote(name)}",
                    params=params,
                    timeout=httpx.Timeout(5.0, connect=1.0, read=_STREAM_READ),
                ) as response:
                    if response.status_code != 200:
                        body = await response.aread()
                        if response.status_code == 401:
                            raise ClusterUnavailable(name, f"node {node_id} refused this node's token")
                        if response.status_code == 422:
                            raise decode_error(json.loads(body), name)
                        raise NotHere(f"HTTP {response.status_code}")
                    lines = response.aiter_lines()
                    first = json.loads(await anext(lines))
                    inner = _RemoteBuffer(int(first["subscribed"]), scope)
                    task_status.started(Subscription(inner))
                    async for line in lines:
                        data = json.loads(line)
                        if "ping" in data:
                            continue
                        event = decode_event(data)
                        if isinstance(event, EventsDropped):  # lost on the owner's side: counted here
                            inner.dropped += event.count
                            inner.dropped_total += event.count
                            inner.push_nothing()
                        else:
                            inner.push(event)
        except Exception as exc:  # the stream broke: the subscription ends, like its server's exit
            if inner is None:
                if isinstance(exc, SessionError | otpy.CallError | NotHere):
                    raise  # the caller's: a typed error, or route again
                self._addresses.pop(node_id, None)
                raise NotHere(f"subscribe failed: {type(exc).__name__}") from None
            _log.info("cluster_subscription_cut", session_id=name, node_id=node_id, error=type(exc).__name__)
        finally:
            self._streams.discard(scope)
            if inner is not None:
                inner.close()

    # --- activation, passivation, handover, failover --------------------------------------------

    def _options(self, name: str) -> dict[str, Any]:
        options = dict(self.session_factory(name))
        given = sorted(_NODE_KEYS & set(options))
        if given:
            raise InvalidOption(given[0], options[given[0]], "the ClusterNode sets it; leave it out of session_factory")
        return options

    async def _activate(self, name: str, why: str) -> bool:
        """Start ``name`` here under the node's supervisor (its ``init`` claims the lease).
        False when another node won the claim (the caller routes to it) or the store failed
        (the caller tries again, up to its ``route_timeout``).

        Raises:
            ClusterUnavailable: the session cannot be started here for another reason (the
                factory raised, its options are malformed, its ``cwd`` is missing).
        """
        if self._state != "up" or self._sup is None:
            return False
        shard = await self._shard(name)
        if shard is None:
            return False
        event = self._activating.get(name)
        if event is not None:
            await event.wait()
            return otpy.whereis(name) is not None
        event = self._activating[name] = trio.Event()
        try:
            try:
                spec = SessionServer.child_spec(
                    name=name, restart="transient", session_id=name, store=self._sessions_store, **self._options(name)
                )
            except Exception as exc:  # the application's factory: any error, named
                raise ClusterUnavailable(name, f"session_factory failed: {exc!r}") from exc
            started = time.perf_counter()
            try:
                await otpy.DynamicSupervisor.start_child(shard, spec)
            except otpy.StartError as exc:
                reason = exc.reason
                if isinstance(reason, SessionInUse | LeaseLost):
                    _log.debug("cluster_claim_lost", session_id=name, node_id=self.node_id, why=why)
                    return False
                if isinstance(reason, StoreError | OSError):  # the database cut off, for a moment or for good
                    _log.warning("cluster_activation_failed", session_id=name, node_id=self.node_id, error=str(reason))
                    return False
                raise ClusterUnavailable(name, f"it could not be started here: {reason!r}") from exc
            self._last_used[name] = trio.current_time()
            _log.info(
                "cluster_session_activated",
                session_id=name,
                node_id=self.node_id,
                why=why,
                took=round(time.perf_counter() - started, 4),
            )
            return True
        finally:
            del self._activating[name]
            event.set()

    def _local(self) -> dict[str, otpy.Pid]:
        """The sessions this node's supervisor runs, by name."""
        sup = self._sup
        if sup is None or not sup.alive:
            return {}
        found: dict[str, otpy.Pid] = {}
        for name in otpy.registered():
            pid = otpy.whereis(name)
            if pid is not None and self._ours(pid):
                found[name] = pid
        return found

    def _ours(self, pid: otpy.Pid) -> bool:
        """Whether ``pid`` is a session of this node (a child of one of its shards)."""
        parent = pid.parent
        return parent is not None and self._sup is not None and parent.parent is self._sup

    async def _shard(self, name: str) -> otpy.Pid | None:
        """The ``DynamicSupervisor`` shard that runs ``name`` (by a hash of it), or None when stopped."""
        sup = self._sup
        if sup is None or not sup.alive:
            return None
        shards = self._shards
        if len(shards) != _SHARDS or not all(shard.alive for shard in shards):
            try:
                children = await otpy.Supervisor.which_children(sup)
            except otpy.CallError:
                return None
            found = {info.id: info.child for info in children if isinstance(info.child, otpy.Pid)}
            shards = self._shards = [found[key] for key in sorted(found, key=str)]
            if len(shards) != _SHARDS:
                return None  # a shard is being restarted: the caller tries again
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        return shards[int.from_bytes(digest, "big") % _SHARDS]

    async def _retire(self, name: str, pid: otpy.Pid, *, active: bool, why: str, idle_only: bool = False) -> bool:
        """Stop the local session ``name`` between turns: calls that would start work are held
        meanwhile, and routed again once it is gone. ``active``: whether the cluster brings it
        back by itself (a handover) or only on the next call (passivation). ``idle_only``:
        give up (False) when it is busy or watched instead of waiting for its turn to end."""
        if name in self._stopping:
            return False
        hold = self._stopping[name] = trio.Event()
        try:
            while True:
                try:
                    status: SessionStatus = await otpy.call(pid, _Get("status"))
                except otpy.CallError:
                    return False
                if status.state == "idle" and not status.queued and not (idle_only and status.subscribers):
                    break
                if idle_only:
                    return False
                await trio.sleep(0.02)
            if not active:
                with contextlib.suppress(StoreError, OSError):
                    await self.store.set_active(name, False)
            self._retired[pid] = trio.current_time()
            self._last_used.pop(name, None)
            shard = pid.parent
            if shard is not None:
                with contextlib.suppress(otpy.CallError, otpy.ChildNotFound):
                    await otpy.DynamicSupervisor.terminate_child(shard, pid)
            if active:
                _log.info("cluster_session_handed_over", session_id=name, node_id=self.node_id, turns=status.turn_count)
            else:
                _log.info("cluster_session_passivated", session_id=name, node_id=self.node_id, why=why)
            return True
        finally:
            del self._stopping[name]
            hold.set()

    async def _reap_idle(self) -> None:
        """Passivate the sessions nobody called for ``idle_timeout`` seconds."""
        period = max(0.05, min(self.idle_timeout / 4, 5.0))
        while self._state == "up":
            await trio.sleep(period)
            now = trio.current_time()
            for name, pid in self._local().items():
                last = self._last_used.setdefault(name, now)
                if now - last >= self.idle_timeout and self._state == "up":
                    if await self._retire(name, pid, active=False, why="idle", idle_only=True):
                        self._last_used.pop(name, None)
                    else:
                        self._last_used[name] = now

    def _prune(self) -> None:
        """Forget the servers retired a minute ago, and the last use of sessions gone from here."""
        now = trio.current_time()
        for pid, when in list(self._retired.items()):
            if now - when > 60.0:
                del self._retired[pid]
        if len(self._last_used) > 2 * len(self._activating) + 1024:
            local = self._local()
            for name in [name for name in self._last_used if name not in local]:
                del self._last_used[name]

    async def _scan_orphans(self) -> None:
        """Activate, every ``scan_interval``, the orphans that rendezvous hashing gives to this node."""
        limiter = trio.CapacityLimiter(16)
        while self._state == "up":
            await trio.sleep(self.scan_interval)
            if self._state != "up":
                return
            self._prune()
            try:
                orphans = await self.store.orphans(limit=256)
                live = await self._refresh_nodes() if orphans else []
            except (StoreError, OSError) as exc:
                _log.warning("cluster_scan_failed", node_id=self.node_id, error=str(exc))
                continue
            mine = [
                lease
                for lease in orphans
                if rendezvous(lease.session_id, live) == self.node_id and otpy.whereis(lease.session_id) is None
            ]
            if mine:
                async with trio.open_nursery() as nursery:
                    for lease in mine:
                        nursery.start_soon(self._take_over, lease, limiter)

    async def _take_over(self, lease: Any, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                won = await self._activate(lease.session_id, "failover" if lease.node_id else "handover")
            except Exception as exc:  # noqa: BLE001 (a factory or a store that fails: logged, tried again next scan)
                _log.warning(
                    "cluster_takeover_failed", session_id=lease.session_id, node_id=self.node_id, error=repr(exc)
                )
                return
            if won:
                _log.info(
                    "cluster_session_taken_over",
                    session_id=lease.session_id,
                    node_id=self.node_id,
                    previous=lease.node_id,
                    epoch=lease.epoch,
                )


class _RemoteBuffer(SubscriberBuffer):
    """The buffer of a subscription to another node's session: closing it also ends the
    task that reads the stream (and so the stream on the owner)."""

    __slots__ = ("scope",)

    def __init__(self, capacity: int, scope: trio.CancelScope) -> None:
        super().__init__(capacity)
        self.scope = scope

    def close(self) -> None:
        super().close()
        self.scope.cancel()

    def push_nothing(self) -> None:
        """Wake the reader (to see the drops counted)."""
        self._wake()


def _quote(name: str) -> str:
    import urllib.parse

    return urllib.parse.quote(name, safe="")


async def serve_node(
    store: Any,
    session_factory: SessionFactory,
    *,
    token: str,
    ready: Callable[[ClusterNode], object] | None = None,
    **options: Any,
) -> str:
    """Run a `ClusterNode` until SIGTERM or SIGINT (then it stops cleanly, handing its
    sessions over) or until its store fences it; return why it stopped (``"stopped"``,
    ``"fenced"``). ``ready(node)`` is called once the node serves. For a node's script.

    Example::

        def ready(node):
            print(node.node_id, node.address, flush=True)

        reason = trio.run(functools.partial(sessions.serve_node, store, options, token=token, ready=ready))
        sys.exit(0 if reason == "stopped" else 3)
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with ClusterNode.open(store, session_factory, token=token, **options) as node:
            if ready is not None:
                ready(node)
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    async for signum in signals:
                        _log.info("cluster_node_signalled", node_id=node.node_id, signal=signal.Signals(signum).name)
                        await node.stop()
                        break

                nursery.start_soon(on_signal)
                await node.wait_stopped()
                nursery.cancel_scope.cancel()
    return node.stop_reason or "stopped"
