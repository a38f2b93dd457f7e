"""SessionServer: one agent conversation as a supervised otpy GenServer.

Two processes make a session:

- the **server** (this GenServer) owns the `Session` value, the turn queue, the
  budgets and the subscribers, and answers every call at once;
- its **turn task** (an ``otpy.Task`` it starts in ``init``, linked to it) enters the
  provider's connection, runs every turn in it, writes the turn's records to the store,
  and streams the turn's events to the subscribers.

The server defers the reply of `send_message` (``otpy.NoReply``) and answers it with
``otpy.reply`` when the turn task reports the turn done, so `total_cost`, `subscribe`,
`interrupt` and `stop` answer mid-turn.

The turn task never outlives the server. The server traps exits, so its ``terminate``
runs on `stop`, on a crash and on its supervisor's shutdown; it shuts the task down and
waits (bounded by ``close_timeout``) until the provider's connection has been left.
When the server is killed (``"kill"``, ``brutal_kill``), ``terminate`` cannot run: the
link stops the task, and the next server of the same session id waits for it to be
gone before it connects. Either way the task lives in the nursery the server was
started in, so a supervisor that stops has no task left behind.
"""

from __future__ import annotations

import collections
import importlib
import json
import math
import secrets
from typing import Any, Literal

import attrs
import trio

import otpy

from ._errors import BudgetExceeded, InvalidOption, ProviderError, SessionBusy, SessionError
from ._events import (
    JSON,
    FinishReason,
    Message,
    MessageAdded,
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
    TurnSnapshot,
    TurnStarted,
    Usage,
)
from ._providers._base import Provider, ProviderSession, SessionContext, TurnRequest
from ._session import Session, fold
from ._stores._base import Record, Store
from ._stores._memory import InMemoryStore
from ._subscribers import Fanout, SubscriberBuffer, Subscription

_log = otpy.get_logger("sessions.server")

ServerRef = otpy.Pid | str | otpy.Via
"""What the client functions take: a pid, a registered name, or ``otpy.via(...)``."""


def new_session_id() -> str:
    """A fresh session id: 16 random bytes, URL-safe base64 (ExAthena's choice).

    Example::

        sid = sessions.new_session_id()
        spec = SessionServer.child_spec(name="agent", provider=p, session_id=sid)
    """
    return secrets.token_urlsafe(16)


# --- configuration ---------------------------------------------------------------------------


def _non_negative(option: str) -> Any:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise InvalidOption(option, value, "expected a number >= 0")

    return check


def _check_provider(_instance: Any, _attribute: Any, value: Any) -> None:
    if not (callable(getattr(value, "connect", None)) or callable(getattr(value, "chat", None))):
        raise InvalidOption("provider", value, "expected a Provider (with connect) or a ModelProvider (with chat)")


