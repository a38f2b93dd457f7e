"""A crashed SessionServer is restarted under the same name and session id and carries on.

Also: the provider's connection (the turn task) never outlives its server.
"""

from __future__ import annotations

import collections
import contextlib
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import hypothesis
import hypothesis.strategies as st
import pytest
import structlog
import trio
import trio.testing

import otpy
import sessions
from sessions import FinishReason, Result, ScriptedProvider, ScriptedReply, ScriptedTool, SessionServer
from sessions._session import fold
from sessions._stored import OPEN_TURN_REASON

Start = Callable[..., Any]


@pytest.fixture(autouse=True)
def _no_store_thread_left() -> Iterator[None]:
    yield
    assert [t.name for t in threading.enumerate() if t.name.startswith("sessions-")] == []


async def wait_until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 (polling in virtual time, for conditions with no event)
        await trio.sleep(0.01)


async def restarted(name: str, old: otpy.Pid) -> otpy.Pid:
    """Wait until a new process holds ``name``."""
    await wait_until(lambda: otpy.whereis(name) not in (None, old))
    pid = otpy.whereis(name)
    assert pid is not None
    return pid


def cost(turn: int) -> float:
    return round(0.01 * turn, 2)


def script(crash_turns: frozenset[int] = frozenset(), delay: float = 1.0, pace: float = 0.25) -> ScriptedProvider:
    """Turn n answers "answer n", costs 0.01 * n, and crashes the provider mid-stream if n is in crash_turns."""

    def reply(request: sessions.TurnRequest) -> ScriptedReply:
        n = request.turn
        return ScriptedReply(
            f"answer {n} in words",
            delay=delay,
            delta_delay=pace,
            cost_usd=cost(n),
            tools=(ScriptedTool("note", {"n": n}, result=f"noted {n}"),),
            crash_after=1 if n in crash_turns else None,
        )

    return ScriptedProvider(default=reply, close_delay=2 * pace)


async def send_soon(nursery: trio.Nursery, name: str, prompt: str, outcomes: list[Any]) -> None:
    async def send() -> None:
        try:
            outcomes.append(await SessionServer.send_message(name, prompt))
        except (otpy.ServerExited, otpy.NoProcess, sessions.SessionBusy) as exc:
            outcomes.append(exc)

    nursery.start_soon(send)
    await trio.sleep(0.001)


