"""The web app's view of a running tree: one relay per session, and the SSE outboxes.

A relay holds one `Subscription` on its session (by name, through
``SessionServer.subscribe``) and re-subscribes when the session restarts. It numbers the
events it passes on with ids ``<session_id>:<turn>:<n>``: ``turn`` is the latest turn
that started, ``n`` counts the events since it started (its ``turn_started`` is 1).
Everything a session does between two turn starts (deltas, tool calls, the result, a
kill and a restart) shares the turn's number, so ids only grow.

It keeps the running turn's events (``WebLimits.replay_events`` of them) and what the
turn has said so far. A client that reconnects with ``Last-Event-ID`` gets the events
after that id when the relay still has them all, and otherwise a ``snapshot`` event
(the turn so far, with the id of the last event it covers) followed by the events after
it: a snapshot, then deltas, never a gap and never a duplicate.

Every SSE connection has an `Outbox` of at most ``WebLimits.client_buffer`` frames. A
relay never waits for a client: a client whose outbox is full is dropped (its
connection is closed) and reconnects with ``Last-Event-ID``.
"""

from __future__ import annotations

import collections
import json
import time
import weakref
from typing import Any

import trio

import otpy

from .._events import (
    EventsDropped,
    MessageAdded,
    ProviderSessionId,
    Result,
    SessionEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallFinished,
    ToolCallRequested,
    TurnFinished,
    TurnSnapshot,
    TurnStarted,
)
from .._server import ServerRef, SessionServer
from ._limits import WebLimits

_log = otpy.get_logger("sessions.web")

# The calls a relay makes to a session: a session that cannot answer in this long is
# treated as down for this attempt (the relay tries again).
_CALL_TIMEOUT = 5.0


def sse_frame(event: str, data: object, event_id: str | None = None) -> bytes:
    """One Server-Sent Events frame. JSON never holds a raw newline, so ``data`` is one line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Outbox:
    """The frames waiting for one SSE connection, at most ``capacity`` of them.

    trio's memory channels block the sender or refuse the item when full; here a full
    outbox must end its connection at once (cancel the send it may be blocked in), hence
    this small queue.
    """

    __slots__ = ("__weakref__", "capacity", "closed", "dropped", "frames", "scope", "wakeup")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.frames: collections.deque[bytes] = collections.deque()
        self.closed = False
        self.dropped = False
        self.wakeup: trio.Event | None = None
        self.scope: trio.CancelScope | None = None

    def put(self, frame: bytes) -> None:
        if self.closed:
            return
        if len(self.frames) >= self.capacity:
            self.drop()
            return
        self.frames.append(frame)
        self._wake()

    def drop(self) -> None:
        """The client fell behind: forget its frames and end its connection now."""
        self.dropped = True
        self.frames.clear()
        self.close()
        if self.scope is not None:
            self.scope.cancel()

    def close(self) -> None:
        self.closed = True
        self._wake()

    async def get(self) -> bytes | None:
        """The next frame, or ``None`` once the outbox is closed and empty."""
        while True:
            if self.frames:
                await trio.lowlevel.checkpoint()
                return self.frames.popleft()
            if self.closed:
                await trio.lowlevel.checkpoint()
                return None
            if self.wakeup is None:
                self.wakeup = trio.Event()
            await self.wakeup.wait()

    def _wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()
            self.wakeup = None


def parse_event_id(value: str | None) -> tuple[str, int, int] | None:
    """``<session_id>:<turn>:<n>`` as a tuple, or ``None`` when it is not one."""
    if not value:
        return None
    sid, _, rest = value.rpartition(":")
    sid, _, turn = sid.rpartition(":")
    try:
        return sid, int(turn), int(rest)
    except ValueError:
        return None


def session_labels() -> set[str]:
    """The class names a session's tree node may carry: SessionServer and its subclasses."""
    names: set[str] = set()
    pending: list[type] = [SessionServer]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return names


def name_text(name: object) -> str:
    """A process name as the URL spells it: a str as is, ``otpy.via(registry, key)`` as its key."""
    if isinstance(name, str):
        return name
    key = getattr(name, "key", name)
    return key if isinstance(key, str) else repr(key)


