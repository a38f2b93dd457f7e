"""ClaudeCode against the real bundled CLI, offline: a fake Messages API on 127.0.0.1.

Every test also passes the process-table check of the conftest (no process left).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from claude_agent_sdk import ClaudeAgentOptions

import sessions
from sessions import (
    FinishReason,
    MessageAdded,
    ProviderSessionId,
    SessionContext,
    TextDelta,
    ToolCallFinished,
    ToolCallRequested,
    TurnCompleted,
    TurnRequest,
)

from .conftest import live_children, make_env
from .fake_api import FakeAnthropic, all_user_texts


async def turn(conn: Any, prompt: str, n: int = 1, **options: Any) -> tuple[list[Any], TurnCompleted]:
    events = [event async for event in conn.run_turn(TurnRequest(turn=n, prompt=prompt, messages=(), options=options))]
    assert isinstance(events[-1], TurnCompleted)
    assert sum(isinstance(e, TurnCompleted) for e in events) == 1
    return events, events[-1]


def ctx(session_id: str = "s1", **kwargs: Any) -> SessionContext:
    return SessionContext(session_id=session_id, **kwargs)


async def test_two_turns_duplex_one_process_history_carried(fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]):
    provider = sessions.ClaudeCode(**claude_kwargs)
    async with provider.connect(ctx()) as conn:
        pid = conn.pid
        assert pid is not None
        assert pid in live_children()
        events1, done1 = await turn(conn, "hello one")
        events2, done2 = await turn(conn, "hello two", n=2)
        assert conn.pid == pid  # one process for both turns
    assert done1.text == "echo: hello one"
    assert done2.text == "echo: hello two"
    assert done1.finish_reason is FinishReason.STOP
    assert not done1.is_error
    assert "".join(e.text for e in events1 if isinstance(e, TextDelta)) == "echo: hello one"
    added = [e.message for e in events1 if isinstance(e, MessageAdded)]
    assert [(m.role, m.content) for m in added] == [("assistant", "echo: hello one")]
    sids = [e.id for e in events1 + events2 if isinstance(e, ProviderSessionId)]
    assert len(sids) == 1
    assert conn.claude_session_id == sids[0]
    # costs are per turn, not the CLI's running total (6, 12)
    assert (done1.cost_usd, done2.cost_usd) == (6.0, 6.0)
    assert done2.extra["process_total_cost_usd"] == 12.0
    assert done1.usage.input_tokens == 1_000_000
    assert done1.usage.output_tokens == 1_000_000
    assert done2.extra["model_usage"]["claude-haiku-4-5"]["costUSD"] == 6.0
    # the model saw the first turn in the second request
    second = fake_api.message_requests()[-1]
    assert all_user_texts(second)[-1] == "hello two"
    assert "hello one" in all_user_texts(second)
    assert pid not in live_children()


async def test_per_turn_transport_one_process_per_turn_with_resume(
    fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]
):
    provider = sessions.ClaudeCode(transport="per_turn", **claude_kwargs)
    async with provider.connect(ctx()) as conn:
        assert conn.pid is None  # nothing runs between turns
        _, done1 = await turn(conn, "first")
        assert conn.pid is None
        _, done2 = await turn(conn, "second", n=2)
    assert (done1.text, done2.text) == ("echo: first", "echo: second")
    assert (done1.cost_usd, done2.cost_usd) == (6.0, 6.0)  # per process = per turn
    assert done1.extra["session_id"] == done2.extra["session_id"]  # --resume keeps the id
    texts = all_user_texts(fake_api.message_requests()[-1])
    assert "first" in texts
    assert texts[-1] == "second"


async def test_tool_round_trip_read(fake_api: FakeAnthropic, claude_kwargs: dict[str, Any], workdir: Path):
    (workdir / "notes.txt").write_text("the secret is 42\n")
    path = str(workdir / "notes.txt")
    provider = sessions.ClaudeCode(**claude_kwargs)
    async with provider.connect(ctx()) as conn:
        events, done = await turn(conn, f'[[tool:Read:{{"file_path": "{path}"}}]]')
    requested = [e.call for e in events if isinstance(e, ToolCallRequested)]
    finished = [e.result for e in events if isinstance(e, ToolCallFinished)]
    assert [(c.name, c.arguments) for c in requested] == [("Read", {"file_path": path})]
    assert finished[0].tool_call_id == requested[0].id
    assert finished[0].name == "Read"
    assert "the secret is 42" in finished[0].content
    assert not finished[0].is_error
    roles = [e.message.role for e in events if isinstance(e, MessageAdded)]
    assert roles == ["assistant", "tool", "assistant"]
    assert done.text.startswith("tool said:")
    assert "the secret is 42" in done.text
    assert done.num_turns == 2
    assert done.cost_usd == 12.0
    # one ModelCallFinished per API call, with the usage the API reported for it
    calls = [e for e in events if isinstance(e, sessions.ModelCallFinished)]
    assert [(c.stop_reason, c.usage.input_tokens, c.usage.output_tokens, c.error) for c in calls] == [
        ("tool_use", 1_000_000, 1_000_000, None),
        ("end_turn", 1_000_000, 1_000_000, None),
    ]
    assert [c.model for c in calls] == [claude_kwargs["model"]] * 2
    kinds = [type(e).__name__ for e in events if not isinstance(e, sessions.TextDelta)]
    assert kinds.index("ModelCallFinished") > kinds.index("ToolCallRequested")  # after the call's tool_use
    # the tool result went back to the model
    last = fake_api.message_requests()[-1]["messages"][-1]
    assert any(block.get("type") == "tool_result" for block in last["content"])


async def test_api_errors_429_500_529_end_the_turn_401_raises(fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]):
    provider = sessions.ClaudeCode(**claude_kwargs)
    async with provider.connect(ctx()) as conn:
        pid = conn.pid
        outcomes = {}
        for status in (429, 500, 529):
            _, done = await turn(conn, f"[[error:{status}]]")
            outcomes[status] = done
        _, ok = await turn(conn, "after the errors")
        assert conn.pid == pid  # the session kept its process
        with pytest.raises(sessions.ProviderAuthError) as info:
            await turn(conn, "[[error:401]]")
        _, still = await turn(conn, "and after a 401")
    for status, done in outcomes.items():
        assert done.is_error
        assert done.finish_reason is FinishReason.PROVIDER_ERROR
        assert done.api_error_status == status
        assert done.cost_usd == 0.0
        assert done.extra["retryable"] is True
        assert (done.error and str(status) in done.error) or done.extra["error_kind"] == "rate_limited"
    assert outcomes[429].extra["error_kind"] == "rate_limited"
    assert outcomes[529].extra["error_kind"] == "overloaded"
    assert outcomes[500].extra["error_kind"] == "server_error"
    assert ok.text.startswith("echo:")
    assert ok.cost_usd == 6.0
    assert info.value.status == 401
    assert not info.value.retryable
    assert still.text.startswith("echo:")


async def test_stalled_stream_hits_the_idle_timeout_and_the_session_survives(
    fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]
):
    provider = sessions.ClaudeCode(idle_timeout=1.5, interrupt_grace=2.0, **claude_kwargs)
    async with provider.connect(ctx()) as conn:
        seen: list[Any] = []

        async def stalled() -> None:
            async for event in conn.run_turn(TurnRequest(1, "[[stall]]", ())):
                seen.append(event)

        with pytest.raises(sessions.ProviderTimeout) as info:
            await stalled()
        assert info.value.phase == "idle"
        assert info.value.retryable
        assert fake_api.stalled.is_set()
        assert any(isinstance(e, TextDelta) for e in seen)  # it stalled mid-stream
        fake_api.release.set()
        _, done = await turn(conn, "are you there", n=2)
    assert done.text == "echo: are you there"
    # the stalled call was charged (its input tokens) when the CLI ended it: that cost was
    # not reported with the failed turn, so it comes with this one, and nothing is lost
    carried = done.extra.get("carried_cost_usd", 0.0)
    assert done.cost_usd == 6.0 + carried
    assert done.cost_usd == done.extra["process_total_cost_usd"]


async def test_whole_turn_timeout(fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]):
    provider = sessions.ClaudeCode(idle_timeout=30, turn_timeout=2.0, interrupt_grace=1.0, **claude_kwargs)
    async with provider.connect(ctx()) as conn:
        with pytest.raises(sessions.ProviderTimeout) as info:
            await turn(conn, "[[slow:0.4]] one two three four five six seven eight nine ten eleven twelve")
        assert info.value.phase == "turn"
        _, done = await turn(conn, "next", n=2)
    assert done.text == "echo: next"


async def test_max_turns_and_budget(fake_api: FakeAnthropic, claude_kwargs: dict[str, Any], workdir: Path):
    (workdir / "a.txt").write_text("a\n")
    loop = f'[[loop:Read:{{"file_path": "{workdir / "a.txt"}"}}]]'
    provider = sessions.ClaudeCode(**claude_kwargs)
    async with provider.connect(ctx(options={"max_turns": 2})) as conn:
        _, capped = await turn(conn, loop, max_turns=2)
        _, broke = await turn(conn, "spend", n=2, max_budget_usd=1.0)
    assert capped.finish_reason is FinishReason.MAX_TURNS
    assert capped.is_error
    assert "maximum number of turns" in (capped.error or "")
    assert capped.cost_usd == 12.0  # two API calls before the cap
    assert broke.finish_reason is FinishReason.MAX_BUDGET
    assert broke.is_error
    assert broke.cost_usd == 6.0  # checked after the call: it may overspend
    assert "budget" in (broke.error or "")


async def test_interrupt_keeps_the_process(fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]):
    provider = sessions.ClaudeCode(**claude_kwargs)
    words = " ".join(f"w{i}" for i in range(200))
    async with provider.connect(ctx()) as conn:
        pid = conn.pid
        events: list[Any] = []
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                async for event in conn.run_turn(TurnRequest(1, f"[[slow:0.05]] {words}", ())):
                    events.append(event)
                    if isinstance(event, TextDelta) and len(events) == 3:
                        nursery.start_soon(conn.interrupt)

            nursery.start_soon(consume)
        done = events[-1]
        assert isinstance(done, TurnCompleted)
        assert done.finish_reason is FinishReason.INTERRUPTED
        assert done.is_error
        assert conn.pid == pid  # the process survived the interrupt
        assert done.error == "interrupted: the turn was stopped before it finished"  # not the CLI's diagnostics
        _, after = await turn(conn, "after the interrupt", n=2)
    assert after.text == "echo: after the interrupt"


async def test_killing_the_cli_mid_turn_then_carrying_on(fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]):
    provider = sessions.ClaudeCode(**claude_kwargs)
    async with provider.connect(ctx()) as conn:
        _, _first = await turn(conn, "remember apples")
        pid = conn.pid
        assert pid is not None

        async def killed() -> None:
            async for event in conn.run_turn(TurnRequest(2, "[[stall]]", ())):
                if isinstance(event, TextDelta):
                    os.kill(pid, signal.SIGKILL)

        with pytest.raises(sessions.ProviderError) as info:
            await killed()
        assert info.value.kind == "process_exited"
        assert info.value.retryable
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        fake_api.release.set()
        _, after = await turn(conn, "what did I say", n=3)
        assert conn.pid != pid
    assert after.text == "echo: what did I say"
    assert after.cost_usd == 6.0
    texts = all_user_texts(fake_api.message_requests()[-1])
    assert "remember apples" in texts  # resumed: the model still has the first turn


async def test_exact_cost_across_process_and_session_restarts(fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]):
    fake_api.usage = (123_457, 9_871)  # costs with float noise: 0.172812 per call at $1/$5
    store = sessions.InMemoryStore()
    costs: list[float] = []
    totals: list[float] = []
    provider = sessions.ClaudeCode(**claude_kwargs)
    async with provider.connect(ctx(store=store)) as conn:
        for n in range(3):
            _, done = await turn(conn, f"duplex {n}", n=n + 1)
            costs.append(done.cost_usd)
            totals.append(done.extra["process_total_cost_usd"])
        sid = conn.claude_session_id
        assert conn.pid is not None
        await conn.stop(kill=True)  # the CLI dies between turns: the next one respawns
        _, done = await turn(conn, "after respawn", n=4)
        costs.append(done.cost_usd)
    # a restarted session (fresh connection, resumed from the stored id), and per-turn mode
    for transport in ("duplex", "per_turn"):
        again = sessions.ClaudeCode(transport=transport, **claude_kwargs)
        async with again.connect(ctx(store=store, provider_session_id=sid)) as conn:
            _, done = await turn(conn, f"resumed {transport}", n=5)
            costs.append(done.cost_usd)
    per_call = 123_457 / 1e6 * 1 + 9_871 / 1e6 * 5
    assert costs == [pytest.approx(per_call, abs=1e-12)] * 6
    assert len(set(costs)) == 1  # identical deltas: no running-total noise leaks into a turn
    assert totals[2] == pytest.approx(3 * per_call, abs=1e-12)
    assert sum(costs) == pytest.approx(6 * per_call, abs=1e-12)


async def test_resume_on_a_fresh_home_through_the_mirrored_store(
    fake_api: FakeAnthropic, claude_kwargs: dict[str, Any], tmp_path: Path
):
    store = sessions.InMemoryStore()
    provider = sessions.ClaudeCode(**claude_kwargs)
    async with provider.connect(ctx("s1", store=store)) as conn:
        await turn(conn, "my name is Ada")
        sid = conn.claude_session_id
    records = await store.load("s1.claude")
    assert records
    assert {r.kind for r in records} == {"provider_data"}
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert await store.load("s1") == []  # the session's own log is the server's alone
    # another machine: a HOME whose ~/.claude never saw the session
    fresh = make_env(tmp_path / "other-home", fake_api.url)
    assert not (tmp_path / "other-home" / ".claude" / "projects").exists()
    other = sessions.ClaudeCode(**{**claude_kwargs, "env": fresh})
    async with other.connect(ctx("s1", store=store, provider_session_id=sid)) as conn:
        _, done = await turn(conn, "what is my name", n=2)
        assert conn.claude_session_id == sid
    assert done.text == "echo: what is my name"
    assert "my name is Ada" in all_user_texts(fake_api.message_requests()[-1])
    assert len(await store.load("s1.claude")) > len(records)  # the new turn was mirrored too


async def test_missing_cli_is_unavailable(claude_kwargs: dict[str, Any], tmp_path: Path):
    provider = sessions.ClaudeCode(cli_path=str(tmp_path / "no-such-claude"), **claude_kwargs)
    with pytest.raises(sessions.ProviderUnavailable) as info:
        async with provider.connect(ctx()):
            pass
    assert info.value.kind == "not_found"


async def test_cancelling_the_owner_mid_turn_leaves_no_process(fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]):
    provider = sessions.ClaudeCode(**claude_kwargs)
    pids: list[int] = []
    with trio.move_on_after(30) as outer:
        async with trio.open_nursery() as nursery:

            async def owner() -> None:
                async with provider.connect(ctx()) as conn:
                    assert conn.pid is not None
                    pids.append(conn.pid)
                    async for event in conn.run_turn(TurnRequest(1, "[[stall]]", ())):
                        if isinstance(event, TextDelta):
                            nursery.cancel_scope.cancel()

            nursery.start_soon(owner)
    assert not outer.cancelled_caught
    assert pids
    assert pids[0] not in live_children()


async def test_can_use_tool_and_hooks_are_passed_through(
    fake_api: FakeAnthropic, claude_kwargs: dict[str, Any], workdir: Path
):
    from claude_agent_sdk import HookMatcher, PermissionResultDeny

    asked: list[str] = []
    hooked: list[str] = []

    async def can_use_tool(name: str, arguments: dict[str, Any], context: Any) -> Any:
        asked.append(name)
        return PermissionResultDeny(message="no writes here")

    async def pre_tool_use(data: Any, tool_use_id: str | None, context: Any) -> dict[str, Any]:
        hooked.append(data["tool_name"])
        return {}

    target = workdir / "out.txt"
    provider = sessions.ClaudeCode(
        can_use_tool=can_use_tool, hooks={"PreToolUse": [HookMatcher(hooks=[pre_tool_use])]}, **claude_kwargs
    )
    async with provider.connect(ctx()) as conn:
        events, done = await turn(conn, f'[[tool:Write:{{"file_path": "{target}", "content": "hi"}}]]')
    assert hooked == ["Write"]
    assert asked == ["Write"]
    finished = [e.result for e in events if isinstance(e, ToolCallFinished)]
    assert finished[0].is_error
    assert "no writes here" in finished[0].content
    assert not target.exists()
    assert done.permission_denials == ("Write",)
    assert done.extra["permission_denials"][0]["tool_input"]["file_path"] == str(target)


async def test_no_api_key_is_an_auth_error(fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]):
    env = {**claude_kwargs["env"], "ANTHROPIC_API_KEY": ""}
    provider = sessions.ClaudeCode(**{**claude_kwargs, "env": env})
    async with provider.connect(ctx()) as conn:
        with pytest.raises(sessions.ProviderAuthError) as info:
            await turn(conn, "hello")
    assert "Not logged in" in str(info.value)
    assert fake_api.message_requests() == []


async def test_a_bad_flag_fails_the_start_with_the_clis_own_words(claude_kwargs: dict[str, Any]):
    provider = sessions.ClaudeCode(extra_args={"bogus-flag": None}, **claude_kwargs)
    with pytest.raises(sessions.ProviderUnavailable) as info:
        async with provider.connect(ctx()):
            pass
    assert info.value.kind == "startup"
    assert "bogus-flag" in str(info.value)


def test_permission_modes_in_snake_case_are_mapped_and_others_refused():
    assert sessions.ClaudeCode(permission_mode="accept_edits").options.permission_mode == "acceptEdits"
    assert sessions.ClaudeCode(permission_mode="bypass_permissions").options.permission_mode == "bypassPermissions"
    assert sessions.ClaudeCode(permission_mode="plan").options.permission_mode == "plan"
    assert sessions.ClaudeCode(permission_mode="acceptEdits").options.permission_mode == "acceptEdits"
    base = ClaudeAgentOptions(permission_mode="default")
    assert sessions.ClaudeCode(base, permission_mode="accept_edits").options.permission_mode == "acceptEdits"
    for bad in ("accept-edits", "AcceptEdits", "yolo", "", 3):
        with pytest.raises(sessions.InvalidOption) as info:
            sessions.ClaudeCode(permission_mode=bad)
        assert info.value.option == "permission_mode"
        assert "accept_edits" in str(info.value)
        assert "acceptEdits" in str(info.value)
    with pytest.raises(sessions.InvalidOption):
        sessions.ClaudeCode(ClaudeAgentOptions(permission_mode="accept-edits"))  # type: ignore[arg-type]


async def test_a_snake_case_permission_mode_reaches_the_cli(fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]):
    provider = sessions.ClaudeCode(permission_mode="accept_edits", **claude_kwargs)
    async with provider.connect(ctx()) as conn:
        _, done = await turn(conn, "hello")
        _, switched = await turn(conn, "planning", n=2, permission_mode="plan")
    assert done.text == "echo: hello"
    assert switched.text == "echo: planning"


def test_options_are_checked_when_the_provider_is_made():
    with pytest.raises(sessions.InvalidOption):
        sessions.ClaudeCode(extra_args={"resume": "x"})
    with pytest.raises(sessions.InvalidOption):
        sessions.ClaudeCode(no_such_option=1)
    with pytest.raises(sessions.InvalidOption):
        sessions.ClaudeCode(transport="smoke-signals")
    with pytest.raises(sessions.InvalidOption):
        sessions.ClaudeCode(idle_timeout=-1)
    provider = sessions.ClaudeCode(append_system_prompt="be brief", env={"HOME": "/h"}, mcp_config={})
    assert provider.options.system_prompt == {"type": "preset", "preset": "claude_code", "append": "be brief"}
    assert provider.options.env["CLAUDE_CONFIG_DIR"] == "/h/.claude"


def test_without_the_sdk_the_provider_says_how_to_install_it():
    code = (
        "import sys; sys.modules['claude_agent_sdk'] = None\n"
        "import sessions\n"
        "try:\n"
        "    sessions.ClaudeCode(model='haiku')\n"
        "except sessions.ProviderUnavailable as exc:\n"
        "    print(exc.kind, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.startswith("not_installed ")
    assert "otpy-sessions[claude]" in done.stdout


async def test_a_model_override_switches_the_running_cli(fake_api: FakeAnthropic, claude_kwargs: dict[str, Any]):
    provider = sessions.ClaudeCode(**claude_kwargs)
    async with provider.connect(ctx()) as conn:
        pid = conn.pid
        _, first = await turn(conn, "on haiku")
        _, second = await turn(conn, "on sonnet", n=2, model="claude-sonnet-4-5")
        _, third = await turn(conn, "back on haiku", n=3)
        assert conn.pid == pid  # set_model, not a restart
    models = [body["model"] for body in fake_api.message_requests() if body.get("stream")]
    assert models == ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-haiku-4-5"]
    assert (first.cost_usd, second.cost_usd, third.cost_usd) == (6.0, 18.0, 6.0)  # sonnet: $3 + $15
    assert "on haiku" in all_user_texts(fake_api.message_requests()[-1])