class TestCarriesOn:
    @pytest.mark.parametrize("how", ["kill", "provider_crash", "callback_crash"])
    async def test_a_crash_mid_turn_restarts_and_carries_on(
        self, how: str, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Killed, or crashed in its provider or in a callback, mid-turn: same name and id, history kept,
        the turn reported as interrupted and not retried, the next turn numbered after it."""
        store = sessions.InMemoryStore()
        provider = script(crash_turns=frozenset({2}) if how == "provider_crash" else frozenset())
        await supervised(name="a", provider=provider, store=store)
        sid = await SessionServer.session_id("a")
        first = await SessionServer.send_message("a", "one")
        old = otpy.whereis("a")
        assert old is not None
        outcomes: list[Any] = []
        await send_soon(nursery, "a", "two", outcomes)
        await trio.sleep(1.1)  # turn 2 is running: its prompt and its tool call are in the store
        if how == "kill":
            otpy.exit(old, "kill")
        elif how == "callback_crash":
            with pytest.raises(otpy.ServerExited):
                await otpy.call("a", "not a request")
        new = await restarted("a", old)
        await wait_until(lambda: bool(outcomes))
        assert isinstance(outcomes[0], otpy.ServerExited)
        assert await SessionServer.session_id("a") == sid
        history = await SessionServer.history("a")
        assert history[0] == first
        assert (history[1].turn, history[1].finish_reason, history[1].cost_usd) == (2, FinishReason.INTERRUPTED, 0)
        assert await SessionServer.total_cost("a") == cost(1)
        third = await SessionServer.send_message("a", "three")
        assert (third.turn, third.text) == (3, "answer 3 in words")
        assert await SessionServer.turn_count("a") == 3
        assert await SessionServer.total_cost("a") == cost(1) + cost(3)
        assert [r.turn for r in provider.requests] == [1, 2, 3]  # turn 2 was never retried
        contents = [m.content for m in provider.requests[-1].messages]
        assert contents[:5] == ["one", "", "noted 1", "answer 1 in words", "two"]
        assert "Turn 2 was interrupted" in contents[-1]
        assert new is otpy.whereis("a")

    async def test_a_restart_never_mints_a_new_id(self, supervised: Start) -> None:
        """Restarts of a child spec without session_id keep the id child_spec made."""
        spec = await supervised(name="a", provider=ScriptedProvider())
        sid = spec.start.keywords["session_id"]
        for _ in range(3):
            old = otpy.whereis("a")
            assert old is not None
            otpy.exit(old, "boom")
            await restarted("a", old)
            assert await SessionServer.session_id("a") == sid

    @pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
    async def test_durable_stores_carry_on_across_a_new_store_object(
        self, kind: str, tmp_path: Path, nursery: trio.Nursery
    ) -> None:
        """With a durable store, a session started later (a new store object, as after a reboot) carries on."""

        def open_store() -> sessions.Store:
            if kind == "sqlite":
                return sessions.SqliteStore(tmp_path / "agents.db")
            return sessions.JsonlStore(tmp_path / "logs")

        store = open_store()
        provider = script(delay=0, pace=0.01)
        pid = await SessionServer.start_link(provider=provider, store=store, session_id="s1", nursery=nursery)
        await SessionServer.send_message(pid, "one")
        await SessionServer.send_message(pid, "two")
        before = await SessionServer.get_session(pid)
        await SessionServer.stop(pid)
        await store.aclose()

        store = open_store()
        try:
            pid = await SessionServer.start_link(provider=provider, store=store, session_id="s1", nursery=nursery)
            assert await SessionServer.get_session(pid) == before
            third = await SessionServer.send_message(pid, "three")
            assert third.turn == 3
            assert await SessionServer.total_cost(pid) == cost(1) + cost(2) + cost(3)
            await SessionServer.stop(pid)
        finally:
            await store.aclose()

    @pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
    async def test_killed_mid_turn_on_a_durable_store(
        self, kind: str, tmp_path: Path, supervised: Start, nursery: trio.Nursery
    ) -> None:
        """Killed mid-turn with a durable store: restarted, the turn reported interrupted, history kept."""
        if kind == "sqlite":
            store: sessions.Store = sessions.SqliteStore(tmp_path / "agents.db")
        else:
            store = sessions.JsonlStore(tmp_path / "logs")
        try:
            await supervised(name="a", provider=script(delay=0.3, pace=0.1), store=store)
            await SessionServer.send_message("a", "one")
            outcomes: list[Any] = []
            await send_soon(nursery, "a", "two", outcomes)
            await trio.sleep(0.4)  # in turn 2's text
            old = otpy.whereis("a")
            assert old is not None
            otpy.exit(old, "kill")
            await restarted("a", old)
            third = await SessionServer.send_message("a", "three")
            assert third.turn == 3
            history = await SessionServer.history("a")
            assert [r.finish_reason for r in history] == [
                FinishReason.STOP,
                FinishReason.INTERRUPTED,
                FinishReason.STOP,
            ]
            assert await SessionServer.total_cost("a") == cost(1) + cost(3)
            sid = await SessionServer.session_id("a")
            assert fold(sid, await store.load(sid)).session == await SessionServer.get_session("a")
            await otpy.stop("sup")
        finally:
            await store.aclose()

    async def test_the_provider_gets_the_restored_transcript_and_native_id(self, supervised: Start) -> None:
        """At connect after a restart, the SessionContext carries the messages and the provider's own id."""
        provider = ScriptedProvider([ScriptedReply("hi", provider_session_id="native-1")])
        await supervised(name="a", provider=provider)
        await SessionServer.send_message("a", "hello")
        old = otpy.whereis("a")
        assert old is not None
        otpy.exit(old, "boom")
        await restarted("a", old)
        await SessionServer.status("a")
        await wait_until(lambda: len(provider.contexts) == 2)
        ctx = provider.contexts[-1]
        assert ctx.provider_session_id == "native-1"
        assert [m.content for m in ctx.messages] == ["hello", "hi"]

    async def test_records_are_written_ahead(self, supervised: Start, autojump_clock: trio.testing.MockClock) -> None:
        """turn_started is in the store before the provider sees the prompt; turn_finished holds the result."""
        store = sessions.InMemoryStore()
        seen_at_request: list[list[str]] = []

        def reply(request: sessions.TurnRequest) -> ScriptedReply:
            seen_at_request.append([r.kind for r in store._logs[request_sid[0]]])
            return ScriptedReply("ok", cost_usd=0.5, provider_session_id="native")

        request_sid: list[str] = []
        await supervised(name="a", provider=ScriptedProvider(default=reply), store=store, session_id="s")
        request_sid.append("s")
        result = await SessionServer.send_message("a", "hi")
        assert seen_at_request == [["session_started", "turn_started"]]
        records = await store.load("s")
        assert [r.kind for r in records] == [
            "session_started",
            "turn_started",
            "provider_session",
            "message",
            "turn_finished",
        ]
        assert records[-1].data["result"] == result.to_dict()
        assert [r.seq for r in records] == [1, 2, 3, 4, 5]


class StoreTap:
    """A real store seen through a tap: every call reaches ``inner``. It counts the loads of a log,
    by a process (a server), made while an append to that log was in flight (a second writer, which a
    session never has; a reader outside any process, as a fork is, may read a log being written)."""

    def __init__(self, inner: sessions.Store) -> None:
        self.inner = inner
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.loads_while_writing = 0

    async def _write(
        self,
        session_id: str,
        records: Any,
        durable: bool,
        on_the_way: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Append through to ``inner``, counted in flight; ``on_the_way`` runs first (the disk is slow)."""
        self.in_flight[session_id] += 1
        try:
            if on_the_way is not None:
                await on_the_way()
            await self.inner.append(session_id, records, durable=durable)
        finally:
            self.in_flight[session_id] -= 1

    async def append(self, session_id: str, records: Any, *, durable: bool = False) -> None:
        await self._write(session_id, records, durable)

    async def load(self, session_id: str) -> list[sessions.Record]:
        if self.in_flight[session_id] and otpy.current_process() is not None:
            self.loads_while_writing += 1
        return await self.inner.load(session_id)

    async def list_sessions(self) -> list[str]:
        return await self.inner.list_sessions()

    async def delete(self, session_id: str) -> None:
        await self.inner.delete(session_id)

    async def claim(self, session_id: str, *, wait: float = 5.0) -> Any:
        return await self.inner.claim(session_id, wait=wait)

    async def aclose(self) -> None:
        await self.inner.aclose()


class GatedStore(StoreTap):
    """A real store whose appends of one kind wait at a gate before they reach it: the disk is slow
    exactly there (the append is shielded, as a write to a disk is; a kill cannot stop it)."""

    def __init__(self, inner: sessions.Store) -> None:
        super().__init__(inner)
        self.block: str | None = None  # the record kind whose append waits at the gate
        self.gate = trio.Event()
        self.waiting = trio.Event()

    async def append(self, session_id: str, records: Any, *, durable: bool = False) -> None:
        gated = self.block is not None and any(r.kind == self.block for r in records)
        if gated:
            self.block = None
        await self._write(session_id, records, durable, self._wait_at_the_gate if gated else None)

    async def _wait_at_the_gate(self) -> None:
        self.waiting.set()
        await self.gate.wait()


def open_store(kind: str, tmp_path: Path) -> sessions.Store:
    if kind == "sqlite":
        return sessions.SqliteStore(tmp_path / "agents.db")
    if kind == "jsonl":
        return sessions.JsonlStore(tmp_path / "logs")
    return sessions.InMemoryStore()


class TestAKilledTurnIsNeverCompleted:
    @pytest.mark.parametrize("kind", ["memory", "jsonl", "sqlite"])
    async def test_killed_while_the_message_append_waits_on_the_disk(
        self, kind: str, tmp_path: Path, supervised: Start, nursery: trio.Nursery
    ) -> None:
        """Killed while the turn's message append waits on the disk, then the disk answers: the dead
        server's task begins no write after it (no turn_finished), the restart loads the log only once
        that write has landed, records the turn as interrupted, and is not refused."""
        store = GatedStore(open_store(kind, tmp_path))
        try:
            with trio.fail_after(30):
                await supervised(name="a", provider=script(delay=0, pace=0), store=store, session_id="s")
                await SessionServer.send_message("a", "one")
                old = otpy.whereis("a")
                assert old is not None
                store.block = "message"  # turn 2's first message: its tool call
                outcomes: list[Any] = []
                await send_soon(nursery, "a", "two", outcomes)
                await store.waiting.wait()
                otpy.exit(old, "kill")
                await wait_until(lambda: bool(outcomes))
                assert isinstance(outcomes[0], otpy.ServerExited)
                await trio.sleep(0.2)  # the supervisor restarts the session meanwhile
                store.gate.set()
                await restarted("a", old)
                history = await SessionServer.history("a")
                records = await store.load("s")
            kinds = [(r.kind, r.data.get("turn")) for r in records]
            assert ("turn_finished", 2) not in kinds
            assert kinds[-2:] == [("turn_interrupted", 2), ("session_resumed", None)]
            assert [r.seq for r in records] == list(range(1, len(records) + 1))
            assert store.loads_while_writing == 0
            assert [(r.turn, r.finish_reason) for r in history] == [
                (1, FinishReason.STOP),
                (2, FinishReason.INTERRUPTED),
            ]
            assert await SessionServer.total_cost("a") == cost(1)
            [node] = [n for n in otpy.tree("sup").walk() if n.name == "a"]
            assert node.restarts == 1  # the restart was not refused
            third = await SessionServer.send_message("a", "three")
            assert third.turn == 3
            await otpy.stop("sup")
        finally:
            store.gate.set()  # a failed check must not leave a shielded write waiting
            await store.aclose()

    @pytest.mark.parametrize("how", ["kill", "stop"])
    async def test_no_write_begins_once_the_server_has_exited(
        self, how: str, supervised: Start, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Killed, or stopped, while the turn's last message append waits: the turn ends with that write;
        its turn_finished is never written, whatever the provider does next."""
        store = GatedStore(sessions.InMemoryStore())
        await supervised(name="a", provider=ScriptedProvider(["one", "two"]), store=store, session_id="s")
        old = otpy.whereis("a")
        assert old is not None
        store.block = "message"
        async with trio.open_nursery() as nursery:
            outcomes: list[Any] = []
            await send_soon(nursery, "a", "hi", outcomes)
            await store.waiting.wait()
            if how == "kill":
                otpy.exit(old, "kill")
            else:
                nursery.start_soon(SessionServer.stop, old)
            await trio.sleep(1)
            store.gate.set()
        assert isinstance(outcomes[0], otpy.ServerExited)
        await restarted("a", old)
        await SessionServer.status("a")  # its init is done
        kinds = [r.kind for r in await store.load("s")]
        assert kinds == ["session_started", "turn_started", "message", "turn_interrupted", "session_resumed"]


class TestTheRestartWaitsForTheLastWrite:
    async def test_a_write_that_hangs_past_close_timeout_fails_the_restart_with_session_in_use(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The killed server's last write hangs: each restart waits close_timeout (2 s), then fails
        with SessionInUse naming the writer; once the write lands, the next restart carries on."""
        store = GatedStore(sessions.InMemoryStore())
        await supervised(name="a", provider=script(delay=0, pace=0), store=store, session_id="s", close_timeout=2)
        old = otpy.whereis("a")
        assert old is not None
        store.block = "turn_started"
        try:
            with structlog.testing.capture_logs() as logs:
                await send_soon(nursery, "a", "one", [])
                await store.waiting.wait()
                killed_at = trio.current_time()
                otpy.exit(old, "kill")
                await trio.sleep(2.1)
                failed = [e for e in logs if e["event"] == "child_start_failed"]
                assert trio.current_time() - killed_at >= 2
        finally:
            store.gate.set()
        assert len(failed) == 1
        assert isinstance(failed[0]["reason"], sessions.SessionInUse)
        assert "still writing" in str(failed[0]["reason"])
        await restarted("a", old)
        history = await SessionServer.history("a")
        assert [(r.turn, r.finish_reason) for r in history] == [(1, FinishReason.INTERRUPTED)]


class TestIdempotencyKeys:
    async def test_a_key_is_checked(self, nursery: trio.Nursery) -> None:
        """A key is a non-empty str of at most 255 characters that UTF-8 can encode."""
        pid = await SessionServer.start_link(provider=ScriptedProvider(), nursery=nursery)
        for bad in ["", "k" * 256, 42, b"key", "lone \ud800"]:
            with pytest.raises(sessions.InvalidOption, match="idempotency_key"):
                await SessionServer.send_message(pid, "hi", idempotency_key=bad)  # type: ignore[arg-type]
        assert (await SessionServer.send_message(pid, "hi", idempotency_key="k" * 255)).turn == 1
        assert await SessionServer.turn_count(pid) == 1

    async def test_the_same_key_replays_the_turn_and_joins_it_while_it_runs(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Sent again while it runs, the key joins the turn; after it, it returns the stored Result;
        the provider sees the turn once; another key is another turn."""
        provider = script()
        pid = await SessionServer.start_link(provider=provider, nursery=nursery)
        outcomes: list[Result] = []

        async def send() -> None:
            outcomes.append(await SessionServer.send_message(pid, "one", idempotency_key="k1"))

        async with trio.open_nursery() as senders:
            for _ in range(3):
                senders.start_soon(send)
                await trio.sleep(0.5)  # the second and third arrive mid-turn
        assert len(outcomes) == 3
        assert outcomes[0] == outcomes[1] == outcomes[2]
        again = await SessionServer.send_message(pid, "whatever", idempotency_key="k1", model="other")
        assert again == outcomes[0]
        other = await SessionServer.send_message(pid, "two", idempotency_key="k2")
        assert (other.turn, [r.turn for r in provider.requests]) == (2, [1, 2])
        session = await SessionServer.get_session(pid)
        assert session.idempotency_keys == {"k1": 1, "k2": 2}
        assert session.total_cost == cost(1) + cost(2)

    async def test_a_queued_key_runs_while_one_of_its_callers_waits(
        self, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Two callers of one queued key: the first gives up, the turn still runs for the second."""
        provider = script()
        pid = await SessionServer.start_link(provider=provider, nursery=nursery)
        nursery.start_soon(SessionServer.send_message, pid, "first")
        await trio.sleep(0.1)
        got: list[Result] = []
        first_caller = trio.CancelScope()

        async def give_up() -> None:
            with first_caller:
                await SessionServer.send_message(pid, "two", idempotency_key="k")

        async def wait() -> None:
            got.append(await SessionServer.send_message(pid, "two", idempotency_key="k"))

        async with trio.open_nursery() as senders:
            senders.start_soon(give_up)
            await trio.sleep(0.1)
            senders.start_soon(wait)
            await trio.sleep(0.1)
            assert (await SessionServer.status(pid)).queued == 1  # one entry, two callers
            first_caller.cancel()
        assert [r.turn for r in got] == [2]
        assert [r.prompt for r in provider.requests] == ["first", "two"]

    @pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
    @pytest.mark.parametrize("cut", ["queued", "turn_started", "message", "turn_finished"])
    async def test_a_retry_after_server_exited_never_runs_a_turn_twice(
        self, kind: str, cut: str, tmp_path: Path, supervised: Start, nursery: trio.Nursery
    ) -> None:
        """Killed while the turn waits in the queue, or while one of its records waits on the disk; the
        caller gets ServerExited and sends again with its key: a turn that never started runs now; a
        turn cut short answers as interrupted; a turn whose last record landed answers with its Result.
        Never two turns for one key, and the key survives the restart."""
        store = GatedStore(open_store(kind, tmp_path))
        provider = script(delay=0, pace=0)
        try:
            with trio.fail_after(30):
                await supervised(name="a", provider=provider, store=store, session_id="s")
                outcomes: list[Any] = []

                async def send() -> None:
                    try:
                        outcomes.append(await SessionServer.send_message("a", "deploy", idempotency_key="deploy-1"))
                    except otpy.ServerExited as exc:
                        outcomes.append(exc)

                if cut == "queued":  # an earlier turn is running, its first record on the disk
                    store.block = "turn_started"
                    await send_soon(nursery, "a", "first", [])
                    await store.waiting.wait()
                    nursery.start_soon(send)
                    await trio.sleep(0.01)
                else:
                    store.block = cut
                    nursery.start_soon(send)
                    await store.waiting.wait()
                old = otpy.whereis("a")
                assert old is not None
                otpy.exit(old, "kill")
                await wait_until(lambda: bool(outcomes))
                assert isinstance(outcomes[0], otpy.ServerExited)
                store.gate.set()
                await restarted("a", old)
                retry = await SessionServer.send_message("a", "deploy", idempotency_key="deploy-1")
                again = await SessionServer.send_message("a", "deploy", idempotency_key="deploy-1")
                history = await SessionServer.history("a")
            assert again == retry
            keyed = [r for r in history if r.turn == retry.turn]
            assert keyed == [retry]
            if cut == "turn_finished":
                assert retry.finish_reason is FinishReason.STOP  # it had happened
            elif cut == "queued":
                assert retry.finish_reason is FinishReason.STOP  # it had not started: it ran now
            else:
                assert retry.finish_reason is FinishReason.INTERRUPTED  # cut short: not run again
            prompts = [r.prompt for r in provider.requests]
            assert prompts.count("deploy") <= 1
            assert (await SessionServer.get_session("a")).idempotency_keys == {"deploy-1": retry.turn}
            await otpy.stop("sup")
            await store.aclose()
            reopened = open_store(kind, tmp_path)  # the key survives the process, too
            try:
                pid = await SessionServer.start_link(provider=provider, store=reopened, session_id="s", nursery=nursery)
                assert await SessionServer.send_message(pid, "deploy", idempotency_key="deploy-1") == retry
                await SessionServer.stop(pid)
            finally:
                await reopened.aclose()
        finally:
            store.gate.set()  # a failed check must not leave a shielded write waiting
            await store.aclose()


class TestTurnTaskLifetime:
    @pytest.mark.parametrize("how", ["stop", "crash", "supervisor_shutdown", "nursery_cancelled"])
    async def test_the_connection_is_closed_before_the_server_exit_is_seen(
        self, how: str, autojump_clock: trio.testing.MockClock
    ) -> None:
        """On stop, crash, supervisor shutdown or a cancelled nursery, the provider's connection is left
        (its close takes 0.5 s here) before anyone sees the server exit; nothing is left running."""
        provider = script()
        seen: list[int] = []
        async with trio.open_nursery() as watchers, trio.open_nursery() as nursery:
            if how == "supervisor_shutdown":
                sup = await otpy.Supervisor.start_link(
                    [SessionServer.child_spec(name="a", provider=provider)], nursery=nursery
                )
            elif how == "crash":  # unlinked: a crash of a process linked to plain trio code fails its nursery
                await SessionServer.start(name="a", provider=provider, nursery=nursery)
            else:
                await SessionServer.start_link(name="a", provider=provider, nursery=nursery)
            pid = otpy.whereis("a")
            assert pid is not None
            outcomes: list[Any] = []
            await send_soon(nursery, "a", "one", outcomes)
            await trio.sleep(1.1)  # mid-turn
            assert provider.open_connections == 1
            ref = otpy.monitor(pid)

            async def watch() -> None:
                await ref.wait()
                seen.append(provider.open_connections)

            watchers.start_soon(watch)
            await trio.sleep(0.001)
            if how == "stop":
                await SessionServer.stop("a")
            elif how == "crash":
                with pytest.raises(otpy.ServerExited):
                    await otpy.call("a", "not a request")
            elif how == "supervisor_shutdown":
                await otpy.stop(sup)
            else:
                nursery.cancel_scope.cancel()
            await trio.sleep(0.1)
            assert not nursery.child_tasks  # the server, its turn task and the caller are all gone
        assert seen == [0]
        assert provider.log == [("enter", provider.log[0][1]), ("exit", provider.log[0][1])]

    async def test_after_a_kill_the_next_server_connects_only_once_the_old_connection_closed(
        self, supervised: Start, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A killed server cannot run terminate: its restart waits for the old connection to close."""
        provider = ScriptedProvider(close_delay=2)
        await supervised(name="a", provider=provider)
        await wait_until(lambda: provider.open_connections == 1)
        for _ in range(3):
            old = otpy.whereis("a")
            assert old is not None
            otpy.exit(old, "kill")
            await restarted("a", old)
            await SessionServer.send_message("a", "hi")
        kinds = [kind for kind, _ in provider.log]
        assert kinds == ["enter", "exit"] * 3 + ["enter"]  # never two connections at once

    @pytest.mark.parametrize("how", ["kill", "stop"])
    async def test_a_close_longer_than_close_timeout_is_waited_for(
        self, how: str, supervised: Start, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The provider's close takes 6 s, close_timeout is 1 s: the next server starts at once, but
        connects only once the old connection is closed (with a warning while it waits); a turn sent
        meanwhile waits for it."""
        provider = ScriptedProvider(close_delay=6)
        await supervised(name="a", provider=provider, close_timeout=1)
        await wait_until(lambda: provider.open_connections == 1)
        old = otpy.whereis("a")
        assert old is not None
        with structlog.testing.capture_logs() as logs:
            if how == "kill":
                otpy.exit(old, "kill")
            else:
                with pytest.raises(otpy.ServerExited):
                    await otpy.call("a", "not a request")  # a crash: terminate gives up after close_timeout
            await restarted("a", old)
            assert provider.open_connections == 1  # the old one, still closing
            await SessionServer.send_message("a", "hi")  # waits for it
        kinds = [kind for kind, _ in provider.log]
        assert kinds == ["enter", "exit", "enter"]  # never two connections at once
        assert [e["event"] for e in logs if e["event"] == "previous_connection_still_open"]
        await otpy.stop("sup")
        await wait_until(lambda: provider.open_connections == 0)  # the last close, too, ends in its own time

    async def test_the_turn_task_crashing_crashes_the_server(
        self, supervised: Start, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A provider bug (not a ProviderError) takes the server down with it: the supervisor restarts it."""
        provider = script(crash_turns=frozenset({1}), delay=0)
        await supervised(name="a", provider=provider)
        old = otpy.whereis("a")
        with pytest.raises(otpy.ServerExited) as info:
            await SessionServer.send_message("a", "one")
        assert isinstance(info.value.reason, sessions.ScriptedCrash)
        assert old is not None
        assert isinstance(old.exit_reason, sessions.ScriptedCrash)
        await restarted("a", old)
        assert (await SessionServer.send_message("a", "two")).turn == 2


# --- the property: kill at random points, nothing lost or counted twice, nothing left running --------------

Op = tuple[str, float]

ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["send", "send", "send", "kill", "crash", "interrupt", "exit", "rewind", "fork"]),
        st.floats(0, 3),
    ),
    min_size=1,
    max_size=14,
)

Rewinds = list[tuple[int, Any]]  # (to_turn, None when done or the exception the caller got)
Forks = list[tuple[str, int | None]]  # (the fork's id, at_turn)


async def rewind_soon(nursery: trio.Nursery, name: str, to_turn: int, rewinds: Rewinds) -> None:
    async def rewind() -> None:
        try:
            await SessionServer.rewind(name, to_turn)
            rewinds.append((to_turn, None))
        except (otpy.ServerExited, otpy.NoProcess, sessions.InvalidOption) as exc:
            rewinds.append((to_turn, exc))

    nursery.start_soon(rewind)
    await trio.sleep(0.001)


async def fork_now(store: sessions.Store, sid: str, at_turn: int | None, forks: Forks) -> None:
    """Fork the session as it is in the store now (its server may be mid-turn, dead or restarting)."""
    with contextlib.suppress(sessions.InvalidOption):  # at_turn beyond the turns there are
        forks.append((await SessionServer.fork(store, sid, at_turn=at_turn), at_turn))


def check_rewinds_and_forks(
    sid: str,
    records: list[sessions.Record],
    live: sessions.Session,
    provider: ScriptedProvider,
    rewinds: Rewinds,
    forks: dict[str, tuple[int | None, list[sessions.Record]]],
) -> None:
    """Rewinds and forks under kills: each rewind a caller saw done is in the log, and none that no
    caller asked for; each turn was sent the transcript the log says it continued from (so rewinds
    reach the provider, across restarts); each fork is a prefix of the source, written whole."""
    asked = collections.Counter(to_turn for to_turn, _ in rewinds)
    done = collections.Counter(to_turn for to_turn, outcome in rewinds if outcome is None)
    logged = collections.Counter(r.data["to_turn"] for r in records if r.kind == "session_rewound")
    assert done <= logged <= asked
    for to_turn, outcome in rewinds:  # every turn's end is in this log: only a turn not there yet is refused
        if isinstance(outcome, sessions.InvalidOption):
            assert "turns" in outcome.problem, outcome
            assert to_turn > 0
    for index, record in enumerate(records):
        if record.kind != "turn_started":
            continue
        sent = [request for request in provider.requests if request.turn == record.data["turn"]]
        if sent:  # (a server killed right after the turn_started record never sent it)
            assert sent[0].messages == fold(sid, records[:index]).session.messages
    ends = fold(sid, records)
    for fork_id, (at_turn, fork_records) in forks.items():
        assert [r.kind for r in fork_records] == ["session_started", "session_put"]
        forked = fold(fork_id, fork_records).session
        k = forked.turn_count
        assert fork_records[0].data["forked_from"] == {"session_id": sid, "at_turn": k}
        assert at_turn is None or k == at_turn
        assert forked.provider_session_id is None
        source = [attrs.evolve(r, session_id=fork_id) for r in live.history[:k]]
        assert list(forked.history[: k - 1]) == source[: k - 1]
        last = forked.history[-1] if k else None
        # the fork may have read the log while turn k ran: it closed it as a resumed server would,
        # with the messages the turn had written by then
        closed_by_the_fork = last is not None and (last.finish_reason, last.error) == (
            FinishReason.INTERRUPTED,
            OPEN_TURN_REASON,
        )
        if k and last != source[-1]:
            assert closed_by_the_fork
        elif at_turn is not None and not closed_by_the_fork:
            assert forked.messages == ends.transcript_at(k)


async def _scenario(ops: list[Op], crash_turns: frozenset[int]) -> None:
    store = sessions.InMemoryStore()
    provider = script(crash_turns=crash_turns)
    outcomes: list[Any] = []
    rewinds: Rewinds = []
    forks: Forks = []
    async with trio.open_nursery() as nursery:
        spec = SessionServer.child_spec(name="a", provider=provider, store=store)
        sid = spec.start.keywords["session_id"]  # type: ignore[attr-defined]
        sup = await otpy.Supervisor.start_link([spec], max_restarts=1000, max_seconds=1, nursery=nursery)
        async with trio.open_nursery() as senders:
            for n, (op, pause) in enumerate(ops):
                pid = otpy.whereis("a")
                if op == "send":
                    await send_soon(senders, "a", f"prompt {n}", outcomes)
                elif op == "rewind":
                    await rewind_soon(senders, "a", int(pause), rewinds)
                elif op == "fork":
                    await fork_now(store, sid, None if pause > 2.5 else int(pause), forks)
                elif pid is not None and op == "kill":
                    otpy.exit(pid, "kill")
                elif pid is not None and op == "exit":
                    otpy.exit(pid, "boom")
                elif pid is not None and op == "crash":
                    with contextlib.suppress(otpy.ServerExited, otpy.NoProcess):
                        await otpy.call(pid, "not a request")
                elif pid is not None and op == "interrupt":
                    with contextlib.suppress(otpy.ServerExited, otpy.NoProcess):
                        await SessionServer.interrupt(pid)
                await trio.sleep(pause)
        while True:  # the last kill may still be on its way
            await trio.sleep(1)
            try:
                live = await SessionServer.get_session("a")
                break
            except (otpy.ServerExited, otpy.NoProcess):
                continue
        records = await store.load(sid)
        folded = fold(sid, records)
        fork_logs = {fork_id: (at_turn, await store.load(fork_id)) for fork_id, at_turn in forks}
        await otpy.stop(sup)
        await trio.sleep(0.1)
        assert not nursery.child_tasks  # nothing of the tree is left running
    assert provider.open_connections == 0

    # the live server and the store agree
    assert folded.session == live
    assert folded.open_turn is None
    history = live.history
    # every turn that started has exactly one result, numbered without gaps
    assert [r.turn for r in history] == list(range(1, len(history) + 1))
    started = [r.data["turn"] for r in records if r.kind == "turn_started"]
    ended = [r.data["turn"] for r in records if r.kind in ("turn_finished", "turn_interrupted")]
    assert started == ended == [r.turn for r in history]
    # every result a caller got is in the history, unchanged
    for outcome in outcomes:
        if isinstance(outcome, Result):
            assert history[outcome.turn - 1] == outcome
    # nothing counted twice: the cost is the sum of the turns that completed
    assert live.total_cost == pytest.approx(sum(cost(r.turn) for r in history if r.finish_reason is FinishReason.STOP))
    for result in history:
        if result.finish_reason is FinishReason.STOP:
            assert result.cost_usd == cost(result.turn)
        else:
            assert result.cost_usd == 0
    # no turn was sent to the provider twice (an interrupted turn is never retried)
    assert all(count == 1 for count in collections.Counter(r.turn for r in provider.requests).values())
    # connections never overlapped
    kinds = [kind for kind, _ in provider.log]
    assert kinds == ["enter", "exit"] * (len(kinds) // 2)
    check_rewinds_and_forks(sid, records, live, provider, rewinds, fork_logs)


@hypothesis.settings(max_examples=200, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(ops=ops_strategy, crash_turns=st.frozensets(st.integers(1, 8), max_size=2))
def test_kills_at_random_points_lose_nothing_and_count_nothing_twice(
    ops: list[Op], crash_turns: frozenset[int]
) -> None:
    """Random sends, kills, crashes, interrupts, rewinds and forks over many turns: the store, the live
    server and the callers agree; each turn ends once; costs add up (rewinds refund nothing); each turn
    was sent the transcript its log says; forks are prefixes; no connection overlaps or is left open."""
    trio.run(_scenario, ops, crash_turns, clock=trio.testing.MockClock(autojump_threshold=0))


# --- the same property on the real stores, with kills landing around the end of a turn ---------------------


class KillTap(StoreTap):
    """A real store that can kill the session's server at one of its appends: just before the append
    of a record kind reaches the disk (the kill lands while the write is on its way, and the disk takes
    20 ms more just then) or just after it.

    It also checks, at every turn_finished append, that the server of the task appending it is alive:
    once a server has exited, its turn task begins no write."""

    def __init__(self, inner: sessions.Store, name: str = "a") -> None:
        super().__init__(inner)
        self.name = name  # the session's registered name
        self.armed: tuple[str, str] | None = None  # (record kind, "before" | "after")
        self.finished_by_dead_server: list[int] = []

    async def append(self, session_id: str, records: Any, *, durable: bool = False) -> None:
        kinds = {r.kind for r in records}
        answers = [r for r in records if r.kind == "message" and r.data["message"].get("role") == "assistant"]
        if any(r.data["message"].get("content") for r in answers):
            kinds.add("text")  # the turn's last message: its answer
        task = otpy.current_process()
        if task is None:  # a fork, made outside any process: the kill hits the source's server
            server = otpy.whereis(self.name)
        elif task is otpy.whereis(self.name):  # the server's own append (session_rewound)
            server = task
        else:  # the turn task's
            server = task.parent
        if "turn_finished" in kinds and server is not None and not server.alive:
            self.finished_by_dead_server.extend(r.data["turn"] for r in records if r.kind == "turn_finished")
        armed = self.armed
        if armed is None or armed[0] not in kinds or server is None or not server.alive:
            await self._write(session_id, records, durable)
            return
        self.armed = None
        target = server

        async def kill_on_the_way() -> None:
            otpy.exit(target, "kill")
            await trio.sleep(0.02)  # the disk is slow just then: the restart comes meanwhile

        await self._write(session_id, records, durable, kill_on_the_way if armed[1] == "before" else None)
        if armed[1] == "after":
            otpy.exit(target, "kill")


DurableOp = tuple[str, int]

durable_ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "send",
                "send",
                "send",
                "kill:message:before",
                "kill:text:before",
                "kill:text:after",
                "kill:turn_finished:before",
                "kill:turn_finished:after",
                "kill:turn_started:after",
                "kill",
                "crash",
                "interrupt",
            ]
        ),
        st.integers(0, 12),  # a pause, in milliseconds of real time (the disk's time is real)
    ),
    min_size=1,
    max_size=10,
)