def _check_store(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not None and not isinstance(value, Store):
        raise InvalidOption("store", value, "expected a sessions.Store (append, load, list_sessions, delete, aclose)")


def _check_opts(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, dict):
        raise InvalidOption("query_opts", value, "expected a dict")


def _check_session_id(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidOption("session_id", value, "expected a non-empty str")


@attrs.frozen(kw_only=True)
class _Config:
    """A SessionServer's options, checked once (in `child_spec` and in ``init``)."""

    provider: Any = attrs.field(validator=_check_provider)
    store: Store | None = attrs.field(default=None, validator=_check_store)
    query_opts: dict[str, Any] = attrs.field(factory=dict, validator=_check_opts)
    session_id: str | None = attrs.field(default=None, validator=_check_session_id)
    cwd: str | None = None
    max_cost_usd: float | None = attrs.field(default=None, validator=_non_negative("max_cost_usd"))
    max_turns: int | None = attrs.field(default=None, validator=_non_negative("max_turns"))
    max_queued_turns: int = attrs.field(default=8, validator=_non_negative("max_queued_turns"))
    interrupt_grace: float = attrs.field(default=5.0, validator=_non_negative("interrupt_grace"))
    turn_timeout: float | None = attrs.field(default=None, validator=_non_negative("turn_timeout"))
    close_timeout: float = attrs.field(default=10.0, validator=_non_negative("close_timeout"))
    subscriber_buffer: int = attrs.field(default=256, validator=_non_negative("subscriber_buffer"))


def _as_provider(provider: Any) -> Provider:
    """``provider`` itself, or a `ModelProvider` wrapped in the agent loop (``sessions.AgentLoop``)."""
    if callable(getattr(provider, "connect", None)):
        return provider  # type: ignore[no-any-return]
    try:
        loop = importlib.import_module("sessions._loop")
        agent_loop = loop.AgentLoop
    except (ImportError, AttributeError) as exc:
        raise InvalidOption(
            "provider",
            provider,
            "is a ModelProvider (it has chat, no connect): it needs sessions.AgentLoop, which is not available",
        ) from exc
    return agent_loop(provider)  # type: ignore[no-any-return]


def _jsonable(options: dict[str, Any]) -> dict[str, JSON]:
    """The entries of ``options`` that JSON can hold (callbacks and permissions are not stored)."""
    kept: dict[str, JSON] = {}
    for key, value in options.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        kept[str(key)] = value
    return kept


# --- requests (calls) and what the turn task tells the server ------------------------------------


@attrs.frozen
class _Send(otpy.Call[Any]):
    prompt: str
    overrides: dict[str, Any]


@attrs.frozen
class _Get(otpy.Call[Any]):
    what: str


@attrs.frozen
class _Interrupt(otpy.Call[bool]):
    pass


@attrs.frozen
class _Subscribe(otpy.Call[Any]):
    buffer: int | None


@attrs.frozen
class _Put(otpy.Call[Any]):
    session: Session


@attrs.frozen
class _Refused:
    """A reply that the client function raises (a deferred reply cannot raise by itself)."""

    error: SessionError


@attrs.frozen
class _TurnDone:
    """From the turn task: the turn ended; ``records`` are what it appended to the store."""

    result: Result
    records: tuple[Record, ...]
    objects: dict[int, object]


def _unwrap(reply: Any) -> Any:
    if isinstance(reply, _Refused):
        raise reply.error
    return reply


# --- the status value -------------------------------------------------------------------------


@attrs.frozen
class SessionStatus:
    """What `SessionServer.status` returns: where the session is, at one instant.

    ``state`` is ``"idle"``, ``"running"`` (a turn is running) or ``"interrupting"``
    (`SessionServer.interrupt` was called and the turn has not ended yet).

    Example::

        status = await SessionServer.status("agent")
        if status.state == "running":
            print(f"turn {status.turn} running for {status.turn_elapsed:.1f}s, {status.queued} queued")
    """

    session_id: str
    state: Literal["idle", "running", "interrupting"]
    turn_count: int
    total_cost: float
    turn: int | None = None
    """The running turn's number."""
    turn_elapsed: float | None = None
    """Seconds since the running turn started."""
    queued: int = 0
    subscribers: int = 0
    provider_session_id: str | None = None


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
        "messages",
        "number",
        "prompt",
        "scope",
        "started_at",
        "text",
        "tool_calls",
        "unsaid",
    )

    def __init__(self, number: int, prompt: str, from_: otpy.From) -> None:
        self.number = number
        self.prompt = prompt
        self.from_ = from_
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


@attrs.frozen
class _Reconnect:
    ctx: SessionContext


@attrs.frozen
class _QueuedPut:
    from_: otpy.From
    session: Session


@attrs.frozen
class _QueuedTurn:
    from_: otpy.From
    prompt: str
    overrides: dict[str, Any]


_CONNECTIONS: trio.lowlevel.RunVar[dict[str, otpy.Pid]] = trio.lowlevel.RunVar("sessions_connections")


def _connections() -> dict[str, otpy.Pid]:
    """The turn task of each session id in this trio run: a restart waits for the old one."""
    try:
        return _CONNECTIONS.get()
    except LookupError:
        table: dict[str, otpy.Pid] = {}
        _CONNECTIONS.set(table)
        return table


class _TurnTask:
    """The body of a session's turn task: the provider's connection and every turn (internal)."""

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
    ) -> None:
        self.server = server
        self.provider = provider
        self.store = store
        self.session_id = session_id
        self.fanout = fanout
        self.inbox = inbox
        self.config = config
        self.ctx = ctx
        self.helpers: trio.Nursery | None = None
        self.conn: ProviderSession | None = None
        self.current: _Turn | None = None

    # --- the connection ------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve turns, reconnect after a provider failure; until cancelled."""
        table = _connections()
        me = otpy.self()
        previous = table.get(self.session_id)
        table[self.session_id] = me
        try:
            if previous is not None and previous is not me and previous.alive:
                with trio.move_on_after(self.config.close_timeout):
                    await previous.wait_exited()
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
            if table.get(self.session_id) is me:
                if previous is not None and previous.alive:
                    # Stopped while still waiting for it: the next task must wait for it too.
                    table[self.session_id] = previous
                else:
                    del table[self.session_id]

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
                    broke = await self._turn(conn, work)
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
        record = Record(session_id=self.session_id, seq=work.next_seq, kind=kind, data=data)
        if value is not None:
            work.objects[record.seq] = value
        # Shielded: a record half-written by a cancellation would leave the log's seq
        # unknown; the store bounds its own writes.
        with trio.CancelScope(shield=True):
            await self.store.append(self.session_id, [record], durable=durable)
        work.next_seq += 1
        work.records.append(record)

    async def _begin(self, work: _TurnWork) -> None:
        turn = work.turn
        data = {"turn": turn.number, "prompt": turn.prompt, "options": _jsonable(work.request.options)}
        await self._append(work, "turn_started", data, durable=True)
        turn.begun = True
        self.fanout.publish(TurnStarted(session_id=self.session_id, turn=turn.number, prompt=turn.prompt))

    async def _turn(self, conn: ProviderSession, work: _TurnWork) -> bool:
        """Run one turn to its end; True if the provider broke and must be reconnected."""
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
                async for event in events:
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

    async def _event(self, work: _TurnWork, event: ProviderEvent) -> None:
        turn = work.turn
        match event:
            case TextDelta(text=text):
                turn.text.append(text)
                turn.unsaid.append(text)
            case ThinkingDelta() | ToolCallFinished():
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
        otpy.send(self.server, _TurnDone(result, tuple(work.records), work.objects))
        self.fanout.publish(TurnFinished(result))


