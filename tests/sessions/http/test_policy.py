"""Permission modes, allow/deny lists, can_use_tool, and hooks of the agent loop.

The model here is a tiny in-process `ModelProvider` (the HTTP path is covered by
test_loop.py): each test scripts which tool calls it asks for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

import sessions
from sessions import (
    Allow,
    Deny,
    FinishReason,
    Halt,
    HookEvent,
    HookMatcher,
    Hooks,
    Message,
    MessageAdded,
    SessionContext,
    TextDelta,
    ToolCall,
    ToolCallFinished,
    ToolCallRequested,
    ToolResult,
    Transform,
    TurnCompleted,
    TurnRequest,
)
from sessions._tools._policy import is_disallowed


class Model:
    """Answers with the scripted tool calls, one list per model call, then "done"."""

    name = "script"

    def __init__(self, *steps: list[tuple[str, dict[str, Any]]]) -> None:
        self.steps = list(steps)
        self.seen: list[list[Message]] = []

    async def chat(
        self, messages: Sequence[Message], tools: Sequence[sessions.ToolSpec], options: dict[str, Any]
    ) -> AsyncIterator[sessions.ProviderEvent]:
        self.seen.append(list(messages))
        await trio.lowlevel.checkpoint()
        if not self.steps:
            yield TextDelta("done")
            yield TurnCompleted("done", usage=sessions.Usage(1, 1))
            return
        for index, (name, arguments) in enumerate(self.steps.pop(0)):
            yield ToolCallRequested(ToolCall(f"c{len(self.seen)}_{index}", name, arguments))
        yield TurnCompleted("", usage=sessions.Usage(1, 1))

    async def aclose(self) -> None:
        pass


async def turn(loop: sessions.AgentLoop, cwd: Path, prompt: str = "go") -> tuple[list[ToolResult], TurnCompleted]:
    async with loop.connect(SessionContext("s1", cwd=str(cwd))) as conn:
        events = [e async for e in conn.run_turn(TurnRequest(1, prompt, ()))]
    assert isinstance(events[-1], TurnCompleted)
    return [e.result for e in events if isinstance(e, ToolCallFinished)], events[-1]


READ = ("read", {"path": "a.txt"})
WRITE = ("write", {"path": "b.txt", "content": "B"})
BASH = ("bash", {"command": "echo ran"})


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "a.txt").write_text("A")
    return tmp_path


# --- permission modes -----------------------------------------------------------------------


async def test_default_mode_runs_read_only_tools_and_denies_the_rest_without_a_callback(cwd: Path) -> None:
    results, done = await turn(sessions.AgentLoop(Model([READ, WRITE, BASH])), cwd)
    assert [r.is_error for r in results] == [False, True, True]
    assert "needs permission" in results[1].content
    assert not (cwd / "b.txt").exists()
    assert done.finish_reason is FinishReason.STOP
    assert done.permission_denials == ("write", "bash")


async def test_default_mode_asks_can_use_tool(cwd: Path) -> None:
    asked: list[tuple[str, dict[str, Any], sessions.PermissionRequest]] = []

    async def can_use_tool(name: str, arguments: dict[str, Any], request: sessions.PermissionRequest) -> Any:
        asked.append((name, arguments, request))
        return Allow() if name == "write" else Deny("not bash")

    results, _ = await turn(sessions.AgentLoop(Model([READ, WRITE, BASH]), can_use_tool=can_use_tool), cwd)
    assert [name for name, _, _ in asked] == ["write", "bash"]  # read-only read was not asked about
    assert asked[0][2].edits_files
    assert asked[0][2].session_id == "s1"
    assert [r.is_error for r in results] == [False, False, True]
    assert results[2].content == "permission denied: not bash"
    assert (cwd / "b.txt").read_text() == "B"


async def test_can_use_tool_may_be_sync_and_return_bools(cwd: Path) -> None:
    loop = sessions.AgentLoop(Model([WRITE, BASH]), can_use_tool=lambda name, args, req: name == "bash")
    results, _ = await turn(loop, cwd)
    assert [r.is_error for r in results] == [True, False]
    assert "ran" in results[1].content


async def test_allow_may_rewrite_the_arguments(cwd: Path) -> None:
    loop = sessions.AgentLoop(Model([WRITE]), can_use_tool=lambda n, args, r: Allow({**args, "path": "safe.txt"}))
    await turn(loop, cwd)
    assert (cwd / "safe.txt").read_text() == "B"
    assert not (cwd / "b.txt").exists()


async def test_a_deny_that_interrupts_halts_the_turn(cwd: Path) -> None:
    model = Model([WRITE], [READ])
    results, done = await turn(sessions.AgentLoop(model, can_use_tool=lambda *a: Deny("stop", interrupt=True)), cwd)
    assert done.finish_reason is FinishReason.HALTED
    assert results[0].is_error
    assert len(model.seen) == 1


async def test_accept_edits_runs_file_edits_but_asks_for_bash(cwd: Path) -> None:
    results, _ = await turn(sessions.AgentLoop(Model([WRITE, BASH]), permission_mode="accept_edits"), cwd)
    assert [r.is_error for r in results] == [False, True]
    assert (cwd / "b.txt").exists()


async def test_plan_mode_is_read_only(cwd: Path) -> None:
    loop = sessions.AgentLoop(Model([READ, WRITE, BASH]), permission_mode="plan", can_use_tool=lambda *a: True)
    results, _ = await turn(loop, cwd)
    assert [r.is_error for r in results] == [False, True, True]
    assert "plan mode is read-only" in results[1].content


async def test_bypass_runs_everything(cwd: Path) -> None:
    results, _ = await turn(sessions.AgentLoop(Model([READ, WRITE, BASH]), permission_mode="bypass"), cwd)
    assert not any(r.is_error for r in results)


async def test_allow_and_deny_lists(cwd: Path) -> None:
    loop = sessions.AgentLoop(
        Model([READ, WRITE, BASH]), permission_mode="bypass", allowed_tools=["b*"], disallowed_tools=["re*", "bash"]
    )
    results, _ = await turn(loop, cwd)
    assert [r.is_error for r in results] == [True, False, True]  # the deny list wins, even over bypass
    assert "disallowed" in results[0].content


async def test_allowed_tools_skip_the_question(cwd: Path) -> None:
    results, _ = await turn(sessions.AgentLoop(Model([BASH]), allowed_tools=["bash"]), cwd)
    assert not results[0].is_error


async def test_a_denied_call_goes_back_to_the_model(cwd: Path) -> None:
    model = Model([WRITE])
    await turn(sessions.AgentLoop(model), cwd)
    second_call = model.seen[1]
    tool_message = second_call[-1]
    assert tool_message.role == "tool"
    assert tool_message.tool_result is not None
    assert tool_message.tool_result.is_error
    assert "needs permission" in tool_message.tool_result.content


# --- hooks ------------------------------------------------------------------------------------


async def test_pre_tool_use_can_deny_transform_or_allow(cwd: Path) -> None:
    async def hook(event: HookEvent) -> Any:
        assert event.call is not None
        if event.call.name == "read":
            return Deny("no reading")
        if event.call.name == "write":
            return Transform({**event.call.arguments, "path": "c.txt"})
        return Allow()  # bash: allowed without asking

    results, _ = await turn(sessions.AgentLoop(Model([READ, WRITE, BASH]), hooks=Hooks(pre_tool_use=[hook])), cwd)
    assert results[0].content == "denied by a hook: no reading"
    assert results[1].is_error  # the transformed write still needs permission in default mode
    assert not results[2].is_error


async def test_a_hook_allow_does_not_beat_the_deny_list(cwd: Path) -> None:
    hooks = Hooks(pre_tool_use=[lambda e: Allow()])
    results, _ = await turn(sessions.AgentLoop(Model([BASH]), hooks=hooks, disallowed_tools=["bash"]), cwd)
    assert results[0].is_error


async def test_transformed_arguments_are_what_runs(cwd: Path) -> None:
    hooks = Hooks(pre_tool_use=[lambda e: Transform({"path": "c.txt", "content": "C"})])
    await turn(sessions.AgentLoop(Model([WRITE]), hooks=hooks, permission_mode="accept_edits"), cwd)
    assert (cwd / "c.txt").read_text() == "C"
    assert not (cwd / "b.txt").exists()


async def test_matchers_pick_tools_by_name(cwd: Path) -> None:
    seen: list[str] = []

    def record(event: HookEvent) -> None:
        assert event.call is not None
        seen.append(event.call.name)

    hooks = Hooks(pre_tool_use=[HookMatcher("write|bash", [record])])
    await turn(sessions.AgentLoop(Model([READ, WRITE, BASH]), hooks=hooks, permission_mode="bypass"), cwd)
    assert seen == ["write", "bash"]


async def test_pre_tool_use_halt_ends_the_turn(cwd: Path) -> None:
    model = Model([READ, BASH], [READ])
    hooks = Hooks(pre_tool_use=[HookMatcher("read", [lambda e: Halt("enough")])])
    results, done = await turn(sessions.AgentLoop(model, hooks=hooks, permission_mode="bypass"), cwd)
    assert done.finish_reason is FinishReason.HALTED
    assert "enough" in (done.error or "")
    assert all(r.is_error for r in results)  # both calls answered, neither ran
    assert len(model.seen) == 1


async def test_post_tool_use_transforms_and_halts(cwd: Path) -> None:
    hooks = Hooks(post_tool_use=[lambda e: Transform(e.result.content.replace("A", "*"))])
    results, _ = await turn(sessions.AgentLoop(Model([READ]), hooks=hooks), cwd)
    assert results[0].content == "     1\t*"
    halting = Hooks(post_tool_use=[lambda e: Halt("saw enough")])
    model = Model([READ], [READ])
    _, done = await turn(sessions.AgentLoop(model, hooks=halting), cwd)
    assert done.finish_reason is FinishReason.HALTED
    assert len(model.seen) == 1


async def test_user_prompt_submit_transforms_the_prompt(cwd: Path) -> None:
    model = Model()
    hooks = Hooks(user_prompt_submit=[lambda e: Transform(f"{e.prompt} (be brief)")])
    await turn(sessions.AgentLoop(model, hooks=hooks), cwd, "hello")
    assert model.seen[0][-1] == Message("user", "hello (be brief)")


async def test_user_prompt_submit_can_refuse_the_prompt(cwd: Path) -> None:
    model = Model()
    hooks = Hooks(user_prompt_submit=[lambda e: Deny("no secrets") if "password" in (e.prompt or "") else None])
    _, done = await turn(sessions.AgentLoop(model, hooks=hooks), cwd, "my password is x")
    assert done.finish_reason is FinishReason.HALTED
    assert "no secrets" in (done.error or "")
    assert model.seen == []


async def test_a_stop_hook_can_refuse_to_stop(cwd: Path) -> None:
    refusals = iter(["run the tests first"])

    def stop(event: HookEvent) -> Any:
        reason = next(refusals, None)
        return Deny(reason) if reason else Transform(f"{event.text}!")

    model = Model()
    async with sessions.AgentLoop(model, hooks=Hooks(stop=[stop])).connect(SessionContext("s", cwd=".")) as conn:
        events = [e async for e in conn.run_turn(TurnRequest(1, "go", ()))]
    done = events[-1]
    assert done.finish_reason is FinishReason.STOP
    assert done.text == "done!"
    assert len(model.seen) == 2
    assert model.seen[1][-1] == Message("user", "run the tests first")
    assert Message("user", "run the tests first") in [e.message for e in events if isinstance(e, MessageAdded)]


async def test_a_stop_hook_can_halt(cwd: Path) -> None:
    _, done = await turn(sessions.AgentLoop(Model(), hooks=Hooks(stop=[lambda e: Halt("bad answer")])), cwd)
    assert done.finish_reason is FinishReason.HALTED


async def test_a_hook_returning_garbage_ends_the_turn_as_an_error(cwd: Path) -> None:
    _, done = await turn(sessions.AgentLoop(Model(), hooks=Hooks(stop=[lambda e: "yes"])), cwd)
    assert done.finish_reason is FinishReason.DURING_EXECUTION
    assert "a stop hook failed: InvalidOption" in (done.error or "")


@pytest.mark.parametrize("point", ["user_prompt_submit", "pre_tool_use", "post_tool_use", "stop"])
async def test_a_hook_that_raises_ends_the_turn_as_an_error(cwd: Path, point: str) -> None:
    def broken(event: HookEvent) -> None:
        raise RuntimeError("bug in my hook")

    model = Model([READ, READ])
    _results, done = await turn(sessions.AgentLoop(model, hooks=Hooks(**{point: [broken]})), cwd)
    assert done.finish_reason is FinishReason.DURING_EXECUTION
    assert done.error == f"a {point} hook failed: RuntimeError: bug in my hook"


async def test_a_can_use_tool_that_raises_ends_the_turn_and_answers_every_call(cwd: Path) -> None:
    def broken(name: str, arguments: dict[str, Any], request: sessions.PermissionRequest) -> bool:
        raise KeyError(name)

    results, done = await turn(sessions.AgentLoop(Model([WRITE, BASH]), can_use_tool=broken), cwd)
    assert done.finish_reason is FinishReason.DURING_EXECUTION
    assert done.error == "can_use_tool failed: KeyError: 'write'"
    assert [r.is_error for r in results] == [True, True]
    assert results[1].content == "not run: can_use_tool failed: KeyError: 'write'"


async def test_interrupt_from_another_task_during_a_slow_model_call(cwd: Path) -> None:
    calls = 0

    class Slow(Model):
        async def chat(self, messages: Any, tools: Any, options: Any) -> AsyncIterator[sessions.ProviderEvent]:
            nonlocal calls
            calls += 1
            yield TextDelta("thinking")
            if calls == 1:
                await trio.sleep_forever()
            yield TurnCompleted("thinking")

    loop = sessions.AgentLoop(Slow())
    events: list[Any] = []
    async with loop.connect(SessionContext("s", cwd=str(cwd))) as conn:
        async with trio.open_nursery() as nursery:

            async def later() -> None:
                await trio.sleep(0.2)
                await conn.interrupt()

            nursery.start_soon(later)
            with trio.fail_after(5):
                async for event in conn.run_turn(TurnRequest(1, "go", ())):
                    events.append(event)
        # the session goes on: the next turn runs normally
        after = [e async for e in conn.run_turn(TurnRequest(2, "again", ()))]
    assert events[-1].finish_reason is FinishReason.INTERRUPTED
    assert after[-1].finish_reason is FinishReason.STOP


def test_hook_matcher_needs_a_regex() -> None:
    with pytest.raises(sessions.InvalidOption):
        HookMatcher("(", [])


async def test_old_tool_results_are_elided_to_fit_max_context_chars(cwd: Path) -> None:
    (cwd / "big.txt").write_text("x" * 1000)
    big = ("read", {"path": "big.txt"})
    model = Model([big], [big], [big])
    loop = sessions.AgentLoop(model, max_context_chars=2500, keep_tool_results=1)
    results, done = await turn(loop, cwd)
    assert done.finish_reason is FinishReason.STOP
    assert all(len(r.content) > 1000 for r in results)  # the transcript keeps them whole
    last_call = [m.tool_result.content for m in model.seen[-1] if m.tool_result is not None]
    assert last_call[0] == "[read output elided to save context: 1007 characters]"
    assert len(last_call[2]) > 1000  # the most recent is kept
    assert sum(len(c) for c in last_call) <= 2500
    unlimited = Model([big], [big], [big])
    await turn(sessions.AgentLoop(unlimited), cwd)
    assert all(len(m.tool_result.content) > 1000 for m in unlimited.seen[-1] if m.tool_result is not None)


# --- a deny wins over every way of allowing --------------------------------------------------------


def recorder(kind: str) -> tuple[sessions.Tool, list[str]]:
    """A tool named bash that records its calls; ``kind`` is "read_only", "edits" or "plain"."""
    ran: list[str] = []

    async def bash(command: str) -> str:
        """Run a command (here: only record it)."""
        ran.append(command)
        return "ran"

    tool = sessions.Tool.from_function(bash, read_only=kind == "read_only", edits_files=kind == "edits")
    return tool, ran


async def allow(*_: Any) -> Allow:
    return Allow()


ALLOW_PATHS: dict[str, tuple[str, dict[str, Any]]] = {
    "bypass mode": ("plain", {"permission_mode": "bypass"}),
    "allowed_tools by name": ("plain", {"allowed_tools": ["bash"]}),
    "allowed_tools by pattern": ("plain", {"allowed_tools": ["*"]}),
    "default mode, read-only tool": ("read_only", {}),
    "plan mode, read-only tool": ("read_only", {"permission_mode": "plan"}),
    "accept_edits mode, editing tool": ("edits", {"permission_mode": "accept_edits"}),
    "can_use_tool Allow": ("plain", {"can_use_tool": allow}),
    "can_use_tool True": ("plain", {"can_use_tool": lambda *a: True}),
    "can_use_tool Allow(arguments)": ("plain", {"can_use_tool": lambda *a: Allow({"command": "other"})}),
    "hook Allow": ("plain", {"hooks": Hooks(pre_tool_use=[lambda e: Allow()])}),
    "async hook Allow": ("plain", {"hooks": Hooks(pre_tool_use=[allow])}),
    "hook Allow(arguments)": ("plain", {"hooks": Hooks(pre_tool_use=[lambda e: Allow({"command": "other"})])}),
    "matcher hook Allow": ("plain", {"hooks": Hooks(pre_tool_use=[HookMatcher("bash", [lambda e: Allow()])])}),
    "hook Transform then Allow": (
        "plain",
        {"hooks": Hooks(pre_tool_use=[lambda e: Transform({"command": "other"}), lambda e: Allow()])},
    ),
    "every allow at once": (
        "read_only",
        {
            "permission_mode": "bypass",
            "allowed_tools": ["*"],
            "can_use_tool": allow,
            "hooks": Hooks(pre_tool_use=[lambda e: Allow()]),
        },
    ),
}
DENY_ENTRIES = ["bash", "ba*", "*", "b?sh", "[b]ash", "*sh"]


async def run_bash_call(cwd: Path, kind: str, options: dict[str, Any]) -> tuple[ToolResult, TurnCompleted, list[str]]:
    tool, ran = recorder(kind)
    loop = sessions.AgentLoop(Model([("bash", {"command": "echo ran"})]), tools=[tool], **options)
    results, done = await turn(loop, cwd)
    return results[0], done, ran


@pytest.mark.parametrize("path", ALLOW_PATHS)
async def test_each_allow_path_allows_on_its_own(cwd: Path, path: str) -> None:
    """The control for the matrix below: without a deny entry, each path runs the tool."""
    kind, options = ALLOW_PATHS[path]
    result, done, ran = await run_bash_call(cwd, kind, options)
    assert not result.is_error, result.content
    assert len(ran) == 1
    assert done.permission_denials == ()


@pytest.mark.parametrize("deny", DENY_ENTRIES)
@pytest.mark.parametrize("path", ALLOW_PATHS)
async def test_a_deny_entry_wins_over_every_allow_path(cwd: Path, path: str, deny: str) -> None:
    kind, options = ALLOW_PATHS[path]
    result, done, ran = await run_bash_call(cwd, kind, {**options, "disallowed_tools": [deny]})
    assert ran == []
    assert result.is_error
    assert result.content == "permission denied: tool 'bash' is disallowed for this session"
    assert done.permission_denials == ("bash",)
    assert done.finish_reason is FinishReason.STOP


def test_the_deny_list_is_matched_in_one_place() -> None:
    assert is_disallowed("bash", ["b?sh"])
    assert is_disallowed("mcp__web__fetch", ["mcp__web__*"])
    assert not is_disallowed("bash", ["Bash", "bas", "bash?", "[!b]ash"])


# --- can_use_tool answering None ---------------------------------------------------------------------


async def none_async(*_: Any) -> None:
    return None


@pytest.mark.parametrize("can_use_tool", [lambda *a: None, none_async], ids=["sync", "async"])
async def test_can_use_tool_returning_none_is_a_deny(cwd: Path, can_use_tool: Any) -> None:
    result, done, ran = await run_bash_call(cwd, "plain", {"can_use_tool": can_use_tool})
    assert ran == []
    assert result.content == "permission denied: the user denied 'bash'"
    assert done.permission_denials == ("bash",)
    assert done.finish_reason is FinishReason.STOP  # a plain denial: the turn goes on
