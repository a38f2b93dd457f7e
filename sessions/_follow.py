"""Following a session by name across its restarts: `SessionServer.follow`.

A `Subscription` ends when its server exits. A session under a supervisor comes back
under the same name, so a caller that wants the session's events for as long as the
session lives subscribes again to the new server: `Follower` does that, and says so
in the stream with a `SessionRestarted` event.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import TYPE_CHECKING

import attrs
import trio

import otpy

from ._errors import InvalidOption
from ._events import SessionEvent

if TYPE_CHECKING:
    from ._server import ServerRef
    from ._subscribers import Subscription

_FIRST_POLL = 0.005
_LAST_POLL = 0.1


@attrs.frozen
class SessionRestarted:
    """In a `SessionServer.follow` stream: the server exited and a new one holds the name.

    The events the old server sent before it exited came first; the new server's come
    next. A turn that the exit cut short follows at once as a `TurnFinished` with its
    interrupted `Result` (a subscriber that joins a restarted session gets it first),
    or, if a turn already runs on the new server, a `TurnSnapshot`.

    Example::

        async with SessionServer.follow("agent") as events:
            async for event in events:
                if isinstance(event, sessions.SessionRestarted):
                    print("restarted:", event.reason)
    """

    server: ServerRef
    """What `SessionServer.follow` was given (a name or ``otpy.via(...)``)."""
    previous: otpy.Pid
    """The server that exited."""
    current: otpy.Pid
    """The server now subscribed to."""

    @property
    def reason(self) -> object:
        """The previous server's exit reason (``"killed"``, the exception of a crash...)."""
        return self.previous.exit_reason


class Follower:
    """The async iterator `SessionServer.follow` returns: a session's events, across restarts.

    It subscribes to the server that holds the name, and when that subscription ends
    (its server exited), waits up to ``restart_timeout`` seconds for a new server under
    the name, subscribes to it, and yields a `SessionRestarted` before the new
    server's events. It ends when no server holds the name for ``restart_timeout``
    seconds (the session was stopped for good), when it is closed, or, when it was given
    a `otpy.Pid` (which no restart can take), when that server exits. Events sent between
    the exit and the new subscription are not seen; what they said is in the new
    server's first event (`TurnSnapshot`, `TurnFinished`) and in its history.

    Use it as an async context manager so that the subscription is closed when you stop
    early.

    Example::

        async with SessionServer.follow("agent", restart_timeout=10) as events:
            async for event in events:
                match event:
                    case sessions.TextDelta(text=text):
                        print(text, end="")
                    case sessions.SessionRestarted():
                        print("\\n[the session restarted]")
    """

    def __init__(self, server: ServerRef, restart_timeout: float, buffer: int | None) -> None:
        self.server = server
        self.restart_timeout = restart_timeout
        self.buffer = buffer
        self._pid: otpy.Pid | None = None
        self._subscription: Subscription | None = None
        self._closed = False

    @property
    def current(self) -> otpy.Pid | None:
        """The server subscribed to now (``None`` before the first event, and between servers).

        Example::

            print(events.current)
        """
        return self._pid if self._subscription is not None else None

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> SessionEvent | SessionRestarted:
        while not self._closed:
            if self._subscription is None:
                previous = self._pid
                if not await self._attach():
                    break
                assert self._pid is not None
                if previous is not None:
                    return SessionRestarted(server=self.server, previous=previous, current=self._pid)
            assert self._subscription is not None
            try:
                return await self._subscription.receive()
            except trio.EndOfChannel:
                self._subscription = None
        self._closed = True
        raise StopAsyncIteration

    async def _attach(self) -> bool:
        """Subscribe to the server that holds the name now (not the one followed so far), waiting up to
        ``restart_timeout``; False if none came."""
        # otpy's registry has no way to wait for a name to be registered: poll, with backoff,
        # for at most restart_timeout.
        from ._server import SessionServer

        deadline = trio.current_time() + self.restart_timeout
        poll = _FIRST_POLL
        while True:
            pid = self.server if isinstance(self.server, otpy.Pid) else otpy.whereis(self.server)
            if pid is not None and pid is not self._pid and pid.alive:
                try:
                    subscription = await SessionServer.subscribe(pid, buffer=self.buffer)
                except (otpy.NoProcess, otpy.ServerExited):
                    pass  # it exited meanwhile: wait for the next one
                else:
                    self._pid, self._subscription = pid, subscription
                    return True
            if isinstance(self.server, otpy.Pid) and self._pid is not None:
                return False  # a pid is never restarted
            now = trio.current_time()
            if now >= deadline:
                return False
            await trio.sleep(min(poll, deadline - now))
            poll = min(2 * poll, _LAST_POLL)

    def close(self) -> None:
        """Stop following: the current subscription is closed, iteration ends.

        Example::

            events.close()
        """
        self._closed = True
        if self._subscription is not None:
            self._subscription.close()

    async def aclose(self) -> None:
        """`close`, as an async function.

        Example::

            await events.aclose()
        """
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Follower:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def check_restart_timeout(value: object) -> float:
    """``restart_timeout``, checked: a finite number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidOption("restart_timeout", value, "expected a finite number of seconds >= 0")
    return float(value)
