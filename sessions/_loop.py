"""`AgentLoop`: the agent loop that turns a chat model (`ModelProvider`) into an agent
provider (`Provider`): model call, tool calls, tool results, again, until a final answer.

One turn, as ExAthena's ``Loop.run`` (SESSIONS.md §4.4):

1. ``user_prompt_submit`` hooks see the prompt;
2. the model gets the transcript so far plus the prompt, and streams text and tool calls;
3. each tool call goes through ``pre_tool_use`` hooks and the permission check, the
   allowed ones run concurrently (at most ``max_parallel_tools``), ``post_tool_use``
   hooks see the results, and every result (a denial too) goes back to the model;
4. repeat until the model answers without tool calls (``stop`` hooks may refuse that),
   or a limit ends the turn: ``max_iterations`` model calls, the ``max_budget_usd`` of
   the turn's options, the same failing call ``max_failed_repeats`` times in a row, a
   hook's `Halt`, `interrupt`, or a provider error. Each is a typed `FinishReason`.

Every step is yielded as the same events the Claude provider emits (`TextDelta`,
`ThinkingDelta`, `ToolCallRequested`, `ToolCallFinished`, `MessageAdded` for each
assistant and tool message) and the turn ends with one `TurnCompleted` that sums usage
and cost over the model calls (``num_turns`` = model calls).
"""

from __future__ import annotations

import functools
import json
import math
import os
import types
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from decimal import Decimal
from typing import Any, Literal

import attrs
import trio

import otpy

from ._config import TURN_OPTIONS, check_number
from ._errors import InvalidOption, ProviderError, ProviderUnavailable, ToolError
from ._events import (
    FinishReason,
    Message,
    MessageAdded,
    ProviderEvent,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallFinished,
    ToolCallRequested,
    ToolResult,
    TurnCompleted,
    Usage,
)
from ._providers._base import ModelProvider, SessionContext, TurnRequest
from ._providers._http_common import checked_usage
from ._telemetry import active
from ._text import TextJoiner, clean_data, clean_text
from ._tools._builtin import builtin_tools
from ._tools._core import Tool, ToolContext, ToolFunction
from ._tools._policy import (
    Allow,
    CanUseTool,
    Deny,
    Halt,
    HookEvent,
    HookEventName,
    Hooks,
    PermissionMode,
    check_mode,
    check_permission,
)

log = otpy.get_logger("sessions.loop")

ToolsOption = Sequence[Tool | ToolFunction] | Literal["all"] | None


