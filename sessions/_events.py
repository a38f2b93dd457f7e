"""Normalized values: usage, transcript messages, tool calls, stream events and `Result`.

Every provider speaks its own wire format and maps it, at one boundary, onto these
values; the server, the stores and subscribers only ever see these. They are frozen
attrs classes, and each has ``to_dict`` / ``from_dict`` for the stores' JSON records.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

import attrs

JSON = Any  # a value that json.dumps accepts


# --- usage and finish reasons ---------------------------------------------------------


@attrs.frozen
class Usage:
    """Token counts. ``total`` counts input, output and cache creation, not cache reads
    (ClaudeWrapper's rule: cache reads are not new tokens). Adds with ``+``.

    Example::

        turn = sessions.Usage(input_tokens=10, output_tokens=5)
        assert (turn + turn).total == 30
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total(self) -> int:
        """Input + output + cache creation tokens."""
        return self.input_tokens + self.output_tokens + self.cache_creation_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_tokens + other.cache_creation_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        """A JSON-ready dict."""
        return {  # spelled out: attrs.asdict is generic, and this runs at every turn's end
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_tokens": self.cache_creation_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        """Rebuild from `to_dict` output (unknown keys are ignored)."""
        return cls(**{f.name: int(data.get(f.name, 0)) for f in attrs.fields(cls)})


class FinishReason(enum.StrEnum):
    """Why a turn ended. ``STOP`` is success; every other value is an error `Result`.

    The values follow ExAthena's termination subtypes and the Claude CLI's ``subtype``.

    Example::

        if result.finish_reason is sessions.FinishReason.MAX_TURNS:
            print("the agent ran out of turns")
    """

    STOP = "stop"
    MAX_TURNS = "error_max_turns"
    MAX_BUDGET = "error_max_budget_usd"
    MAX_ITERATIONS = "error_max_iterations"
    NO_PROGRESS = "error_no_progress"
    HALTED = "error_halted"
    TIMEOUT = "error_timeout"
    PROVIDER_ERROR = "error_provider"
    DURING_EXECUTION = "error_during_execution"
    INTERRUPTED = "interrupted"


class ResultCategory(enum.StrEnum):
    """What kind of outcome a `Result` is, for a program that acts on it (``Result.category``).

    ========================  ===============  ===========================================
    `FinishReason`            category         ``Result.retryable``
    ========================  ===============  ===========================================
    ``STOP``                  ``OK``           no (nothing to retry)
    ``INTERRUPTED``           ``INTERRUPTED``  no (someone stopped it; resend if you mean to)
    ``TIMEOUT``               ``LIMIT``        yes (``turn_timeout``; a slow call may be quicker)
    ``MAX_TURNS``             ``LIMIT``        no (the same limit would stop it again)
    ``MAX_BUDGET``            ``LIMIT``        no
    ``MAX_ITERATIONS``        ``LIMIT``        no
    ``NO_PROGRESS``           ``TOOL``         no (the same tool call kept failing)
    ``HALTED``                ``TOOL``         no (a hook or the permission policy halted it)
    ``DURING_EXECUTION``      ``INTERNAL``     no (a callback raised, the CLI failed)
    ``PROVIDER_ERROR``        ``PROVIDER``     the provider's word: `ProviderError.retryable`
                                               if it was one, else the HTTP status
                                               (408, 409, 425, 429, 5xx, 529)
    ========================  ===============  ===========================================

    A result with ``is_error`` set but ``STOP`` as its reason (a provider that said both)
    is ``PROVIDER``.

    Example::

        match result.category:
            case sessions.ResultCategory.OK:
                print(result.text)
            case sessions.ResultCategory.PROVIDER if result.retryable:
                result = await SessionServer.send_message(server, prompt)
            case other:
                print("gave up:", other, result.error)
    """

    OK = "ok"
    INTERRUPTED = "interrupted"
    LIMIT = "limit"
    PROVIDER = "provider"
    TOOL = "tool"
    INTERNAL = "internal"


_CATEGORY = {
    FinishReason.STOP: ResultCategory.OK,
    FinishReason.INTERRUPTED: ResultCategory.INTERRUPTED,
    FinishReason.TIMEOUT: ResultCategory.LIMIT,
    FinishReason.MAX_TURNS: ResultCategory.LIMIT,
    FinishReason.MAX_BUDGET: ResultCategory.LIMIT,
    FinishReason.MAX_ITERATIONS: ResultCategory.LIMIT,
    FinishReason.NO_PROGRESS: ResultCategory.TOOL,
    FinishReason.HALTED: ResultCategory.TOOL,
    FinishReason.DURING_EXECUTION: ResultCategory.INTERNAL,
    FinishReason.PROVIDER_ERROR: ResultCategory.PROVIDER,
}
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 529})

# --- the transcript -------------------------------------------------------------------


@attrs.frozen
class ToolCall:
    """A tool call the model asked for: ``arguments`` is a JSON object.

    Example::

        call = sessions.ToolCall(id="c1", name="read", arguments={"path": "README.md"})
    """

    id: str
    name: str
    arguments: dict[str, JSON] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, JSON]:
        """A JSON-ready dict."""
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolCall:
        """Rebuild from `to_dict` output."""
        return cls(id=str(data["id"]), name=str(data["name"]), arguments=dict(data.get("arguments") or {}))


@attrs.frozen
class ToolResult:
    """What a tool call produced, as text for the model; ``is_error`` for a failure or a denial.

    Example::

        result = sessions.ToolResult(tool_call_id="c1", name="read", content="# otpy", is_error=False)
    """

    tool_call_id: str
    name: str
    content: str
    is_error: bool = False

    def to_dict(self) -> dict[str, JSON]:
        """A JSON-ready dict."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolResult:
        """Rebuild from `to_dict` output."""
        return cls(
            tool_call_id=str(data["tool_call_id"]),
            name=str(data["name"]),
            content=str(data["content"]),
            is_error=bool(data.get("is_error", False)),
        )


Role = Literal["system", "user", "assistant", "tool"]


@attrs.frozen
class Message:
    """One entry of the normalized transcript.

    - ``user``: the prompt in ``content``;
    - ``assistant``: text in ``content`` and the ``tool_calls`` it asked for;
    - ``tool``: one tool's output, ``tool_result`` set;
    - ``system``: a system prompt or a note (for example an interrupted turn).

    Example::

        sessions.Message(role="user", content="What files are here?")
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_result: ToolResult | None = None

    def to_dict(self) -> dict[str, JSON]:
        """A JSON-ready dict."""
        data: dict[str, JSON] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        if self.tool_result is not None:
            data["tool_result"] = self.tool_result.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        """Rebuild from `to_dict` output."""
        role = data["role"]
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"unknown message role {role!r}")
        tool_result = data.get("tool_result")
        return cls(
            role=role,
            content=str(data.get("content", "")),
            tool_calls=tuple(ToolCall.from_dict(c) for c in data.get("tool_calls") or ()),
            tool_result=ToolResult.from_dict(tool_result) if tool_result is not None else None,
        )


# --- what a turn produces ------------------------------------------------------------------


@attrs.frozen
class Result:
    """The outcome of one turn, success or not (like ``%Result{}`` in the Elixir libraries
    ClaudeWrapper and ExAthena).

    A failed turn is a `Result` with ``is_error`` set and a `FinishReason`; only a dead
    server or a broken transport raises. ``cost_usd`` is this turn's cost alone (a
    delta, never a running total); the session's total is the sum over its history.

    Example::

        result = await SessionServer.send_message("agent", "hi")
        if result.is_error:
            print(result.finish_reason, result.error)
        else:
            print(result.text, result.cost_usd)
    """

    text: str
    session_id: str
    turn: int
    """1 for the session's first turn, and so on (a turn that was interrupted counts)."""
    finish_reason: FinishReason = FinishReason.STOP
    is_error: bool = False
    provider_session_id: str | None = None
    cost_usd: float = 0.0
    usage: Usage = Usage()
    duration_s: float = 0.0
    num_turns: int = 1
    """Model round trips in this turn (the CLI's ``num_turns``, the loop's iterations)."""
    tool_calls: tuple[ToolCall, ...] = ()
    error: str | None = None
    """What went wrong, for an error result."""
    api_error_status: int | None = None
    model: str | None = None
    provider: str | None = None
    permission_denials: tuple[str, ...] = ()
    extra: dict[str, JSON] = attrs.field(factory=dict)
    """Provider-specific fields: ``model_usage``, ``stop_reason``, ``structured_output``..."""

    @property
    def category(self) -> ResultCategory:
        """What kind of outcome this is (see the table in `ResultCategory`).

        Example::

            if result.category is sessions.ResultCategory.LIMIT:
                print("raise the limit or stop:", result.finish_reason)
        """
        if self.is_error and self.finish_reason is FinishReason.STOP:
            return ResultCategory.PROVIDER
        return _CATEGORY[self.finish_reason]

    @property
    def retryable(self) -> bool:
        """Whether sending the same prompt again may succeed (see the table in `ResultCategory`).

        Example::

            if result.retryable:
                result = await SessionServer.send_message(server, prompt)
        """
        category = self.category
        if category is ResultCategory.LIMIT:
            return self.finish_reason is FinishReason.TIMEOUT
        if category is not ResultCategory.PROVIDER:
            return False
        said = self.extra.get("retryable")
        if isinstance(said, bool):
            return said
        status = self.api_error_status
        return status is not None and (status in _RETRYABLE_STATUS or 500 <= status <= 599)

    def to_dict(self) -> dict[str, JSON]:
        """A JSON-ready dict."""
        return {
            "text": self.text,
            "session_id": self.session_id,
            "turn": self.turn,
            "finish_reason": self.finish_reason.value,
            "is_error": self.is_error,
            "provider_session_id": self.provider_session_id,
            "cost_usd": self.cost_usd,
            "usage": self.usage.to_dict(),
            "duration_s": self.duration_s,
            "num_turns": self.num_turns,
            "tool_calls": [call.to_dict() for call in self.tool_calls],
            "error": self.error,
            "api_error_status": self.api_error_status,
            "model": self.model,
            "provider": self.provider,
            "permission_denials": list(self.permission_denials),
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """Rebuild from `to_dict` output."""
        return cls(
            text=str(data.get("text", "")),
            session_id=str(data["session_id"]),
            turn=int(data["turn"]),
            finish_reason=FinishReason(data.get("finish_reason", "stop")),
            is_error=bool(data.get("is_error", False)),
            provider_session_id=data.get("provider_session_id"),
            cost_usd=float(data.get("cost_usd", 0.0)),
            usage=Usage.from_dict(data.get("usage") or {}),
            duration_s=float(data.get("duration_s", 0.0)),
            num_turns=int(data.get("num_turns", 1)),
            tool_calls=tuple(ToolCall.from_dict(c) for c in data.get("tool_calls") or ()),
            error=data.get("error"),
            api_error_status=data.get("api_error_status"),
            model=data.get("model"),
            provider=data.get("provider"),
            permission_denials=tuple(data.get("permission_denials") or ()),
            extra=dict(data.get("extra") or {}),
        )


# --- stream events: what a provider yields during a turn, and subscribers receive -----------


@attrs.frozen
class TextDelta:
    """A piece of the assistant's text as it streams.

    Example::

        case sessions.TextDelta(text=text):
            print(text, end="")
    """

    text: str


@attrs.frozen
class ThinkingDelta:
    """A piece of the model's reasoning, where the provider exposes it.

    Example::

        case sessions.ThinkingDelta(text=text):
            log.debug("thinking", text=text)
    """

    text: str


@attrs.frozen
class ToolCallRequested:
    """The model asked for a tool call (before any permission check or execution).

    Example::

        case sessions.ToolCallRequested(call=call):
            print("calling", call.name, call.arguments)
    """

    call: ToolCall


@attrs.frozen
class ToolCallFinished:
    """A tool call finished (or was denied: ``result.is_error``).

    Example::

        case sessions.ToolCallFinished(result=result):
            print(result.name, "->", result.content[:80])
    """

    result: ToolResult


@attrs.frozen
class ModelCallFinished:
    """One model (API) call inside the turn finished, with the usage the provider reported
    for it: yielded by providers that run their own agent loop and report each call (the
    Claude Code CLI, one per API message). ``stop_reason`` is the API's own (``"end_turn"``,
    ``"tool_use"``); ``error`` the API's error kind (``"server_error"``, ``"rate_limit"``)
    when the call failed, else None. The turn's `Result.usage` is the sum the provider
    reports at the end; telemetry makes one ``chat`` span of each of these.

    Example::

        case sessions.ModelCallFinished(model=model, usage=usage):
            print(model, usage.input_tokens, usage.output_tokens)
    """

    model: str | None
    usage: Usage
    stop_reason: str | None = None
    error: str | None = None
    response_id: str | None = None


@attrs.frozen
class MessageAdded:
    """A complete message joined the transcript (assistant text, tool output, a note).

    Providers yield it for every message the turn adds after the user's prompt; the
    server appends it to the transcript and the store. Deltas are never stored.

    Example::

        case sessions.MessageAdded(message=message):
            transcript.append(message)
    """

    message: Message


@attrs.frozen
class ProviderSessionId:
    """The provider's own session id became known or changed (the CLI's ``session_id``).

    Example::

        case sessions.ProviderSessionId(id=native_id):
            print("claude session", native_id)
    """

    id: str


@attrs.frozen
class TurnCompleted:
    """The provider's last event of a turn: how it ended and what it cost.

    ``cost_usd`` is this turn's cost (providers that see cumulative totals convert
    them to deltas); ``usage`` this turn's tokens.

    Example::

        yield sessions.TurnCompleted(text="done", cost_usd=0.002, usage=sessions.Usage(10, 5))
    """

    text: str
    finish_reason: FinishReason = FinishReason.STOP
    is_error: bool = False
    cost_usd: float = 0.0
    usage: Usage = Usage()
    num_turns: int = 1
    error: str | None = None
    api_error_status: int | None = None
    model: str | None = None
    permission_denials: tuple[str, ...] = ()
    extra: dict[str, JSON] = attrs.field(factory=dict)


ProviderEvent = (
    TextDelta
    | ThinkingDelta
    | ToolCallRequested
    | ToolCallFinished
    | ModelCallFinished
    | MessageAdded
    | ProviderSessionId
    | TurnCompleted
)
"""What a provider's turn yields; it ends with exactly one `TurnCompleted`."""


@attrs.frozen
class TurnStarted:
    """Sent to subscribers when a turn starts.

    Example::

        case sessions.TurnStarted(turn=n, prompt=prompt):
            print(f"turn {n}: {prompt}")
    """

    session_id: str
    turn: int
    prompt: str


@attrs.frozen
class TurnFinished:
    """Sent to subscribers when a turn ends, with its `Result` (also for error results).

    Example::

        case sessions.TurnFinished(result=result):
            print("cost", result.cost_usd)
    """

    result: Result


@attrs.frozen
class TurnSnapshot:
    """The first event a subscriber gets when it joins during a turn: the turn so far.

    Example::

        case sessions.TurnSnapshot(turn=n, text=so_far):
            print(so_far, end="")
    """

    session_id: str
    turn: int
    prompt: str
    text: str
    messages: tuple[Message, ...]


@attrs.frozen
class EventsDropped:
    """The subscriber's buffer overflowed and ``count`` events were dropped (policy ``drop``).

    Example::

        case sessions.EventsDropped(count=n):
            print(f"missed {n} events; resync with SessionServer.messages()")
    """

    count: int


SessionEvent = ProviderEvent | TurnStarted | TurnFinished | TurnSnapshot | EventsDropped
"""What a subscriber receives."""
