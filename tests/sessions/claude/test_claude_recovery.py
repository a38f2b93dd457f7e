"""A session never ends up unable to answer: a first turn cut short (a reply over the size cap,
the CLI killed) is followed by turns that still answer, and what the cut call cost is counted."""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import pytest

import sessions
from sessions import SessionContext, TurnCompleted, TurnRequest

from .fake_api import FakeAnthropic, all_user_texts


async def turn(conn: Any, prompt: str, n: int) -> TurnCompleted:
    events = [e async for e in conn.run_turn(TurnRequest(turn=n, prompt=prompt, messages=()))]
    assert isinstance(events[-1], TurnCompleted)
    return events[-1]


async def test_a_first_reply_over_the_cap_does_not_kill_the_session(
    fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]
):
    store = sessions.InMemoryStore()
    provider = sessions.ClaudeCode(max_buffer_size=1 << 20, **claude_kwargs)
    async with provider.connect(SessionContext("s1", store=store)) as conn:
        with pytest.raises(sessions.ProviderProtocolError):
            await turn(conn, "remember kiwis [[bigonce:1500000]]", 1)
        second = await turn(conn, "what fruit", 2)
        assert "recovered_from" not in second.extra  # a true resume: this machine's transcript had it all
        third = await turn(conn, "and again", 3)
        sid = conn.claude_session_id
    assert second.text == "echo: what fruit"
    assert third.text == "echo: and again"
    # a restart of the session (a new connection from the store) answers too
    again = sessions.ClaudeCode(max_buffer_size=1 << 20, **claude_kwargs)
    async with again.connect(SessionContext("s1", store=store, provider_session_id=sid)) as conn:
        fourth = await turn(conn, "still there", 4)
    assert fourth.text == "echo: still there"
    assert "what fruit" in all_user_texts(fake_api.message_requests()[-1])
    assert second.cost_usd + third.cost_usd + fourth.cost_usd == 6.0 * 4  # the cut call's charge too


async def test_the_charge_of_a_reply_over_the_cap_reaches_the_total(
    fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]
):
    provider = sessions.ClaudeCode(max_buffer_size=1 << 20, **claude_kwargs)
    async with provider.connect(SessionContext("s1", store=sessions.InMemoryStore())) as conn:
        with pytest.raises(sessions.ProviderProtocolError):
            await turn(conn, "[[bigonce:1500000]]", 1)
        second = await turn(conn, "next", 2)
    assert second.cost_usd == 12.0  # its own call and the cut one ($6 each at haiku)


@pytest.mark.parametrize("point", ["before-the-reply", "mid-stream"])
async def test_a_first_turn_killed_at_any_point_is_followed_by_answers(
    fake_api: FakeAnthropic, claude_kwargs: dict[str, Any], point: str
):
    store = sessions.InMemoryStore()
    provider = sessions.ClaudeCode(**claude_kwargs)
    async with provider.connect(SessionContext("s1", store=store)) as conn:
        cli = conn.pid
        assert cli is not None

        async def killed_turn() -> None:
            async for event in conn.run_turn(TurnRequest(1, "remember plums [[stall]]", ())):
                if point == "before-the-reply" or isinstance(event, sessions.TextDelta):
                    os.kill(cli, signal.SIGKILL)

        with pytest.raises(sessions.ProviderError) as info:
            await killed_turn()
        assert info.value.kind == "process_exited"
        fake_api.release.set()
        second = await turn(conn, "what fruit", 2)
        sid = conn.claude_session_id
    assert second.text.endswith("what fruit")
    again = sessions.ClaudeCode(**claude_kwargs)
    async with again.connect(SessionContext("s1", store=store, provider_session_id=sid)) as conn:
        third = await turn(conn, "still there", 3)
    assert third.text == "echo: still there"
    assert "what fruit" in all_user_texts(fake_api.message_requests()[-1])  # resumed with its history


async def test_a_conversation_the_cli_lost_is_recovered_from_the_sessions_transcript(
    fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]
):
    lost = str(uuid.uuid4())  # a CLI session id no transcript anywhere knows
    history = (
        sessions.Message(role="user", content="my cat is Tom"),
        sessions.Message(role="assistant", content="noted"),
    )
    provider = sessions.ClaudeCode(**claude_kwargs)
    async with provider.connect(SessionContext("s1", provider_session_id=lost, messages=history)) as conn:
        events = [e async for e in conn.run_turn(TurnRequest(1, "what is my cat called", history))]
        after = await turn(conn, "and now", 2)
    done = events[-1]
    assert isinstance(done, TurnCompleted)
    assert not done.is_error
    assert done.extra["recovered_from"] == lost  # recorded as such
    new = [e.id for e in events if isinstance(e, sessions.ProviderSessionId)]
    assert new
    assert new[0] != lost
    first_request = all_user_texts(fake_api.message_requests()[0])
    assert "user: my cat is Tom" in first_request[-1]  # seeded from the session's own transcript
    assert first_request[-1].endswith("what is my cat called")
    assert "recovered_from" not in after.extra
