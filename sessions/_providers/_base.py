"""The provider protocol: how a SessionServer talks to a backend.

Two kinds of backend exist, and one protocol serves both:

- an **agent provider** runs its own tool loop (the Claude Code CLI): one turn goes in,
  events and one `TurnCompleted` come out;
- a **model provider** answers one chat request at a time (Ollama, OpenAI-compatible) and
  needs the session's agent loop to run tools; it implements `ModelProvider`, and the
  loop (`sessions.AgentLoop`) wraps it into an agent provider.

Lifetime: a `Provider` is configuration, shared by restarts (it goes in a child spec).
For each running session the server calls `Provider.connect` once and keeps the
`ProviderSession` it returns until the server stops. ``connect`` returns an async
context manager that the server enters and exits **in one task** (the session's
provider task), and runs every turn in that same task, so that a provider built on
anyio task groups or cancel scopes (claude-agent-sdk) is used as anyio requires.
Leaving the context manager must release everything: no subprocess or task survives
it, even when it is left by cancellation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from .._events import JSON, Message, ProviderEvent, Result

if TYPE_CHECKING:
    from .._stores._base import Store


@attrs.frozen
class SessionContext:
    """What a provider learns about the session it serves, once, at connect.

    ``messages`` is the transcript restored from the store (empty for a new session);
    ``provider_session_id`` the provider's own id from the last run, for resume;
    ``store`` the session's store, for providers that mirror their own transcript
    into it (the Claude provider's ``SessionStore`` bridge); ``continues_from``, after a
    `SessionServer.rewind` or in a `SessionServer.fork` (see `Session.continues_from`), the
    `Result` of the turn whose end ``messages`` continues from: its ``provider_session_id``
    and ``extra`` say where the provider's own conversation stood then, for a provider that
    can branch it there (the Claude CLI's ``--fork-session``); others ignore it.

    Example::

        ctx = sessions.SessionContext(session_id="s1", cwd="/tmp/work")
    """

    session_id: str
    cwd: str | None = None
    messages: tuple[Message, ...] = ()
    provider_session_id: str | None = None
    store: Store | None = None
    options: dict[str, JSON] = attrs.field(factory=dict)
    """The session's ``query_opts``."""
    continues_from: Result | None = None


@attrs.frozen
class TurnRequest:
    """One turn: the prompt, the transcript before it, and the options for this turn.

    ``options`` is the session's ``query_opts`` with the per-turn overrides of
    `SessionServer.send_message` merged over them.

    Example::

        request = sessions.TurnRequest(turn=1, prompt="hi", messages=(), options={"model": "sonnet"})
    """

    turn: int
    prompt: str
    messages: tuple[Message, ...]
    options: dict[str, JSON] = attrs.field(factory=dict)


@runtime_checkable
class ProviderSession(Protocol):
    """**Protocol**: a connected provider serving one session (see `Provider.connect`).

    Example::

        async with provider.connect(ctx) as conn:
            async for event in conn.run_turn(request):
                print(event)
    """

    def run_turn(self, request: TurnRequest) -> AsyncIterator[ProviderEvent]:
        """Run one turn and yield its events, ending with exactly one `TurnCompleted`.

        A failure the provider can describe (an API error, max turns, a budget) ends
        the turn with an error `TurnCompleted`. Raise a `ProviderError` only when the
        provider itself broke (a dead process, garbage on the wire); the server then
        records the turn as failed and reconnects for the next one. Cancelling the
        iteration must stop the turn cleanly and leave the session usable.
        """
        ...

    async def interrupt(self) -> None:
        """Ask the running turn to stop early (the CLI's interrupt control request).

        The turn should then end soon with ``FinishReason.INTERRUPTED``. A provider with
        nothing better to do returns at once: the server cancels the turn after a grace
        period anyway.
        """
        ...


@runtime_checkable
class Provider(Protocol):
    """**Protocol**: a backend that sessions can talk to. Configuration only; no state per session.

    ``runs_own_tools`` is True for a provider that runs its own tools (the Claude Code
    CLI) and False for a model that needs the agent loop. Optional: ``reports_model_calls
    = True`` says that the provider yields a `ModelCallFinished` for each model call of a
    turn, so that telemetry, when a turn is cut short, also ends the span of the call it
    was in (the Claude Code CLI's provider does).

    Example::

        class Echo:
            name = "echo"
            runs_own_tools = True

            def connect(self, ctx):
                return EchoSession()   # an async context manager yielding a ProviderSession
    """

    name: str
    runs_own_tools: bool

    def connect(self, ctx: SessionContext) -> AbstractAsyncContextManager[ProviderSession]:
        """Open a connection for one session; enter and exit it in one task."""
        ...


@attrs.frozen
class ToolSpec:
    """A tool as a model sees it: a name, a description and a JSON schema for its arguments.

    Example::

        sessions.ToolSpec("read", "Read a file", {"type": "object", "properties": {"path": {"type": "string"}}})
    """

    name: str
    description: str
    parameters: dict[str, JSON]


@runtime_checkable
class ModelProvider(Protocol):
    """**Protocol**: a chat model that answers one request at a time; the agent loop runs its tools.

    `chat` yields `TextDelta`, `ThinkingDelta` and `ToolCallRequested` events as they
    stream, and ends with one `TurnCompleted` whose ``extra["message"]`` is not needed:
    the loop builds the assistant `Message` from the text and the tool calls it saw.
    ``TurnCompleted.usage`` and ``cost_usd`` are this request's.

    Example::

        async for event in model.chat(messages, tools, {"model": "llama3.1"}):
            ...
    """

    name: str

    def chat(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], options: dict[str, Any]
    ) -> AsyncIterator[ProviderEvent]:
        """Send one chat request; yield its events, ending with one `TurnCompleted`."""
        ...

    async def aclose(self) -> None:
        """Close the client (connection pool) behind this provider."""
        ...
