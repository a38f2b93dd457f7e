"""ScriptedProvider: a provider that plays back scripted turns, for tests and offline demos.

It runs its own tools (``runs_own_tools = True``): a scripted tool call is reported as
`ToolCallRequested`, an assistant `MessageAdded` carrying the call, then
`ToolCallFinished` and a tool `MessageAdded` with the scripted output, as the Claude CLI
reports the tools it ran.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import attrs
import trio

from .._errors import InvalidOption, ProviderError
from .._events import (
    FinishReason,
    Message,
    MessageAdded,
    ProviderEvent,
    ProviderSessionId,
    TextDelta,
    ToolCall,
    ToolCallFinished,
    ToolCallRequested,
    ToolResult,
    TurnCompleted,
    Usage,
)
from .._text import TextJoiner, clean_data, clean_text
from ._base import SessionContext, TurnRequest


class ScriptedCrash(RuntimeError):
    """The exception a `ScriptedReply` with ``crash_after`` raises mid-stream (a provider bug).

    Example::

        provider = sessions.ScriptedProvider([sessions.ScriptedReply("half a reply", crash_after=1)])
    """


@attrs.frozen
class ScriptedTool:
    """A tool call that a scripted turn makes, and what the tool returns.

    Example::

        sessions.ScriptedTool("read", {"path": "README.md"}, result="# otpy", delay=0.1)
    """

    name: str
    arguments: dict[str, Any] = attrs.field(factory=dict)
    result: str = ""
    is_error: bool = False
    delay: float = 0.0
    """Seconds the tool "runs"."""


@attrs.frozen
class ScriptedReply:
    """One scripted turn. The events come in this order:

    1. after ``delay`` seconds, each tool call in ``tools`` (see `ScriptedProvider`);
    2. ``text`` as `TextDelta` events, one per word (or the pieces of ``deltas``),
       ``delta_delay`` seconds apart; after ``crash_after`` pieces the turn raises
       `ScriptedCrash`, and ``raise_`` is raised once the text is out;
    3. an assistant `MessageAdded` with the text, then one `TurnCompleted` with
       ``cost_usd``, ``usage``, and ``error`` (an error result) when set.

    Example::

        sessions.ScriptedReply("It is sunny.", cost_usd=0.002, usage=sessions.Usage(12, 4), delta_delay=0.05)
        sessions.ScriptedReply(error="overloaded", api_error_status=529)       # an error result
        sessions.ScriptedReply(raise_=sessions.ProviderUnavailable("scripted", "the CLI died"))
        sessions.ScriptedReply("I will crash", crash_after=1)                 # a provider bug
    """

    text: str = ""
    deltas: tuple[str, ...] | None = None
    delay: float = 0.0
    delta_delay: float = 0.0
    tools: tuple[ScriptedTool, ...] = ()
    cost_usd: float = 0.0
    usage: Usage = attrs.field(factory=Usage)
    error: str | None = None
    finish_reason: FinishReason | None = None
    api_error_status: int | None = None
    raise_: ProviderError | None = None
    crash_after: int | None = None
    provider_session_id: str | None = None
    """Report this as the provider's own session id (`ProviderSessionId`) at the turn's start."""
    ignore_interrupt: bool = False
    """Keep going after `interrupt`, so the server has to cancel the turn."""

    def pieces(self) -> list[str]:
        """The text deltas: ``deltas`` if given, else ``text`` split after each word."""
        if self.deltas is not None:
            return list(self.deltas)
        return re.findall(r"\S+\s*|\s+", self.text)


ScriptStep = str | ScriptedReply | Callable[[TurnRequest], "str | ScriptedReply"]


def _echo(request: TurnRequest) -> ScriptedReply:
    return ScriptedReply(f"You said: {request.prompt}")


class ScriptedProvider:
    """A `Provider` that plays ``replies`` back: reply *n* answers the session's turn *n*.

    A reply is a string (streamed word by word), a `ScriptedReply`, or a function of
    the `TurnRequest` returning either. Turns past the end of ``replies`` get
    ``default`` (by default an echo of the prompt). Choosing by turn number, not by a
    counter, keeps a restarted session on script: its next turn gets the next reply.

    The provider is shared configuration, so it also records what happened, for tests:
    ``requests`` (every `TurnRequest`), ``contexts`` (every `SessionContext` it was
    connected with), ``open_connections``, and ``log`` (``("enter"|"exit", session_id)``).

    Example::

        provider = sessions.ScriptedProvider(
            ["Hello!", sessions.ScriptedReply("Two files.", cost_usd=0.01, tools=(sessions.ScriptedTool("ls"),))]
        )
        spec = SessionServer.child_spec(name="agent", provider=provider)
    """

    runs_own_tools = True

    def __init__(
        self,
        replies: Sequence[ScriptStep] = (),
        *,
        default: ScriptStep = _echo,
        name: str = "scripted",
        connect_delay: float = 0.0,
        close_delay: float = 0.0,
        connect_error: ProviderError | None = None,
    ) -> None:
        for step in (*replies, default):
            if not (isinstance(step, (str, ScriptedReply)) or callable(step)):
                raise InvalidOption("replies", step, "expected a str, a ScriptedReply or a function of the request")
        self.name = name
        self.replies = list(replies)
        self.default = default
        self.connect_delay = connect_delay
        self.close_delay = close_delay
        self.connect_error = connect_error
        self.requests: list[TurnRequest] = []
        self.contexts: list[SessionContext] = []
        self.log: list[tuple[str, str]] = []
        self.open_connections = 0

    def reply_for(self, request: TurnRequest) -> ScriptedReply:
        """The reply scripted for ``request`` (by its turn number)."""
        step = self.replies[request.turn - 1] if 0 < request.turn <= len(self.replies) else self.default
        if not isinstance(step, (str, ScriptedReply)):
            step = step(request)
        return ScriptedReply(step) if isinstance(step, str) else step

    @contextlib.asynccontextmanager
    async def connect(self, ctx: SessionContext) -> AsyncIterator[ScriptedSession]:
        """Connect for one session (see `Provider.connect`)."""
        if self.connect_delay:
            await trio.sleep(self.connect_delay)
        if self.connect_error is not None:
            raise self.connect_error
        self.contexts.append(ctx)
        self.log.append(("enter", ctx.session_id))
        self.open_connections += 1
        try:
            yield ScriptedSession(self, ctx)
        finally:
            try:
                if self.close_delay:
                    with trio.CancelScope(shield=True):
                        await trio.sleep(self.close_delay)
            finally:
                self.open_connections -= 1
                self.log.append(("exit", ctx.session_id))


class ScriptedSession:
    """A connected `ScriptedProvider` (a `ProviderSession`).

    Example::

        async with provider.connect(ctx) as conn:
            async for event in conn.run_turn(request):
                print(event)
    """

    def __init__(self, provider: ScriptedProvider, ctx: SessionContext) -> None:
        self.provider = provider
        self.ctx = ctx
        self._interrupt = trio.Event()

    async def interrupt(self) -> None:
        """Make the running turn end early with ``FinishReason.INTERRUPTED``."""
        self._interrupt.set()
        await trio.lowlevel.checkpoint()

    async def _pause(self, seconds: float, reply: ScriptedReply) -> bool:
        """Sleep ``seconds``; True if an interrupt should end the turn now."""
        if seconds > 0:
            if reply.ignore_interrupt:
                await trio.sleep(seconds)
            else:
                with trio.move_on_after(seconds):
                    await self._interrupt.wait()
        else:
            await trio.lowlevel.checkpoint()
        return self._interrupt.is_set() and not reply.ignore_interrupt

    async def run_turn(self, request: TurnRequest) -> AsyncIterator[ProviderEvent]:
        """Play the scripted reply for ``request`` (see `ScriptedReply` for the order)."""
        try:
            async with contextlib.aclosing(self._play(request)) as events:
                async for event in events:
                    yield event
        finally:
            self._interrupt = trio.Event()  # an interrupt ends one turn, not the next

    async def _play(self, request: TurnRequest) -> AsyncGenerator[ProviderEvent, None]:
        self.provider.requests.append(request)
        reply = self.provider.reply_for(request)
        said: list[str] = []

        def interrupted() -> TurnCompleted:
            return TurnCompleted(
                text="".join(said), finish_reason=FinishReason.INTERRUPTED, is_error=True, error="interrupted"
            )

        if reply.provider_session_id is not None:
            yield ProviderSessionId(reply.provider_session_id)
        if await self._pause(reply.delay, reply):
            yield interrupted()
            return
        for i, tool in enumerate(reply.tools):
            call = ToolCall(
                id=f"call_{request.turn}_{i}", name=clean_text(tool.name), arguments=clean_data(dict(tool.arguments))
            )
            yield ToolCallRequested(call)
            yield MessageAdded(Message(role="assistant", tool_calls=(call,)))
            stop = await self._pause(tool.delay, reply)
            output = clean_text(tool.result)
            result = ToolResult(tool_call_id=call.id, name=call.name, content=output, is_error=tool.is_error)
            yield ToolCallFinished(result)
            yield MessageAdded(Message(role="tool", content=output, tool_result=result))
            if stop:
                yield interrupted()
                return
        joiner = TextJoiner()  # scripted text is cleaned as a provider's is (sessions._text)
        for n, raw in enumerate(reply.pieces()):
            if reply.crash_after is not None and n >= reply.crash_after:
                raise ScriptedCrash(f"scripted crash in turn {request.turn} after {n} deltas")
            if n and await self._pause(reply.delta_delay, reply):
                if piece := joiner.flush():
                    said.append(piece)
                    yield TextDelta(piece)
                if said:
                    yield MessageAdded(Message(role="assistant", content="".join(said)))
                yield interrupted()
                return
            if piece := joiner.push(raw):
                said.append(piece)
                yield TextDelta(piece)
        if piece := joiner.flush():
            said.append(piece)
            yield TextDelta(piece)
        if reply.crash_after is not None:
            raise ScriptedCrash(f"scripted crash in turn {request.turn} at the end of the text")
        if reply.raise_ is not None:
            raise reply.raise_
        text = "".join(said)
        if text:
            yield MessageAdded(Message(role="assistant", content=text))
        is_error = reply.error is not None
        finish = reply.finish_reason or (FinishReason.PROVIDER_ERROR if is_error else FinishReason.STOP)
        yield TurnCompleted(
            text=text,
            finish_reason=finish,
            is_error=is_error or finish is not FinishReason.STOP,
            cost_usd=reply.cost_usd,
            usage=reply.usage,
            error=clean_text(reply.error) if reply.error is not None else None,
            api_error_status=reply.api_error_status,
            model="scripted",
        )
