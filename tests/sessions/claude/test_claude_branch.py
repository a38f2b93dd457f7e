"""Rewind and fork with the real CLI on the fake Messages API: the model sees the conversation
from the right point (the CLI's own fork, ``--fork-session --resume-session-at``), and so it does
after the SessionServer is killed and its supervisor restarts it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import otpy
import sessions
from sessions import SessionServer

from .fake_api import FakeAnthropic, _user_texts, make_env
from .test_claude_server import claude_pids, wait_for

Start = Callable[..., Any]


def conversation(body: dict[str, Any]) -> list[str]:
    """What the model was shown, in order: the user's texts (system reminders left out) and
    the assistant's, as "user: ..." and "assistant: ..."."""
    said = []
    for message in body.get("messages", []):
        role = message.get("role")
        if role == "user":
            said += [f"user: {text}" for text in _user_texts(message)]
        elif role == "assistant":
            content = message.get("content")
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
            said += [f"assistant: {b['text']}" for b in blocks if b.get("type") == "text"]
    return said


def said(*prompts: str) -> list[str]:
    """The conversation of ``prompts`` each answered by the fake's echo, the last one unanswered."""
    lines = []
    for prompt in prompts[:-1]:
        lines += [f"user: {prompt}", f"assistant: echo: {prompt}"]
    return [*lines, f"user: {prompts[-1]}"]


async def restart(name: str, *, idle_cli: bool = True) -> None:
    """Kill the server ``name``; wait until its supervisor has started the next one and, if the
    server keeps a CLI between turns (``idle_cli``: duplex), the killed one's CLI is gone (one CLI
    of those running before: each duplex server has one)."""
    old = otpy.whereis(name)
    assert old is not None
    cli = claude_pids()
    otpy.exit(old, "kill")
    await wait_for(lambda: otpy.whereis(name) not in (None, old))
    await wait_for(lambda: len(claude_pids() & cli) == len(cli) - idle_cli)


async def test_after_a_rewind_the_model_sees_the_turns_up_to_it_across_restarts(
    supervised: Start, fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]
) -> None:
    """rewind(1) after three turns: the next request carries turn 1 and the new prompt, not turns
    2-3 and not nothing; a server killed right after the rewind, and again after the next turn,
    goes on from the same point."""
    store = sessions.InMemoryStore()
    await supervised(name="agent", provider=sessions.ClaudeCode(**claude_kwargs), store=store, session_id="s")
    for prompt in ("one", "two", "three"):
        first = await SessionServer.send_message("agent", prompt)
    await SessionServer.rewind("agent", 1)
    await restart("agent")  # the rewind is in the log: the restarted server forks the CLI's conversation
    four = await SessionServer.send_message("agent", "four")
    assert conversation(fake_api.message_requests()[-1]) == said("one", "four")
    assert four.text == "echo: four"
    assert four.cost_usd == 6.0  # one call, at haiku's fake price: the CLI's restored total is not charged again
    assert four.provider_session_id not in (None, first.provider_session_id)  # the CLI's fork: a new session
    await restart("agent")
    await SessionServer.send_message("agent", "five")
    assert conversation(fake_api.message_requests()[-1]) == said("one", "four", "five")
    await SessionServer.rewind("agent", 3)  # back to the first branch, before the first rewind
    await SessionServer.send_message("agent", "six")
    assert conversation(fake_api.message_requests()[-1]) == said("one", "two", "three", "six")
    assert await SessionServer.total_cost("agent") == 6.0 * 6


