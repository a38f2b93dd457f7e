"""PostgresStore against a real PostgreSQL (skipped with one line when there is none): the
conformance suite; leases and epochs (exactly one claimer wins, a stale epoch's append is
refused under the lease row's lock and the rest of its batch commits); the node row, its
heartbeat and fencing; the membership helpers; no thread or connection left after aclose.

The tests with several OS processes (SIGKILL, SIGSTOP) are in test_stores_postgres_procs.py.
"""

from __future__ import annotations

import functools
import inspect
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import otpy
import sessions.testing
from sessions import Lease, LeaseLost, PostgresStore, Record, SessionInUse, Store

StoreFactory = Callable[[], Store]
TTL = 3.0  # the default lease: no test here waits for one to expire (they expire rows by hand)


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    """Every test closes the stores it opens: no writer or heartbeat thread outlives it."""
    yield
    assert [t.name for t in threading.enumerate() if t.name.startswith("sessions-")] == []


class TestPostgresStoreConforms(sessions.testing.StoreConformance):
    @pytest.fixture
    def store_factory(self, postgres: Any) -> StoreFactory:
        return lambda: PostgresStore(postgres.dsn, schema=postgres.schema)


def sql(postgres: Any, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of the test's own (autocommit)."""
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        cur = conn.execute(query.replace("{s}", f'"{postgres.schema}"'), params)
        return cur.fetchall() if cur.description else []


def connections(postgres: Any, node_id: str) -> int:
    rows = sql(postgres, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", f"%:{node_id}")
    return int(rows[0][0])


def store(postgres: Any, **options: Any) -> PostgresStore:
    options.setdefault("lease_ttl", TTL)
    return PostgresStore(postgres.dsn, schema=postgres.schema, **options)


def rec(sid: str, seq: int) -> Record:
    return Record(sid, seq, "message", {"n": seq})


WAITING_ON_A_ROW = "SELECT 1 FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
WAITING_ON_A_TABLE = "SELECT 1 FROM pg_locks WHERE NOT granted AND locktype = 'relation'"


async def _equal(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def until(check: Callable[[], Any], seconds: float = 5.0) -> None:
    """Poll ``check`` (sync, or returning an awaitable) until it is true: the database and
    the store's threads have no trio event to wait on."""
    with trio.fail_after(seconds):
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return
            await trio.sleep(0.01)


# --- leases and epochs ---------------------------------------------------------------------


async def test_claims_take_the_lease_with_a_growing_epoch(postgres: Any) -> None:
    """Each claim of a session (any node) takes the lease with the next epoch; release keeps it."""
    a, b = store(postgres, node_id="a"), store(postgres, node_id="b")
    try:
        claim = await a.claim("s")
        assert claim.epoch == 1
        assert await a.lease("s") == Lease("s", "a", 1, active=True, holder_live=True)
        with pytest.raises(SessionInUse, match="node 'a'"):
            await b.claim("s", wait=0)
        claim.release()
        with await b.claim("s", wait=2) as again:
            assert again.epoch == 2
            assert (await b.lease("s")) == Lease("s", "b", 2, active=True, holder_live=True)
        await until(lambda: _equal(a.lease("s"), Lease("s", None, 2, active=True, holder_live=False)))
    finally:
        await a.aclose()
        await b.aclose()


async def test_an_append_with_a_stale_epoch_is_refused(postgres: Any) -> None:
    """Once another node took the session over, the old holder's append is refused with
    LeaseLost naming both epochs and the holder, and nothing of it is written."""
    a, b = store(postgres, node_id="a"), store(postgres, node_id="b")
    try:
        await a.claim("s")
        await a.append("s", [rec("s", 1)], durable=True)
        sql(postgres, "UPDATE {s}.nodes SET expires_at = now() - interval '1 second' WHERE node_id = 'a'")
        claim_b = await b.claim("s", wait=0)  # a is not live: b takes over
        assert claim_b.epoch == 2
        await b.append("s", [rec("s", 2)], durable=True)
        with pytest.raises(LeaseLost) as lost:
            await a.append("s", [rec("s", 3)], durable=True)
        error = lost.value
        assert (error.session_id, error.epoch, error.current_epoch, error.holder) == ("s", 1, 2, "b")
        assert isinstance(lost.value, sessions.StoreError)
        assert [r.seq for r in await b.load("s")] == [1, 2]
        claim_b.release()
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_epoch_must_be_equal_not_merely_close(postgres: Any) -> None:
    """The boundary: the lease row still names this node (a restarted incarnation of the
    same node id claimed it) but its epoch is one more than this writer's: refused.
    An epoch check weakened to ``>=`` (or one on the node id alone) accepts it."""
    a = store(postgres, node_id="n1")
    try:
        claim = await a.claim("s")
        await a.append("s", [rec("s", 1)], durable=True)
        sql(postgres, "UPDATE {s}.leases SET epoch = epoch + 1 WHERE session_id = 's'")
        with pytest.raises(LeaseLost) as lost:
            await a.append("s", [rec("s", 2)], durable=True)
        assert (lost.value.epoch, lost.value.current_epoch, lost.value.holder) == (1, 2, "n1")
        sql(postgres, "UPDATE {s}.leases SET epoch = epoch - 1 WHERE session_id = 's'")
        await a.append("s", [rec("s", 2)], durable=True)  # the same epoch again: accepted
        assert [r.seq for r in await a.load("s")] == [1, 2]
        claim.release()
    finally:
        await a.aclose()


async def test_a_batch_commits_its_current_appends_and_refuses_the_stale_one(postgres: Any) -> None:
    """Appends queued together form one transaction: the stale session's append is refused
    with LeaseLost, the current sessions' appends commit (in that same transaction)."""
    a = store(postgres, node_id="a")
    try:
        claims = [await a.claim(sid) for sid in ("blocker", "stale", "c1", "c2")]
        sql(postgres, "UPDATE {s}.leases SET epoch = epoch + 1 WHERE session_id = 'stale'")
        outcomes: dict[str, BaseException | None] = {}

        async def append(sid: str) -> None:
            try:
                await a.append(sid, [rec(sid, 1)], durable=True)
                outcomes[sid] = None
            except LeaseLost as exc:
                outcomes[sid] = exc

        with psycopg.connect(postgres.dsn) as locker:  # holds the blocker's lease row: the writer waits on it
            locker.execute(f"SELECT 1 FROM {postgres.schema}.leases WHERE session_id = 'blocker' FOR UPDATE")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(append, "blocker")
                await until(lambda: sql(postgres, WAITING_ON_A_ROW))
                for sid in ("stale", "c1", "c2"):
                    nursery.start_soon(append, sid)
                await trio.sleep(0.2)  # all three are queued behind the blocked batch
                locker.rollback()
        assert [outcomes[sid] for sid in ("blocker", "c1", "c2")] == [None, None, None]
        assert isinstance(outcomes["stale"], LeaseLost)
        assert await a.load("stale") == []
        xmins = sql(postgres, "SELECT session_id, xmin::text FROM {s}.records ORDER BY 1")
        by_session = dict(xmins)
        assert by_session["c1"] == by_session["c2"] != by_session["blocker"]  # one transaction for c1 and c2
        for claim in claims:
            claim.release()
    finally:
        await a.aclose()


async def test_a_takeover_cannot_slip_between_the_check_and_the_commit(postgres: Any) -> None:
    """The epoch is checked under a share lock of the lease row, held to the commit: a
    claim made while an append is between its check and its commit waits for that commit.
    So an append that succeeds was committed before the takeover, never after.

    The test stalls the append after its check (a test connection holds the records table
    in SHARE mode, which the INSERT waits for), expires the holder's node, and claims from
    another node meanwhile. Without ``FOR SHARE`` the claim commits at once and the stalled
    append then commits under a stale epoch: this test fails.
    """
    a, b = store(postgres, node_id="a"), store(postgres, node_id="b")
    try:
        await a.claim("s")
        await b.node_info()
        done: list[str] = []

        async def append() -> None:
            try:
                await a.append("s", [rec("s", 1)], durable=True)
                done.append("append")
            except LeaseLost:
                done.append("refused")

        async def claim() -> None:
            (await b.claim("s", wait=5)).release()
            done.append("claim")

        with psycopg.connect(postgres.dsn) as locker:
            locker.execute(f'LOCK TABLE "{postgres.schema}".records IN SHARE MODE')
            async with trio.open_nursery() as nursery:
                nursery.start_soon(append)
                # the append passed its lease check and waits to INSERT
                await until(lambda: sql(postgres, WAITING_ON_A_TABLE))
                sql(postgres, "UPDATE {s}.nodes SET expires_at = now() - interval '1 second' WHERE node_id = 'a'")
                nursery.start_soon(claim)
                await trio.sleep(0.3)
                assert done == [], "the claim committed while an append was between its check and its commit"
                locker.rollback()
        # once the append commits, the claim does: which of the two workers' replies the test
        # hears first is not the order of the commits, so the order above is what is checked
        assert sorted(done) in (["append", "claim"], ["claim", "refused"]), done
        if "append" in done:
            assert [r.seq for r in await b.load("s")] == [1]
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_row_postgresql_refuses_fails_its_own_append_only(postgres: Any) -> None:
    """A batch whose one INSERT fails (here a record version out of PostgreSQL's integer
    range) is done again statement by statement: that append fails with StoreError, the
    appends batched with it commit."""
    a = store(postgres)
    outcomes: dict[str, str] = {}

    async def append(sid: str, version: int) -> None:
        try:
            await a.append(sid, [Record(sid, 1, "message", {"n": 1}, version=version)], durable=True)
            outcomes[sid] = "ok"
        except sessions.StoreError as exc:
            outcomes[sid] = str(exc)

    try:
        await a.node_info()
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(append, f"s{i}", 2**40 if i == 7 else 1)
        assert "out of range" in outcomes.pop("s7")
        assert set(outcomes.values()) == {"ok"}
        assert sorted(await a.list_sessions()) == sorted(outcomes)
    finally:
        await a.aclose()


async def test_a_cancelled_claim_never_leaves_a_lease_behind(postgres: Any) -> None:
    """A claim cancelled after it was handed to the writer (here while its statement
    waits for the lease row) still completes and returns its claim, so the lease it took
    is released with it; it is never left held by a live node that holds no claim."""
    a = store(postgres)
    try:
        (await a.claim("s")).release()  # the lease row exists (epoch 1, released)
        await until(lambda: _equal(a.lease("s"), Lease("s", None, 1, active=True, holder_live=False)))
        got: list[sessions.SessionClaim] = []
        scope = trio.CancelScope()

        async def claimer() -> None:
            with scope:
                got.append(await a.claim("s", wait=5))

        with psycopg.connect(postgres.dsn) as locker:
            locker.execute(f"SELECT 1 FROM {postgres.schema}.leases WHERE session_id = 's' FOR UPDATE")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(claimer)
                await until(lambda: sql(postgres, WAITING_ON_A_ROW))
                scope.cancel()
                await trio.sleep(0.1)
                locker.rollback()
        for claim in got:
            claim.release()
        await until(lambda: _equal(a.lease("s"), Lease("s", None, 2, active=True, holder_live=False)))
    finally:
        await a.aclose()


async def test_appends_without_a_claim(postgres: Any) -> None:
    """Plain use (a session never claimed) appends freely; once claimed, an append from a
    store that holds no claim is refused, and so is one after the store released it."""
    a, b = store(postgres, node_id="a"), store(postgres, node_id="b")
    try:
        await a.append("plain", [rec("plain", 1)], durable=True)
        claim = await a.claim("plain")
        await a.append("plain", [rec("plain", 2)], durable=True)
        with pytest.raises(LeaseLost, match="append through a claim"):
            await b.append("plain", [rec("plain", 3)], durable=True)
        claim.release()
        with pytest.raises(LeaseLost):
            await a.append("plain", [rec("plain", 3)], durable=True)
        assert [r.seq for r in await a.load("plain")] == [1, 2]
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.parametrize("rounds", [5])
async def test_concurrent_claims_exactly_one_wins_each_epoch(postgres: Any, rounds: int) -> None:
    """Eight nodes claim one session at the same moment, round after round: each round
    exactly one wins, with the next epoch."""
    nodes = [store(postgres, node_id=f"n{i}") for i in range(8)]
    try:
        for node in nodes:  # every node row up first, so each claim is one statement
            await node.node_info()
        for round_ in range(1, rounds + 1):
            winners: list[tuple[PostgresStore, sessions.SessionClaim]] = []
            losers: list[PostgresStore] = []
            go = trio.Event()

            async def attempt(
                node: PostgresStore,
                go: trio.Event = go,
                winners: list[tuple[PostgresStore, sessions.SessionClaim]] = winners,
                losers: list[PostgresStore] = losers,
            ) -> None:
                await go.wait()
                try:
                    winners.append((node, await node.claim("race", wait=0)))
                except SessionInUse:
                    losers.append(node)

            async with trio.open_nursery() as nursery:
                for node in nodes:
                    nursery.start_soon(attempt, node)
                await trio.sleep(0.05)
                go.set()
            assert (len(winners), len(losers)) == (1, 7)
            [(node, claim)] = winners
            assert claim.epoch == round_
            lease = await node.lease("race")
            assert lease is not None
            assert (lease.node_id, lease.epoch) == (node.node_id, round_)
            claim.release()
            released = Lease("race", None, round_, active=True, holder_live=False)
            await until(lambda node=node, released=released: _equal(node.lease("race"), released))
    finally:
        for node in nodes:
            await node.aclose()


async def test_a_session_server_on_postgres_survives_a_kill(postgres: Any, nursery: trio.Nursery) -> None:
    """A supervised SessionServer on PostgresStore: its claim is the lease (epoch 1); killed
    mid-life, it is restarted, claims again (epoch 2) once the dead one's lease is released,
    and carries on with its history."""
    pg = store(postgres)
    sup = await otpy.Supervisor.start_link([], name="pg-sup", max_restarts=10, max_seconds=5, nursery=nursery)
    try:
        provider = sessions.ScriptedProvider(default="ok")
        spec = sessions.SessionServer.child_spec(name="pg-agent", provider=provider, store=pg, session_id="pg-s")
        await otpy.Supervisor.start_child(sup, spec)
        await sessions.SessionServer.send_message("pg-agent", "one")
        assert await pg.lease("pg-s") == Lease("pg-s", pg.node_id, 1, active=True, holder_live=True)
        first = otpy.whereis("pg-agent")
        assert first is not None
        otpy.exit(first, "kill")
        await until(lambda: otpy.whereis("pg-agent") not in (None, first))
        await sessions.SessionServer.send_message("pg-agent", "two")
        assert await sessions.SessionServer.turn_count("pg-agent") == 2
        assert await pg.lease("pg-s") == Lease("pg-s", pg.node_id, 2, active=True, holder_live=True)
    finally:
        await otpy.stop(sup)
        await pg.aclose()


# --- the node row, heartbeat, fencing ----------------------------------------------------------


async def test_the_heartbeat_renews_the_node_row(postgres: Any) -> None:
    """The node row's expires_at moves on while the store is open; aclose marks it down."""
    a = store(postgres, node_id="a", cluster="c1", address="http://127.0.0.1:1")
    try:
        first = await a.node_info()
        assert (first.node_id, first.cluster, first.address, first.state) == ("a", "c1", "http://127.0.0.1:1", "up")
        await trio.sleep(TTL)
        later = await a.node_info()
        assert later.expires_at > first.expires_at
        assert [n.node_id for n in await a.live_nodes()] == ["a"]
        assert not a.fenced
    finally:
        await a.aclose()
    [(state,)] = sql(postgres, "SELECT state FROM {s}.nodes WHERE node_id = 'a'")
    assert state == "down"


async def test_a_node_whose_row_expired_fences_itself(postgres: Any) -> None:
    """A renewal that finds the row expired (the node was paused past its lease) fences the
    node for good: appends and claims raise LeaseLost, and it says so in the log."""
    a = store(postgres, node_id="a")
    try:
        claim = await a.claim("s")
        with structlog.testing.capture_logs() as logs:
            sql(postgres, "UPDATE {s}.nodes SET expires_at = now() - interval '1 second' WHERE node_id = 'a'")
            await until(lambda: a.fenced, seconds=5)
        assert [e["reason"] for e in logs if e["event"] == "postgres_node_fenced"] != []
        with pytest.raises(LeaseLost, match="fenced"):
            await a.append("s", [rec("s", 1)], durable=True)
        with pytest.raises(LeaseLost, match="fenced"):
            await a.claim("other", wait=0)
        assert await a.load("s") == []
        claim.release()
        await a.aclose()  # reopened by the next call, a fenced node is down, not live again
        assert await a.load("s") == []
        assert (await a.node_info()).state == "down"
        assert await a.live_nodes() == []
        assert a.fenced
    finally:
        await a.aclose()


async def test_a_node_cut_off_from_the_database_fences_before_its_lease_expires(
    postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renewals that keep failing fence the node by its own monotonic clock while its row
    is still live in the database: it stops writing before the others may take over."""
    a = store(postgres, node_id=f"cut-{postgres.schema}")
    try:
        await a.claim("s")
        real_connect = psycopg.connect

        def refuse(conninfo: str = "", **kwargs: Any) -> Any:
            if "heartbeat" in str(kwargs.get("application_name", "")):
                raise psycopg.OperationalError("connection refused (the test cut this node off)")
            return real_connect(conninfo, **kwargs)

        heartbeat = f"SELECT pid FROM pg_stat_activity WHERE application_name = 'otpy-sessions:heartbeat:{a.node_id}'"
        await until(lambda: sql(postgres, heartbeat), seconds=5)  # the heartbeat connects as the store opens
        monkeypatch.setattr(psycopg, "connect", refuse)
        [(pid,)] = sql(postgres, heartbeat)
        sql(postgres, "SELECT pg_terminate_backend(%s)", pid)
        await until(lambda: a.fenced, seconds=10)
        query = "SELECT extract(epoch FROM expires_at - now()) FROM {s}.nodes WHERE node_id = %s"
        [(left,)] = sql(postgres, query, a.node_id)
        assert float(left) > 0, "fenced only after the row had expired"
        with pytest.raises(LeaseLost, match="no renewal"):
            await a.append("s", [rec("s", 1)], durable=True)
    finally:
        monkeypatch.undo()
        await a.aclose()


async def test_a_restarted_node_takes_its_leases_back(postgres: Any) -> None:
    """A new incarnation of a node id claims what the old one held at once; the old one is
    fenced at its next renewal and its appends are refused by epoch."""
    old = store(postgres, node_id="n1")
    new = store(postgres, node_id="n1")
    try:
        await old.claim("s")
        await old.append("s", [rec("s", 1)], durable=True)
        claim = await new.claim("s", wait=0)  # no waiting for the old incarnation's lease to expire
        assert claim.epoch == 2
        await new.append("s", [rec("s", 2)], durable=True)
        await until(lambda: old.fenced, seconds=5)
        with pytest.raises(LeaseLost):
            await old.append("s", [rec("s", 3)], durable=True)
        assert [r.seq for r in await new.load("s")] == [1, 2]
        claim.release()
    finally:
        await old.aclose()
        await new.aclose()


# --- membership -------------------------------------------------------------------------------


async def test_the_orphan_scan_reads_active_leases_only(postgres: Any) -> None:
    """With 20,000 passivated leases and one orphan, the orphan scan's plan reads the partial
    index of active leases, not the table: a cluster holding most of its sessions passivated
    scans only the few it runs (measured: 151.6 ms -> 0.54 ms per scan with 200,000)."""
    s = store(postgres, node_id="n1")
    try:
        await s.node_info()
        sql(postgres, "INSERT INTO {s}.leases SELECT 'p' || g, NULL, 1, false, now() FROM generate_series(1, 20000) g")
        sql(postgres, "INSERT INTO {s}.leases VALUES ('orphan', 'gone', 3, true, now())")
        sql(postgres, "ANALYZE {s}.leases")
        assert [lease.session_id for lease in await s.orphans()] == ["orphan"]
        [(definition,)] = sql(
            postgres,
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = 'leases_active'",
            postgres.schema,
        )
        assert definition.endswith("(updated_at, session_id) WHERE active")
        plan = sql(
            postgres,
            "EXPLAIN SELECT l.session_id FROM {s}.leases l WHERE l.active AND (l.node_id IS NULL OR NOT EXISTS"
            " (SELECT 1 FROM {s}.nodes n WHERE n.node_id = l.node_id)) ORDER BY l.updated_at, l.session_id LIMIT 256",
        )
        text = "\n".join(line for (line,) in plan)
        assert "leases_active" in text, text
        assert "Seq Scan on leases" not in text, text
    finally:
        await s.aclose()


async def test_release_stale_lets_go_of_an_earlier_incarnations_leases_only(postgres: Any) -> None:
    """A node started again under its id releases the leases its id holds that this store does
    not claim (active flag kept, so they are orphans again), and keeps the ones it claims."""
    a = store(postgres, node_id="a")
    try:
        claim = await a.claim("mine")
        sql(postgres, "INSERT INTO {s}.leases VALUES ('earlier', 'a', 4, true, now()), ('idle', 'a', 2, false, now())")
        assert await a.release_stale() == ["earlier", "idle"]
        assert await a.lease("mine") == Lease("mine", "a", 1, active=True, holder_live=True)
        assert await a.lease("earlier") == Lease("earlier", None, 4, active=True, holder_live=False)
        assert await a.lease("idle") == Lease("idle", None, 2, active=False, holder_live=False)
        assert [lease.session_id for lease in await a.orphans()] == ["earlier"]
        await a.append("mine", [rec("mine", 1)], durable=True)  # its own claim still writes
        assert await a.release_stale() == []
        claim.release()
    finally:
        await a.aclose()


async def test_membership_helpers(postgres: Any) -> None:
    """live_nodes lists this cluster's live nodes; orphans lists active leases with no live
    holder; leave makes a node not live; set_address publishes; release_all lets go."""
    a = store(postgres, node_id="a", cluster="c")
    b = store(postgres, node_id="b", cluster="c")
    other = store(postgres, node_id="x", cluster="elsewhere")
    try:
        await other.node_info()
        await a.set_address("http://127.0.0.1:8401")
        await b.node_info()
        assert [(n.node_id, n.address) for n in await a.live_nodes()] == [("a", "http://127.0.0.1:8401"), ("b", None)]
        held = [await a.claim(sid) for sid in ("s1", "s2")]
        assert await b.orphans() == []
        await a.leave()
        assert [n.node_id for n in await b.live_nodes()] == ["b"]
        assert not a.fenced
        assert sorted(lease.session_id for lease in await b.orphans()) == ["s1", "s2"]
        assert [lease.session_id for lease in await b.orphans(limit=1)] in (["s1"], ["s2"])
        assert sorted(await a.release_all(active=False)) == ["s1", "s2"]
        assert await b.orphans() == []
        assert await b.lease("s1") == Lease("s1", None, 1, active=False, holder_live=False)
        with pytest.raises(LeaseLost):
            await a.append("s1", [rec("s1", 1)])
        for claim in held:
            claim.release()
        assert await a.lease("never") is None
    finally:
        for s in (a, b, other):
            await s.aclose()


async def test_set_active_marks_only_a_lease_this_node_holds(postgres: Any) -> None:
    """set_active(False) on a held lease keeps it out of orphans once released (a passivated
    session); on a lease another node holds it changes nothing and says so."""
    a = store(postgres, node_id="a", cluster="c")
    b = store(postgres, node_id="b", cluster="c")
    try:
        claim = await a.claim("s1")
        assert not await b.set_active("s1", False)
        assert await b.lease("s1") == Lease("s1", "a", 1, active=True, holder_live=True)
        assert await a.set_active("s1", False)
        claim.release()
        assert await a.claim("s2") is not None
        await a.leave()
        assert [lease.session_id for lease in await b.orphans()] == ["s2"]
        with trio.fail_after(5):  # the release is written by the writer thread, soon
            while True:
                if await b.lease("s1") == Lease("s1", None, 1, active=False, holder_live=False):
                    break
                await trio.sleep(0.01)
        assert not await a.set_active("never", True)
    finally:
        for s in (a, b):
            await s.aclose()


# --- resources ----------------------------------------------------------------------------------


async def test_aclose_leaves_no_thread_and_no_connection(postgres: Any) -> None:
    """A busy store ends its writer and heartbeat threads and closes both connections at
    aclose; it can be used again, and closed again."""
    before = set(threading.enumerate())
    closing = f"closing-{postgres.schema}"  # unique: other runs' connections are in pg_stat_activity too
    a = store(postgres, node_id=closing)
    try:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                sid = f"s{i}"
                nursery.start_soon(functools.partial(a.append, sid, [rec(sid, 1)], durable=True))
        assert {t.name for t in set(threading.enumerate()) - before} == {
            f"sessions-pg:{closing}",
            f"sessions-pg-heartbeat:{closing}",
        }
        await until(lambda: connections(postgres, closing) == 2)  # the heartbeat connects at once
        await a.aclose()
        assert set(threading.enumerate()) - before == set()
        await until(lambda: connections(postgres, closing) == 0)  # the server ends the backend just after
        await a.append("s0", [rec("s0", 2)], durable=True)
        assert connections(postgres, closing) >= 1
    finally:
        await a.aclose()
    await until(lambda: connections(postgres, closing) == 0)  # the server ends the backend just after
    assert set(threading.enumerate()) - before == set()


def test_the_store_binds_to_each_trio_run(postgres: Any) -> None:
    """Made outside trio.run, used by two runs in turn, closed by a third."""
    a = store(postgres)

    async def first() -> None:
        await a.append("s", [rec("s", 1)], durable=True)

    async def second() -> list[Record]:
        await a.append("s", [rec("s", 2)])
        return await a.load("s")

    trio.run(first)
    assert [r.seq for r in trio.run(second)] == [1, 2]
    trio.run(a.aclose)


def test_options_are_checked() -> None:
    """Malformed options fail at construction, naming the option."""
    with pytest.raises(sessions.InvalidOption, match="schema"):
        PostgresStore("postgresql://", schema="Robert'); DROP TABLE students;--")
    with pytest.raises(sessions.InvalidOption, match="lease_ttl"):
        PostgresStore("postgresql://", lease_ttl=0)
    with pytest.raises(sessions.InvalidOption, match="node_id"):
        PostgresStore("postgresql://", node_id="")


def test_the_example_runs(postgres: Any) -> None:
    """examples/postgres_store.py runs against the test database, in the test's schema."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "examples/postgres_store.py", "--dsn", postgres.dsn, "--schema", postgres.schema],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3. s1 on node-b: 1 turn(s) of history; lease: node-b, epoch 2" in done.stdout
    assert "node-a's late append refused: epoch 1, the session is at 2" in done.stdout
    assert "s2's log: ['session_started']" in done.stdout


def test_without_psycopg_the_store_says_what_to_install() -> None:
    """sessions imports without psycopg (no database needed for anything else); a
    PostgresStore is made, and its first use fails with a StoreError naming the extra."""
    code = """
import sys
sys.modules["psycopg"] = None
sys.modules["claude_agent_sdk"] = None
import trio
import sessions
store = sessions.PostgresStore("postgresql://postgres@127.0.0.1:1/none")
try:
    trio.run(store.load, "s")
except sessions.StoreError as exc:
    print("refused:", exc)
trio.run(store.aclose)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused: PostgresStore needs psycopg 3: pip install 'otpy-sessions[postgres]'" in done.stdout


# --- against a dict model, with sessions running at once (so batches mix them) ----------------

_session_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 3), st.booleans()),
        st.tuples(st.just("gap"), st.integers(2, 3), st.booleans()),
        st.tuples(st.just("delete"), st.just(0), st.just(False)),
    ),
    max_size=12,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(plan=st.lists(_session_ops, min_size=1, max_size=4))
def test_concurrent_sessions_match_a_dict(postgres: Any, plan: list[list[tuple[str, int, bool]]]) -> None:
    """Sessions run their random appends, refused gaps and deletes at the same time, so the
    writer's batches mix them (one transaction for several sessions' appends, statement by
    statement when a delete is among them); every session ends as its own list says."""
    tag = uuid.uuid4().hex[:8]

    async def main() -> None:
        pg = store(postgres)
        models: dict[str, list[Record]] = {}

        async def session(sid: str, ops: list[tuple[str, int, bool]]) -> None:
            log = models.setdefault(sid, [])
            for op, n, durable in ops:
                if op == "append":
                    records = [Record(sid, len(log) + i, "message", {"i": i}) for i in range(1, n + 1)]
                    await pg.append(sid, records, durable=durable)
                    log.extend(records)
                elif op == "gap":
                    with pytest.raises(sessions.StoreError, match="does not follow"):
                        await pg.append(sid, [Record(sid, len(log) + n, "gap")], durable=durable)
                else:
                    await pg.delete(sid)
                    log.clear()

        try:
            async with trio.open_nursery() as nursery:
                for i, ops in enumerate(plan):
                    nursery.start_soon(session, f"{tag}-{i}", ops)
            for sid, log in models.items():
                assert await pg.load(sid) == log
            listed = {sid for sid in await pg.list_sessions() if sid.startswith(tag)}
            assert listed == {sid for sid, log in models.items() if log}
        finally:
            await pg.aclose()

    trio.run(main)


def test_connections_bound_how_long_a_stuck_node_holds_anything(postgres: Any) -> None:
    """The writer's server session ends after a lease idle in a transaction; both
    connections give up on a silent peer within about a lease (tcp_user_timeout, keepalives)."""
    from sessions._stores._postgres import _PgHandler

    handler = _PgHandler(store(postgres, lease_ttl=2.0))
    for role in ("writer", "heartbeat"):
        with handler.connect(role) as conn:
            info = {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info}
            assert (info["tcp_user_timeout"], info["keepalives"], info["keepalives_idle"]) == ("2000", "1", "2")
            if role == "writer":
                assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("2s",)
            else:
                assert conn.execute("SHOW statement_timeout").fetchone() == ("666ms",)