durable_rewind_ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "send",
                "send",
                "send",
                "rewind",
                "rewind",
                "fork",
                "kill:session_rewound:before",
                "kill:session_rewound:after",
                "kill:session_put:before",  # a fork's records (the kill hits the source's server)
                "kill:session_put:after",
                "kill:text:before",
                "kill:turn_started:after",
                "kill",
                "interrupt",
            ]
        ),
        st.integers(0, 12),
    ),
    min_size=1,
    max_size=12,
)


async def _durable_scenario(kind: str, folder: Path, ops: list[DurableOp]) -> None:
    store = KillTap(open_store(kind, folder))
    provider = script(delay=0, pace=0)
    sent: list[tuple[str, Any]] = []  # (idempotency key, what the caller got)
    rewinds: Rewinds = []
    forks: Forks = []
    try:
        with structlog.testing.capture_logs() as logs, trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                spec = SessionServer.child_spec(name="a", provider=provider, store=store)
                sid = spec.start.keywords["session_id"]  # type: ignore[attr-defined]
                sup = await otpy.Supervisor.start_link([spec], max_restarts=1000, max_seconds=1, nursery=nursery)
                async with trio.open_nursery() as senders:
                    for n, (op, pause) in enumerate(ops):
                        pid = otpy.whereis("a")
                        if op == "send":
                            key = f"key-{n}"

                            async def send(key: str = key, n: int = n) -> None:
                                try:
                                    outcome: Any = await SessionServer.send_message(
                                        "a", f"prompt {n}", idempotency_key=key
                                    )
                                except (otpy.ServerExited, otpy.NoProcess) as exc:
                                    outcome = exc
                                sent.append((key, outcome))

                            senders.start_soon(send)
                        elif op == "rewind":  # to a turn that is there: one the callers saw done, or 0
                            acknowledged = sum(1 for _, outcome in sent if isinstance(outcome, Result))
                            await rewind_soon(senders, "a", pause % (acknowledged + 1), rewinds)
                        elif op == "fork":
                            await fork_now(store, sid, None if pause > 9 else pause % 4, forks)
                        elif op.startswith("kill:"):
                            _, record_kind, when = op.split(":")
                            store.armed = (record_kind, when)
                        elif pid is not None and op == "kill":
                            otpy.exit(pid, "kill")
                        elif pid is not None and op == "crash":
                            with contextlib.suppress(otpy.ServerExited, otpy.NoProcess):
                                await otpy.call(pid, "not a request")
                        elif pid is not None and op == "interrupt":
                            with contextlib.suppress(otpy.ServerExited, otpy.NoProcess):
                                await SessionServer.interrupt(pid)
                        await trio.sleep(pause / 1000)
                store.armed = None
                retried: dict[str, Result] = {}
                for key, outcome in sent:
                    if isinstance(outcome, Result):
                        continue
                    for _ in range(200):  # the last kill's restart may still be on its way
                        try:
                            retried[key] = await SessionServer.send_message("a", "again", idempotency_key=key)
                            break
                        except (otpy.ServerExited, otpy.NoProcess):
                            await trio.sleep(0.01)
                while True:
                    try:
                        live = await SessionServer.get_session("a")
                        break
                    except (otpy.ServerExited, otpy.NoProcess):
                        await trio.sleep(0.01)
                records = await store.load(sid)
                fork_logs = {fork_id: (at_turn, await store.load(fork_id)) for fork_id, at_turn in forks}
                await otpy.stop(sup)
    finally:
        await store.aclose()
    assert provider.open_connections == 0

    folded = fold(sid, records)
    assert folded.session == live
    assert folded.open_turn is None
    history = live.history
    assert [r.turn for r in history] == list(range(1, len(history) + 1))
    # no restart was refused, and no turn_finished was begun by a task whose server had exited
    refused = [e for e in logs if e["event"] == "child_start_failed" and e.get("reason") != "killed"]
    assert refused == []  # (a kill that lands on a server still in init is the scenario's own)
    assert store.finished_by_dead_server == []
    assert store.loads_while_writing == 0  # a restart loads the log only once the old task's write has landed
    # every acknowledged turn is in the history exactly once, unchanged
    acknowledged = [outcome for _, outcome in sent if isinstance(outcome, Result)]
    for result in acknowledged:
        assert history[result.turn - 1] == result
    assert len({r.turn for r in acknowledged}) == len(acknowledged)
    # a key names one turn: never two turns for one key; a retry answers with that turn's Result
    started = [r.data.get("idempotency_key") for r in records if r.kind == "turn_started"]
    keyed = [key for key in started if key is not None]
    assert len(keyed) == len(set(keyed))
    for key, result in retried.items():
        turn = live.idempotency_keys[key]
        assert history[turn - 1] == result
    # nothing counted twice: the cost is the sum of the turns that completed
    assert live.total_cost == pytest.approx(sum(cost(r.turn) for r in history if r.finish_reason is FinishReason.STOP))
    for result in history:
        assert result.cost_usd == (cost(result.turn) if result.finish_reason is FinishReason.STOP else 0)
    # no turn was sent to the provider twice, and connections never overlapped
    assert all(count == 1 for count in collections.Counter(r.turn for r in provider.requests).values())
    kinds = [kind for kind, _ in provider.log]
    assert kinds == ["enter", "exit"] * (len(kinds) // 2)
    check_rewinds_and_forks(sid, records, live, provider, rewinds, fork_logs)


def _run_durable(
    kind: str, strategy: st.SearchStrategy[list[DurableOp]], examples: tuple[list[DurableOp], ...] = ()
) -> None:
    @hypothesis.settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        suppress_health_check=[hypothesis.HealthCheck.too_slow],
        database=None,
    )
    @hypothesis.given(ops=strategy)
    def run(ops: list[DurableOp]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            trio.run(_durable_scenario, kind, Path(folder), ops)

    for example in examples:  # (programs that certainly reach the kills named in them)
        run = hypothesis.example(ops=example)(run)
    run()


REWIND_AND_FORK_KILLS = tuple(
    [("send", 0), ("send", 12), (f"kill:{record}:{when}", 0), (op, 1), ("send", 0), ("rewind", 0), ("fork", 2)]
    for record, op in (("session_rewound", "rewind"), ("session_put", "fork"))
    for when in ("before", "after")
)
""" A kill just before and just after a rewind's record and a fork's reaches the disk, each followed by
more turns, a rewind and a fork."""


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_kills_around_rewinds_and_forks_on_the_durable_stores(kind: str) -> None:
    """The durable property with rewinds and forks among the turns, and kills landing while a rewind's
    record (or a fork's) is on its way to the disk and just after: every rewind a caller saw done is
    in the log, each turn was sent the transcript its log says, every fork is a whole prefix."""
    _run_durable(kind, durable_rewind_ops_strategy, REWIND_AND_FORK_KILLS)


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_kills_around_the_end_of_a_turn_on_the_durable_stores(kind: str) -> None:
    """The property above on JsonlStore and SqliteStore (real files, real time), with kills landing
    while a turn's records are on their way to the disk and just after: every acknowledged turn once,
    no turn completed by a dead server's task, no restart refused, a key never runs two turns."""
    _run_durable(kind, durable_ops_strategy)
