"""otpy used outside trio.run (from asyncio.run, say): a clear otpy error, not trio's internal one (issue 17)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import otpy


class Counter(otpy.GenServer):
    async def init(self) -> None:
        self.count = 0


ENTRY_POINTS: dict[str, Callable[[], Any]] = {
    "call": lambda: otpy.call("counter", "get"),
    "call_pid": lambda: otpy.call(otpy.Pid(Counter(), None, False), "get"),
    "cast": lambda: otpy.cast("counter", "increment"),
    "send": lambda: otpy.send("counter", "hello"),
    "whereis": lambda: otpy.whereis("counter"),
    "registered": lambda: otpy.registered(),
    "send_after": lambda: otpy.send_after("counter", "tick", 1.0),
    "start_link": lambda: Counter.start_link(),
    "GenServer.open": lambda: Counter.open(),
    "Supervisor.open": lambda: otpy.Supervisor.open([], strategy="one_for_one"),
}


async def use(entry: Callable[[], Any]) -> None:
    value = entry()
    if hasattr(value, "__aenter__"):
        async with value:
            pass
    elif hasattr(value, "__await__"):
        await value


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_from_asyncio_run_the_error_says_what_happened_and_where_to_read(name: str) -> None:
    """NotInTrioRun (a RuntimeError too), naming asyncio and pointing to docs/asyncio.md."""
    with pytest.raises(otpy.NotInTrioRun) as info:
        asyncio.run(use(ENTRY_POINTS[name]))
    message = str(info.value)
    assert message.startswith("otpy was used outside trio.run (in an asyncio event loop): ")
    assert "docs/asyncio.md" in message
    assert "Cannot be used outside of a run context" not in message
    assert info.value.__cause__ is None
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, otpy.OtpError)


def test_from_plain_synchronous_code_it_names_no_event_loop() -> None:
    with pytest.raises(otpy.NotInTrioRun) as info:
        otpy.whereis("counter")
    assert str(info.value).startswith("otpy was used outside trio.run: a process name was looked up")
    assert info.value.library is None


def test_code_that_caught_runtime_error_still_does() -> None:
    with pytest.raises(RuntimeError, match=r"otpy was used outside trio\.run"):
        otpy.cast("counter", "increment")