class Relay:
    """One session's events, numbered, kept for replay, fanned out to SSE outboxes."""

    def __init__(self, hub: Hub, name: str, ref: ServerRef) -> None:
        self.hub = hub
        self.name = name
        self.ref = ref
        self.sid: str | None = None
        self.epoch = 0  # the latest turn that started
        self.n = 0  # events since it started
        self.previous: tuple[int, int] | None = None  # (turn, its last n) of the turn before
        self.replay: collections.deque[tuple[int, bytes]] = collections.deque()
        self.replay_bytes = 0
        self.turn: dict[str, Any] | None = None  # the running (or last) turn so far, but its text
        self.pieces: list[str] = []  # the turn's text (joined only for a snapshot: deltas may be many)
        self.finished_turn = 0  # the latest turn whose result was passed on
        self.clients: set[Outbox] = set()
        self.up = False
        self.retired = False
        self.absent_since: float | None = None
        self.summary: dict[str, Any] = {
            "name": name,
            "session_id": None,
            "status": "starting",
            "turn": None,
            "turns": 0,
            "cost_usd": 0.0,
            "tokens": 0,
            "queued": 0,
            "restarts": 0,
            "last_activity": None,
        }
        self.changed = trio.Event()

    # --- numbering and fan-out ---------------------------------------------------------------

    def last_id(self) -> str | None:
        return None if self.sid is None else f"{self.sid}:{self.epoch}:{self.n}"

    def _new_turn(self, turn: int) -> None:
        self.previous = (self.epoch, self.n)
        self.epoch, self.n = turn, 0
        self.replay.clear()
        self.replay_bytes = 0

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.n += 1
        event_id = f"{self.sid}:{self.epoch}:{self.n}"
        data = {"name": self.name, "turn": self.epoch, **data}
        frame = sse_frame(kind, data, event_id)
        self.replay.append((self.n, frame))
        self.replay_bytes += len(frame)
        while len(self.replay) > self.hub.limits.replay_events or (
            self.replay_bytes > self.hub.limits.replay_bytes and len(self.replay) > 1
        ):
            self.replay_bytes -= len(self.replay.popleft()[1])
        self.summary["last_activity"] = time.time()
        for outbox in list(self.clients):
            outbox.put(frame)
            if outbox.closed:
                self.clients.discard(outbox)
        self.hub.to_dashboards(sse_frame("session_event", {"type": kind, "id": event_id, **data}))

    def snapshot(self) -> dict[str, Any]:
        turn = None if self.turn is None else {**self.turn, "text": "".join(self.pieces)}
        return {"session": dict(self.summary), "turn": turn}

    def attach(self, outbox: Outbox, last_event_id: str | None, *, snapshot: bool = True) -> None:
        """Queue what a (re)connecting client missed, then make it a live client."""
        missed = self._missed(parse_event_id(last_event_id))
        if missed is not None:
            for frame in missed:
                outbox.put(frame)
        elif snapshot:
            outbox.put(sse_frame("snapshot", {"name": self.name, **self.snapshot()}, self.last_id()))
        self.clients.add(outbox)

    def _missed(self, last: tuple[str, int, int] | None) -> list[bytes] | None:
        """The frames after ``last``, or ``None`` when the relay no longer has them all."""
        if last is None or self.sid is None or last[0] != self.sid:
            return None
        _, turn, n = last
        first = self.replay[0][0] if self.replay else self.n + 1
        if turn == self.epoch and n <= self.n and n + 1 >= first:
            return [frame for number, frame in self.replay if number > n]
        if self.previous is not None and (turn, n) == self.previous and first == 1:
            return [frame for _, frame in self.replay]
        return None

    # --- the subscription --------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the session until it is retired; one relay's failure never reaches the app."""
        while not self.retired:
            try:
                await self._follow()
            except Exception as exc:  # noqa: BLE001 (a relay bug is logged and the relay starts over)
                _log.error("relay_failed", session=self.name, error=repr(exc))
                await trio.sleep(1.0)

    async def _follow(self) -> None:
        delay = 0.02
        while not self.retired:
            try:
                subscription = await SessionServer.subscribe(self.ref, buffer=self.hub.limits.relay_buffer)
            except (otpy.CallError, otpy.OtpError):
                self._set_down()
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.02
            try:
                try:
                    await self._attached()
                except (otpy.CallError, otpy.OtpError, trio.TooSlowError):
                    continue  # it went down again at once: the next subscribe tells
                async for event in subscription:
                    if isinstance(event, EventsDropped):
                        break  # this relay fell behind: subscribe again for a snapshot
                    self.on_event(event)
                    if isinstance(event, TurnFinished):
                        try:
                            await self._refresh()
                        except (otpy.CallError, otpy.OtpError, trio.TooSlowError):
                            break
                else:
                    self._set_down()
            finally:
                subscription.close()

    def _set_down(self) -> None:
        if self.up:
            self.up = False
            self.summary["status"] = "down"
            self.summary["turn"] = None
            self.emit("session_down", {"reason": "the session's server exited"})
            self._changed()

    async def _attached(self) -> None:
        sid = await SessionServer.session_id(self.ref)
        if sid != self.sid:  # a new session under this name: start counting afresh
            self.sid = sid
            self.previous = None
            self.replay.clear()
            self.replay_bytes = 0
            self.turn = None
            self.pieces = []
            self.finished_turn = 0
            self.n = 0
            self.epoch = (await SessionServer.get_session(self.ref)).turn_count
            self.finished_turn = self.epoch
        if not self.up and self.summary["status"] == "down":
            found = self.hub.sessions().get(self.name)
            if found is not None:
                self.summary["restarts"] = found[1].restarts
            self.emit("session_up", {"restarts": self.summary["restarts"]})
        self.up = True
        await self._refresh()

    async def _refresh(self) -> None:
        """Fetch the session's figures, and pass on a result the subscription could not give."""
        with trio.fail_after(_CALL_TIMEOUT):
            session = await SessionServer.get_session(self.ref)
            status = await SessionServer.status(self.ref)
        for result in session.history:
            if result.turn >= self.epoch and result.turn > self.finished_turn:
                self.on_event(TurnFinished(result))
        self.summary.update(
            session_id=session.session_id,
            status=status.state,
            turn=status.turn,
            turns=session.turn_count,
            cost_usd=session.total_cost,
            tokens=session.usage.total,
            queued=status.queued,
        )
        self._changed()

    def _changed(self) -> None:
        self.hub.to_dashboards(sse_frame("session", dict(self.summary)))
        self.changed.set()
        self.changed = trio.Event()

    def on_event(self, event: SessionEvent) -> None:
        match event:
            case TurnStarted(turn=turn, prompt=prompt):
                if turn <= self.finished_turn or (self.turn is not None and self.turn["turn"] == turn):
                    return
                self._new_turn(turn)
                self.turn = {"turn": turn, "prompt": prompt, "tool_calls": [], "running": True}
                self.pieces = []
                self.summary.update(status="running", turn=turn)
                self.emit("turn_started", {"prompt": prompt})
                self._changed()
            case TurnSnapshot(turn=turn, prompt=prompt, text=text):
                if turn <= self.finished_turn:
                    return
                if turn != self.epoch:
                    self._new_turn(turn)
                calls = [c.to_dict() for m in event.messages for c in m.tool_calls]
                self.turn = {"turn": turn, "prompt": prompt, "tool_calls": calls, "running": True}
                self.pieces = [text]
                self.summary.update(status="running", turn=turn)
                self.emit("snapshot", self.snapshot())
            case TextDelta(text=text):
                self.pieces.append(text)
                self.emit("text_delta", {"text": text})
            case ThinkingDelta(text=text):
                self.emit("thinking_delta", {"text": text})
            case ToolCallRequested(call=call):
                if self.turn is not None:
                    self.turn["tool_calls"].append(call.to_dict())
                self.emit("tool_call_requested", {"call": call.to_dict()})
            case ToolCallFinished(result=result):
                if self.turn is not None:
                    for call in self.turn["tool_calls"]:
                        if call.get("id") == result.tool_call_id:
                            call["result"] = result.to_dict()
                self.emit("tool_call_finished", {"result": result.to_dict()})
            case MessageAdded(message=message):
                self.emit("message_added", {"message": message.to_dict()})
            case ProviderSessionId(id=native):
                self.emit("provider_session_id", {"provider_session_id": native})
            case TurnFinished(result=result):
                self._finished(result)
            case _:
                pass

    def _finished(self, result: Result) -> None:
        if result.turn <= self.finished_turn:
            return
        if result.turn > self.epoch:
            self._new_turn(result.turn)
        self.finished_turn = result.turn
        if self.turn is None or self.turn["turn"] != result.turn:
            self.turn = {"turn": result.turn, "prompt": None, "tool_calls": []}
        self.turn.update(running=False, result=result.to_dict())
        self.pieces = [result.text]
        self.summary.update(status="idle", turn=None)
        self.emit("turn_finished", {"result": result.to_dict()})

    def close_clients(self) -> None:
        for outbox in self.clients:
            outbox.close()
        self.clients.clear()


