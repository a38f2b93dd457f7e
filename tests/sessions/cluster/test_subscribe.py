"""`SessionServer.subscribe` by name from a node that does not own the session: the events
come from the owner node (an OS process, ``python -m sessions.cluster``) over one HTTP
stream, on a real PostgreSQL (skipped with one line without it)."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import trio

import otpy
import sessions
from sessions import SessionServer

pytestmark = pytest.mark.timeout(45)


def _here(cluster: Any, postgres: Any) -> Any:
    store = sessions.PostgresStore(postgres.dsn, schema=postgres.schema, node_id="here", lease_ttl=1.0)
    factory = {"provider": sessions.ScriptedProvider()}
    return sessions.ClusterNode.open(store, lambda sid: factory, token=cluster.token, idle_timeout=60)


async def _until_finished(events: sessions.Subscription) -> list[sessions.SessionEvent]:
    got: list[sessions.SessionEvent] = []
    with trio.fail_after(10):
        async for event in events:
            got.append(event)
            if isinstance(event, sessions.TurnFinished):
                return got
    raise AssertionError(f"the subscription ended before TurnFinished: {got}")


async def _until_ended(events: sessions.Subscription, seconds: float) -> None:
    """Read ``events`` until the subscription ends (EndOfChannel: the iteration stops)."""
    with trio.fail_after(seconds):
        async for _ in events:
            pass
    assert events.closed


async def test_subscribe_on_another_node_streams_the_owners_turn(cluster: Any, postgres: Any) -> None:
    """A subscriber here, of a session that node a owns, gets TurnStarted, the TextDeltas
    and TurnFinished of a turn sent through a; a small buffer drops deltas first and says
    so with EventsDropped; closing the subscription ends the stream on a; a passivation
    on a ends the subscription here."""
    (a,) = await cluster.start("a")
    await cluster.send(a, "s1", "hello")
    async with _here(cluster, postgres) as here:
        events = await SessionServer.subscribe("s1")
        small = await SessionServer.subscribe("s1", buffer=2)
        assert otpy.whereis("s1") is None  # it runs on a, not here
        assert (await SessionServer.status("s1")).subscribers == 2  # routed: a's server counts them
        result = await cluster.send(a, "s1", "one two three four five six seven eight")
        got = await _until_finished(events)
        assert got[0] == sessions.TurnStarted("s1", 2, "one two three four five six seven eight")
        text = "".join(e.text for e in got if isinstance(e, sessions.TextDelta))
        assert text == result.text
        assert len([e for e in got if isinstance(e, sessions.TextDelta)]) > 1
        finished = got[-1]
        assert isinstance(finished, sessions.TurnFinished)
        assert finished.result.to_dict() == result.to_dict()

        async def all_dropped() -> bool:
            buffered = small._inner.buffer
            return small.dropped > 0 and bool(buffered) and isinstance(buffered[-1], sessions.TurnFinished)

        await cluster.until(all_dropped, 10)
        lost = await _until_finished(small)
        assert isinstance(lost[0], sessions.EventsDropped)
        assert sum(e.count for e in lost if isinstance(e, sessions.EventsDropped)) == small.dropped
        assert len(lost) <= 3  # the dropped count, then at most the 2 events the buffer holds

        await small.aclose()

        async def one_left() -> bool:
            return (await SessionServer.status("s1")).subscribers == 1

        await cluster.until(one_left, 10)  # the stream ended on a, and its subscription there
        assert len(here._streams) == 1

        await SessionServer.stop("s1")  # a passivates it: its server exits
        await _until_ended(events, 10)
        assert here._streams == set()
        assert await cluster.local(a) == []


async def test_killing_the_owner_ends_the_subscription(cluster: Any, postgres: Any) -> None:
    """SIGKILL of the owner node ends a subscription held on another node, like a local
    one whose server exits, and leaves no stream task behind."""
    (a,) = await cluster.start("a")
    await cluster.send(a, "k1", "hello")
    async with _here(cluster, postgres) as here:
        events = await SessionServer.subscribe("k1")
        assert len(here._streams) == 1
        cluster.signal(a, signal.SIGKILL)
        await cluster.wait_exit(a)
        await _until_ended(events, 15)
        assert events.closed
        assert here._streams == set()


async def test_stopping_the_node_ends_its_remote_subscriptions(cluster: Any, postgres: Any) -> None:
    """A subscription to another node's session ends when this node stops: its stream task
    belongs to the node."""
    (a,) = await cluster.start("a")
    await cluster.send(a, "n1", "hello")
    async with _here(cluster, postgres) as here:
        events = await SessionServer.subscribe("n1")
        await here.stop()
        assert here._streams == set()
    await _until_ended(events, 5)

    async def none_left() -> bool:
        return (await cluster.call(a, "n1", {"op": "get", "what": "status"})).subscribers == 0

    await cluster.until(none_left, 10)
