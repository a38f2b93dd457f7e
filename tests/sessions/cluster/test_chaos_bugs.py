"""Bugs the chaos runs found in the cluster layer, each as a test that fails until it is
fixed (marked ``xfail(strict=True)``: fixed, it passes, and the mark must go)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import sessions
from sessions import SessionServer

pytestmark = pytest.mark.timeout(45)

TOKEN = "chaos-bug-token-0123456789"


async def test_a_store_error_during_activation_is_retried_not_raised_as_a_start_error(postgres: Any) -> None:
    """The session's first claim fails once on a store error (a connection cut, as in a
    chaos run); the call by name gets its turn (or a ClusterUnavailable), not a StartError."""
    store = sessions.PostgresStore(postgres.dsn, schema=postgres.schema, node_id="n1", lease_ttl=3.0)
    claim = store.claim
    failures = [sessions.StoreError("claim failed: server closed the connection unexpectedly")]

    async def flaky_claim(session_id: str, **options: Any) -> Any:
        if failures:
            raise failures.pop()
        return await claim(session_id, **options)

    store.claim = flaky_claim  # type: ignore[method-assign]
    options = {"provider": sessions.ScriptedProvider()}
    async with sessions.ClusterNode.open(store, lambda sid: options, token=TOKEN, idle_timeout=60) as node:
        with trio.fail_after(20):
            try:
                result = await SessionServer.send_message("s1", "hello", idempotency_key="k1")
            except sessions.ClusterUnavailable:
                return
        assert result.turn == 1
        assert node.running


async def test_a_store_opened_by_a_slow_process_opens(postgres: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process is slow for a moment (here: 0.3 s before the schema's CREATE, with a
    lease_ttl of 0.4 s) while it opens its store: the store still opens."""
    import time

    import psycopg

    execute = psycopg.Connection.execute

    def slow_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if str(query).startswith("CREATE SCHEMA"):
            time.sleep(0.3)  # the process starved between two statements of one transaction
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", slow_execute)
    store = sessions.PostgresStore(postgres.dsn, schema=postgres.schema, node_id="slow", lease_ttl=0.4)
    try:
        assert await store.list_sessions() == []
    finally:
        await store.aclose()


async def test_a_node_restarted_under_its_id_serves_its_earlier_sessions(cluster: Any) -> None:
    """One node runs s1, is SIGKILLed and started again under the same id: the next call
    of s1 is served (turn 2), here or anywhere, instead of failing."""
    import signal

    (a,) = await cluster.start("a")
    first = await cluster.send(a, "s1", "one", key="k1")
    assert first.turn == 1
    cluster.signal(a, signal.SIGKILL)
    await cluster.wait_exit(a)
    (again,) = await cluster.start("a")  # the same node id, a new incarnation
    result = await cluster.call(
        again, "s1", {"op": "send", "prompt": "two", "overrides": {}, "key": "k2"}, seconds=25.0
    )
    assert isinstance(result, sessions.Result)
    assert result.turn == 2