class Hub:
    """Every relay, the dashboards' outboxes, the tree and the figures over time."""

    def __init__(self, root: ServerRef, limits: WebLimits) -> None:
        self.root = root
        self.limits = limits
        self.relays: dict[str, Relay] = {}
        self.dashboards: set[Outbox] = set()
        self.streams = 0
        self.metrics: collections.deque[dict[str, float]] = collections.deque(maxlen=720)
        self._pids: weakref.WeakKeyDictionary[otpy.Pid, int] = weakref.WeakKeyDictionary()
        self._by_number: weakref.WeakValueDictionary[int, otpy.Pid] = weakref.WeakValueDictionary()
        self._next_number = 1
        self._nursery: trio.Nursery | None = None
        self._last_tree: str | None = None
        self.started = trio.Event()

    # --- processes ---------------------------------------------------------------------------

    def pid_number(self, pid: otpy.Pid) -> int:
        """A number for ``pid`` that the browser can send back (the pid itself stays here)."""
        number = self._pids.get(pid)
        if number is None:
            number, self._next_number = self._next_number, self._next_number + 1
            self._pids[pid] = number
            self._by_number[number] = pid
        return number

    def pid_of(self, number: int) -> otpy.Pid | None:
        return self._by_number.get(number)

    def snapshot_tree(self) -> otpy.TreeNode | None:
        try:
            return otpy.tree(self.root)
        except otpy.NoProcess:
            return None

    def sessions(self, tree: otpy.TreeNode | None = None) -> dict[str, tuple[ServerRef, otpy.TreeNode]]:
        """The sessions under the root, by name: each one's name to call it by, and its node."""
        if tree is None:
            tree = self.snapshot_tree()
        found: dict[str, tuple[ServerRef, otpy.TreeNode]] = {}
        if tree is None:
            return found
        labels = session_labels()
        for node in tree.walk():
            if node.label in labels and isinstance(node.name, str | otpy.Via):
                found.setdefault(name_text(node.name), (node.name, node))
        return found

    def tree_json(self, node: otpy.TreeNode, labels: set[str], path: str = "") -> dict[str, Any]:
        title = name_text(node.id) if node.id is not None else name_text(node.name) if node.name is not None else None
        key = f"{path}/{title if title is not None else self.pid_number(node.pid) if node.pid else '?'}"
        return {
            "key": key,
            "id": None if node.id is None else name_text(node.id),
            "name": None if node.name is None else name_text(node.name),
            "label": node.label,
            "kind": node.kind,
            "status": node.status,
            "restarts": node.restarts,
            "mailbox": node.mailbox,
            "pid": None if node.pid is None else self.pid_number(node.pid),
            "restart": node.restart,
            "strategy": node.strategy,
            "info": node.info,
            "session": name_text(node.name) if node.label in labels and node.name is not None else None,
            "children": [self.tree_json(child, labels, key) for child in node.children],
        }

    def tree_data(self) -> dict[str, Any] | None:
        tree = self.snapshot_tree()
        return None if tree is None else self.tree_json(tree, session_labels())

    # --- the dashboards ------------------------------------------------------------------------

    def to_dashboards(self, frame: bytes) -> None:
        for outbox in list(self.dashboards):
            outbox.put(frame)
            if outbox.closed:
                self.dashboards.discard(outbox)

    def dashboard_hello(self) -> bytes:
        data = {
            "tree": self.tree_data(),
            "sessions": [relay.snapshot() for relay in self.relays.values()],
            "metrics": list(self.metrics),
        }
        return sse_frame("hello", data)

    # --- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.look()
            task_status.started()
            self.started.set()
            next_sample = 0.0
            try:
                while True:
                    await trio.sleep(self.limits.tick)
                    self.look()
                    now = trio.current_time()
                    if now >= next_sample:
                        self.sample()
                        next_sample = now + 1.0
            finally:
                for relay in self.relays.values():
                    relay.close_clients()
                for outbox in self.dashboards:
                    outbox.close()
                nursery.cancel_scope.cancel()

    def look(self) -> None:
        """Start a relay for each new session, retire those gone, send the tree when it changed."""
        tree = self.snapshot_tree()
        found = self.sessions(tree)
        now = trio.current_time()
        for name, (ref, node) in found.items():
            relay = self.relays.get(name)
            if relay is None or relay.retired:
                relay = self.relays[name] = Relay(self, name, ref)
                assert self._nursery is not None
                self._nursery.start_soon(relay.run)
            relay.absent_since = None
            if relay.summary["restarts"] != node.restarts:
                relay.summary["restarts"] = node.restarts
                relay._changed()
        for name, relay in list(self.relays.items()):
            if name in found:
                continue
            if relay.absent_since is None:
                relay.absent_since = now
            elif now - relay.absent_since > 2.0 and not relay.up:
                relay.retired = True
                relay.close_clients()
                del self.relays[name]
                self.to_dashboards(sse_frame("session_gone", {"name": name}))
        data = None if tree is None else self.tree_json(tree, session_labels())
        text = json.dumps(data, sort_keys=True)
        if text != self._last_tree:
            self._last_tree = text
            self.to_dashboards(sse_frame("tree", data))

    def sample(self) -> None:
        tree = self.snapshot_tree()
        restarts = sum(node.restarts for node in tree.walk()) if tree is not None else 0
        sample = {
            "t": time.time(),
            "cost_usd": sum(r.summary["cost_usd"] for r in self.relays.values()),
            "turns": sum(r.summary["turns"] for r in self.relays.values()),
            "restarts": restarts,
        }
        self.metrics.append(sample)
        self.to_dashboards(sse_frame("sample", sample))

    def relay(self, name: str) -> Relay | None:
        relay = self.relays.get(name)
        if relay is None:
            found = self.sessions().get(name)
            if found is None:
                return None
            self.look()
            relay = self.relays.get(name)
        return relay
