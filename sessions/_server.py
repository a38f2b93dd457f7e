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
link stops the task. Either way the task lives in the nursery the server was started
in, so a supervisor that stops has no task left behind.

One writer, one connection. Once its server has exited (or is in ``terminate``), the
turn task begins no write: the turn cut by the exit stays open in the log and the next
server records it as interrupted, never completed. The next server of the session
waits, in ``init``, for the previous task's write in flight before it loads the log; its
turn task waits for the previous connection to be closed, however long, before it
connects.
"""

from __future__ import annotations

import collections
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import attrs
import trio

import otpy

from ._config import _as_provider, _jsonable, check_startable, check_turn_options, make_config
from ._errors import BudgetExceeded, InvalidOption, SessionBusy, SessionError, SessionInUse
from ._events import (
    Message,
    Result,
    TurnFinished,
    TurnSnapshot,
    Usage,
)
from ._follow import Follower, check_restart_timeout
from ._providers._base import SessionContext, TurnRequest
from ._session import Folder, Session, fold
from ._stored import OPEN_TURN_REASON, SessionInfo, fork_session, list_sessions, load_session
from ._stores._base import Record, Store
from ._stores._memory import InMemoryStore
from ._subscribers import Fanout, SubscriberBuffer, Subscription
from ._telemetry import active
from ._text import check_text
from ._turn import _Reconnect, _Turn, _turn_tasks, _TurnDone, _TurnTask, _TurnWork

_log = otpy.get_logger("sessions.server")

ServerRef = otpy.Pid | str | otpy.Via
"""What the client functions take: a pid, a registered name, or ``otpy.via(...)``."""


# --- how the client functions reach a server -----------------------------------------------------

_call: Callable[..., Awaitable[Any]] = otpy.call
"""What every client function calls: `otpy.call` itself until a `sessions.ClusterNode` starts in
this OS process; then the cluster's router, which sends a call by name to wherever the session
lives (this process, another node, or activated here) and is `otpy.call` for a pid, a via, and
outside the trio run of a node. One module global: a process with no node pays nothing."""

_stop: Callable[[Any, object], Awaitable[None]] = otpy.stop
"""What `SessionServer.stop` calls: `otpy.stop`, or the cluster's router (as `_call`)."""


def _route_through(call: Callable[..., Awaitable[Any]], stop: Callable[[Any, object], Awaitable[None]]) -> None:
    """Send the client functions' calls through ``call`` and ``stop`` (the cluster's router)."""
    global _call, _stop
    _call, _stop = call, stop


_IDEMPOTENCY_KEY_MAX = 255  # the longest idempotency_key send_message takes, in characters (Stripe's limit)


