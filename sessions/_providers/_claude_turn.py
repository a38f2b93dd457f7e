"""One turn's SDK messages mapped onto the normalized events, and the raw message stream they come from."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any, Final

from claude_agent_sdk import (
    AssistantMessage,
    ClaudeSDKClient,
    CLIConnectionError,
    ResultMessage,
    StreamEvent,
    SystemMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)

import otpy

from .._errors import (
    ProviderAuthError,
)
from .._events import (
    FinishReason,
    Message,
    MessageAdded,
    ModelCallFinished,
    ProviderEvent,
    ProviderSessionId,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallFinished,
    ToolCallRequested,
    ToolResult,
    TurnCompleted,
    Usage,
)
from ._claude_costs import cost_sum
from ._claude_private import parse_message

if TYPE_CHECKING:
    from ._claude_session import ClaudeSession

log = otpy.get_logger("sessions.claude")

_FINISH: Final = {
    "success": FinishReason.STOP,
    "error_max_turns": FinishReason.MAX_TURNS,
    "error_max_budget_usd": FinishReason.MAX_BUDGET,
    "error_during_execution": FinishReason.DURING_EXECUTION,
}
_CLI_DIAGNOSTIC: Final = "[ede_diagnostic]"
"""How the CLI's internal diagnostics in a result's ``errors`` start: not for users."""
_ERROR_KINDS: Final = {401: "auth", 403: "auth", 429: "rate_limited", 529: "overloaded"}


class TurnMapper:
    """Maps one turn's SDK messages onto the normalized events."""

    def __init__(self, session: ClaudeSession) -> None:
        self.session = session
        self.texts: list[str] = []
        self.tool_names: dict[str, str] = {}
        self.calls: list[ToolCall] = []
        self.model: str | None = None
        self.error_text: str | None = None
        self._message_id: str | None = None
        self._pending_text: list[str] = []
        self._pending_calls: list[ToolCall] = []
        self._running_tools: set[str] = set()
        self._call: dict[str, Any] | None = None
        """The API message streaming now: its id, model, usage so far and stop reason."""
        self.last_uuid: str | None = None
        """The uuid of the turn's last top-level entry in the CLI's transcript (a reply or a tool
        result) seen so far: where ``--resume-session-at`` cuts to go back to this turn's end."""

    @property
    def tools_running(self) -> bool:
        """Whether a tool call was requested and has not finished yet."""
        return bool(self._running_tools)

    def _session_id(self, message: Any) -> list[ProviderEvent]:
        sid = (
            message.data.get("session_id")
            if isinstance(message, SystemMessage)
            else getattr(message, "session_id", None)
        )
        if isinstance(sid, str) and sid and sid != self.session.reported_session_id:
            self.session.claude_session_id = self.session.reported_session_id = sid
            return [ProviderSessionId(sid)]
        return []

    def _flush(self) -> list[ProviderEvent]:
        if not self._pending_text and not self._pending_calls:
            return []
        message = Message(role="assistant", content="".join(self._pending_text), tool_calls=tuple(self._pending_calls))
        self._pending_text, self._pending_calls, self._message_id = [], [], None
        return [MessageAdded(message)]

    def feed(self, message: Any) -> list[ProviderEvent]:
        events = self._session_id(message)
        if getattr(message, "parent_tool_use_id", None) is not None:
            return events  # a subagent's inner messages stay inside its tool call
        synthetic = isinstance(message, AssistantMessage) and message.model == "<synthetic>"
        if isinstance(message, (AssistantMessage, UserMessage)) and isinstance(message.uuid, str) and not synthetic:
            self.last_uuid = message.uuid  # a synthetic API-error reply may not be in the transcript
        if isinstance(message, StreamEvent):
            event = message.event
            kind = event.get("type")
            if kind == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    events.append(TextDelta(delta["text"]))
                elif delta.get("type") == "thinking_delta" and delta.get("thinking"):
                    events.append(ThinkingDelta(delta["thinking"]))
            else:
                events += self._api_call(kind, event)
        elif isinstance(message, AssistantMessage):
            if message.error is not None or message.model == "<synthetic>":
                self.error_text = "".join(b.text for b in message.content if isinstance(b, TextBlock)) or message.error
                events += self._call_ended(error=str(message.error or "api_error"))
                return events + self._flush()
            if self._message_id is not None and message.message_id != self._message_id:
                events += self._flush()
            self._message_id = message.message_id
            self.model = message.model
            for block in message.content:
                if isinstance(block, TextBlock):
                    self._pending_text.append(block.text)
                    self.texts.append(block.text)
                elif isinstance(block, ToolUseBlock):
                    call = ToolCall(id=block.id, name=block.name, arguments=dict(block.input))
                    self.tool_names[block.id] = block.name
                    self._running_tools.add(block.id)
                    self.calls.append(call)
                    self._pending_calls.append(call)
                    events.append(ToolCallRequested(call))
        elif isinstance(message, UserMessage):
            events += self._flush()
            if isinstance(message.content, list):
                for block in message.content:
                    if isinstance(block, ToolResultBlock):
                        self._running_tools.discard(block.tool_use_id)
                        result = ToolResult(
                            tool_call_id=block.tool_use_id,
                            name=self.tool_names.get(block.tool_use_id, ""),
                            content=tool_text(block.content),
                            is_error=bool(block.is_error),
                        )
                        events.append(ToolCallFinished(result))
                        events.append(MessageAdded(Message(role="tool", content=result.content, tool_result=result)))
        elif isinstance(message, ResultMessage):
            self._running_tools.clear()
            cut = self.session._interrupt_requested or (message.terminal_reason or "").startswith("aborted")
            events += self._call_ended(error="interrupted" if cut and self._call is not None else None)
            events += self._flush()
        return events

    def _api_call(self, kind: object, event: Mapping[str, Any]) -> list[ProviderEvent]:
        """Follow the usage the CLI passes on from the API's stream (``message_start`` has the
        input tokens, ``message_delta`` the output tokens so far): one `ModelCallFinished`
        per API message, at its ``message_stop``."""
        if kind == "message_start":
            ended = self._call_ended()  # the one before never said message_stop
            start = event.get("message") or {}
            self._call = {
                "id": start.get("id"),
                "model": start.get("model"),
                "usage": dict(start.get("usage") or {}),
                "stop_reason": None,
            }
            return ended
        call = self._call
        if call is None:
            return []
        if kind == "message_delta":
            call["usage"].update(event.get("usage") or {})
            call["stop_reason"] = (event.get("delta") or {}).get("stop_reason") or call["stop_reason"]
        elif kind == "message_stop":
            # the API's own stream always says why it stopped (message_delta) before it stops:
            # a call without a stop reason was cut short by the CLI (an interrupt aborts it)
            cut = call["stop_reason"] is None
            return self._call_ended(
                error=("interrupted" if self.session._interrupt_requested else "aborted") if cut else None
            )
        return []

    def _call_ended(self, error: str | None = None) -> list[ProviderEvent]:
        """The `ModelCallFinished` of the API message streaming now; with ``error`` (the API
        failed) one even when no message had started (an HTTP error has no stream)."""
        call, self._call = self._call, None
        if call is None:
            if error is None:
                return []
            requested = self.session._query_opts.get("model", self.session.provider.options.model)
            model = self.model or (requested if isinstance(requested, str) else None)
            return [ModelCallFinished(model=model, usage=Usage(), error=error)]
        raw = call["usage"]
        usage = Usage(
            input_tokens=_count(raw.get("input_tokens")),
            output_tokens=_count(raw.get("output_tokens")),
            cache_creation_tokens=_count(raw.get("cache_creation_input_tokens")),
            cache_read_tokens=_count(raw.get("cache_read_input_tokens")),
        )
        model = call["model"] if isinstance(call["model"], str) else None
        response_id = call["id"] if isinstance(call["id"], str) else None
        stop = call["stop_reason"] if isinstance(call["stop_reason"], str) else None
        return [ModelCallFinished(model=model, usage=usage, stop_reason=stop, error=error, response_id=response_id)]

    def unfinished_call(self) -> list[ProviderEvent]:
        """The `ModelCallFinished` (error ``"interrupted"``) of an API call the turn was cut in."""
        return self._call_ended(error="interrupted") if self._call is not None else []

    def interrupted(self, note: str) -> TurnCompleted:
        return TurnCompleted(
            text="".join(self.texts),
            finish_reason=FinishReason.INTERRUPTED,
            is_error=True,
            error=f"interrupted: {note}",
            model=self.model,
            extra=self._transcript_point({"session_id": self.session.claude_session_id}),
        )

    def _transcript_point(self, extra: dict[str, Any]) -> dict[str, Any]:
        """``extra`` with ``resume_session_at``: the uuid of this turn's last entry in the CLI's
        transcript (what a rewind to this turn, or a fork at it, passes to ``--resume-session-at``)."""
        if self.last_uuid is not None:
            extra["resume_session_at"] = self.last_uuid
            if self.session.mirror is not None:
                extra["mirror_key"] = self.session.mirror.key  # where a fork on another machine finds it
        return extra

    def finish(self, result: ResultMessage) -> TurnCompleted:
        session = self.session
        cost, process_total = session._cost(result.total_cost_usd)
        carried, session._carried_cost = session._carried_cost, 0.0
        cost = cost_sum(cost, carried)
        model_usage = session._model_usage(result.model_usage)
        raw = result.usage or {}
        usage = Usage(
            input_tokens=int(raw.get("input_tokens") or 0),
            output_tokens=int(raw.get("output_tokens") or 0),
            cache_creation_tokens=int(raw.get("cache_creation_input_tokens") or 0),
            cache_read_tokens=int(raw.get("cache_read_input_tokens") or 0),
            reasoning_tokens=int((raw.get("output_tokens_details") or {}).get("thinking_tokens") or 0),
        )
        finish = _FINISH.get(result.subtype, FinishReason.PROVIDER_ERROR)
        if finish is FinishReason.STOP and result.is_error:
            finish = FinishReason.PROVIDER_ERROR
        if session._interrupt_requested or (result.terminal_reason or "").startswith("aborted"):
            finish = FinishReason.INTERRUPTED
        is_error = finish is not FinishReason.STOP
        result_text = result.result if isinstance(result.result, str) else None
        error: str | None = None
        if is_error:
            errors = [e for e in result.errors or () if not e.startswith(_CLI_DIAGNOSTIC)]
            error = "; ".join(errors) or result_text or self.error_text or result.subtype
            if finish is FinishReason.INTERRUPTED:
                error = "interrupted: the turn was stopped before it finished"  # not the CLI's internal diagnostics
        status = result.api_error_status
        denials = [d for d in result.permission_denials or () if isinstance(d, Mapping)]
        extra: dict[str, Any] = {
            "subtype": result.subtype,
            "terminal_reason": result.terminal_reason,
            "stop_reason": result.stop_reason,
            "duration_ms": result.duration_ms,
            "duration_api_ms": result.duration_api_ms,
            "model_usage": model_usage,
            "process_total_cost_usd": process_total,
            "session_id": result.session_id,
        }
        if carried:
            extra["carried_cost_usd"] = carried
        if denials:
            extra["permission_denials"] = [dict(d) for d in denials]
        if result.structured_output is not None:
            extra["structured_output"] = result.structured_output
        if is_error and finish is FinishReason.PROVIDER_ERROR:
            kind = _ERROR_KINDS.get(status or 0, "server_error" if status and status >= 500 else "api_error")
            extra["error_kind"] = kind
            extra["retryable"] = kind in ("rate_limited", "overloaded", "server_error")
            if kind == "auth" or (status is None and error and "Not logged in" in error):
                raise ProviderAuthError(
                    provider=session.provider.name, message=error or "authentication failed", kind="auth", status=status
                )
        text = result_text if result_text is not None and not is_error else "".join(self.texts)
        return TurnCompleted(
            text=text,
            finish_reason=finish,
            is_error=is_error,
            cost_usd=cost,
            usage=usage,
            num_turns=result.num_turns,
            error=error,
            api_error_status=status,
            model=self.model,
            permission_denials=tuple(str(d.get("tool_name", "")) for d in denials),
            extra=self._transcript_point(extra),
        )


