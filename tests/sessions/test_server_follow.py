"""SessionServer.follow: a session's events by name, across its restarts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import otpy
import sessions
from sessions import FinishReason, ScriptedProvider, ScriptedReply, SessionRestarted, SessionServer

Start = Callable[..., Any]


async def restarted(name: str, old: otpy.Pid) -> otpy.Pid:
    while otpy.whereis(name) in (None, old):  # noqa: ASYNC110 (virtual time; no event for a name)
        await trio.sleep(0.01)
    pid = otpy.whereis(name)
    assert pid is not None
    return pid


def summary(event: object) -> object:
    match event:
        case sessions.TurnStarted(turn=turn):
            return ("started", turn)
        case sessions.TurnFinished(result=result):
            return ("finished", result.turn, result.finish_reason)
        case SessionRestarted():
            return "restarted"
    return None


async def test_follow_resubscribes_after_a_kill_and_marks_the_restart(
    supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Killed mid-turn and restarted by its supervisor: the follower goes on with the new server,
    after a SessionRestarted naming both servers and the reason, then the cut turn's TurnFinished."""
    provider = ScriptedProvider(["one", ScriptedReply("two, slowly", delay=30), "three"])
    await supervised(name="a", provider=provider)
    seen: list[Any] = []

    async def follow() -> None:
        async with SessionServer.follow("a") as events:
            async for event in events:
                seen.append(event)

    nursery.start_soon(follow)
    await trio.sleep(0.1)
    await SessionServer.send_message("a", "one")
    old = otpy.whereis("a")
    assert old is not None

    async def lost() -> None:
        with pytest.raises(otpy.ServerExited):
            await SessionServer.send_message("a", "two")

    nursery.start_soon(lost)
    await trio.sleep(1)
    otpy.exit(old, "kill")
    new = await restarted("a", old)
    await trio.sleep(0.5)
    await SessionServer.send_message("a", "three")
    await trio.sleep(0.1)
    marks = [summary(e) for e in seen if summary(e) is not None]
    assert marks == [
        ("started", 1),
        ("finished", 1, FinishReason.STOP),
        ("started", 2),
        "restarted",
        ("finished", 2, FinishReason.INTERRUPTED),
        ("started", 3),
        ("finished", 3, FinishReason.STOP),
    ]
    [mark] = [e for e in seen if isinstance(e, SessionRestarted)]
    assert (mark.server, mark.previous, mark.current, mark.reason) == ("a", old, new, "killed")
    await otpy.stop("sup")


async def test_follow_ends_when_no_server_comes_back(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A session stopped for good: the follower ends restart_timeout seconds later, not before."""
    await SessionServer.start_link(name="a", provider=ScriptedProvider(), nursery=nursery)
    ended_at: list[float] = []

    async def follow() -> None:
        async for _ in SessionServer.follow("a", restart_timeout=3):
            pass
        ended_at.append(trio.current_time())

    nursery.start_soon(follow)
    await trio.sleep(1)
    await SessionServer.send_message("a", "hi")
    stopped_at = trio.current_time()
    await SessionServer.stop("a")
    await trio.sleep(2.9)
    assert ended_at == []
    await trio.sleep(0.2)
    assert len(ended_at) == 1
    assert 3 <= ended_at[0] - stopped_at <= 3.2


async def test_follow_waits_for_a_name_not_yet_registered(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The first server, too, may come a little later; a pid is followed until it exits."""
    seen: list[Any] = []

    async def follow() -> None:
        async for event in SessionServer.follow("late", restart_timeout=2):
            seen.append(summary(event))

    nursery.start_soon(follow)
    await trio.sleep(1)
    pid = await SessionServer.start_link(name="late", provider=ScriptedProvider(), nursery=nursery)
    await trio.sleep(0.2)
    await SessionServer.send_message("late", "hi")
    await trio.sleep(0.1)
    assert [m for m in seen if m] == [("started", 1), ("finished", 1, FinishReason.STOP)]

    by_pid: list[Any] = []

    async def follow_pid() -> None:
        async for event in SessionServer.follow(pid):
            by_pid.append(event)
        by_pid.append("ended")

    nursery.start_soon(follow_pid)
    await trio.sleep(0.1)
    await SessionServer.stop(pid)
    await trio.sleep(0.1)
    assert by_pid == ["ended"]  # at once: a pid is never restarted


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "5", True])
def test_follow_checks_its_options(bad: object) -> None:
    """restart_timeout is a finite number >= 0 (0 is fine); buffer an int >= 1."""
    with pytest.raises(sessions.InvalidOption, match="restart_timeout"):
        SessionServer.follow("a", restart_timeout=bad)  # type: ignore[arg-type]
    assert SessionServer.follow("a", restart_timeout=0).restart_timeout == 0
    with pytest.raises(sessions.InvalidOption, match="buffer"):
        SessionServer.follow("a", buffer=0)
