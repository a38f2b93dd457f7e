"""Result.category and Result.retryable: the table from every FinishReason, and real turns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import sessions
from sessions import FinishReason, Result, ResultCategory, ScriptedProvider, ScriptedReply, SessionServer

C = ResultCategory
TABLE = {
    FinishReason.STOP: (C.OK, False),
    FinishReason.INTERRUPTED: (C.INTERRUPTED, False),
    FinishReason.TIMEOUT: (C.LIMIT, True),
    FinishReason.MAX_TURNS: (C.LIMIT, False),
    FinishReason.MAX_BUDGET: (C.LIMIT, False),
    FinishReason.MAX_ITERATIONS: (C.LIMIT, False),
    FinishReason.NO_PROGRESS: (C.TOOL, False),
    FinishReason.HALTED: (C.TOOL, False),
    FinishReason.DURING_EXECUTION: (C.INTERNAL, False),
    FinishReason.PROVIDER_ERROR: (C.PROVIDER, False),
}


def result(reason: FinishReason, **fields: Any) -> Result:
    return Result("", "s", 1, finish_reason=reason, is_error=reason is not FinishReason.STOP, **fields)


def test_the_table_covers_every_finish_reason() -> None:
    assert set(TABLE) == set(FinishReason)


@pytest.mark.parametrize("reason", list(FinishReason))
def test_each_finish_reason_has_its_category_and_retryable(reason: FinishReason) -> None:
    assert (result(reason).category, result(reason).retryable) == TABLE[reason]


def test_the_documented_table_matches() -> None:
    """The table in ResultCategory's docstring names each reason with the category the code gives."""
    doc = sessions.ResultCategory.__doc__ or ""
    for reason, (category, _) in TABLE.items():
        row = next(line for line in doc.splitlines() if line.strip().startswith(f"``{reason.name}``"))
        assert f"``{category.name}``" in row


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(None, False), (400, False), (401, False), (404, False), (408, True), (409, True), (425, True), (429, True),
     (499, False), (500, True), (503, True), (529, True), (599, True), (600, False)],
)  # fmt: skip
def test_a_provider_error_is_retryable_by_its_status(status: int | None, retryable: bool) -> None:
    assert result(FinishReason.PROVIDER_ERROR, api_error_status=status).retryable is retryable


def test_the_providers_own_word_wins_over_the_status() -> None:
    said_no = result(FinishReason.PROVIDER_ERROR, api_error_status=503, extra={"retryable": False})
    said_yes = result(FinishReason.PROVIDER_ERROR, api_error_status=400, extra={"retryable": True})
    assert (said_no.retryable, said_yes.retryable) == (False, True)
    assert result(FinishReason.PROVIDER_ERROR, api_error_status=503, extra={"retryable": "no"}).retryable


def test_an_error_that_says_stop_is_a_provider_error() -> None:
    odd = Result("", "s", 1, finish_reason=FinishReason.STOP, is_error=True, api_error_status=529)
    assert (odd.category, odd.retryable) == (C.PROVIDER, True)


def test_the_category_survives_the_store_round_trip() -> None:
    before = result(FinishReason.PROVIDER_ERROR, api_error_status=429)
    after = Result.from_dict(before.to_dict())
    assert (after.category, after.retryable) == (C.PROVIDER, True)
    assert "category" not in before.to_dict()  # derived, never stored: old records get it too


async def test_real_turns_match_on_category(supervised: Callable[..., Any]) -> None:
    """A success, a rate-limited error result and a raised ProviderError, through a server."""
    provider = ScriptedProvider([
        ScriptedReply("fine"),
        ScriptedReply(error="overloaded", api_error_status=529),
        ScriptedReply(raise_=sessions.ProviderAuthError("scripted", "bad key")),
    ])  # fmt: skip
    await supervised(name="cat", provider=provider)
    seen = []
    for prompt in ("a", "b", "c"):
        match await SessionServer.send_message("cat", prompt):
            case Result(category=C.OK, text=text):
                seen.append(("ok", text))
            case Result(category=C.PROVIDER, retryable=True):
                seen.append(("retry", None))
            case Result(category=C.PROVIDER, retryable=False, error=error):
                seen.append(("give up", "bad key" in (error or "")))
    assert seen == [("ok", "fine"), ("retry", None), ("give up", True)]