async def receive_messages(client: ClaudeSDKClient) -> AsyncGenerator[Any, None]:
    """`ClaudeSDKClient.receive_messages`, with its inner generator closed when this one is.

    The SDK's version wraps ``Query.receive_messages()`` without closing it, so leaving it
    early (``receive_response`` does, at every result) leaves the inner generator to the
    garbage collector, and trio reports a ResourceWarning for each turn.
    """
    query = client._query
    if query is None:
        raise CLIConnectionError("Not connected. Call connect() first.")
    async with contextlib.aclosing(query.receive_messages()) as raw:
        async for data in raw:
            if data is WAKE:
                yield WAKE
                continue
            message = parse_message(data)
            if message is not None:
                yield message


def _count(value: object) -> int:
    """A token count from the API's usage (0 for anything that is not a count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


WAKE: Final[dict[str, Any]] = {"type": "sessions_wake"}
"""What the session's watchdog puts into the SDK's message stream to end a wait whose
deadline passed; `receive_messages` passes this very object on (before parsing)."""


def wake_stream(client: ClaudeSDKClient) -> Any:
    """The send side of the SDK's message stream (the one `receive_messages` reads)."""
    return client._query._message_send  # type: ignore[union-attr]


def tool_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [c.get("text", "") for c in content if isinstance(c, Mapping) and c.get("type") == "text"]
        if len(parts) == len(content):
            return "".join(parts)
    return json.dumps(content, default=repr)