def _check_idempotency_key(key: object) -> None:
    if key is None:
        return
    if not isinstance(key, str) or not key:
        raise InvalidOption("idempotency_key", key, "expected a non-empty str")
    if len(key) > _IDEMPOTENCY_KEY_MAX:
        raise InvalidOption("idempotency_key", key, f"expected at most {_IDEMPOTENCY_KEY_MAX} characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidOption("idempotency_key", key, "is not valid Unicode (a lone surrogate)") from None


def new_session_id() -> str:
    """A fresh session id: 16 random bytes, URL-safe base64 (ExAthena's choice).

    Example::

        sid = sessions.new_session_id()
        spec = SessionServer.child_spec(name="agent", provider=p, session_id=sid)
    """
    return secrets.token_urlsafe(16)


# --- configuration ---------------------------------------------------------------------------


# --- requests (calls) and what the turn task tells the server ------------------------------------


@attrs.frozen
class _Send(otpy.Call[Any]):
    prompt: str
    overrides: dict[str, Any]
    key: str | None = None


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
class _Rewind(otpy.Call[Any]):
    to_turn: int


@attrs.frozen
class _Refused:
    """A reply that the client function raises (a deferred reply cannot raise by itself)."""

    error: SessionError


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


@attrs.frozen
class _QueuedPut:
    from_: otpy.From
    session: Session

    @property
    def waiting(self) -> bool:
        return self.from_.waiting


@attrs.frozen
class _QueuedRewind:
    from_: otpy.From
    to_turn: int

    @property
    def waiting(self) -> bool:
        return self.from_.waiting


@attrs.frozen
class _QueuedTurn:
    from_: otpy.From
    prompt: str
    overrides: dict[str, Any]
    key: str | None = None
    joined: list[otpy.From] = attrs.field(factory=list)  # callers who sent the same key meanwhile

    @property
    def waiting(self) -> bool:
        return self.from_.waiting or any(from_.waiting for from_ in self.joined)


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
        ``messages``: seed a *new* session with this transcript (`Message` values or
        their dicts); a session that already has records keeps its own (restarts pass
        the same options, so the seed is not an error then, and is not applied again).
        ``system_prompt``: pinned for every turn (a turn's override of it is refused
        with `InvalidOption`).

    Client API:
        Every client function takes the server as a pid, a registered name or
        ``otpy.via(...)``: `send_message`, `session_id`, `history`, `last_result`,
        `messages`, `total_cost`, `turn_count`, `usage`, `status`, `get_session`,
        `put_session`, `rewind`, `interrupt`, `subscribe`, `follow`, `stop`. Without a server, on a
        store: `load`, `list_sessions`, `fork`.

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
        config = make_config(options)
        if shutdown is None:
            shutdown = config.close_timeout + 5.0
        return super().child_spec(
            id=id, restart=restart, shutdown=shutdown, significant=significant, name=name, **options
        )

    @classmethod
    async def start_link(
        cls,
        *args: Any,
        name: str | otpy.Via | None = None,
        nursery: trio.Nursery | None = None,
        **options: Any,
    ) -> otpy.Pid:
        """Start a session linked to the calling process (see `child_spec` for the options).

        Raises:
            InvalidOption: a malformed option, raised here as `child_spec` raises it.
            otpy.StartError: ``init`` failed, e.g. ``cwd`` does not exist or the store
                cannot be read; ``reason`` is the error.

        Example::

            pid = await SessionServer.start_link(provider=provider, name="agent", nursery=nursery)
        """
        if args:
            raise InvalidOption("args", args, "SessionServer takes keyword options only")
        make_config(options)
        return await super().start_link(name=name, nursery=nursery, **options)

    @staticmethod
    async def send_message(
        server: ServerRef, prompt: str, *, idempotency_key: str | None = None, **overrides: Any
    ) -> Result:
        """Run one turn and return its `Result`, waiting for as long as the turn takes.

        ``overrides`` replace ``query_opts`` entries for this turn. A turn that fails
        is a `Result` with ``is_error`` and a `FinishReason`; while another turn runs,
        this one waits in the queue.

        ``idempotency_key`` names the turn, so that it runs at most once, whatever
        crashes (Stripe's model). The key is stored with the turn, durably, before the
        provider sees the prompt. Sent again with the same key, `send_message` runs
        nothing and answers for that turn: the turn's `Result` if it finished (a
        failed turn's too), its interrupted `Result` (``FinishReason.INTERRUPTED``) if
        the server exited during it, and, while it is queued or running, the same
        `Result` when it ends (the calls join it). The prompt and ``overrides`` of a
        repeat are not looked at. Keys are kept per session, all of them, for the
        session's life (`Session.idempotency_keys`; `put_session` keeps those of the
        session it is given). After `otpy.ServerExited`, send again with the same key.

        Raises:
            InvalidOption: ``prompt`` is not a str or holds a lone surrogate (it has no
                UTF-8 form), or an override is malformed (``max_iterations="many"``);
                raised here, in the caller's task, before anything is queued.
            BudgetExceeded: ``max_cost_usd`` or ``max_turns`` is spent; no turn started.
            SessionBusy: ``max_queued_turns`` turns already wait.
            otpy.ServerExited: the server exited (crashed) before the turn ended.
            otpy.NoProcess: no such server.
            InvalidOption: ``idempotency_key`` is not a non-empty str of at most 255
                characters (or holds a lone surrogate).

        Example::

            result = await SessionServer.send_message("agent", "Summarize README.md", model="haiku")
            print(result.text, result.cost_usd)

            key = str(uuid.uuid4())
            try:
                result = await SessionServer.send_message("agent", "Deploy it.", idempotency_key=key)
            except otpy.ServerExited:  # did it happen? ask again: it runs at most once
                result = await SessionServer.send_message("agent", "Deploy it.", idempotency_key=key)
        """
        if not isinstance(prompt, str):
            raise InvalidOption("prompt", prompt, "expected a str")
        check_text("prompt", prompt)
        check_turn_options("overrides", overrides)
        _check_idempotency_key(idempotency_key)
        reply = await _call(server, _Send(prompt, overrides, idempotency_key), timeout=math.inf)
        result: Result = _unwrap(reply)
        return result

    @staticmethod
    async def session_id(server: ServerRef) -> str:
        """The session's own stable id (not the provider's; see `Session.provider_session_id`).

        Example::

            sid = await SessionServer.session_id("agent")
        """
        value: str = await _call(server, _Get("session_id"))
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
        """The normalized transcript of the finished turns (after a `rewind`, the transcript the
        next turn continues from).

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
        """How many turns have finished (failed, interrupted and rewound ones included).

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
        value: SessionStatus = await _call(server, _Get("status"))
        return value

    @staticmethod
    async def get_session(server: ServerRef) -> Session:
        """A snapshot of the whole session (a frozen `Session`).

        Example::

            session = await SessionServer.get_session("agent")
        """
        value: Session = await _call(server, _Get("session"))
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
        _unwrap(await _call(server, _Put(session), timeout=math.inf))

    @staticmethod
    async def rewind(server: ServerRef, to_turn: int) -> None:
        """Make the next turn continue from the end of turn ``to_turn`` (0: from the start).

        The rewind is a record appended to the log (``session_rewound``), never a rewrite
        of it: the whole past stays in the store. `messages` becomes the transcript as it
        stood when turn ``to_turn`` ended (the seed's for 0), and the next turn sees only
        that. `history` keeps every turn's `Result`, the rewound ones too: ``turn_count``,
        ``total_cost`` and the budgets keep counting what was spent, turn numbers keep
        growing (the next turn is ``turn_count + 1``), and an ``idempotency_key`` of a
        rewound turn still answers with its result. A later rewind may go to any turn
        whose end is in the log, on either side of an earlier rewind.

        Like `put_session`, it waits for the running and queued turns first. The
        provider's own session does not go back in place, so its id is dropped and the
        provider is reconnected with the rewound transcript and `Session.continues_from`
        (``to_turn``): a provider that is sent the transcript each turn (`AgentLoop` with
        Ollama or an OpenAI-compatible server, the `ScriptedProvider`) continues from it;
        `ClaudeCode` forks the CLI's own conversation at the end of turn ``to_turn``
        (``--resume`` with ``--fork-session`` and ``--resume-session-at``), so the model
        sees that turn and the ones before it, and no later one.

        Raises:
            InvalidOption: ``to_turn`` is not an int >= 0 (a bool is not), is beyond the
                last turn, or is a turn whose end is not in this session's log (it came
                whole with a `put_session`, a ``messages=`` seed or a `fork`), or came
                before a `put_session` (a put replaces the state: what it trimmed or
                redacted stays so).

        Example::

            for prompt in ("Plan the release.", "Write the changelog.", "Make it shorter."):
                await SessionServer.send_message("agent", prompt)
            await SessionServer.rewind("agent", to_turn=2)    # forget "Make it shorter."
            result = await SessionServer.send_message("agent", "Make it funnier.")
            assert result.turn == 4                            # numbers go on
            assert await SessionServer.turn_count("agent") == 4
        """
        checked: object = to_turn
        if isinstance(checked, bool) or not isinstance(checked, int) or checked < 0:
            raise InvalidOption("to_turn", to_turn, "expected an int >= 0 (a turn number)")
        _unwrap(await _call(server, _Rewind(to_turn), timeout=math.inf))

    @staticmethod
    async def interrupt(server: ServerRef) -> bool:
        """End the running turn early, keeping the session; False if no turn was running.

        The provider is asked to stop; after ``interrupt_grace`` seconds the turn is
        cancelled. The turn's caller gets a `Result` with ``FinishReason.INTERRUPTED``.
        Queued turns run afterwards as usual.

        Example::

            await SessionServer.interrupt("agent")
        """
        value: bool = await _call(server, _Interrupt())
        return value

    @staticmethod
    async def subscribe(server: ServerRef, *, buffer: int | None = None) -> Subscription:
        """Stream the session's events to the caller (see `Subscription`).

        A subscriber that joins during a turn gets a `TurnSnapshot` of the turn so far
        first; after a restart that interrupted a turn, one that joins before the next
        turn gets that turn's `TurnFinished` first. ``buffer`` overrides
        ``subscriber_buffer``.

        By name inside a `ClusterNode`'s trio run, it works from any node: on a node that
        does not own the session, the owner's events are streamed to this node over
        HTTP, into a subscription with the same buffer and `EventsDropped`, that ends
        when the session's server on the owner exits, the owner node is lost, or this
        node stops (see docs/cluster.md).

        Example::

            async with await SessionServer.subscribe("agent") as events:
                async for event in events:
                    print(event)
        """
        checked: object = buffer
        if checked is not None and (isinstance(checked, bool) or not isinstance(checked, int) or checked < 1):
            raise InvalidOption("buffer", buffer, "expected an int >= 1")
        subscription: Subscription = await _call(server, _Subscribe(buffer))
        return subscription

    @staticmethod
    def follow(server: ServerRef, *, restart_timeout: float = 5.0, buffer: int | None = None) -> Follower:
        """Stream the session's events across its restarts: `subscribe`, again after each restart.

        When the server exits, the `Follower` waits up to ``restart_timeout`` seconds for
        a new server under the same name (its supervisor restarts it), subscribes to it,
        and yields a `SessionRestarted` before its events. It ends when no server comes
        back in time. ``buffer`` is each subscription's (see `subscribe`).

        Raises:
            InvalidOption: ``restart_timeout`` is not a finite number >= 0, or ``buffer``
                not an int >= 1.

        Example::

            async with SessionServer.follow("agent") as events:
                async for event in events:
                    match event:
                        case sessions.TurnFinished(result=result):
                            print(result.turn, result.finish_reason)
                        case sessions.SessionRestarted(reason=reason):
                            print("the session restarted after", reason)
        """
        checked: object = buffer
        if checked is not None and (isinstance(checked, bool) or not isinstance(checked, int) or checked < 1):
            raise InvalidOption("buffer", buffer, "expected an int >= 1")
        return Follower(server, check_restart_timeout(restart_timeout), buffer)

    @staticmethod
    async def stop(server: ServerRef, reason: object = "normal") -> None:
        """Stop the server: the provider's connection is closed first.

        Under a supervisor a ``permanent`` session is started again; use the
        supervisor's ``terminate_child`` to stop it for good.

        Example::

            await SessionServer.stop("agent")
        """
        await _stop(server, reason)

    @staticmethod
    async def load(store: Store, session_id: str) -> Session:
        """The stored session ``session_id``, as a server resumed on ``store`` would start
        from it, without starting one and without writing anything.

        A turn that started and never finished (its server exited during it, or is running
        it now) reads as interrupted, as a resumed server records it. ExAthena's
        ``resume/2`` maps here (then start a server with the same ``session_id`` to go on).

        Raises:
            SessionNotFound: ``store`` holds no records of ``session_id``.
            CorruptRecord: a record cannot be read.

        Example::

            session = await SessionServer.load(store, session_id)
            print(session.turn_count, session.total_cost, session.messages[-1].content)
        """
        return await load_session(store, session_id)

    @staticmethod
    async def fork(store: Store, session_id: str, *, at_turn: int | None = None) -> str:
        """A new session in ``store`` whose history is that of ``session_id`` up to the end of
        turn ``at_turn`` (all of it for None, nothing for 0); returns the new session id.

        Its transcript is the one the source had when turn ``at_turn`` ended (the point
        `rewind` goes back to; a rewind after that turn does not reach into the fork), or,
        for None, the source's as it is now.

        The fork shares nothing mutable with its source: it is a new log (a
        ``session_started`` record naming the source, and a ``session_put`` of the
        prefix, written in one durable append), and its results count towards its own
        budgets. Start a server with ``session_id=`` the new id to go on from there. The
        provider's own session is not shared: the fork's provider starts its own from the
        transcript, or, for `ClaudeCode`, as the CLI's own fork of the source's conversation
        at the end of turn ``at_turn`` (``--fork-session``; see `Session.continues_from`).

        Raises:
            SessionNotFound: ``store`` holds no records of ``session_id``.
            InvalidOption: ``at_turn`` is not a turn of the session, or one whose end is not
                in its log (it came whole with a `put_session`, a seed or a `fork`).

        Example::

            branch = await SessionServer.fork(store, session_id, at_turn=2)
            await SessionServer.start_link(provider=provider, store=store, session_id=branch, nursery=nursery)
        """
        return await fork_session(store, session_id, at_turn, new_session_id())

    @staticmethod
    async def list_sessions(store: Store) -> list[SessionInfo]:
        """Every session in ``store``, most recently active first, with its id, turns, cost
        and last activity (a `SessionInfo` each); it only reads.

        It folds each session's log, so it reads the whole store: for admin tools and
        UIs, not for a request path.

        Example::

            for info in await SessionServer.list_sessions(store):
                print(info.session_id, info.turn_count, info.total_cost, info.last_activity)
        """
        return await list_sessions(store)

    @staticmethod
    async def _session_field(server: ServerRef, field: Literal["history", "messages"]) -> tuple[Any, ...]:
        session = await SessionServer.get_session(server)
        values: tuple[Any, ...] = getattr(session, field)
        return values

    # --- server: runs in the session's process ---------------------------------------------

    async def init(self, **options: Any) -> None:
        config = make_config(options)
        self._config = config
        self._provider = _as_provider(config.provider)
        check_startable(config, self._provider)
        self._store: Store = config.store if config.store is not None else InMemoryStore()
        session_id = config.session_id or new_session_id()
        self._sid = session_id
        self._fanout = Fanout()
        self._queue: collections.deque[_QueuedTurn | _QueuedPut | _QueuedRewind] = collections.deque()
        self._running: _Turn | None = None
        self._recovered: Result | None = None
        self._watchers: dict[otpy.MonitorRef, SubscriberBuffer] = {}

        # One writer per session per store: a second server of a live session, through
        # any store object on the same location or from another OS process, is refused
        # (SessionInUse) after waiting close_timeout for the previous one to let go.
        self._claim = await self._store.claim(session_id, wait=config.close_timeout)
        table = _turn_tasks()
        key = (id(self._store), session_id)
        previous = table.get(key)
        if previous is not None:
            await self._wait_for_previous_writer(previous)
        records = await self._store.load(session_id)
        folded = fold(session_id, records)
        seq = folded.last_seq
        added: list[Record] = []
        if records:
            if folded.open_turn is not None:
                seq += 1
                reason = OPEN_TURN_REASON
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
            if config.messages:  # a seed (messages=) is written once, as a put_session would be
                seed = Session(session_id=session_id, messages=config.messages)
                seq += 1
                added.append(Record(session_id, seq, "session_put", {"session": seed.to_dict()}))
        await self._store.append(session_id, added, durable=True)
        folded = fold(session_id, [*records, *added])
        if added[0].kind == "turn_interrupted":
            self._recovered = folded.session.last_result  # reported to the next subscribers
        self._session = folded.session
        self._last_seq = folded.last_seq

        send, receive = trio.open_memory_channel[_TurnWork | _Reconnect](math.inf)
        self._inbox = send
        self._runner = _TurnTask(
            otpy.self(),
            self._provider,
            self._store,
            session_id,
            self._fanout,
            receive,
            config,
            self._context(),
            previous,
        )
        self._task: otpy.Task[None] = otpy.Task.async_(self._runner.run)
        self._runner.pid = self._task.pid
        table[key] = self._runner

    async def _wait_for_previous_writer(self, previous: _TurnTask) -> None:
        """Wait until the previous server of this session is gone and its turn task can write no
        more, so that the log this server loads is the whole log, and nothing lands behind it.

        Raises:
            SessionInUse: it still writes after ``close_timeout`` (a store write that hangs).
        """
        started = trio.current_time()
        with trio.move_on_after(self._config.close_timeout):
            await previous.writes_ended()
            return
        holder = f"the turn task {previous.pid!r} of its previous server, still writing,"
        raise SessionInUse(self._sid, repr(self._store), holder, trio.current_time() - started)

    def _context(self) -> SessionContext:
        return SessionContext(
            session_id=self._sid,
            cwd=self._config.cwd,
            messages=self._session.messages,
            provider_session_id=self._session.provider_session_id,
            store=self._store,
            options=self._pinned(self._config.query_opts),
            continues_from=(
                self._session.result_of(self._session.continues_from)
                if self._session.continues_from is not None
                else None
            ),
        )

    def _pinned(self, options: dict[str, Any]) -> dict[str, Any]:
        if self._config.system_prompt is None:
            return dict(options)
        return {**options, "system_prompt": self._config.system_prompt}

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case _Send(prompt=prompt, overrides=overrides, key=key):
                if key is not None:
                    replayed = self._session.result_for_key(key)
                    if replayed is not None:
                        return replayed
                    if self._join(key, from_):
                        return otpy.NoReply()
                refusal: SessionError | None = self._budget_refusal()
                pinned = self._config.system_prompt
                if pinned is not None and overrides.get("system_prompt", pinned) != pinned:
                    problem = "this session's system_prompt is pinned (the system_prompt= start option)"
                    refusal = InvalidOption("system_prompt", overrides["system_prompt"], problem)
                if refusal is None and self._busy() and len(self._queue) >= self._config.max_queued_turns:
                    refusal = SessionBusy(self._sid, len(self._queue))
                if refusal is not None:
                    if (telemetry := active()) is not None:
                        telemetry.refused(self._sid, refusal)
                    return _Refused(refusal)
                self._queue.append(_QueuedTurn(from_, prompt, overrides, key))
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
            case _Rewind(to_turn=to_turn):
                self._queue.append(_QueuedRewind(from_, to_turn))
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
                    for joined in turn.joined:
                        otpy.reply(joined, result)
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
        runner = getattr(self, "_runner", None)
        if runner is not None:
            runner.stopping = True  # the turn cut by this exit is never completed
        task = getattr(self, "_task", None)
        if task is not None and task.pid.alive:
            with trio.move_on_after(self._config.close_timeout + 1.0):
                await task.shutdown(timeout=self._config.close_timeout)

    def tree_status(self) -> str:
        """The session's line in ``otpy.tree()``: state, turns, cost, queue.

        Example::

            print(otpy.tree("sessions"))   # ... agent  worker  SessionServer  running ...  idle, 3 turns, $0.0120

        A session whose provider reports tokens but no prices shows its tokens instead:
        ``idle, 1 turn, 230 tokens, price unknown``.
        """
        if not hasattr(self, "_runner"):
            return "starting"  # init is still loading the log
        status = self._status()
        parts = [status.state if status.turn is None else f"{status.state} turn {status.turn}"]
        parts.append(f"{status.turn_count} turn" + ("" if status.turn_count == 1 else "s"))
        tokens = self._session.usage.total
        if status.total_cost or not tokens:
            parts.append(f"${status.total_cost:.4f}")
        else:  # a provider without prices (an OpenAI-compatible server, Ollama): $0.0000 would be false
            parts.append(f"{tokens} tokens, price unknown")
        if status.queued:
            parts.append(f"{status.queued} queued")
        if status.subscribers:
            parts.append(f"{status.subscribers} subscribed")
        return ", ".join(parts)

    # --- helpers -------------------------------------------------------------------------------

    def _busy(self) -> bool:
        return self._running is not None or bool(self._queue)

    def _join(self, key: str, from_: otpy.From) -> bool:
        """Make ``from_`` a caller of the running or queued turn sent with ``key``; False if none was."""
        running = self._running
        if running is not None and running.key == key:
            running.joined.append(from_)
            return True
        for item in self._queue:
            if isinstance(item, _QueuedTurn) and item.key == key:
                item.joined.append(from_)
                return True
        return False

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
            if not item.waiting:
                continue  # its caller gave up: a turn nobody waits for is not started
            if isinstance(item, _QueuedPut):
                await self._put(item.session)
                otpy.reply(item.from_, None)
                continue
            if isinstance(item, _QueuedRewind):
                otpy.reply(item.from_, await self._rewind(item.to_turn))
                continue
            refusal = self._budget_refusal()
            if refusal is not None:
                for from_ in (item.from_, *item.joined):
                    if (telemetry := active()) is not None:
                        telemetry.refused(self._sid, refusal)
                    otpy.reply(from_, _Refused(refusal))
                continue
            self._start(item)

    def _start(self, item: _QueuedTurn) -> None:
        session = self._session
        turn = _Turn(session.turn_count + 1, item.prompt, item.from_, item.key, item.joined)
        request = TurnRequest(
            turn=turn.number,
            prompt=item.prompt,
            messages=session.messages,
            options=self._pinned({**self._config.query_opts, **item.overrides}),
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

    async def _rewind(self, to_turn: int) -> _Refused | None:
        """Append ``session_rewound``, folded over the whole log: a checkpoint of every turn's
        end is only kept by a fold from the log's start (a restart makes the same fold)."""
        records = await self._store.load(self._sid)
        folder = Folder(Session(session_id=self._sid))
        for record in records:
            folder.apply(record)
        count = self._session.turn_count
        if to_turn > count:
            return _Refused(InvalidOption("to_turn", to_turn, f"session {self._sid!r} has {count} turns"))
        if to_turn not in folder.checkpoints:
            problem = (
                f"the end of turn {to_turn} is not in session {self._sid!r}'s log"
                " (it came whole with a put_session, a messages= seed or a fork)"
            )
            return _Refused(InvalidOption("to_turn", to_turn, problem))
        record = Record(self._sid, self._last_seq + 1, "session_rewound", {"to_turn": to_turn})
        await self._store.append(self._sid, [record], durable=True)
        folder.apply(record)
        folded = folder.folded()
        self._session, self._last_seq = folded.session, folded.last_seq
        self._recovered = None
        _log.debug("session_rewound", session_id=self._sid, to_turn=to_turn, turn_count=count)
        self._inbox.send_nowait(_Reconnect(self._context()))
        return None

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

    @staticmethod
    async def provider_session_id(server: ServerRef) -> str | None:
        """The provider's own id of the conversation (the Claude CLI's session id, what its
        ``--resume`` takes), or None before the provider reported one; `session_id` is otpy's own.

        Example::

            cli_session = await SessionServer.provider_session_id("agent")
        """
        session: Session = await _call(server, _Get("session"))
        return session.provider_session_id