class AgentLoop:
    """The agent loop over a chat model: a `Provider` (``runs_own_tools = False``).

    A SessionServer given a bare `ModelProvider` wraps it in an ``AgentLoop`` with the
    defaults; build one yourself to choose tools, permissions and hooks. It is
    configuration: permissions and hooks come from here on every (re)start, never from
    a store.

    Options:

    - ``tools``: ``"all"`` (the built-ins, `builtin_tools`), None (no tools), or a
      sequence of `Tool` values and typed ``async def`` functions.
    - ``permission_mode``: ``"default"`` (read-only tools run, others ask
      ``can_use_tool``), ``"accept_edits"`` (file edits run too), ``"plan"``
      (read-only tools only), ``"bypass"`` (everything runs).
    - ``allowed_tools`` / ``disallowed_tools``: tool names or fnmatch patterns allowed
      without asking / always refused (refusal wins).
    - ``can_use_tool(name, arguments, request)``: sync or async; returns `Allow`,
      `Deny` or a bool. Without it, a call that needs asking is denied.
    - ``hooks``: `Hooks` (prompt submit, before/after each tool, stop).
    - ``max_iterations``: model calls per turn (a turn's ``options["max_iterations"]``
      overrides it); ``max_failed_repeats``: the same failing call (same tool, same
      arguments) this many times ends the turn with ``NO_PROGRESS``.
    - ``cwd``: where the tools work; default the session's ``cwd``, else the process's.
    - ``max_parallel_tools``: tool calls of one model answer run at once;
      ``tool_timeout``: seconds per call (None: no limit); ``max_tool_output``:
      characters of a result passed to the model.
    - ``system_prompt``: sent first (a turn's ``options["system_prompt"]`` overrides it).
    - ``max_context_chars``: when the messages sent to the model exceed this many
      characters, the oldest tool results (all but the last ``keep_tool_results``) are
      sent elided, oldest first, until they fit (ExAthena's observation masking). The
      transcript itself keeps them whole. None (the default): send everything.

    A turn's ``options`` also carry ``max_budget_usd`` (the turn stops once its cost
    reaches it) and model options (``model``, ``temperature``...) passed to the model.

    Example::

        loop = sessions.AgentLoop(
            sessions.Ollama("llama3.1"),
            tools="all",
            permission_mode="accept_edits",
            disallowed_tools=["bash"],
            cwd="/path/to/project",
        )
        async with loop.connect(sessions.SessionContext("s1")) as conn:
            async for event in conn.run_turn(sessions.TurnRequest(1, "Fix the typo in README", ())):
                print(event)
    """

    runs_own_tools = False

    def __init__(
        self,
        model: ModelProvider,
        *,
        tools: ToolsOption = "all",
        permission_mode: PermissionMode = "default",
        allowed_tools: Sequence[str] = (),
        disallowed_tools: Sequence[str] = (),
        can_use_tool: CanUseTool | None = None,
        hooks: Hooks | None = None,
        max_iterations: int = 25,
        max_failed_repeats: int = 3,
        cwd: str | os.PathLike[str] | None = None,
        max_parallel_tools: int = 4,
        tool_timeout: float | None = 600.0,
        max_tool_output: int = 100_000,
        system_prompt: str | None = None,
        max_context_chars: int | None = None,
        keep_tool_results: int = 4,
    ) -> None:
        check_mode(permission_mode)
        for option, value in (
            ("max_iterations", max_iterations),
            ("max_failed_repeats", max_failed_repeats),
            ("max_parallel_tools", max_parallel_tools),
            ("max_tool_output", max_tool_output),
        ):
            check_number(option, value, integer=True, minimum=1)
        if max_context_chars is not None:
            check_number("max_context_chars", max_context_chars, integer=True, minimum=1)
        check_number("keep_tool_results", keep_tool_results, integer=True)
        if tool_timeout is not None:
            check_number("tool_timeout", tool_timeout)  # math.inf: no limit, as None
            if tool_timeout == 0:
                raise InvalidOption("tool_timeout", tool_timeout, "must be positive or None")
        if cwd is not None and not isinstance(cwd, str | os.PathLike):
            raise InvalidOption("cwd", cwd, "expected a directory path (a str or os.PathLike) or None")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise InvalidOption("system_prompt", system_prompt, "expected a str or None")
        for option, names in (("allowed_tools", allowed_tools), ("disallowed_tools", disallowed_tools)):
            if isinstance(names, str):  # a str is a Sequence[str] too: refuse the likely mistake
                raise InvalidOption(option, names, "give a list of names, not one string")
        self.model = model
        self.name: str = model.name
        self.tools = _tools(tools)
        self.permission_mode = permission_mode
        self.allowed_tools = tuple(allowed_tools)
        self.disallowed_tools = tuple(disallowed_tools)
        self.can_use_tool = can_use_tool
        self.hooks = hooks if hooks is not None else Hooks()
        self.max_iterations = max_iterations
        self.max_failed_repeats = max_failed_repeats
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.max_parallel_tools = max_parallel_tools
        self.tool_timeout = tool_timeout
        self.max_tool_output = max_tool_output
        self.system_prompt = system_prompt
        self.max_context_chars = max_context_chars
        self.keep_tool_results = keep_tool_results

    def __repr__(self) -> str:
        return f"AgentLoop({self.model!r}, tools={list(self.tools)}, permission_mode={self.permission_mode!r})"

    @asynccontextmanager
    async def _connect(self, ctx: SessionContext) -> AsyncIterator[LoopSession]:
        try:
            cwd = _working_directory(self.cwd or ctx.cwd)
        except InvalidOption as exc:
            # It may come back (a mount, a checkout): a turn-level failure, not a crash
            # (SessionServer's init refuses a cwd that is missing at start).
            raise ProviderUnavailable(self.name, str(exc), kind="cwd") from exc
        yield LoopSession(self, ctx, cwd)

    def connect(self, ctx: SessionContext) -> AbstractAsyncContextManager[LoopSession]:
        """Open the loop for one session: an async context manager yielding a `LoopSession`.

        Nothing runs between turns, so leaving it has nothing to stop; the model's HTTP
        client is shared by all sessions of the provider (close it with ``model.aclose()``,
        or let the trio run's end close it).

        Example::

            async with loop.connect(sessions.SessionContext("s1", cwd=".")) as conn:
                ...
        """
        return self._connect(ctx)


