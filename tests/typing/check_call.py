"""`otpy.call` infers the reply type of a typed request, and rejects a wrong use of it."""

from __future__ import annotations

from typing import Any, assert_type

import attrs

import otpy


@attrs.frozen
class Deposit(otpy.Call[int]):
    amount: int


@attrs.frozen
class Lookup(otpy.Call["str | None"]):
    key: str


async def typed_requests(server: otpy.Pid) -> None:
    assert_type(await otpy.call(server, Deposit(1)), int)
    assert_type(await otpy.call(server, Lookup("a"), timeout=1.0), str | None)
    balance: int = await otpy.call(server, Deposit(1))
    widened: float = await otpy.call(server, Deposit(1))  # an int is a float to both checkers
    print(balance, widened)


async def wrong_reply_types(server: otpy.Pid) -> None:
    text: str = await otpy.call(server, Deposit(1))  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    name: str = await otpy.call(server, Lookup("a"))  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    print(text, name)


async def plain_requests(server: otpy.Pid) -> None:
    # A request that is not a Call replies Any: nothing to check, nothing rejected.
    assert_type(await otpy.call(server, "pop"), Any)
    assert_type(await otpy.call("stack", ("push", 1)), Any)
    anything: str = await otpy.call(server, "pop")
    print(anything)


async def bad_arguments(server: otpy.Pid) -> None:
    await otpy.call(42, Deposit(1))  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
    await otpy.call(server, Deposit(1), timeout="soon")  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue, reportArgumentType]
