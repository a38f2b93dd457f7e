"""Sessions across nodes: each node an OS process (``python -m sessions.cluster``) on a real
PostgreSQL (skipped with one line without it), with a small ``lease_ttl`` to keep it short."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import trio

import otpy
import sessions
from sessions import SessionServer

pytestmark = pytest.mark.timeout(45)


async def test_calls_by_name_are_routed_to_the_owner_node(cluster: Any, postgres: Any) -> None:
    """A session activated on node a is called through node b and from this process's own
    node with the client functions by name, subscribe included."""
    a, b = await cluster.start("a", "b")
    first = await cluster.send(a, "s1", "hello")
    assert (first.turn, first.text) == (1, "s1 turn 1: hello")
    assert await cluster.local(a) == ["s1"]
    second = await cluster.send(b, "s1", "again")
    assert second.turn == 2
    assert await cluster.local(b) == []
    store = sessions.PostgresStore(postgres.dsn, schema=postgres.schema, node_id="here", lease_ttl=1.0)
    factory = {"provider": sessions.ScriptedProvider()}
    async with sessions.ClusterNode.open(store, lambda sid: factory, token=cluster.token, idle_timeout=60) as here:
        result = await SessionServer.send_message("s1", "from here")
        assert result.turn == 3
        assert [r.turn for r in await SessionServer.history("s1")] == [1, 2, 3]
        assert await SessionServer.total_cost("s1") == pytest.approx(0.03)
        status = await SessionServer.status("s1")
        assert (status.state, status.turn_count) == ("idle", 3)
        async with await SessionServer.subscribe("s1") as events:  # streamed from a
            assert (await SessionServer.status("s1")).subscribers == 1
        assert events.closed
        await SessionServer.rewind("s1", 1)  # routed, like put_session
        assert len(await SessionServer.messages("s1")) == 2  # turn 1's prompt and reply
        async with trio.open_nursery() as nursery:
            slow: list[sessions.Result] = []

            async def turn() -> None:
                slow.append(await SessionServer.send_message("s1", "slow:5:long"))

            nursery.start_soon(turn)

            async def running() -> bool:
                return (await SessionServer.status("s1")).state == "running"

            await cluster.until(running, 10)
            assert await SessionServer.interrupt("s1") is True
        assert slow[0].finish_reason == sessions.FinishReason.INTERRUPTED
        assert here.supervisor is not None
        assert otpy.whereis("s1") is None  # it never ran here
        assert await cluster.local(a) == ["s1"]
        assert cluster.lease("s1") == ("a", 1, True)
        await SessionServer.stop("s1")  # routed to a: a passivation there
        assert await cluster.local(a) == []

        async def released() -> bool:  # the release is written by a's store a moment later
            return bool(cluster.lease("s1") == (None, 1, False))

        await cluster.until(released, 10)
    assert (await cluster.send(b, "s1", "back")).turn == 5  # activated on b, from the store


async def test_sigkill_failover_carries_history_cost_and_turns(cluster: Any) -> None:
    """A SIGKILLed node's sessions are live again on the survivor, which carries on with
    their history, cost and turn count; the epoch grew."""
    a, b = await cluster.start("a", "b")
    names = [f"k{i}" for i in range(4)]
    for name in names:
        for _ in range(2):
            await cluster.send(a, name, "hi")
    assert sorted(await cluster.local(a)) == names
    killed = cluster.signal(a, signal.SIGKILL)
    await cluster.wait_exit(a)

    async def moved() -> bool:
        return sorted(await cluster.local(b)) == names

    await cluster.until(moved)
    took = time.monotonic() - killed
    print(f"failover of {len(names)} sessions with lease_ttl=1.0: {took:.2f} s")
    for name in names:
        assert cluster.lease(name) == ("b", 2, True)
        result = await cluster.send(b, name, "after")
        assert result.turn == 3
        session = await cluster.session(b, name)
        assert session.turn_count == 3
        assert session.total_cost == pytest.approx(0.03)
        assert [r.turn for r in session.history] == [1, 2, 3]
    assert "cluster_session_taken_over" in b.event_names()


async def test_sigterm_hands_sessions_over_without_caller_errors(cluster: Any) -> None:
    """SIGTERM: the running turn finishes and its caller gets its result, calls that arrive
    meanwhile at the leaving node are served by the node that takes over, none fails."""
    a, b = await cluster.start("a", "b")
    await cluster.send(a, "h1", "one")
    await cluster.send(a, "h2", "one")
    results: dict[str, sessions.Result] = {}

    async def slow() -> None:
        results["slow"] = await cluster.send(a, "h1", "slow:2.0:two")

    async def during() -> None:
        await trio.sleep(0.3)  # a is draining: h1 runs its turn, h2 is handed over
        results["during"] = await cluster.send(a, "h2", "two")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        await trio.sleep(0.3)
        cluster.signal(a, signal.SIGTERM)
        nursery.start_soon(during)
    assert results["slow"].turn == 2
    assert results["during"].turn == 2
    assert await cluster.wait_exit(a) == 0
    for name in ("h1", "h2"):
        result = await cluster.send(b, name, "three")
        assert result.turn == 3
        assert (await cluster.session(b, name)).total_cost == pytest.approx(0.03)
    assert sorted(await cluster.local(b)) == ["h1", "h2"]
    assert "turn_interrupted" not in cluster.kinds("h1")
    names = a.event_names()
    assert "cluster_session_handed_over" in names
    assert "cluster_node_stopped" in names


async def test_idle_sessions_are_passivated_and_reactivated(cluster: Any) -> None:
    """After idle_timeout the session stops, its lease released inactive (no node brings it
    back by itself); the next call reactivates it with its history, cost and turns."""
    a, _ = await cluster.start("a", "b", idle_timeout=0.3)
    await cluster.send(a, "p1", "one")
    await cluster.send(a, "p1", "two")

    async def passivated() -> bool:
        return not await cluster.local(a)

    await cluster.until(passivated, 10)

    async def released() -> bool:  # written by a's store a moment after the session stopped
        return bool(cluster.lease("p1") == (None, 1, False))

    await cluster.until(released, 10)
    await trio.sleep(1.0)  # several orphan scans: an inactive lease is no orphan
    assert cluster.lease("p1") == (None, 1, False)
    result = await cluster.send(a, "p1", "three")
    assert result.turn == 3
    session = await cluster.session(a, "p1")
    assert (session.turn_count, session.total_cost) == (3, pytest.approx(0.03))
    assert cluster.lease("p1") == ("a", 2, True)
    assert "cluster_session_passivated" in a.event_names()


async def test_a_node_paused_past_its_lease_is_fenced(cluster: Any) -> None:
    """SIGSTOP during a turn, past the lease, then SIGCONT: the survivor has taken the
    session over; the paused node's write of the turn is refused, it stops its sessions,
    logs it and exits; the turn's caller gets an error, never a second completion."""
    a, b = await cluster.start("a", "b")
    await cluster.send(a, "f1", "one")
    outcome: dict[str, Any] = {}

    async def slow() -> None:
        try:
            outcome["result"] = await cluster.send(a, "f1", "slow:1.5:two")
        except Exception as exc:  # any error: the test looks at it below
            outcome["error"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        await trio.sleep(0.5)  # the turn is running on a
        cluster.signal(a, signal.SIGSTOP)

        async def taken_over() -> bool:
            return await cluster.local(b) == ["f1"]

        await cluster.until(taken_over, 15)
        cluster.signal(a, signal.SIGCONT)
    assert await cluster.wait_exit(a) == 3
    assert "result" not in outcome, outcome
    names = a.event_names()
    assert "cluster_node_fenced" in names
    assert cluster.lease("f1") == ("b", 2, True)
    kinds = cluster.kinds("f1")
    assert kinds.count("turn_finished") == 1  # turn 1 only: the cut turn 2 never completed
    result = await cluster.send(b, "f1", "three")
    assert result.turn == 3


async def test_a_turn_cut_by_a_sigkill_is_a_retryable_error_and_its_key_tells(cluster: Any) -> None:
    """A turn sent through node b to the session's owner a, which is SIGKILLed mid-turn: the
    caller gets otpy.ServerExited (node_lost); sent again with the same idempotency key
    once the session lives on b, it runs nothing and answers the interrupted turn."""
    a, b = await cluster.start("a", "b")
    await cluster.send(a, "c1", "one")
    outcome: dict[str, Any] = {}

    async def cut() -> None:
        try:
            outcome["result"] = await cluster.send(b, "c1", "slow:3:deploy", key="deploy-1")
        except otpy.ServerExited as exc:
            outcome["error"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cut)
        await trio.sleep(0.8)  # the turn runs on a
        cluster.signal(a, signal.SIGKILL)
    assert "result" not in outcome
    assert outcome["error"].reason == ["node_lost", "a"]
    again = await cluster.send(b, "c1", "slow:3:deploy", key="deploy-1")
    assert (again.turn, again.finish_reason) == (2, sessions.FinishReason.INTERRUPTED)
    after = await cluster.send(b, "c1", "three")
    assert after.turn == 3
    assert cluster.kinds("c1").count("turn_started") == 3  # turns 1, 2 (cut, not run again) and 3
    assert "cluster_call_cut" in b.event_names()


async def test_a_name_of_this_process_keeps_its_meaning(cluster: Any, postgres: Any) -> None:
    """A session under the application's own supervisor (not the cluster's) is called
    directly by name inside a node's run, the cluster's lease table never hears of it, and
    after the node has stopped, calls by name are plain otpy.call again."""
    store = sessions.PostgresStore(postgres.dsn, schema=postgres.schema, node_id="here", lease_ttl=1.0)
    spec = SessionServer.child_spec(name="mine", provider=sessions.ScriptedProvider(["one", "two"]))
    async with otpy.Supervisor.open([spec], strategy="one_for_one"):
        async with sessions.ClusterNode.open(store, dict, token=cluster.token, idle_timeout=0.1) as node:
            assert (await SessionServer.send_message("mine", "hi")).text == "one"
            await trio.sleep(0.3)  # past idle_timeout: the node passivates only its own sessions
            assert otpy.whereis("mine") is not None
            assert cluster.lease("mine") is None
            assert node.running
        assert not node.running
        assert (await SessionServer.send_message("mine", "again")).text == "two"


async def test_a_node_that_cannot_join_leaves_the_run_as_it_was(postgres: Any) -> None:
    """A node whose database is unreachable fails to start with the store's error, and
    another node can then be started in the same trio run."""
    dead = sessions.PostgresStore("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1", schema=postgres.schema)
    with pytest.raises(sessions.StoreError):
        async with sessions.ClusterNode.open(dead, dict, token="t" * 16):
            pass  # pragma: no cover
    store = sessions.PostgresStore(postgres.dsn, schema=postgres.schema, node_id="second", lease_ttl=1.0)
    async with sessions.ClusterNode.open(store, dict, token="t" * 16) as node:
        assert node.running


async def test_a_session_the_factory_refuses_is_a_cluster_error_naming_why(postgres: Any) -> None:
    """session_factory raising (an unknown session id, say) gives the caller ClusterUnavailable
    naming the factory's error at once, and the node goes on serving the others."""
    known = {"ok": {"provider": sessions.ScriptedProvider()}}
    store = sessions.PostgresStore(postgres.dsn, schema=postgres.schema, node_id="f", lease_ttl=1.0)
    async with sessions.ClusterNode.open(store, lambda sid: known[sid], token="t" * 16) as node:
        with trio.fail_after(5), pytest.raises(sessions.ClusterUnavailable, match="session_factory failed: KeyError"):
            await SessionServer.send_message("nope", "hi")
        assert (await SessionServer.send_message("ok", "hi")).turn == 1
        assert node.running
