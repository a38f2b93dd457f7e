"""Subscriptions: bounded per-subscriber buffers of session events, and the fan-out.

A session never waits for a subscriber. Each subscriber has its own buffer of
``capacity`` events; when it is full, the overflow policy is:

1. a text or thinking delta is dropped first: the incoming one, or, when the incoming
   event is not a delta, the oldest delta in the buffer;
2. if the buffer holds no delta, its oldest event is dropped;
3. the subscriber's next receive returns `EventsDropped` with the number of events
   dropped since its last receive, ahead of the events still buffered.

Deltas go first because the events that follow them repeat what they said:
`MessageAdded` carries the whole text, `TurnFinished` the whole `Result`.

trio's memory channels cannot do this: a full channel either blocks the sender or
refuses the new item, and cannot give up an item already buffered. Hence this small
buffer, written by hand.
"""

from __future__ import annotations

import collections
import weakref
from types import TracebackType

import trio

from ._events import EventsDropped, SessionEvent, TextDelta, ThinkingDelta

_DELTAS = (TextDelta, ThinkingDelta)


class SubscriberBuffer:
    """The session's side of one subscription (internal)."""

    __slots__ = ("__weakref__", "buffer", "capacity", "closed", "dropped", "dropped_total", "wakeup")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer: collections.deque[SessionEvent] = collections.deque()
        self.dropped = 0
        self.dropped_total = 0
        self.closed = False
        self.wakeup: trio.Event | None = None

    def push(self, event: SessionEvent) -> None:
        """Add ``event``, applying the overflow policy; never blocks."""
        buffer = self.buffer
        if len(buffer) >= self.capacity:
            self.dropped += 1
            self.dropped_total += 1
            if isinstance(event, _DELTAS):
                self._wake()
                return
            for i, old in enumerate(buffer):
                if isinstance(old, _DELTAS):
                    del buffer[i]
                    break
            else:
                buffer.popleft()
        buffer.append(event)
        self._wake()

    def close(self) -> None:
        """End the subscription: the reader gets what is buffered, then the end."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()
            self.wakeup = None


class Subscription:
    """A stream of one session's events: ``async for event in subscription``.

    Returned by `SessionServer.subscribe`. Each subscriber has its own bounded buffer:
    a slow one loses deltas first and is told so with `EventsDropped`; it never slows
    the session down. The iteration ends when the session's server exits or when you
    close the subscription (`aclose`, or leave its ``async with`` block). A
    subscription that is garbage collected, or whose subscribing process exits, is
    dropped by the session.

    Example::

        async with await SessionServer.subscribe("agent") as events:
            async for event in events:
                match event:
                    case sessions.TextDelta(text=text):
                        print(text, end="", flush=True)
                    case sessions.TurnFinished(result=result):
                        print(f"\\n[{result.cost_usd:.4f} USD]")
    """

    def __init__(self, inner: SubscriberBuffer) -> None:
        self._inner = inner
        weakref.finalize(self, inner.close)

    @property
    def dropped(self) -> int:
        """How many events this subscriber has lost to overflow, in total."""
        return self._inner.dropped_total

    @property
    def closed(self) -> bool:
        """Whether the subscription has ended (the events already buffered can still be read)."""
        return self._inner.closed

    async def receive(self) -> SessionEvent:
        """The next event, waiting for one if needed.

        Raises:
            trio.EndOfChannel: the subscription ended and nothing is left to read.
        """
        inner = self._inner
        # trio's pattern for a receive that must not lose an event: cancellation is checked
        # first, the event is taken with no checkpoint between the check and the pop (another
        # task reading the same subscription cannot empty the buffer in between), and the
        # checkpoint after it cannot raise.
        while True:
            await trio.lowlevel.checkpoint_if_cancelled()
            if inner.dropped:
                count, inner.dropped = inner.dropped, 0
                await trio.lowlevel.cancel_shielded_checkpoint()
                return EventsDropped(count)
            if inner.buffer:
                event = inner.buffer.popleft()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return event
            if inner.closed:
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise trio.EndOfChannel
            if inner.wakeup is None:
                inner.wakeup = trio.Event()
            await inner.wakeup.wait()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> SessionEvent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop receiving: the session drops this subscriber at its next event."""
        self._inner.close()

    async def aclose(self) -> None:
        """`close`, as an async function (for ``contextlib.aclosing`` and friends)."""
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Fanout:
    """The subscribers of one session (internal). Shared by the server and its turn task."""

    __slots__ = ("subscribers",)

    def __init__(self) -> None:
        self.subscribers: list[SubscriberBuffer] = []

    def add(self, capacity: int) -> SubscriberBuffer:
        inner = SubscriberBuffer(capacity)
        self.subscribers.append(inner)
        return inner

    def publish(self, event: SessionEvent) -> None:
        """Give ``event`` to every live subscriber; forget the closed ones."""
        subscribers = self.subscribers
        if not subscribers:
            return
        closed = False
        for inner in subscribers:
            if inner.closed:
                closed = True
            else:
                inner.push(event)
        if closed:
            self.subscribers = [s for s in subscribers if not s.closed]

    def count(self) -> int:
        self.subscribers = [s for s in self.subscribers if not s.closed]
        return len(self.subscribers)

    def close_all(self) -> None:
        for inner in self.subscribers:
            inner.close()
        self.subscribers = []