async def test_a_fork_goes_on_from_its_turn_and_the_source_is_unchanged(
    supervised: Start, fake_api: FakeAnthropic, claude_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    """A fork at turn 2 of three, run on another machine (a HOME that never saw the source) with a
    CLI per turn: its next request carries turns 1-2 and its prompt; the source's next request
    still carries its three turns; a fork server killed and restarted goes on from its own turns."""
    store = sessions.InMemoryStore()
    await supervised(name="source", provider=sessions.ClaudeCode(**claude_kwargs), store=store, session_id="s")
    for prompt in ("one", "two", "three"):
        await SessionServer.send_message("source", prompt)
    branch = await SessionServer.fork(store, "s", at_turn=2)
    fresh_home = make_env(tmp_path / "elsewhere", fake_api.url)
    elsewhere = sessions.ClaudeCode(transport="per_turn", **{**claude_kwargs, "env": fresh_home})
    await supervised(name="fork", provider=elsewhere, store=store, session_id=branch)
    forked = await SessionServer.send_message("fork", "fork-next")
    assert conversation(fake_api.message_requests()[-1]) == said("one", "two", "fork-next")
    assert (forked.turn, forked.cost_usd) == (3, 6.0)
    await SessionServer.send_message("source", "source-next")
    assert conversation(fake_api.message_requests()[-1]) == said("one", "two", "three", "source-next")
    await restart("fork", idle_cli=False)
    await SessionServer.send_message("fork", "fork-again")
    assert conversation(fake_api.message_requests()[-1]) == said("one", "two", "fork-next", "fork-again")
    source_cli = await SessionServer.provider_session_id("source")
    assert await SessionServer.provider_session_id("fork") not in (None, source_cli)


async def test_a_branch_point_the_cli_cannot_find_falls_back_to_the_transcript(
    fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]
) -> None:
    """A turn result that names an entry the CLI's transcript lacks: the CLI refuses the fork, and
    the provider starts a new CLI session whose first turn carries the transcript, as text."""
    messages = (sessions.Message("user", "remember 42"), sessions.Message("assistant", "echo: remember 42"))
    point = sessions.Result(
        text="echo: remember 42",
        session_id="s",
        turn=1,
        provider_session_id="6b1c2f4e-0000-4000-8000-000000000001",
        extra={"resume_session_at": "6b1c2f4e-0000-4000-8000-000000000002"},
    )
    ctx = sessions.SessionContext("s", messages=messages, continues_from=point)
    async with sessions.ClaudeCode(**claude_kwargs).connect(ctx) as conn:
        events = [e async for e in conn.run_turn(sessions.TurnRequest(2, "which number", messages))]
    final = events[-1]
    assert isinstance(final, sessions.TurnCompleted)
    assert final.extra["recovered_from"] == point.provider_session_id
    [user] = [m for m in fake_api.message_requests()[-1]["messages"] if m["role"] == "user"]
    text = "\n".join(_user_texts(user))
    assert "user: remember 42" in text
    assert "assistant: echo: remember 42" in text
    assert text.endswith("which number")


async def test_a_seeded_session_sends_its_seed_once(
    supervised: Start, fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]
) -> None:
    """A ``messages=`` seed (also what rewind(0) goes back to) is a conversation the CLI never had:
    the first turn carries it before the prompt; the next turn resumes the CLI's session."""
    seed = [sessions.Message("user", "My name is Ada."), sessions.Message("assistant", "Hello, Ada.")]
    await supervised(name="agent", provider=sessions.ClaudeCode(**claude_kwargs), messages=seed)
    await SessionServer.send_message("agent", "who am I")
    [first] = conversation(fake_api.message_requests()[-1])
    assert "user: My name is Ada.\nassistant: Hello, Ada." in first
    assert first.endswith("who am I")
    await SessionServer.send_message("agent", "again")
    assert conversation(fake_api.message_requests()[-1])[1:] == ["assistant: echo: " + first[6:], "user: again"]


@pytest.mark.parametrize("option", ["resume_session_at", "resume_drops_turn"])
def test_the_branch_options_are_the_providers_own(option: str) -> None:
    """The provider sets the CLI's branch options itself: given as options, they are refused by name."""
    from claude_agent_sdk import ClaudeAgentOptions

    uuid = "6b1c2f4e-0000-4000-8000-000000000002"
    with pytest.raises(sessions.InvalidOption, match=r"SessionServer\.rewind") as info:
        sessions.ClaudeCode(**{option: uuid})
    assert info.value.option == option
    with pytest.raises(sessions.InvalidOption, match=r"SessionServer\.rewind"):
        sessions.ClaudeCode(ClaudeAgentOptions(**{option: uuid}))  # type: ignore[arg-type]
    flag = "--" + option.replace("_", "-")
    with pytest.raises(sessions.InvalidOption, match="sets these CLI flags itself"):
        sessions.ClaudeCode(extra_args={flag: uuid})
