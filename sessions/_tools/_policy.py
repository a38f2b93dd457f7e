"""Permissions and hooks for the agent loop: configuration, never restored from a store.

Permission check for a tool call, first decisive rule wins (ExAthena's order):

1. ``disallowed_tools`` matches: deny;
2. a ``pre_tool_use`` hook returned `Allow`: allow;
3. ``allowed_tools`` matches: allow;
4. the mode: ``bypass`` allows all; ``plan`` allows read-only tools and denies the
   rest; ``accept_edits`` allows read-only and file-editing tools; ``default`` allows
   read-only tools;
5. otherwise ask ``can_use_tool``; with no callback (or an answer of None), deny.

`check_permission` is the one place that decides, so the deny list (names or fnmatch
patterns, matched by `is_disallowed`) wins over every way of allowing a call.

A denied call goes back to the model as an error tool result.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeAlias

import attrs

from .._errors import InvalidOption
from .._events import ToolCall, ToolResult
from ._core import Tool

PermissionMode: TypeAlias = Literal["default", "accept_edits", "plan", "bypass"]
"""How much the loop may do without asking (see `AgentLoop`)."""

PERMISSION_MODES: tuple[str, ...] = ("default", "accept_edits", "plan", "bypass")


@attrs.frozen
class Allow:
    """Let the call run; ``arguments``, if given, replace the model's.

    Example::

        async def can_use_tool(name, arguments, request):
            return sessions.Allow()
    """

    arguments: dict[str, Any] | None = None


@attrs.frozen
class Deny:
    """Refuse the call: the model gets ``reason`` as an error result. With
    ``interrupt=True`` the turn also stops (finish reason ``HALTED``). From a hook,
    `Deny` refuses a tool call, a prompt, or (a ``stop`` hook) the end of the turn.

    Example::

        return sessions.Deny("no network access", interrupt=False)
    """

    reason: str = "denied"
    interrupt: bool = False


@attrs.frozen
class Halt:
    """(From a hook) stop the turn now; it ends with ``FinishReason.HALTED`` and ``reason``.

    Example::

        async def guard(event):
            if "rm -rf" in str(event.call.arguments):
                return sessions.Halt("destructive command")
    """

    reason: str


@attrs.frozen
class Transform:
    """(From a hook) replace what the hook saw: the prompt (a str), a call's arguments (a
    dict), a tool result's content (a str), or the final text (a str).

    Example::

        async def redact(event):
            return sessions.Transform(event.result.content.replace(SECRET, "***"))
    """

    value: Any


@attrs.frozen
class PermissionRequest:
    """What ``can_use_tool`` is told about a call.

    Example::

        async def can_use_tool(name, arguments, request: sessions.PermissionRequest):
            return sessions.Allow() if request.read_only else sessions.Deny("read-only session")
    """

    call: ToolCall
    session_id: str
    turn: int
    mode: str
    read_only: bool
    edits_files: bool


Decision = Allow | Deny
CanUseTool = Callable[[str, dict[str, Any], PermissionRequest], Awaitable[Decision | bool] | Decision | bool]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def is_disallowed(name: str, disallowed: Sequence[str]) -> bool:
    """Whether the tool ``name`` matches an entry of ``disallowed_tools`` (a name or an
    fnmatch pattern: ``"bash"``, ``"mcp__web__*"``, ``"*"``)."""
    return _matches(name, disallowed)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def check_permission(
    tool: Tool,
    call: ToolCall,
    *,
    mode: str,
    allowed: Sequence[str],
    disallowed: Sequence[str],
    can_use_tool: CanUseTool | None,
    session_id: str,
    turn: int,
    hook_allowed: bool = False,
) -> Decision:
    """Decide whether ``call`` may run (see the module docstring for the order).

    Every path to a decision goes through here: ``hook_allowed`` (a ``pre_tool_use`` hook
    returned `Allow`) skips the rest of the check, but never the deny list.
    """
    if is_disallowed(call.name, disallowed):
        return Deny(f"tool {call.name!r} is disallowed for this session")
    if hook_allowed:
        return Allow()
    if _matches(call.name, allowed) or mode == "bypass":
        return Allow()
    if mode == "plan":
        return Allow() if tool.read_only else Deny(f"plan mode is read-only: {call.name!r} is not allowed")
    if tool.read_only or (mode == "accept_edits" and tool.edits_files):
        return Allow()
    if can_use_tool is None:
        return Deny(f"tool {call.name!r} needs permission and the session has no can_use_tool callback")
    request = PermissionRequest(call, session_id, turn, mode, tool.read_only, tool.edits_files)
    decision = await _maybe_await(can_use_tool(call.name, dict(call.arguments), request))
    if decision is True:
        return Allow()
    if decision is False or decision is None:
        return Deny(f"the user denied {call.name!r}")
    if isinstance(decision, Allow | Deny):
        return decision
    raise InvalidOption("can_use_tool", decision, "must return sessions.Allow, sessions.Deny or a bool")


# --- hooks -------------------------------------------------------------------------------

HookEventName = Literal["user_prompt_submit", "pre_tool_use", "post_tool_use", "stop"]


@attrs.frozen
class HookEvent:
    """What a hook is told. ``event`` names the hook point; the rest depends on it:
    ``prompt`` (user_prompt_submit), ``call`` (pre/post_tool_use), ``result``
    (post_tool_use), ``text`` (stop: the final answer).

    Example::

        async def log_tools(event: sessions.HookEvent) -> None:
            print(event.event, event.call.name if event.call else "")
    """

    event: str
    session_id: str
    turn: int
    prompt: str | None = None
    call: ToolCall | None = None
    result: ToolResult | None = None
    text: str | None = None


HookOutcome = Allow | Deny | Halt | Transform | None
Hook = Callable[[HookEvent], Awaitable[HookOutcome] | HookOutcome]


@attrs.frozen
class HookMatcher:
    """Hooks that run only for tools whose name fully matches the regular expression
    ``matcher`` (``"bash"``, ``"write|edit"``); for tool hooks only.

    Example::

        sessions.Hooks(pre_tool_use=[sessions.HookMatcher("bash", [check_command])])
    """

    matcher: str
    hooks: Sequence[Hook]

    def __attrs_post_init__(self) -> None:
        try:
            re.compile(self.matcher)
        except re.error as exc:
            raise InvalidOption("matcher", self.matcher, f"not a regular expression: {exc}") from None


@attrs.frozen
class Hooks:
    """The agent loop's hooks. Each is a sync or async callable taking a `HookEvent` and
    returning None (go on), `Allow`, `Deny`, `Halt` or `Transform`:

    - ``user_prompt_submit``: before the prompt reaches the model. `Transform` (a str)
      replaces the prompt; `Deny` / `Halt` end the turn (``HALTED``) before any model call.
    - ``pre_tool_use``: before a tool call runs (after the model asked for it). `Deny`
      refuses it (the model gets an error result); `Allow` skips the permission check
      (not ``disallowed_tools``); `Transform` (a dict) replaces its arguments; `Halt`
      ends the turn.
    - ``post_tool_use``: after a call ran. `Transform` (a str) replaces the result's
      content; `Halt` ends the turn after this batch of calls.
    - ``stop``: when the model gives its final answer. `Deny` refuses to stop: the
      reason goes to the model as a user message and the loop goes on; `Transform` (a
      str) replaces the final text; `Halt` ends the turn as an error.

    Hooks run in order; the first `Deny`/`Halt` wins; each `Transform` feeds the next hook. Entries of
    the tool lists may be `HookMatcher` values.

    Example::

        async def no_rm(event):
            if "rm " in event.call.arguments.get("command", ""):
                return sessions.Deny("rm is not allowed here")

        hooks = sessions.Hooks(pre_tool_use=[sessions.HookMatcher("bash", [no_rm])])
    """

    user_prompt_submit: Sequence[Hook] = ()
    pre_tool_use: Sequence[Hook | HookMatcher] = ()
    post_tool_use: Sequence[Hook | HookMatcher] = ()
    stop: Sequence[Hook] = ()

    async def run(
        self, point: HookEventName, event: HookEvent, *, tool_name: str | None = None
    ) -> tuple[Allow | Deny | Halt | None, HookEvent]:
        """Run the hooks of ``point``: the decisive outcome (the first `Deny` or `Halt`, else
        `Allow` if a hook allowed, else None) and the event with every `Transform` applied."""
        allowed = False
        entries: Sequence[Hook | HookMatcher] = getattr(self, point)
        if not entries:
            return None, event
        for entry in entries:
            if isinstance(entry, HookMatcher):
                if tool_name is None or not re.fullmatch(entry.matcher, tool_name):
                    continue
                hooks: Sequence[Hook] = entry.hooks
            else:
                hooks = (entry,)
            for hook in hooks:
                result = await _maybe_await(hook(event))
                if result is None:
                    continue
                if isinstance(result, Deny | Halt):
                    return result, event
                if isinstance(result, Transform):
                    event = _apply(event, point, result.value)
                elif isinstance(result, Allow):
                    allowed = True
                    if result.arguments is not None:
                        event = _apply(event, point, result.arguments)
                else:
                    raise InvalidOption(point, result, "a hook returns None, Allow, Deny, Halt or Transform")
        return (Allow() if allowed else None), event


def _apply(event: HookEvent, point: str, value: Any) -> HookEvent:
    if point == "user_prompt_submit":
        return attrs.evolve(event, prompt=str(value))
    if point == "pre_tool_use" and event.call is not None:
        if not isinstance(value, dict):
            raise InvalidOption("pre_tool_use", value, "Transform takes the new arguments as a dict")
        return attrs.evolve(event, call=attrs.evolve(event.call, arguments=value))
    if point == "post_tool_use" and event.result is not None:
        return attrs.evolve(event, result=attrs.evolve(event.result, content=str(value)))
    return attrs.evolve(event, text=str(value))


def normalize_hooks(hooks: Hooks | None) -> Hooks:
    """``hooks`` or an empty `Hooks`."""
    return hooks if hooks is not None else Hooks()


def check_mode(mode: str) -> None:
    """Raise `InvalidOption` for an unknown permission mode."""
    if mode not in PERMISSION_MODES:
        raise InvalidOption("permission_mode", mode, f"must be one of {', '.join(PERMISSION_MODES)}")