def _cancel_status() -> object:
    """The current task's cancel status (trio's own, private): where `_unshielded_since`
    stops. None if this trio has none (then every blocking wait gets its scope)."""
    return getattr(trio.lowlevel.current_task(), "_cancel_status", None)


def _unshielded_since(base: object) -> bool:
    """Whether no cancel scope entered since the cancel status ``base`` (the model's own,
    inside its ``__anext__``) is shielded: a cancel scope of the loop's may then go under
    them, as the loop's scope around the whole wait would have reached the wait."""
    status = _cancel_status()
    while status is not base and status is not None:
        scope = getattr(status, "_scope", None)
        if scope is None or scope.shield:
            return False
        status = getattr(status, "parent", None)
    return status is base


def _working_directory(cwd: str | None) -> str:
    real = os.path.realpath(cwd or os.getcwd())
    if not os.path.isdir(real):
        raise InvalidOption("cwd", cwd, "not a directory")
    return real


def _turn_limits(options: dict[str, Any], default_iterations: int) -> tuple[int, float | None]:
    """The turn's ``max_iterations`` and ``max_budget_usd`` (None: no budget), checked:
    a SessionServer checks them before it queues a turn, but a loop can be driven
    directly, and a bad option must end the turn, not crash it."""
    for key in ("max_iterations", "max_budget_usd"):
        if options.get(key) is not None:
            check_number(key, options[key], **TURN_OPTIONS[key])
    iterations = options.get("max_iterations")
    budget = options.get("max_budget_usd")
    return (int(iterations) if iterations is not None else default_iterations), (
        float(budget) if budget is not None and not math.isinf(budget) else None
    )