# --- the server ------------------------------------------------------------------------------------


class SessionServer(otpy.GenServer):
    """One multi-turn agent conversation, as a supervised GenServer.

    It owns the conversation (a `Session`: transcript, results, cost), runs each turn
    through a provider in a task of its own, writes every turn ahead to its store, and
    reloads itself from the store when it is restarted: a crashed session carries on
    where it was, under the same name and session id.

    Example::

        children = [
            SessionServer.child_spec(name="my_agent", provider=sessions.ScriptedProvider(["Two files."]),
                                     store=sessions.InMemoryStore(), query_opts={"model": "sonnet"}),
        ]
        await otpy.Supervisor.start_link(children, strategy="one_for_one", nursery=nursery)
        result = await SessionServer.send_message("my_agent", "What files are here?")
        await SessionServer.total_cost("my_agent")     # exact, in USD
        await SessionServer.turn_count("my_agent")

    Options (keywords of `child_spec`, `start_link`):
        ``provider`` (required): a `Provider`, or a `ModelProvider` (wrapped in
        ``sessions.AgentLoop``). ``store``: where the log goes (`child_spec` makes an
        `InMemoryStore` when none is given, shared by the restarts). ``query_opts``:
        options of every turn; `send_message` overrides them per turn. ``session_id``:
        resume this session (`child_spec` makes one when none is given, so restarts
        keep it). ``cwd``. ``max_cost_usd`` / ``max_turns``: budgets checked before
        each turn. ``max_queued_turns`` (8): turns that may wait behind the running
        one. ``interrupt_grace`` (5 s): how long an interrupted turn may take to stop
        before it is cancelled. ``turn_timeout`` (none): a turn running longer ends
        with ``FinishReason.TIMEOUT``. ``close_timeout`` (10 s): how long closing the
        provider may take. ``subscriber_buffer`` (256): events buffered per subscriber.

    Client API:
        Every client function takes the server as a pid, a registered name or
        ``otpy.via(...)``: `send_message`, `session_id`, `history`, `last_result`,
        `messages`, `total_cost`, `turn_count`, `usage`, `status`, `get_session`,
        `put_session`, `interrupt`, `subscribe`, `stop`.

    Timeouts:
        `send_message` waits for the turn however long it takes: the session's own
        limits (``turn_timeout``, the provider's, `interrupt`) end a turn, not a call
        timeout. The other functions answer at once, even mid-turn.

    When not to use:
        A one-shot question needs no session: call the provider, or the SDK, directly.
    """

    trap_exit = True

    # --- client API: runs in the caller's task ----------------------------------------------

    @classmethod
    def child_spec(
        cls,
        *args: Any,
        id: Any = None,  # noqa: A002 (Elixir's :id)
        restart: Literal["permanent", "transient", "temporary"] = "permanent",
        shutdown: float | Literal["brutal_kill", "infinity"] | None = None,
        significant: bool = False,
        name: otpy.Pid | str | otpy.Via | None = None,
        **options: Any,
    ) -> otpy.ChildSpec:
        """A child spec for a supervisor. The session id is made here, once, when not given,
        and so is an `InMemoryStore` when no store is given: every restart of this child
        is the same session.

        ``shutdown`` defaults to ``close_timeout`` + 5 s, so the provider can close.

        Raises:
            InvalidOption: a malformed option (also a `ValueError`).

        Example::

            spec = SessionServer.child_spec(name="agent", provider=provider, store=sessions.SqliteStore("a.db"))
            await otpy.Supervisor.start_link([spec], strategy="one_for_one", nursery=nursery)
        """
        if args:
            raise InvalidOption("args", args, "SessionServer takes keyword options only")
        if isinstance(name, otpy.Pid):
            raise InvalidOption("name", name, "expected a str or otpy.via(...)")
        if options.get("session_id") is None:
            options["session_id"] = new_session_id()
        if options.get("store") is None:
            options["store"] = InMemoryStore()
        try:
            config = _Config(**options)
        except TypeError as exc:
            raise InvalidOption("options", sorted(options), str(exc)) from None
        if shutdown is None:
            shutdown = config.close_timeout + 5.0
        return super().child_spec(
            id=id, restart=restart, shutdown=shutdown, significant=significant, name=name, **options
        )

    @staticmethod
    async def send_message(server: ServerRef, prompt: str, **overrides: Any) -> Result:
        """Run one turn and return its `Result`, waiting for as long as the turn takes.

        ``overrides`` replace ``query_opts`` entries for this turn. A turn that fails
        is a `Result` with ``is_error`` and a `FinishReason`; while another turn runs,
        this one waits in the queue.

        Raises:
            BudgetExceeded: ``max_cost_usd`` or ``max_turns`` is spent; no turn started.
            SessionBusy: ``max_queued_turns`` turns already wait.
            otpy.ServerExited: the server exited (crashed) before the turn ended.
            otpy.NoProcess: no such server.

        Example::

            result = await SessionServer.send_message("agent", "Summarize README.md", model="haiku")
            print(result.text, result.cost_usd)
        """
        if not isinstance(prompt, str):
            raise InvalidOption("prompt", prompt, "expected a str")
        reply = await otpy.call(server, _Send(prompt, overrides), timeout=math.inf)
        result: Result = _unwrap(reply)
        return result

    @staticmethod
    async def session_id(server: ServerRef) -> str:
        """The session's own stable id (not the provider's; see `Session.provider_session_id`).

        Example::

            sid = await SessionServer.session_id("agent")
        """
        value: str = await otpy.call(server, _Get("session_id"))
        return value

    @staticmethod
    async def history(server: ServerRef) -> list[Result]:
        """The `Result` of every finished turn, in order.

        Example::

            for result in await SessionServer.history("agent"):
                print(result.turn, result.finish_reason, result.cost_usd)
        """
        return list(await SessionServer._session_field(server, "history"))

    @staticmethod
    async def last_result(server: ServerRef) -> Result | None:
        """The last finished turn's `Result`, or ``None``.

        Example::

            result = await SessionServer.last_result("agent")
        """
        session = await SessionServer.get_session(server)
        return session.last_result

    @staticmethod
    async def messages(server: ServerRef) -> list[Message]:
        """The normalized transcript of the finished turns.

        Example::

            for message in await SessionServer.messages("agent"):
                print(message.role, message.content)
        """
        return list(await SessionServer._session_field(server, "messages"))

    @staticmethod
    async def total_cost(server: ServerRef) -> float:
        """The session's cost in USD: the sum of its turns' costs (restarts included).

        Example::

            assert await SessionServer.total_cost("agent") <= 1.0
        """
        session = await SessionServer.get_session(server)
        return session.total_cost

    @staticmethod
    async def turn_count(server: ServerRef) -> int:
        """How many turns have finished (failed and interrupted ones included).

        Example::

            n = await SessionServer.turn_count("agent")
        """
        session = await SessionServer.get_session(server)
        return session.turn_count

    @staticmethod
    async def usage(server: ServerRef) -> Usage:
        """The session's tokens, summed over its turns.

        Example::

            print((await SessionServer.usage("agent")).total)
        """
        session = await SessionServer.get_session(server)
        return session.usage

    @staticmethod
    async def status(server: ServerRef) -> SessionStatus:
        """Where the session is: idle or running, the turn, the queue, the subscribers.

        Example::

            print(await SessionServer.status("agent"))
        """
        value: SessionStatus = await otpy.call(server, _Get("status"))
        return value

    @staticmethod
    async def get_session(server: ServerRef) -> Session:
        """A snapshot of the whole session (a frozen `Session`).

        Example::

            session = await SessionServer.get_session("agent")
        """
        value: Session = await otpy.call(server, _Get("session"))
        return value

    @staticmethod
    async def put_session(server: ServerRef, session: Session) -> None:
        """Replace the session's state with ``session`` (same ``session_id``), durably.

        It waits for the running and queued turns first, and the provider is then
        reconnected with the new transcript.

        Raises:
            InvalidOption: ``session`` belongs to another session id.

        Example::

            session = await SessionServer.get_session("agent")
            await SessionServer.put_session("agent", attrs.evolve(session, messages=session.messages[-10:]))
        """
        if not isinstance(session, Session):
            raise InvalidOption("session", session, "expected a sessions.Session")
        _unwrap(await otpy.call(server, _Put(session), timeout=math.inf))

    @staticmethod
    async def interrupt(server: ServerRef) -> bool:
        """End the running turn early, keeping the session; False if no turn was running.

        The provider is asked to stop; after ``interrupt_grace`` seconds the turn is
        cancelled. The turn's caller gets a `Result` with ``FinishReason.INTERRUPTED``.
        Queued turns run afterwards as usual.

        Example::

            await SessionServer.interrupt("agent")
        """
        value: bool = await otpy.call(server, _Interrupt())
        return value

    @staticmethod
    async def subscribe(server: ServerRef, *, buffer: int | None = None) -> Subscription:
        """Stream the session's events to the caller (see `Subscription`).

        A subscriber that joins during a turn gets a `TurnSnapshot` of the turn so far
        first; after a restart that interrupted a turn, one that joins before the next
        turn gets that turn's `TurnFinished` first. ``buffer`` overrides
        ``subscriber_buffer``.

        Example::

            async with await SessionServer.subscribe("agent") as events:
                async for event in events:
                    print(event)
        """
        checked: object = buffer
        if checked is not None and (isinstance(checked, bool) or not isinstance(checked, int) or checked < 1):
            raise InvalidOption("buffer", buffer, "expected an int >= 1")
        subscription: Subscription = await otpy.call(server, _Subscribe(buffer))
        return subscription

    @staticmethod
    async def stop(server: ServerRef, reason: object = "normal") -> None:
        """Stop the server: the provider's connection is closed first.

        Under a supervisor a ``permanent`` session is started again; use the
        supervisor's ``terminate_child`` to stop it for good.

        Example::

            await SessionServer.stop("agent")
        """
        await otpy.stop(server, reason)

    @staticmethod
    async def _session_field(server: ServerRef, field: Literal["history", "messages"]) -> tuple[Any, ...]:
        session = await SessionServer.get_session(server)
        values: tuple[Any, ...] = getattr(session, field)
        return values

    # --- server: runs in the session's process ---------------------------------------------

    async def init(self, **options: Any) -> None:
        config = _Config(**options)
        self._config = config
        self._provider = _as_provider(config.provider)
        self._store: Store = config.store if config.store is not None else InMemoryStore()
        session_id = config.session_id or new_session_id()
        self._sid = session_id
        self._fanout = Fanout()
        self._queue: collections.deque[_QueuedTurn | _QueuedPut] = collections.deque()
        self._running: _Turn | None = None
        self._recovered: Result | None = None
        self._watchers: dict[otpy.MonitorRef, SubscriberBuffer] = {}

        records = await self._store.load(session_id)
        folded = fold(session_id, records)
        seq = folded.last_seq
        added: list[Record] = []
        if records:
            if folded.open_turn is not None:
                seq += 1
                reason = "the session's server exited during the turn"
                added.append(
                    Record(session_id, seq, "turn_interrupted", {"turn": folded.open_turn.turn, "reason": reason})
                )
                _log.warning("turn_interrupted", session_id=session_id, turn=folded.open_turn.turn, reason=reason)
            seq += 1
            added.append(Record(session_id, seq, "session_resumed", {}))
        else:
            seq += 1
            data = {"options": _jsonable(config.query_opts), "provider": self._provider.name, "cwd": config.cwd}
            added.append(Record(session_id, seq, "session_started", data))
        await self._store.append(session_id, added, durable=True)
        folded = fold(session_id, [*records, *added])
        if added[0].kind == "turn_interrupted":
            self._recovered = folded.session.last_result  # reported to the next subscribers
        self._session = folded.session
        self._last_seq = folded.last_seq

        send, receive = trio.open_memory_channel[_TurnWork | _Reconnect](math.inf)
        self._inbox = send
        self._runner = _TurnTask(
            otpy.self(), self._provider, self._store, session_id, self._fanout, receive, config, self._context()
        )
        self._task: otpy.Task[None] = otpy.Task.async_(self._runner.run)

    def _context(self) -> SessionContext:
        return SessionContext(
            session_id=self._sid,
            cwd=self._config.cwd,
            messages=self._session.messages,
            provider_session_id=self._session.provider_session_id,
            store=self._store,
            options=dict(self._config.query_opts),
        )

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case _Send(prompt=prompt, overrides=overrides):
                refusal: SessionError | None = self._budget_refusal()
                if refusal is None and self._busy() and len(self._queue) >= self._config.max_queued_turns:
                    refusal = SessionBusy(self._sid, len(self._queue))
                if refusal is not None:
                    return _Refused(refusal)
                self._queue.append(_QueuedTurn(from_, prompt, overrides))
                await self._advance()
                return otpy.NoReply()
            case _Get(what="session"):
                return self._session
            case _Get(what="session_id"):
                return self._sid
            case _Get(what="status"):
                return self._status()
            case _Interrupt():
                turn = self._running
                if turn is None or turn.interrupting:
                    return turn is not None
                turn.interrupting = True
                self._runner.interrupt(turn)
                return True
            case _Subscribe(buffer=buffer):
                return self._subscribe(buffer, from_.caller)
            case _Put(session=session):
                if session.session_id != self._sid:
                    return _Refused(InvalidOption("session", session.session_id, f"this server is {self._sid!r}"))
                self._queue.append(_QueuedPut(from_, session))
                await self._advance()
                return otpy.NoReply()
        raise ValueError(f"SessionServer got an unknown request: {request!r}")

    async def handle_info(self, message: Any) -> otpy.Stop | None:
        match message:
            case _TurnDone(records=records, result=result, objects=objects):
                folded = fold(self._sid, records, start=self._session, last_seq=self._last_seq, known=objects)
                self._session, self._last_seq = folded.session, folded.last_seq
                turn, self._running = self._running, None
                if turn is not None:
                    otpy.reply(turn.from_, result)
                await self._advance()
            case otpy.ExitSignal(pid=pid, reason=reason) if pid is self._task.pid:
                return otpy.Stop(reason if not otpy.is_normal_reason(reason) else ("turn_task_exited", reason))
            case otpy.ExitSignal(reason=reason) if not otpy.is_normal_reason(reason):
                # The server traps exits only so that terminate runs; otherwise it
                # exits on an abnormal exit signal as any process would.
                return otpy.Stop(reason)
            case otpy.Down(ref=ref) if ref in self._watchers:
                self._watchers.pop(ref).close()
            case _:
                pass  # the turn task's Down and TaskReply: its ExitSignal came first
        return None

    async def terminate(self, reason: object) -> None:
        self._fanout.close_all()
        task = getattr(self, "_task", None)
        if task is not None and task.pid.alive:
            with trio.move_on_after(self._config.close_timeout + 1.0):
                await task.shutdown(timeout=self._config.close_timeout)

    def tree_status(self) -> str:
        """The session's line in ``otpy.tree()``: state, turns, cost, queue.

        Example::

            print(otpy.tree("sessions"))   # ... agent  worker  SessionServer  running ...  idle, 3 turns, $0.0120
        """
        if not hasattr(self, "_runner"):
            return "starting"  # init is still loading the log
        status = self._status()
        parts = [status.state if status.turn is None else f"{status.state} turn {status.turn}"]
        parts.append(f"{status.turn_count} turns")
        parts.append(f"${status.total_cost:.4f}")
        if status.queued:
            parts.append(f"{status.queued} queued")
        if status.subscribers:
            parts.append(f"{status.subscribers} subscribed")
        return ", ".join(parts)

    # --- helpers -------------------------------------------------------------------------------

    def _busy(self) -> bool:
        return self._running is not None or bool(self._queue)

    def _budget_refusal(self) -> BudgetExceeded | None:
        config, session = self._config, self._session
        if config.max_turns is not None and session.turn_count >= config.max_turns:
            return BudgetExceeded(self._sid, "turns", config.max_turns, session.turn_count)
        if config.max_cost_usd is not None and session.total_cost >= config.max_cost_usd:
            return BudgetExceeded(self._sid, "cost", config.max_cost_usd, session.total_cost)
        return None

    async def _advance(self) -> None:
        """Start the next queued turn, or apply a queued `put_session`, while idle."""
        while self._running is None and self._queue:
            item = self._queue.popleft()
            if not item.from_.waiting:
                continue  # its caller gave up: a turn nobody waits for is not started
            if isinstance(item, _QueuedPut):
                await self._put(item.session)
                otpy.reply(item.from_, None)
                continue
            refusal = self._budget_refusal()
            if refusal is not None:
                otpy.reply(item.from_, _Refused(refusal))
                continue
            self._start(item)

    def _start(self, item: _QueuedTurn) -> None:
        session = self._session
        turn = _Turn(session.turn_count + 1, item.prompt, item.from_)
        request = TurnRequest(
            turn=turn.number,
            prompt=item.prompt,
            messages=session.messages,
            options={**self._config.query_opts, **item.overrides},
        )
        work = _TurnWork(turn, request, self._context(), self._last_seq + 1, session.provider_session_id)
        self._running = turn
        self._recovered = None
        self._inbox.send_nowait(work)

    async def _put(self, session: Session) -> None:
        seq = self._last_seq + 1
        record = Record(self._sid, seq, "session_put", {"session": session.to_dict()})
        await self._store.append(self._sid, [record], durable=True)
        folded = fold(self._sid, [record], start=self._session, last_seq=self._last_seq)
        self._session, self._last_seq = folded.session, folded.last_seq
        self._recovered = None
        self._inbox.send_nowait(_Reconnect(self._context()))

    def _subscribe(self, buffer: int | None, caller: otpy.Pid | None) -> Subscription:
        inner = self._fanout.add(buffer if buffer is not None else max(1, self._config.subscriber_buffer))
        turn = self._running
        if turn is not None and turn.begun:
            inner.push(
                TurnSnapshot(
                    session_id=self._sid,
                    turn=turn.number,
                    prompt=turn.prompt,
                    text="".join(turn.text),
                    messages=tuple(turn.messages),
                )
            )
        elif turn is None and self._recovered is not None:
            inner.push(TurnFinished(self._recovered))
        subscription = Subscription(inner)
        for ref, old in list(self._watchers.items()):
            if old.closed:
                otpy.demonitor(ref, flush=True)
                del self._watchers[ref]
        if caller is not None and caller.alive:
            self._watchers[otpy.monitor(caller)] = inner
        return subscription

    def _status(self) -> SessionStatus:
        turn = self._running
        state: Literal["idle", "running", "interrupting"] = "idle"
        if turn is not None:
            state = "interrupting" if turn.interrupting else "running"
        return SessionStatus(
            session_id=self._sid,
            state=state,
            turn_count=self._session.turn_count,
            total_cost=self._session.total_cost,
            turn=turn.number if turn is not None else None,
            turn_elapsed=trio.current_time() - turn.started_at if turn is not None else None,
            queued=len(self._queue),
            subscribers=self._fanout.count(),
            provider_session_id=self._session.provider_session_id,
        )
