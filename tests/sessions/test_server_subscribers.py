"""The subscriber buffer's overflow policy, on its own (the server's side of a subscription)."""

from __future__ import annotations

import gc

import pytest
import trio

from sessions import EventsDropped, Message, MessageAdded, Subscription, TextDelta, TurnStarted
from sessions._subscribers import Fanout, SubscriberBuffer

START = TurnStarted(session_id="s", turn=1, prompt="p")


def added(text: str) -> MessageAdded:
    return MessageAdded(Message(role="assistant", content=text))


async def drain(subscription: Subscription) -> list[object]:
    subscription.close()
    return [event async for event in subscription]


async def test_under_capacity_nothing_is_dropped() -> None:
    """Events are received in order while the buffer has room."""
    inner = SubscriberBuffer(3)
    for event in (START, TextDelta("a"), added("a")):
        inner.push(event)
    assert await drain(Subscription(inner)) == [START, TextDelta("a"), added("a")]


async def test_an_incoming_delta_is_dropped_when_full() -> None:
    """A full buffer drops an incoming delta; the next receive says one was dropped."""
    inner = SubscriberBuffer(2)
    for event in (START, TextDelta("a"), TextDelta("b")):
        inner.push(event)
    assert await drain(Subscription(inner)) == [EventsDropped(1), START, TextDelta("a")]


async def test_another_event_evicts_the_oldest_delta() -> None:
    """A non-delta event makes room by evicting the oldest buffered delta."""
    inner = SubscriberBuffer(3)
    for event in (TextDelta("a"), START, TextDelta("b"), added("ab")):
        inner.push(event)
    assert await drain(Subscription(inner)) == [EventsDropped(1), START, TextDelta("b"), added("ab")]


async def test_without_deltas_the_oldest_event_goes() -> None:
    """With no delta left to drop, the oldest event is dropped."""
    inner = SubscriberBuffer(2)
    for event in (added("1"), added("2"), added("3")):
        inner.push(event)
    subscription = Subscription(inner)
    assert await drain(subscription) == [EventsDropped(1), added("2"), added("3")]
    assert subscription.dropped == 1


async def test_a_reader_waits_for_the_next_event() -> None:
    """receive() waits until an event is pushed, and ends once the buffer is closed and empty."""
    inner = SubscriberBuffer(4)
    subscription = Subscription(inner)
    got: list[object] = []

    async def read() -> None:
        async for event in subscription:
            got.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.sleep(0.01)
        inner.push(START)
        await trio.sleep(0.01)
        assert got == [START]
        inner.close()
    with pytest.raises(trio.EndOfChannel):
        await subscription.receive()


async def test_two_readers_of_one_subscription_share_its_events() -> None:
    """Two tasks reading one subscription at once each get distinct events, every event once,
    and both end at its end (an event is taken only after the reader's checkpoint)."""
    inner = SubscriberBuffer(64)
    subscription = Subscription(inner)
    got: list[list[object]] = [[], []]

    async def read(index: int) -> None:
        async for event in subscription:
            got[index].append(event)

    events = [added(str(number)) for number in range(20)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, 0)
        nursery.start_soon(read, 1)
        await trio.sleep(0.01)
        for event in events:  # each push wakes both readers; only one can take it
            inner.push(event)
            await trio.lowlevel.checkpoint()
        inner.push(events[0])
        inner.close()
    assert sorted(map(repr, got[0] + got[1])) == sorted(map(repr, [*events, events[0]]))
    assert got[0]
    assert got[1]


def test_the_fanout_forgets_closed_and_collected_subscribers() -> None:
    """publish skips and forgets closed buffers; a collected Subscription closes its buffer."""
    fanout = Fanout()
    kept, closed, collected = fanout.add(4), fanout.add(4), fanout.add(4)
    wrapper = Subscription(collected)
    closed.close()
    del wrapper
    gc.collect()
    fanout.publish(START)
    assert fanout.subscribers == [kept]
    assert list(kept.buffer) == [START]