def _is_cost(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _clean_call(call: ToolCall) -> ToolCall:
    call_id, name, arguments = clean_text(call.id), clean_text(call.name), clean_data(dict(call.arguments))
    if call_id == call.id and name == call.name and arguments == call.arguments:
        return call
    return attrs.evolve(call, id=call_id, name=name, arguments=arguments)


def _tools(tools: ToolsOption) -> dict[str, Tool]:
    if tools is None:
        return {}
    if tools == "all":
        chosen: Sequence[Tool | ToolFunction] = builtin_tools()
    elif isinstance(tools, str):  # type: ignore[unreachable]  # guards untyped callers
        raise InvalidOption("tools", tools, 'give "all", None, or a list of tools')
    else:
        chosen = tools
    found: dict[str, Tool] = {}
    for entry in chosen:
        one = entry if isinstance(entry, Tool) else Tool.from_function(entry)
        if one.name in found:
            raise InvalidOption("tools", one.name, "two tools have this name")
        found[one.name] = one
    return found


@attrs.define
class _Batch:
    """The outcome of running one model answer's tool calls."""

    results: list[ToolResult]
    calls: list[ToolCall]
    halt: str | None = None
    interrupted: bool = False
    failure: str | None = None


class _CallbackFailed(Exception):
    """A hook or ``can_use_tool`` raised: the turn ends with ``DURING_EXECUTION``."""


async def _hook(hooks: Hooks, point: HookEventName, event: HookEvent, tool_name: str | None = None) -> Any:
    try:
        return await hooks.run(point, event, tool_name=tool_name)
    except Exception as exc:
        raise _CallbackFailed(f"a {point} hook failed: {type(exc).__name__}: {exc}") from exc


def _error(call: ToolCall, text: str) -> ToolResult:
    return ToolResult(call.id, call.name, text, is_error=True)


def repair(messages: Sequence[Message]) -> list[Message]:
    """The transcript with a result for every tool call.

    A turn killed mid-loop may leave an assistant message whose calls never got a
    result; OpenAI-style APIs reject such a history, so each missing result is filled
    in as an error saying so.
    """
    out: list[Message] = []
    pending: list[ToolCall] = []

    def flush() -> None:
        for call in pending:
            out.append(Message("tool", tool_result=_error(call, "no result: the turn ended before this call ran")))
        pending.clear()

    for message in messages:
        if message.role == "tool" and message.tool_result is not None:
            pending[:] = [c for c in pending if c.id != message.tool_result.tool_call_id]
            out.append(message)
            continue
        flush()
        out.append(message)
        if message.role == "assistant":
            pending.extend(message.tool_calls)
    flush()
    return out


def for_model(messages: Sequence[Message]) -> list[Message]:
    """``messages`` as chat templates accept them: at most one system message, first, and
    user and assistant turns that alternate (tool results follow their assistant message).

    A transcript can break both rules: an interrupted turn leaves a system note in the
    middle (``Turn 2 was interrupted (...); it was not retried.``), and a turn killed
    before the model answered leaves two user messages in a row. OpenAI accepts that;
    the templates of many vLLM and llama.cpp models refuse it. So, for the model only
    (the transcript keeps every message as it was):

    - system messages before the first user message become one leading system message;
    - a later system message is put, in square brackets, at the head of the next user
      message (``[Turn 2 was interrupted ...]`` and a blank line, then the prompt);
    - user messages in a row become one, their texts joined by a blank line, and so do
      assistant messages in a row (the first without tool calls).
    """
    out: list[Message] = []
    notes: list[str] = []
    for message in messages:
        if message.role == "system":
            if not any(m.role != "system" for m in out):
                if out:
                    out[0] = attrs.evolve(out[0], content=f"{out[0].content}\n\n{message.content}")
                else:
                    out.append(message)
            else:
                notes.append(f"[{message.content}]")
            continue
        if message.role == "user" and notes:
            message = attrs.evolve(message, content="\n\n".join([*notes, message.content]))
            notes.clear()
        last = out[-1] if out else None
        if last is not None and last.role == message.role == "user":
            out[-1] = attrs.evolve(last, content=_joined(last.content, message.content))
        elif last is not None and last.role == message.role == "assistant" and not last.tool_calls:
            out[-1] = attrs.evolve(message, content=_joined(last.content, message.content))
        else:
            out.append(message)
    if notes:
        tail = "\n\n".join(notes)
        if out and out[-1].role == "user":
            out[-1] = attrs.evolve(out[-1], content=_joined(out[-1].content, tail))
        else:
            out.append(Message("user", tail))
    return out


def _joined(first: str, second: str) -> str:
    return f"{first}\n\n{second}" if first and second else first or second


def compact(messages: list[Message], max_chars: int | None, keep: int) -> list[Message]:
    """``messages`` with the oldest tool results elided until their text fits ``max_chars``.

    The last ``keep`` tool results are never elided; nothing else is changed, so the
    result may still be over the limit.
    """
    if max_chars is None:
        return messages
    size = sum(len(m.content) + (len(m.tool_result.content) if m.tool_result else 0) for m in messages)
    if size <= max_chars:
        return messages
    results = [i for i, m in enumerate(messages) if m.tool_result is not None]
    out = list(messages)
    for index in results[: max(len(results) - keep, 0)]:
        result = out[index].tool_result
        assert result is not None
        note = f"[{result.name} output elided to save context: {len(result.content)} characters]"
        if len(note) >= len(result.content):
            continue
        size -= len(result.content) - len(note)
        out[index] = attrs.evolve(out[index], tool_result=attrs.evolve(result, content=note))
        if size <= max_chars:
            break
    return out


class LoopSession:
    """The agent loop connected to one session (a `ProviderSession`); see `AgentLoop`.

    Example::

        async with loop.connect(ctx) as conn:
            async for event in conn.run_turn(request):
                ...
            await conn.interrupt()   # from another task, to stop a running turn
    """

    def __init__(self, loop: AgentLoop, ctx: SessionContext, cwd: str) -> None:
        self.loop = loop
        self.ctx = ctx
        self.cwd = cwd
        self._interrupted = False
        self._scope: trio.CancelScope | None = None

    def _stop_requested(self) -> bool:
        # a method, not the attribute: interrupt() flips it from another task while we await
        return self._interrupted

    async def interrupt(self) -> None:
        """Stop the running turn: the model call or the tools in flight are cancelled and the
        turn ends with ``FinishReason.INTERRUPTED``."""
        self._interrupted = True
        if self._scope is not None:
            self._scope.cancel()

    def run_turn(self, request: TurnRequest) -> AsyncIterator[ProviderEvent]:
        """Run one turn of the loop; yield every step and one final `TurnCompleted`."""
        return self._run_turn(request)

    async def _run_turn(self, request: TurnRequest) -> AsyncGenerator[ProviderEvent, None]:
        loop = self.loop
        self._interrupted = False
        options = dict(request.options)
        sid, turn = self.ctx.session_id, request.turn
        usage = Usage()
        # Summed as the decimals the calls reported (as Session.total_cost is): three
        # calls of $0.4 cost $1.2, not 1.2000000000000002.
        spent = Decimal(0)
        cost = 0.0
        iterations = 0
        calls_made: list[ToolCall] = []
        denials: list[str] = []
        text = ""
        model_name: str | None = None
        stop_reason: str | None = None

        def finish(reason: FinishReason, error: str | None = None, status: int | None = None) -> TurnCompleted:
            return TurnCompleted(
                text=text,
                finish_reason=reason,
                is_error=reason is not FinishReason.STOP,
                cost_usd=cost,
                usage=usage,
                num_turns=iterations,
                error=clean_text(error) if error is not None else None,
                api_error_status=status,
                model=model_name,
                permission_denials=tuple(denials),
                extra={"tool_calls": [c.to_dict() for c in calls_made], "stop_reason": stop_reason},
            )

        try:
            max_iterations, budget = _turn_limits(options, loop.max_iterations)
        except InvalidOption as exc:
            yield finish(FinishReason.DURING_EXECUTION, f"the turn's options are invalid: {exc}")
            return
        try:
            outcome, event = await _hook(
                loop.hooks, "user_prompt_submit", HookEvent("user_prompt_submit", sid, turn, prompt=request.prompt)
            )
        except _CallbackFailed as exc:
            yield finish(FinishReason.DURING_EXECUTION, str(exc))
            return
        if isinstance(outcome, Deny | Halt):
            yield finish(FinishReason.HALTED, f"the prompt was refused by a hook: {outcome.reason}")
            return
        prompt = clean_text(event.prompt if event.prompt is not None else request.prompt)
        history = repair(request.messages)
        system_prompt = options.get("system_prompt", loop.system_prompt)
        if system_prompt and not (history and history[0].role == "system"):
            history.insert(0, Message("system", str(system_prompt)))
        history.append(Message("user", prompt))
        specs = [t.spec for t in loop.tools.values()]
        failures: dict[str, int] = {}

        while True:
            if self._stop_requested():
                yield finish(FinishReason.INTERRUPTED, "interrupted")
                return
            if iterations >= max_iterations:
                yield finish(FinishReason.MAX_ITERATIONS, f"stopped after {iterations} model calls (max_iterations)")
                return
            if budget is not None and cost >= budget:
                yield finish(FinishReason.MAX_BUDGET, f"spent ${cost:.6f} of the turn's budget ${budget:.6f}")
                return
            iterations += 1
            pieces: list[str] = []
            calls: list[ToolCall] = []
            completed: TurnCompleted | None = None
            sent = for_model(compact(history, loop.max_context_chars, loop.keep_tool_results))
            stream = loop.model.chat(sent, specs, options)
            if (telemetry := active()) is not None:
                model = options.get("model") or getattr(loop.model, "model", None)
                stream = telemetry.traced_chat(stream, provider=loop.model.name, model=model)
            said, thought = TextJoiner(), TextJoiner()
            base = _cancel_status()
            try:
                while True:
                    # No cancel scope per event (one costs more than the rest of a delta's
                    # path here): the model's next event is asked for by hand, and only a
                    # wait that blocks gets a scope that interrupt() cancels (`_wait`).
                    if self._stop_requested():
                        break
                    waiting = stream.__anext__().__await__()
                    try:
                        trap = waiting.send(None)
                    except StopIteration as got:
                        step: ProviderEvent | None = got.value
                    except StopAsyncIteration:
                        step = None
                    else:
                        step = await self._wait(waiting, trap, base)
                    if step is None:
                        break
                    # What a model sends is text to clean (see sessions._text), here at
                    # the loop's edge, whatever ModelProvider sent it.
                    if isinstance(step, TextDelta):
                        if piece := said.push(step.text):
                            pieces.append(piece)
                            yield TextDelta(piece)
                    elif isinstance(step, ThinkingDelta):
                        if piece := thought.push(step.text):
                            yield ThinkingDelta(piece)
                    elif isinstance(step, ToolCallRequested):
                        call = _clean_call(step.call)
                        calls.append(call)
                        yield ToolCallRequested(call)
                    elif isinstance(step, TurnCompleted):
                        completed = step
                if piece := said.flush():
                    pieces.append(piece)
                    yield TextDelta(piece)
                if piece := thought.flush():
                    yield ThinkingDelta(piece)
            except ProviderError as exc:
                log.warning(
                    "model_call_failed", session_id=sid, turn=turn, provider=exc.provider, error=str(exc), kind=exc.kind
                )
                yield finish(FinishReason.PROVIDER_ERROR, f"{type(exc).__name__}: {exc}", exc.status)
                return
            finally:
                self._scope = None
                close = getattr(stream, "aclose", None)
                if close is not None:
                    with trio.CancelScope(shield=True):
                        await close()
            if self._stop_requested():
                yield finish(FinishReason.INTERRUPTED, "interrupted")
                return
            if completed is None:
                yield finish(FinishReason.PROVIDER_ERROR, f"{loop.model.name}: the model's answer had no end")
                return
            usage += checked_usage(loop.model.name, completed.usage)
            call_cost = completed.cost_usd
            if not _is_cost(call_cost):
                # A cost that cannot be added (NaN, inf, not a number) would switch the
                # budget off: the turn ends, as on any garbage from the provider.
                log.warning("model_cost_unusable", session_id=sid, turn=turn, provider=loop.model.name, cost=call_cost)
                yield finish(
                    FinishReason.PROVIDER_ERROR, f"{loop.model.name}: the model call reported a cost of {call_cost!r}"
                )
                return
            if call_cost < 0:
                log.warning("model_cost_negative", session_id=sid, turn=turn, provider=loop.model.name, cost=call_cost)
                call_cost = 0.0
            spent += Decimal(repr(float(call_cost)))
            cost = float(spent)
            model_name = completed.model or model_name
            stop_reason = completed.extra.get("stop_reason") if completed.extra else None
            if completed.is_error:
                text = clean_text(completed.text or "".join(pieces))
                yield finish(completed.finish_reason, completed.error, completed.api_error_status)
                return
            text = "".join(pieces) or clean_text(completed.text)
            assistant = Message("assistant", text, tool_calls=tuple(calls))
            history.append(assistant)
            yield MessageAdded(assistant)

            if budget is not None and cost > budget:
                for call in calls:
                    skipped = _error(call, "not run: the turn's budget is spent")
                    message = Message("tool", tool_result=skipped)
                    history.append(message)
                    yield ToolCallFinished(skipped)
                    yield MessageAdded(message)
                yield finish(FinishReason.MAX_BUDGET, f"spent ${cost:.6f} of the turn's budget ${budget:.6f}")
                return

            if not calls:
                try:
                    outcome, event = await _hook(loop.hooks, "stop", HookEvent("stop", sid, turn, text=text))
                except _CallbackFailed as exc:
                    yield finish(FinishReason.DURING_EXECUTION, str(exc))
                    return
                if isinstance(outcome, Halt):
                    yield finish(FinishReason.HALTED, f"halted by a stop hook: {outcome.reason}")
                    return
                if isinstance(outcome, Deny):
                    more = Message("user", outcome.reason)
                    history.append(more)
                    yield MessageAdded(more)
                    continue
                text = event.text if event.text is not None else text
                yield finish(FinishReason.STOP)
                return

            batch = await self._run_tools(calls, turn, denials)
            for call, result in zip(batch.calls, batch.results, strict=True):
                calls_made.append(call)
                message = Message("tool", tool_result=result)
                history.append(message)
                yield ToolCallFinished(result)
                yield MessageAdded(message)
            if batch.interrupted or self._stop_requested():
                yield finish(FinishReason.INTERRUPTED, "interrupted")
                return
            if batch.failure is not None:
                yield finish(FinishReason.DURING_EXECUTION, batch.failure)
                return
            if batch.halt is not None:
                yield finish(FinishReason.HALTED, batch.halt)
                return
            for call, result in zip(batch.calls, batch.results, strict=True):
                key = f"{call.name} {json.dumps(call.arguments, sort_keys=True, default=str)}"
                if not result.is_error:
                    failures.pop(key, None)
                    continue
                failures[key] = failures.get(key, 0) + 1
                if failures[key] >= loop.max_failed_repeats:
                    yield finish(
                        FinishReason.NO_PROGRESS,
                        f"the same failing call to {call.name!r} was made {failures[key]} times (max_failed_repeats)",
                    )
                    return

    @types.coroutine
    def _wait(self, waiting: Any, trap: Any, base: object) -> Generator[Any, Any, ProviderEvent | None]:
        """The rest of a wait for the model's next event that blocked (``waiting`` yielded
        ``trap`` to trio): each of its blocking steps goes to trio inside a cancel scope
        that `interrupt` cancels, entered and left around that step alone, so scopes stay
        nested as the model's code left them. Not where the model's code is shielded
        (between ``base``, the loop's cancel status, and the wait): the scope would pierce
        it. The event, or None at the stream's end or when interrupted."""
        ours = False
        while True:
            scope = trio.CancelScope() if _unshielded_since(base) else None
            if scope is not None:
                scope.__enter__()
                self._scope = scope
                if self._stop_requested():
                    scope.cancel()
            thrown: BaseException | None = None
            try:
                value = yield trap
            except GeneratorExit:
                if scope is not None:
                    self._scope = None
                    scope.__exit__(None, None, None)
                waiting.close()
                raise
            except BaseException as exc:  # noqa: BLE001 (what trio throws in goes to the model's code)
                thrown, value = exc, None
            if scope is not None:
                self._scope = None
                scope.__exit__(None, None, None)
                ours = ours or scope.cancel_called
            try:
                trap = waiting.send(value) if thrown is None else waiting.throw(thrown)
            except StopIteration as got:
                event: ProviderEvent = got.value
                return event
            except StopAsyncIteration:
                return None
            except trio.Cancelled:
                if ours and self._stop_requested():
                    return None  # our scope's cancellation, come out of the model's code
                raise

    async def _run_tools(self, calls: list[ToolCall], turn: int, denials: list[str]) -> _Batch:
        results: list[ToolResult | None] = [None] * len(calls)
        batch = _Batch([], list(calls))
        with trio.CancelScope() as scope:
            self._scope = scope
            if self._stop_requested():
                scope.cancel()
            try:
                await self._check_and_run(batch, results, turn, denials)
            except _CallbackFailed as exc:
                batch.failure = str(exc)
        self._scope = None
        batch.interrupted = scope.cancelled_caught or self._stop_requested()
        why = f"not run: {batch.failure}" if batch.failure else "not run: the turn was interrupted"
        batch.results = [r if r is not None else _error(c, why) for r, c in zip(results, batch.calls, strict=True)]
        return batch

    async def _check_and_run(
        self, batch: _Batch, results: list[ToolResult | None], turn: int, denials: list[str]
    ) -> None:
        loop = self.loop
        sid = self.ctx.session_id
        runnable: list[tuple[int, ToolCall, Tool]] = []
        for index, call in enumerate(batch.calls):
            if batch.halt is not None:
                results[index] = _error(call, f"not run: the turn was halted ({batch.halt})")
                continue
            found = loop.tools.get(call.name)
            if found is None:
                known = ", ".join(loop.tools) or "none"
                results[index] = _error(call, f"no tool named {call.name!r} (tools: {known})")
                continue
            outcome, event = await _hook(
                loop.hooks, "pre_tool_use", HookEvent("pre_tool_use", sid, turn, call=call), call.name
            )
            if isinstance(outcome, Halt):
                batch.halt = f"halted by a hook before {call.name!r}: {outcome.reason}"
                results[index] = _error(call, batch.halt)
                continue
            if isinstance(outcome, Deny):
                denials.append(call.name)
                results[index] = _error(call, f"denied by a hook: {outcome.reason}")
                if outcome.interrupt:
                    batch.halt = f"a hook denied {call.name!r} and stopped the turn: {outcome.reason}"
                continue
            call = batch.calls[index] = event.call if event.call is not None else call
            try:
                decision = await check_permission(
                    found,
                    call,
                    mode=loop.permission_mode,
                    allowed=loop.allowed_tools,
                    disallowed=loop.disallowed_tools,
                    can_use_tool=loop.can_use_tool,
                    session_id=sid,
                    turn=turn,
                    hook_allowed=isinstance(outcome, Allow),
                )
            except Exception as exc:
                raise _CallbackFailed(f"can_use_tool failed: {type(exc).__name__}: {exc}") from exc
            if isinstance(decision, Deny):
                denials.append(call.name)
                results[index] = _error(call, f"permission denied: {decision.reason}")
                if decision.interrupt:
                    batch.halt = f"permission denied for {call.name!r} and the turn stopped: {decision.reason}"
                continue
            if decision.arguments is not None:
                call = batch.calls[index] = attrs.evolve(call, arguments=dict(decision.arguments))
            runnable.append((index, call, found))

        limiter = trio.CapacityLimiter(loop.max_parallel_tools)
        async with trio.open_nursery() as nursery:
            for index, call, found in runnable:
                nursery.start_soon(self._run_one, index, call, found, turn, results, limiter)

        for index, call, _tool in runnable:
            done = results[index]
            if done is None or batch.halt is not None:
                continue
            outcome, event = await _hook(
                loop.hooks, "post_tool_use", HookEvent("post_tool_use", sid, turn, call=call, result=done), call.name
            )
            if isinstance(outcome, Halt | Deny):
                batch.halt = f"halted by a hook after {call.name!r}: {outcome.reason}"
            elif event.result is not None:
                results[index] = event.result

    async def _run_one(
        self,
        index: int,
        call: ToolCall,
        found: Tool,
        turn: int,
        results: list[ToolResult | None],
        limiter: trio.CapacityLimiter,
    ) -> None:
        loop = self.loop
        context = ToolContext(self.cwd, self.ctx.session_id, turn, call)
        async with limiter:
            try:
                with trio.fail_after(loop.tool_timeout) if loop.tool_timeout is not None else nullcontext():
                    if (telemetry := active()) is None:
                        content = await found.run(dict(call.arguments), context)
                    else:
                        run = functools.partial(found.run, dict(call.arguments), context)
                        content = await telemetry.traced_tool(run, call)
                result = ToolResult(call.id, call.name, content)
            except ToolError as exc:
                result = _error(call, str(exc))
            except trio.TooSlowError:
                result = _error(call, f"{call.name} timed out after {loop.tool_timeout:g}s")
            except Exception as exc:  # noqa: BLE001 (a tool's bug goes back to the model, as text)
                log.warning("tool_failed", tool=call.name, session_id=self.ctx.session_id, error=repr(exc))
                result = _error(call, f"{call.name} failed: {type(exc).__name__}: {exc}")
        result = attrs.evolve(result, content=clean_text(result.content))
        if len(result.content) > loop.max_tool_output:
            cut = result.content[: loop.max_tool_output] + f"\n[cut: {len(result.content)} characters]"
            result = attrs.evolve(result, content=cut)
        results[index] = result
