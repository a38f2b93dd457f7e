"""A SessionServer with an Ollama model and a SqliteStore, killed mid-loop, restarts and carries on.

The model is the real `sessions.Ollama` over HTTP to the fake server; the server wraps it
in `sessions.AgentLoop`; the supervisor is otpy's (the ``supervised`` fixture of
tests/sessions/conftest.py).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from sessions_fake_llm import Reply, Seen, ollama_text, ollama_tools, serve

import otpy
import sessions
from sessions import FinishReason, SessionServer

Start = Callable[..., Any]


async def wait_until(predicate: Callable[[], bool], step: float = 0.01) -> None:
    while not predicate():  # noqa: ASYNC110 (a condition with no event to wait on)
        await trio.sleep(step)


def turn_of(seen: Seen) -> tuple[str, int]:
    """The prompt the request answers, and how many model calls of its turn came before."""
    messages = seen.body["messages"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    done_calls = sum(1 for m in messages[last_user:] if m["role"] == "assistant")
    # after an interrupted turn, a note in brackets heads the prompt: the prompt is what follows it
    return messages[last_user]["content"].rsplit("]\n\n", 1)[-1], done_calls


async def send_in_background(nursery: trio.Nursery, name: str, prompt: str, outcomes: list[Any]) -> None:
    async def send() -> None:
        try:
            outcomes.append(await SessionServer.send_message(name, prompt))
        except (otpy.ServerExited, otpy.NoProcess) as exc:
            outcomes.append(exc)

    nursery.start_soon(send)


async def test_killed_mid_loop_restarts_and_continues_with_its_transcript(
    tmp_path: Path, supervised: Start, nursery: trio.Nursery
) -> None:
    # real time: the SQLite store writes from a thread, which virtual time would outrun
    (tmp_path / "a.txt").write_text("alpha")

    def script(seen: Seen) -> Reply:
        prompt, step = turn_of(seen)
        if prompt == "one":
            return ollama_tools(("list", {"path": "."})) if step == 0 else ollama_text("answer one")
        if prompt == "two":  # one tool round, then the model hangs: the turn is mid-loop
            return ollama_tools(("read", {"path": "a.txt"})) if step == 0 else Reply(hang_before_headers=True)
        return ollama_text("answer three")

    store = sessions.SqliteStore(tmp_path / "sessions.db")
    async with serve(script) as server:
        model = sessions.Ollama("llama3.1", host=server.url)
        await supervised(name="agent", provider=model, store=store, cwd=str(tmp_path))
        sid = await SessionServer.session_id("agent")
        first = await SessionServer.send_message("agent", "one")
        assert (first.text, first.num_turns) == ("answer one", 2)

        outcomes: list[Any] = []
        await send_in_background(nursery, "agent", "two", outcomes)
        with trio.fail_after(10):
            await wait_until(lambda: len(server.requests) == 4 and server.in_flight == 1)  # turn 2 is mid-loop
        old = otpy.whereis("agent")
        assert old is not None
        otpy.exit(old, "kill")

        with trio.fail_after(10):
            await wait_until(lambda: otpy.whereis("agent") not in (None, old) and bool(outcomes))
        assert isinstance(outcomes[0], otpy.ServerExited)
        assert await SessionServer.session_id("agent") == sid
        history = await SessionServer.history("agent")
        assert history[0] == first
        assert (history[1].turn, history[1].finish_reason) == (2, FinishReason.INTERRUPTED)

        third = await SessionServer.send_message("agent", "three")
        assert (third.turn, third.text, third.finish_reason) == (3, "answer three", FinishReason.STOP)
        await model.aclose()

    # the model saw the whole transcript, turn 2's tool round included, read back from SQLite
    sent = server.requests[-1].body["messages"]
    # the interruption note is no system message in the middle (chat templates refuse
    # that): it heads the next user message, in brackets (issue 17, item 5)
    assert [m["role"] for m in sent] == [
        "user", "assistant", "tool", "assistant", "user", "assistant", "tool", "user"
    ]  # fmt: skip
    contents = [m["content"] for m in sent]
    assert (contents[0], contents[3], contents[4]) == ("one", "answer one", "two")
    assert "a.txt" in contents[2]
    assert contents[6] == "     1\talpha"
    note = "[Turn 2 was interrupted (the session's server exited during the turn); it was not retried.]"
    assert contents[7] == f"{note}\n\nthree"
    assert sent[5]["tool_calls"] == [{"function": {"name": "read", "arguments": {"path": "a.txt"}}}]
    assert len(server.requests) == 5  # turn 2 was not retried
    await store.aclose()


def sleepers(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if any(marker in part for part in proc.info.get("cmdline") or ()) and proc.info["status"] != "zombie":
            found.append(proc)
    return found


async def test_killed_while_a_tool_runs_leaves_no_process_and_carries_on(
    tmp_path: Path, supervised: Start, nursery: trio.Nursery
) -> None:
    marker = f"1000.{uuid.uuid4().int % 10**8:08d}"

    def script(seen: Seen) -> Reply:
        prompt, step = turn_of(seen)
        if prompt == "build" and step == 0:
            return ollama_tools(("bash", {"command": f"sleep {marker} & sleep {marker}"}))
        return ollama_text(f"ok {prompt}")

    store = sessions.SqliteStore(tmp_path / "sessions.db")
    async with serve(script) as server:
        model = sessions.Ollama("llama3.1", host=server.url)
        loop = sessions.AgentLoop(model, permission_mode="bypass", cwd=tmp_path)
        await supervised(name="builder", provider=loop, store=store)
        outcomes: list[Any] = []
        await send_in_background(nursery, "builder", "build", outcomes)
        with trio.fail_after(10):
            await wait_until(lambda: len(sleepers(marker)) >= 2, step=0.05)  # bash and its two sleeps
        old = otpy.whereis("builder")
        assert old is not None
        otpy.exit(old, "kill")
        with trio.fail_after(10):
            await wait_until(lambda: bool(outcomes) and otpy.whereis("builder") not in (None, old))
            await wait_until(lambda: not sleepers(marker), step=0.05)
        after = await SessionServer.send_message("builder", "status")
        assert after.text == "ok status"
        messages = await SessionServer.messages("builder")
        await model.aclose()
    assert [m.role for m in messages][:3] == ["user", "assistant", "system"]
    assert messages[1].tool_calls[0].name == "bash"
    await store.aclose()


async def test_interrupt_mid_loop_through_the_server(
    tmp_path: Path, supervised: Start, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    def script(seen: Seen) -> Reply:
        prompt, step = turn_of(seen)
        if prompt == "slow":
            return ollama_tools(("list", {"path": "."})) if step == 0 else Reply(hang_before_headers=True)
        return ollama_text("quick answer")

    async with serve(script) as server:
        model = sessions.Ollama("llama3.1", host=server.url)
        await supervised(name="agent", provider=model, store=sessions.InMemoryStore(), cwd=str(tmp_path))
        outcomes: list[Any] = []
        await send_in_background(nursery, "agent", "slow", outcomes)
        await wait_until(lambda: server.in_flight == 1 and len(server.requests) == 2)
        assert await SessionServer.interrupt("agent")
        await wait_until(lambda: bool(outcomes))
        interrupted = outcomes[0]
        assert interrupted.finish_reason is FinishReason.INTERRUPTED
        assert interrupted.num_turns == 2
        assert [c.name for c in interrupted.tool_calls] == ["list"]
        after = await SessionServer.send_message("agent", "next")
        assert after.text == "quick answer"
        await model.aclose()
    sent = server.requests[-1].body["messages"]
    assert [m["role"] for m in sent][:3] == ["user", "assistant", "tool"]


async def test_after_a_kill_the_openai_server_gets_alternating_roles(
    tmp_path: Path, supervised: Start, nursery: trio.Nursery
) -> None:
    """Issue 17, item 5: one leading system message, then user and assistant in turn, though
    the transcript holds an interruption note and a prompt that never got an answer."""
    from sessions_fake_llm import openai_text

    def script(seen: Seen) -> Reply:
        prompt, _ = turn_of(seen)
        if prompt == "two":
            return Reply(hang_before_headers=True)  # killed before the model answered
        return openai_text(f"answer {prompt}")

    async with serve(script) as server:
        model = sessions.OpenAICompatible("m", base_url=server.url + "/v1")
        loop = sessions.AgentLoop(model, system_prompt="Be brief.", cwd=tmp_path)
        await supervised(name="agent", provider=loop, store=sessions.InMemoryStore())
        assert (await SessionServer.send_message("agent", "one")).text == "answer one"
        outcomes: list[Any] = []
        await send_in_background(nursery, "agent", "two", outcomes)
        with trio.fail_after(10):
            await wait_until(lambda: len(server.requests) == 2 and server.in_flight == 1)
        old = otpy.whereis("agent")
        assert old is not None
        otpy.exit(old, "kill")
        with trio.fail_after(10):
            await wait_until(lambda: otpy.whereis("agent") not in (None, old) and bool(outcomes))
        assert (await SessionServer.send_message("agent", "three")).text == "answer three"
        transcript = await SessionServer.messages("agent")
        await model.aclose()
    assert [m.role for m in transcript] == ["user", "assistant", "user", "system", "user", "assistant"]
    sent = server.requests[-1].body["messages"]
    roles = [m["role"] for m in sent]
    assert roles == ["system", "user", "assistant", "user"]
    assert sum(r == "system" for r in roles) == 1
    assert all(a != b for a, b in itertools.pairwise(roles))
    assert sent[0]["content"] == "Be brief."
    note = "[Turn 2 was interrupted (the session's server exited during the turn); it was not retried.]"
    assert sent[3]["content"] == f"two\n\n{note}\n\nthree"


async def test_garbage_numbers_from_the_server_leave_the_session_alive_and_the_budget_binding(
    tmp_path: Path, supervised: Start, autojump_clock: Any
) -> None:
    """Issue 15, item 7: Retry-After nan/inf/-5/soon, negative and NaN token counts, through a session."""
    from sessions_fake_llm import _chunk, error_reply, openai_events, openai_text, sse

    def usage(prompt_tokens: str) -> Reply:
        last = (
            '{"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], '
            f'"usage": {{"prompt_tokens": {prompt_tokens}, "completion_tokens": 100000, "total_tokens": 0}}}}'
        )
        return openai_events(sse(_chunk({"content": "hi"})), sse(_chunk({}, "stop")), sse(last), sse("[DONE]"))

    script = [
        error_reply(429, "slow down", retry_after="nan", openai=True),
        usage("-1000000000"),  # turn 1: a negative count is 0; 100000 output tokens cost $0.4
        error_reply(503, "later", retry_after="inf", openai=True),
        error_reply(503, "later", retry_after="-5", openai=True),
        usage("NaN"),  # turn 2: not a count: a protocol error Result, cost 0
        error_reply(429, "later", retry_after="soon", openai=True),
        usage("-1"),  # turn 3: $0.4 again
        openai_text("x", completion_tokens=100000),  # turn 4: $0.4, the session now at $1.2
    ]
    prices = sessions.PriceTable({"m": sessions.Price(output_per_mtok=4.0)})
    async with serve(script) as server:
        model = sessions.OpenAICompatible(
            "m", base_url=server.url + "/v1", prices=prices, retry=sessions.RetryPolicy(max_attempts=3, max_delay=1.0)
        )
        await supervised(name="agent", provider=model, cwd=str(tmp_path), max_cost_usd=1.0)
        pid = otpy.whereis("agent")
        first = await SessionServer.send_message("agent", "one")
        assert (first.finish_reason, first.cost_usd, first.usage.input_tokens) == (FinishReason.STOP, 0.4, 0)
        second = await SessionServer.send_message("agent", "two")
        assert second.finish_reason is FinishReason.PROVIDER_ERROR
        assert "ProviderProtocolError" in (second.error or "")
        assert second.cost_usd == 0.0
        assert (await SessionServer.send_message("agent", "three")).cost_usd == 0.4
        assert (await SessionServer.send_message("agent", "four")).cost_usd == 0.4
        assert await SessionServer.total_cost("agent") == 1.2
        with pytest.raises(sessions.BudgetExceeded):
            await SessionServer.send_message("agent", "five")
        assert otpy.whereis("agent") is pid
        await model.aclose()
    assert len(server.requests) == len(script)
