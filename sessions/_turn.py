"""A session's turn task: the provider's connection, and every turn run in it.

The turn task is an ``otpy.Task`` its `SessionServer` starts in ``init`` and is linked
to. It enters the provider's connection, runs each turn the server hands it, writes the
turn's records to the store, streams the turn's events to the subscribers, and tells
the server when a turn is done (`_TurnDone`).
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
import trio

import otpy

from ._config import _Config, _jsonable
from ._errors import ProviderError
from ._events import (
    FinishReason,
    Message,
    MessageAdded,
    ModelCallFinished,
    ProviderEvent,
    ProviderSessionId,
    Result,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallFinished,
    ToolCallRequested,
    TurnCompleted,
    TurnFinished,
    TurnStarted,
)
from ._providers._base import Provider, ProviderSession, SessionContext, TurnRequest
from ._stores._base import Record, Store
from ._subscribers import Fanout
from ._telemetry import _Telemetry, active

_log = otpy.get_logger("sessions.server")


@attrs.frozen
class _TurnDone:
    """From the turn task: the turn ended; ``records`` are what it appended to the store."""

    result: Result
    records: tuple[Record, ...]
    objects: dict[int, object]


# --- the running turn, shared by the server and its turn task -----------------------------------


class _Turn:
    """One running turn (internal). The turn task fills it in; the server reads it for
    snapshots and status. Both run on the one trio thread, so each update is atomic."""

    __slots__ = (
        "begun",
        "ended",
        "from_",
        "helper_scope",
        "interrupting",
        "joined",
        "key",
        "messages",
        "number",
        "prompt",
        "scope",
        "started_at",
        "text",
        "tool_calls",
        "unsaid",
    )

    def __init__(
        self, number: int, prompt: str, from_: otpy.From, key: str | None = None, joined: list[otpy.From] | None = None
    ) -> None:
        self.number = number
        self.prompt = prompt
        self.from_ = from_
        self.key = key  # its idempotency key
        self.joined = joined if joined is not None else []  # callers who sent the same key meanwhile
        self.started_at = trio.current_time()
        self.text: list[str] = []
        self.unsaid: list[str] = []  # text deltas not yet part of a MessageAdded
        self.messages: list[Message] = []
        self.tool_calls: list[ToolCall] = []
        self.scope = trio.CancelScope()
        self.helper_scope: trio.CancelScope | None = None
        self.begun = False
        self.ended = False
        self.interrupting = False


@attrs.define
class _TurnWork:
    turn: _Turn
    request: TurnRequest
    ctx: SessionContext
    next_seq: int
    provider_session_id: str | None
    records: list[Record] = attrs.field(factory=list)
    objects: dict[int, object] = attrs.field(factory=dict)  # seq -> the Message or Result it holds
    finished: bool = False
    result: Result | None = None


@attrs.frozen
class _Reconnect:
    ctx: SessionContext


_SESSIONS: trio.lowlevel.RunVar[dict[tuple[int, str], _TurnTask]] = trio.lowlevel.RunVar("sessions_turn_tasks")


def _turn_tasks() -> dict[tuple[int, str], _TurnTask]:
    """The last turn task of each session (by store object and session id) in this trio run.

    A new server of the session waits for the previous one's writes before it loads the
    log, and its turn task waits for the previous connection before it connects.
    """
    try:
        return _SESSIONS.get()
    except LookupError:
        table: dict[tuple[int, str], _TurnTask] = {}
        _SESSIONS.set(table)
        return table


class _TurnTask:
    """The body of a session's turn task: the provider's connection and every turn (internal).

    Its writes belong to its server's lifetime: once the server has exited (killed, or
    in ``terminate``), the task begins no write to the store, so that the turn cut by
    the exit stays open in the log, and the next server records it as interrupted.
    """

    def __init__(
        self,
        server: otpy.Pid,
        provider: Provider,
        store: Store,
        session_id: str,
        fanout: Fanout,
        inbox: trio.MemoryReceiveChannel[_TurnWork | _Reconnect],
        config: _Config,
        ctx: SessionContext,
        previous: _TurnTask | None = None,
    ) -> None:
        self.server = server
        self.provider = provider
        self.store = store
        self.session_id = session_id
        self.fanout = fanout
        self.inbox = inbox
        self.config = config
        self.ctx = ctx
        self.previous = previous  # the turn task of the session's previous server, if it may still run
        self.pid: otpy.Pid | None = None  # set by the server once the task is started
        self.helpers: trio.Nursery | None = None
        self.conn: ProviderSession | None = None
        self.current: _Turn | None = None
        self.stopping = False  # set by the server's terminate: no write may begin
        self.writing = False  # a store append is in flight
        self.write_ended: trio.Event | None = None  # made by whoever waits for the write
        # sessions' own stores never raise trio.Cancelled from an append that writes
        # (they finish it first): no shield is needed around theirs, only around others'.
        self.shield_appends = not getattr(type(store), "_append_never_cancelled", False)

    # --- the previous server's task, as the next server of the session sees it -------------

    async def writes_ended(self) -> None:
        """Wait until this task can write no more: its server has exited, no append is in flight."""
        await self.server.wait_exited()
        while self.writing:
            if self.write_ended is None:
                self.write_ended = trio.Event()
            await self.write_ended.wait()

    async def _wait_for_previous_connection(self) -> None:
        """Wait until the previous server's connection is closed, however long it takes.

        Two connections to one session never overlap (a CLI resumed twice would write
        one transcript from two processes). A close that takes longer than
        ``close_timeout`` (a provider whose close does not end when it is cancelled) is
        waited for, with a warning each ``close_timeout``: the provider's fault, seen.
        """
        while self.previous is not None:
            # A previous task that was itself stopped while it waited for its own previous
            # one still holds it: the wait goes down the chain.
            previous = self.previous
            pid = previous.pid
            waited = 0.0
            period = max(self.config.close_timeout, 0.001)
            while pid is not None and pid.alive:
                with trio.move_on_after(period):
                    await pid.wait_exited()
                if pid.alive:
                    waited += period
                    _log.warning(
                        "previous_connection_still_open",
                        session_id=self.session_id,
                        provider=self.provider.name,
                        waited_s=waited,
                    )
            self.previous = previous.previous

    # --- the connection ------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve turns, reconnect after a provider failure; until cancelled."""
        try:
            await self._wait_for_previous_connection()
            ctx = self.ctx
            work: _TurnWork | _Reconnect | None = None
            broken = False
            while True:
                if broken and work is None:
                    work = await self.inbox.receive()  # after a failure, connect again for the next turn
                if isinstance(work, _Reconnect):
                    ctx, work = work.ctx, None
                elif isinstance(work, _TurnWork):
                    ctx = work.ctx
                try:
                    async with self.provider.connect(ctx) as conn:
                        broken = False
                        outcome = await self._serve(conn, work)
                        work = None
                    if isinstance(outcome, _Reconnect):
                        work = outcome
                    else:
                        broken = True
                except ProviderError as exc:
                    broken = True
                    _log.warning(
                        "provider_failed", session_id=self.session_id, provider=self.provider.name, error=str(exc)
                    )
                    if isinstance(work, _TurnWork) and not work.finished:
                        await self._fail_before_provider(work, exc)
                    work = None
        finally:
            self.fanout.close_all()
            table = _turn_tasks()
            key = (id(self.store), self.session_id)
            if table.get(key) is self:
                if self.previous is not None:
                    table[key] = self.previous  # stopped while it waited: the next one waits for it
                else:
                    del table[key]

    async def _serve(self, conn: ProviderSession, work: _TurnWork | _Reconnect | None) -> _Reconnect | None:
        """Run turns on ``conn`` until a reconnect is asked for (returned) or a turn broke it (None)."""
        crash: Exception | None = None
        outcome: _Reconnect | None = None
        async with trio.open_nursery() as helpers:
            self.helpers, self.conn = helpers, conn
            try:
                while True:
                    if work is None:
                        work = await self.inbox.receive()
                    if isinstance(work, _Reconnect):
                        outcome = work
                        break
                    telemetry = active()
                    if telemetry is None:
                        broke = await self._turn(conn, work)
                    else:
                        broke = await self._traced_turn(telemetry, conn, work)
                    work = None
                    if broke:
                        break
            except Exception as exc:  # noqa: BLE001 (re-raised below, outside the helpers' nursery)
                crash = exc
            finally:
                self.helpers = self.conn = None
                helpers.cancel_scope.cancel()
        if crash is not None:
            raise crash
        return outcome

    def interrupt(self, turn: _Turn) -> None:
        """Ask the provider to stop ``turn``; cancel it after the grace period (from the server)."""
        if self.helpers is None or self.conn is None:
            turn.scope.cancel()
            return
        self.helpers.start_soon(self._interrupt, self.conn, turn)

    async def _interrupt(self, conn: ProviderSession, turn: _Turn) -> None:
        if turn.ended:
            return
        if turn is not self.current:
            turn.scope.cancel()  # the provider has not seen it yet: it ends as soon as it starts
            return
        with trio.CancelScope() as scope:
            turn.helper_scope = scope
            with trio.move_on_after(self.config.interrupt_grace):
                try:
                    await conn.interrupt()
                except Exception as exc:  # noqa: BLE001 (the grace period still ends the turn)
                    _log.warning("interrupt_failed", session_id=self.session_id, error=repr(exc))
                await trio.sleep_forever()
            turn.scope.cancel()

    # --- one turn --------------------------------------------------------------------------

    async def _append(
        self, work: _TurnWork, kind: str, data: dict[str, Any], *, durable: bool = False, value: object = None
    ) -> None:
        if self.stopping or not self.server.alive:
            # The server has exited, or is stopping: the log is no longer this task's
            # to write (the next server may be loading it), and a turn cut by the exit
            # must stay open there, to be recorded as interrupted, never completed. The
            # exit has cancelled this task, so the checkpoint raises trio.Cancelled.
            await trio.lowlevel.checkpoint()
            raise otpy.ProcessExit("shutdown")
        record = Record(session_id=self.session_id, seq=work.next_seq, kind=kind, data=data)
        if value is not None:
            work.objects[record.seq] = value
        # Shielded, the write alone: a record half-written by a cancellation would leave
        # the log's seq unknown; the store bounds its own writes. The next server of the
        # session waits for it (writes_ended) before it loads the log. sessions' own
        # stores are not cancelled once they write, and a cancel scope per record costs
        # more than the rest of an in-memory append: theirs go unshielded.
        self.writing = True
        try:
            if self.shield_appends:
                with trio.CancelScope(shield=True):
                    await self.store.append(self.session_id, [record], durable=durable)
            else:
                await self.store.append(self.session_id, [record], durable=durable)
        finally:
            self.writing = False
            if self.write_ended is not None:
                self.write_ended.set()
                self.write_ended = None
        work.next_seq += 1
        work.records.append(record)

    async def _begin(self, work: _TurnWork) -> None:
        turn = work.turn
        data = {"turn": turn.number, "prompt": turn.prompt, "options": _jsonable(work.request.options)}
        if turn.key is not None:
            data["idempotency_key"] = turn.key
        await self._append(work, "turn_started", data, durable=True)
        turn.begun = True
        if self.fanout.subscribers:  # an event nobody takes is not made
            self.fanout.publish(TurnStarted(session_id=self.session_id, turn=turn.number, prompt=turn.prompt))

    async def _turn(self, conn: ProviderSession, work: _TurnWork, telemetry: _Telemetry | None = None) -> bool:
        """Run one turn to its end; True if the provider broke and must be reconnected.

        ``telemetry`` (on) wraps the stream of a provider that runs its own agent loop, for
        its model calls' and tool calls' spans (the agent loop makes its own)."""
        turn = work.turn
        if not turn.begun:
            await self._begin(work)
        if self.config.turn_timeout is not None:
            turn.scope.deadline = trio.current_time() + self.config.turn_timeout
        completed: TurnCompleted | None = None
        failure: ProviderError | None = None
        self.current = turn
        with turn.scope:
            events = None
            try:
                events = conn.run_turn(work.request)
                if telemetry is not None and self.provider.runs_own_tools:
                    events = telemetry.traced_agent(
                        events,
                        provider=self.provider.name,
                        model=self._model(work),
                        reports_calls=getattr(self.provider, "reports_model_calls", False) is True,
                    )
                text, unsaid, fanout = turn.text, turn.unsaid, self.fanout
                async for event in events:
                    # A text delta, most of a reply's events, is handled here, without
                    # _event's coroutine and match: a delta costs the turn well under 1 µs.
                    if type(event) is TextDelta:
                        text.append(event.text)
                        unsaid.append(event.text)
                        if fanout.subscribers:
                            fanout.publish(event)
                        continue
                    if isinstance(event, TurnCompleted):
                        completed = event
                        break
                    await self._event(work, event)
            except ProviderError as exc:
                failure = exc
            finally:
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    with trio.move_on_after(self.config.close_timeout) as closing:
                        closing.shield = True
                        await aclose()
        self.current = None
        turn.ended = True
        if turn.helper_scope is not None:
            turn.helper_scope.cancel()
        broke = False
        if completed is not None:
            result = self._result(work, completed)
        elif turn.scope.cancelled_caught:
            interrupted = turn.interrupting
            reason = FinishReason.INTERRUPTED if interrupted else FinishReason.TIMEOUT
            error = (
                "interrupted" if interrupted else f"the turn took longer than turn_timeout={self.config.turn_timeout}s"
            )
            result = self._result(
                work, TurnCompleted(text="".join(turn.text), finish_reason=reason, is_error=True, error=error)
            )
        else:
            broke = True
            if failure is None:
                failure = ProviderError(
                    self.provider.name, "the turn ended without a TurnCompleted event", kind="protocol"
                )
            result = self._failed(work, failure)
        await self._finish(work, result)
        return broke

    async def _traced_turn(self, telemetry: _Telemetry, conn: ProviderSession, work: _TurnWork) -> bool:
        return await telemetry.run_turn(
            functools.partial(self._turn, conn, work, telemetry),
            session_id=self.session_id,
            provider=self.provider.name,
            turn=work.turn.number,
            prompt=work.request.prompt,
            model=self._model(work),
            outcome=lambda: work.result,
        )

    def _model(self, work: _TurnWork) -> str | None:
        """The model the turn asks for: its ``model`` option, else the provider's own default
        (`ClaudeCode.model`), for telemetry."""
        model = work.request.options.get("model", getattr(self.provider, "model", None))
        return model if isinstance(model, str) else None

    async def _event(self, work: _TurnWork, event: ProviderEvent) -> None:
        turn = work.turn
        match event:
            case TextDelta(text=text):
                turn.text.append(text)
                turn.unsaid.append(text)
            case ThinkingDelta() | ToolCallFinished() | ModelCallFinished():
                pass
            case ToolCallRequested(call=call):
                turn.tool_calls.append(call)
            case MessageAdded(message=message):
                data = {"turn": turn.number, "message": message.to_dict()}
                await self._append(work, "message", data, value=message)
                turn.messages.append(message)
                if message.role == "assistant":
                    turn.unsaid.clear()
            case ProviderSessionId(id=native_id):
                if native_id == work.provider_session_id:
                    return
                await self._append(work, "provider_session", {"id": native_id})
                work.provider_session_id = native_id
            case _:
                _log.debug("unknown_provider_event", session_id=self.session_id, event_type=type(event).__name__)
                return
        self.fanout.publish(event)

    def _result(self, work: _TurnWork, completed: TurnCompleted) -> Result:
        turn = work.turn
        return Result(
            text=completed.text or "".join(turn.text),
            session_id=self.session_id,
            turn=turn.number,
            finish_reason=completed.finish_reason,
            is_error=completed.is_error or completed.finish_reason is not FinishReason.STOP,
            provider_session_id=work.provider_session_id,
            cost_usd=completed.cost_usd,
            usage=completed.usage,
            duration_s=trio.current_time() - turn.started_at,
            num_turns=completed.num_turns,
            tool_calls=tuple(turn.tool_calls),
            error=completed.error,
            api_error_status=completed.api_error_status,
            model=completed.model,
            provider=self.provider.name,
            permission_denials=completed.permission_denials,
            extra=completed.extra,
        )

    def _failed(self, work: _TurnWork, failure: ProviderError) -> Result:
        completed = TurnCompleted(
            text="".join(work.turn.text),
            finish_reason=FinishReason.PROVIDER_ERROR,
            is_error=True,
            error=str(failure),
            api_error_status=failure.status,
            extra={"error_kind": failure.kind, "retryable": failure.retryable},
        )
        return self._result(work, completed)

    async def _fail_before_provider(self, work: _TurnWork, failure: ProviderError) -> None:
        if not work.turn.begun:
            await self._begin(work)
        await self._finish(work, self._failed(work, failure))

    async def _finish(self, work: _TurnWork, result: Result) -> None:
        turn = work.turn
        if turn.unsaid:
            # Text that streamed but never became a message (an interrupt, a failure)
            # still joins the transcript: the user saw it.
            message = Message(role="assistant", content="".join(turn.unsaid))
            data = {"turn": turn.number, "message": message.to_dict()}
            await self._append(work, "message", data, value=message)
            turn.unsaid.clear()
        data = {"turn": turn.number, "result": result.to_dict()}
        await self._append(work, "turn_finished", data, durable=True, value=result)
        # The server hears of the end before any subscriber does: a subscriber that
        # calls the server on TurnFinished finds the turn counted.
        work.finished = True
        work.result = result
        otpy.send(self.server, _TurnDone(result, tuple(work.records), work.objects))
        if self.fanout.subscribers:
            self.fanout.publish(TurnFinished(result))
