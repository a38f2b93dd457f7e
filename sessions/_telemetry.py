"""OpenTelemetry traces and metrics for sessions, following the GenAI semantic conventions.

Off unless ``opentelemetry-api`` is installed (the ``telemetry`` extra): then a span per
turn (``invoke_agent``), per model call of the agent loop (``chat {model}``) and per tool
call (``execute_tool {tool}``), and the conventions' histograms. Without the package
nothing here imports it, and the turn path pays one global read per turn (`active`).
It also counts otpy's supervisor restarts, through otpy's neutral restart listener
(`otpy.add_restart_listener`): otpy knows nothing of sessions or OpenTelemetry.

The conventions' attribute names are those of the GenAI conventions since 1.37
(``gen_ai.provider.name``, not the older ``gen_ai.system``). OpenTelemetry is the
well-kept library here; this module only maps sessions' values onto its API.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

import otpy

from ._events import ToolCall

if TYPE_CHECKING:
    from ._events import ModelCallFinished, ProviderEvent, Result

_INSTRUMENTATION = "sessions"

_state: _Telemetry | None = None
_decided = False
_wanted: bool | None = None
_capture_content = False
_providers: tuple[Any, Any] = (None, None)


def configure_telemetry(
    *,
    enabled: bool | None = None,
    capture_content: bool = False,
    tracer_provider: Any = None,
    meter_provider: Any = None,
) -> None:
    """Turn sessions' OpenTelemetry spans and metrics on or off, and choose whether they
    carry text.

    ``enabled=None`` (the default) means on when ``opentelemetry-api`` is installed;
    ``False`` switches them off; ``True`` without the package raises `ImportError`.
    ``capture_content=True`` adds the prompt and the reply text to the turn's span
    (``gen_ai.input.messages``, ``gen_ai.output.messages``) and tool arguments and
    results to tool spans; by default no text of a conversation leaves the process, as
    the GenAI conventions advise. ``tracer_provider`` and ``meter_provider`` replace
    OpenTelemetry's global ones (as other instrumentations take them). Call it before
    the sessions start: unless ``enabled=False``, it also starts counting otpy's
    supervisor restarts (``otpy_supervisor.restarts``, through `otpy.add_restart_listener`),
    which are otherwise counted only from the first turn on.

    Example::

        sessions.configure_telemetry(capture_content=True)   # spans carry prompts and replies
        sessions.configure_telemetry(enabled=False)          # no spans, no metrics
    """
    global _decided, _wanted, _capture_content, _state, _providers
    if enabled and importlib.util.find_spec("opentelemetry") is None:
        raise ImportError("sessions telemetry needs opentelemetry-api: pip install 'otpy-sessions[telemetry]'")
    if _state is not None:
        otpy.remove_restart_listener(_state.restarted)
    _wanted, _capture_content = enabled, capture_content
    _providers = (tracer_provider, meter_provider)
    _decided, _state = False, None
    if enabled is not False:
        active()  # now, so that otpy's restarts are counted from here on


def active() -> _Telemetry | None:
    """The telemetry to report to, or None when it is off (the per-turn cost when off)."""
    global _decided, _state
    if _decided:
        return _state
    _decided = True
    if _wanted is not False and importlib.util.find_spec("opentelemetry") is not None:
        _state = _Telemetry(_capture_content, *_providers)
        otpy.add_restart_listener(_state.restarted)
    return _state


def _error_type(exc: BaseException) -> str:
    return type(exc).__qualname__


class _Telemetry:
    """The tracer and instruments, made once (internal)."""

    def __init__(self, capture_content: bool, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import metrics, trace

        from otpy import __version__ as version

        self.trace = trace
        self.capture_content = capture_content
        self.tracer = trace.get_tracer(_INSTRUMENTATION, version, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_INSTRUMENTATION, version, meter_provider=meter_provider)
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per model call, by type"
        )
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Duration of model calls and of turns"
        )
        self.cost = meter.create_counter("otpy_sessions.cost", unit="USD", description="What the turns cost, in USD")
        self.turns = meter.create_counter("otpy_sessions.turns", unit="{turn}", description="Turns, by finish reason")
        self.refusals = meter.create_counter(
            "otpy_sessions.refusals",
            unit="{call}",
            description="send_message calls refused (SessionBusy, BudgetExceeded)",
        )
        self.restarts = meter.create_counter(
            "otpy_supervisor.restarts",
            unit="{restart}",
            description="Children restarted by otpy supervisors, by supervisor and child id",
        )

    # --- a turn ------------------------------------------------------------------------------

    async def run_turn(
        self,
        run: Callable[[], Awaitable[bool]],
        *,
        session_id: str,
        provider: str,
        turn: int,
        prompt: str,
        model: str | None,
        outcome: Callable[[], Result | None],
    ) -> bool:
        """Run ``run`` (the turn) inside its ``invoke_agent`` span, and end the span however
        the turn ends: with its `Result`, or with an error status when it is cancelled
        (an interrupt past its grace, a killed server) or raises."""
        trace = self.trace
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.provider.name": provider,
            "gen_ai.conversation.id": session_id,
            "otpy_sessions.turn": turn,
        }
        if model is not None:
            attributes["gen_ai.request.model"] = model
        if self.capture_content:
            attributes["gen_ai.input.messages"] = json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]
            )
        span = self.tracer.start_span("invoke_agent", kind=trace.SpanKind.INTERNAL, attributes=attributes)
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                return await run()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._end_turn(span, outcome(), failure, time.perf_counter() - started, attributes)

    def _end_turn(
        self, span: Any, result: Result | None, failure: BaseException | None, elapsed: float, base: dict[str, Any]
    ) -> None:
        from opentelemetry.trace import Status, StatusCode

        common: dict[str, Any] = {k: base[k] for k in ("gen_ai.operation.name", "gen_ai.provider.name")}
        if result is None:
            error = _error_type(failure) if failure is not None else "unfinished"
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, "the turn ended without a result (cancelled or killed)"))
            self.operation_duration.record(elapsed, {**common, "error.type": error})
            self.turns.add(1, {"otpy_sessions.finish_reason": "killed"})
            span.end()
            return
        usage = result.usage
        span.set_attributes(
            {
                "gen_ai.response.finish_reasons": [result.finish_reason.value],
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "otpy_sessions.cost_usd": result.cost_usd,
                "otpy_sessions.result.category": result.category.value,
            }
        )
        if result.model:
            span.set_attribute("gen_ai.response.model", result.model)
        if self.capture_content:
            output = [{"role": "assistant", "parts": [{"type": "text", "content": result.text}]}]
            span.set_attribute("gen_ai.output.messages", json.dumps(output))
        attributes = dict(common)
        if result.is_error:
            span.set_attribute("error.type", result.finish_reason.value)
            span.set_status(Status(StatusCode.ERROR, result.error or result.finish_reason.value))
            attributes["error.type"] = result.finish_reason.value
        self.operation_duration.record(elapsed, attributes)
        self.turns.add(
            1,
            {
                "otpy_sessions.finish_reason": result.finish_reason.value,
                "otpy_sessions.result.category": result.category.value,
                "gen_ai.provider.name": base["gen_ai.provider.name"],
            },
        )
        if result.cost_usd:
            self.cost.add(result.cost_usd, {"gen_ai.provider.name": base["gen_ai.provider.name"]})
        span.end()

    # --- a model call of the agent loop ---------------------------------------------------------

    async def traced_chat(
        self, stream: AsyncIterator[ProviderEvent], *, provider: str, model: str | None
    ) -> AsyncIterator[ProviderEvent]:
        """``stream`` (one model call), inside a ``chat {model}`` span (a CLIENT span)."""
        from opentelemetry.trace import Status, StatusCode

        from ._events import TurnCompleted

        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider}
        if model:
            attributes["gen_ai.request.model"] = model
        span = self.tracer.start_span(
            f"chat {model}" if model else "chat", kind=self.trace.SpanKind.CLIENT, attributes=attributes
        )
        started = time.perf_counter()
        completed: TurnCompleted | None = None
        error: str | None = None
        try:
            async for event in stream:
                if isinstance(event, TurnCompleted):
                    completed = event
                yield event
        except BaseException as exc:
            error = _error_type(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
            raise
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                with trio.CancelScope(shield=True):  # as the loop closes an unwrapped stream
                    await close()
            metric = dict(attributes)
            if completed is not None:
                if completed.model:
                    span.set_attribute("gen_ai.response.model", completed.model)
                    metric["gen_ai.response.model"] = completed.model
                span.set_attribute("gen_ai.response.finish_reasons", [completed.finish_reason.value])
                usage = completed.usage
                span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
                self.token_usage.record(usage.input_tokens, {**metric, "gen_ai.token.type": "input"})
                self.token_usage.record(usage.output_tokens, {**metric, "gen_ai.token.type": "output"})
                if completed.is_error and error is None:
                    error = completed.finish_reason.value
                    span.set_status(Status(StatusCode.ERROR, completed.error or error))
            elif error is None:
                error = "unfinished"  # closed early: an interrupt, a cancelled turn
                span.set_status(Status(StatusCode.ERROR, "the model call ended without its answer"))
            if error is not None:
                span.set_attribute("error.type", error)
                metric["error.type"] = error
            self.operation_duration.record(time.perf_counter() - started, metric)
            span.end()

    # --- the model and tool calls of a provider's own agent loop (the Claude Code CLI) ----------

    async def traced_agent(
        self, stream: AsyncIterator[ProviderEvent], *, provider: str, model: str | None, reports_calls: bool
    ) -> AsyncIterator[ProviderEvent]:
        """``stream`` (a turn of a provider that runs its own agent loop), passed through, with
        a ``chat`` span per `ModelCallFinished` it yields and an ``execute_tool`` span per tool
        call it reports (`ToolCallRequested` .. `ToolCallFinished`), children of the turn's span.

        The provider says when a call ended, not when it began: a model call is taken to
        begin when the turn began or the call or tool before it ended, and a tool call when
        it was requested or, if later, when the model call that asked for it ended. A turn
        cut short ends its running tool calls' spans in error, or if none ran and the
        provider reports its model calls (``reports_calls``: it yields `ModelCallFinished`),
        a span of the model call it was in.
        """
        from opentelemetry import context

        from ._events import ModelCallFinished, ToolCallFinished, ToolCallRequested, TurnCompleted

        parent = context.get_current()
        boundary = chat_ended = time.time_ns()
        running: dict[str, tuple[ToolCall, int]] = {}
        completed = False
        failure: str | None = None
        try:
            async for event in stream:
                kind = type(event)
                if kind is ModelCallFinished:
                    assert isinstance(event, ModelCallFinished)
                    now = time.time_ns()
                    self._reported_chat(parent, provider, model, event, boundary, now)
                    boundary = chat_ended = now
                elif kind is ToolCallRequested:
                    assert isinstance(event, ToolCallRequested)
                    running[event.call.id] = (event.call, time.time_ns())
                elif kind is ToolCallFinished:
                    assert isinstance(event, ToolCallFinished)
                    now = time.time_ns()
                    call, asked = running.pop(event.result.tool_call_id, (None, chat_ended))
                    if call is None:
                        call = ToolCall(id=event.result.tool_call_id, name=event.result.name, arguments={})
                    error = "tool_error" if event.result.is_error else None
                    self._reported_tool(parent, call, max(asked, chat_ended), now, error, event.result.content)
                    boundary = max(boundary, now)
                elif kind is TurnCompleted:
                    completed = True
                yield event
        except BaseException as exc:
            failure = _error_type(exc)
            raise
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                with trio.CancelScope(shield=True):
                    await close()
            if not completed:
                now = time.time_ns()
                for call, asked in running.values():
                    self._reported_tool(parent, call, max(asked, chat_ended), now, failure or "unfinished", None)
                if not running and reports_calls:
                    self._reported_chat(parent, provider, model, None, boundary, now, failure or "unfinished")

    def _reported_chat(
        self,
        parent: Any,
        provider: str,
        model: str | None,
        call: ModelCallFinished | None,
        start: int,
        end: int,
        failure: str | None = None,
    ) -> None:
        """A ``chat`` span (and its metrics) for a model call that ran from ``start`` to ``end``
        (ns), as the provider reported it (``call``), or cut short (``failure``)."""
        from opentelemetry.trace import Status, StatusCode

        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider}
        if model:
            attributes["gen_ai.request.model"] = model
        named = model or (call.model if call is not None else None)  # the CLI's, if the turn named none
        span = self.tracer.start_span(
            f"chat {named}" if named else "chat",
            context=parent,
            kind=self.trace.SpanKind.CLIENT,
            attributes=attributes,
            start_time=start,
        )
        metric = dict(attributes)
        error = failure
        if call is not None:
            if call.model:
                span.set_attribute("gen_ai.response.model", call.model)
                metric["gen_ai.response.model"] = call.model
            if call.response_id:
                span.set_attribute("gen_ai.response.id", call.response_id)
            if call.stop_reason:
                span.set_attribute("gen_ai.response.finish_reasons", [call.stop_reason])
            usage = call.usage
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            if call.error is None:
                self.token_usage.record(usage.input_tokens, {**metric, "gen_ai.token.type": "input"})
                self.token_usage.record(usage.output_tokens, {**metric, "gen_ai.token.type": "output"})
            else:
                error = call.error
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, "the model call failed or was cut short"))
            metric["error.type"] = error
        self.operation_duration.record((end - start) / 1e9, metric)
        span.end(end_time=end)

    def _tool_attributes(self, call: ToolCall) -> dict[str, Any]:
        """An ``execute_tool`` span's attributes (its arguments only with content capture on)."""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.name,
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.type": "function",
        }
        if self.capture_content:
            attributes["gen_ai.tool.call.arguments"] = json.dumps(call.arguments, default=str)
        return attributes

    def _reported_tool(
        self, parent: Any, call: ToolCall, start: int, end: int, error: str | None, result: str | None
    ) -> None:
        """An ``execute_tool`` span for a tool call the provider ran itself."""
        from opentelemetry.trace import Status, StatusCode

        attributes = self._tool_attributes(call)
        if self.capture_content and result is not None:
            attributes["gen_ai.tool.call.result"] = result
        span = self.tracer.start_span(
            f"execute_tool {call.name}",
            context=parent,
            kind=self.trace.SpanKind.INTERNAL,
            attributes=attributes,
            start_time=start,
        )
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, "the tool call failed or was cut short"))
        span.end(end_time=end)

    # --- a tool call of the agent loop ----------------------------------------------------------

    async def traced_tool(self, run: Callable[[], Awaitable[str]], call: ToolCall) -> str:
        """Run a tool inside its ``execute_tool {tool}`` span."""
        from opentelemetry.trace import Status, StatusCode

        attributes = self._tool_attributes(call)
        with self.tracer.start_as_current_span(
            f"execute_tool {call.name}",
            kind=self.trace.SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                content = await run()
            except BaseException as exc:
                span.set_attribute("error.type", _error_type(exc))
                span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
                raise
            if self.capture_content:
                span.set_attribute("gen_ai.tool.call.result", content)
            return content

    # --- otpy's restarts -----------------------------------------------------------------------

    def restarted(self, restart: otpy.ChildRestarted) -> None:
        """Count a restart (an `otpy.add_restart_listener` listener, added while this is active)."""
        self.restarts.add(
            1, {"otpy_supervisor.name": restart.supervisor, "otpy_supervisor.child.id": str(restart.child_id)}
        )

    # --- refusals ----------------------------------------------------------------------------

    def refused(self, session_id: str, error: Exception) -> None:
        """Count a refused `send_message` (by the error's type)."""
        self.refusals.add(1, {"error.type": type(error).__name__})
