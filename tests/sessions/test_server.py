"""SessionServer: turns, accessors, the queue, budgets, interrupt, subscribers, put_session."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import otpy
import sessions
from sessions import (
    EventsDropped,
    FinishReason,
    Result,
    ScriptedProvider,
    ScriptedReply,
    ScriptedTool,
    SessionServer,
    TextDelta,
    TurnFinished,
    TurnSnapshot,
    TurnStarted,
)

Start = Callable[..., Any]


async def wait_until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 (polling in virtual time, for conditions with no event)
        await trio.sleep(0.01)


async def send_in_background(nursery: trio.Nursery, server: Any, prompt: str, results: list[Any]) -> None:
    async def send() -> None:
        try:
            results.append(await SessionServer.send_message(server, prompt))
        except Exception as exc:
            results.append(exc)

    nursery.start_soon(send)
    await trio.sleep(0.001)  # the call reaches the server


class TestUsedBy:
    async def test_the_issue_snippet_runs_as_written(
        self, nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The issue's snippet, with a SqliteStore("agents.db"): messages by name, exact cost and turn count."""
        monkeypatch.chdir(tmp_path)
        provider = ScriptedProvider([ScriptedReply("Two files: a and b.", cost_usd=0.0123)])
        SqliteStore = sessions.SqliteStore
        children = [
            SessionServer.child_spec(name="my_agent", provider=provider, store=SqliteStore("agents.db"),
                                     query_opts={"model": "sonnet", "max_turns": 5}),
        ]  # fmt: skip
        sup = await otpy.Supervisor.start_link(children, strategy="one_for_one", nursery=nursery)
        result = await SessionServer.send_message("my_agent", "What files are here?")
        assert await SessionServer.total_cost("my_agent") == 0.0123  # exact, in USD
        assert await SessionServer.turn_count("my_agent") == 1
        assert result.text == "Two files: a and b."
        assert provider.requests[0].options == {"model": "sonnet", "max_turns": 5}
        await otpy.stop(sup)
        store = children[0].start.keywords["store"]  # type: ignore[attr-defined]
        assert [r.kind for r in await store.load(result.session_id)][-1] == "turn_finished"
        await store.aclose()
        assert (tmp_path / "agents.db").exists()


class TestTurns:
    async def test_a_turn_returns_its_result_and_updates_the_accessors(self, supervised: Start) -> None:
        """send_message returns the Result; history, messages, cost, usage and status follow."""
        reply = ScriptedReply(
            "It is sunny.",
            cost_usd=0.5,
            usage=sessions.Usage(10, 5),
            tools=(ScriptedTool("weather", {"city": "Oslo"}, result="sunny"),),
            provider_session_id="native-7",
        )
        await supervised(name="a", provider=ScriptedProvider([reply, "Bye."]), session_id="sid-a")
        result = await SessionServer.send_message("a", "Weather?")
        assert result.turn == 1
        assert result.session_id == "sid-a"
        assert result.provider_session_id == "native-7"
        assert result.provider == "scripted"
        assert not result.is_error
        assert [c.name for c in result.tool_calls] == ["weather"]
        await SessionServer.send_message("a", "Thanks")
        assert await SessionServer.session_id("a") == "sid-a"
        assert [r.turn for r in await SessionServer.history("a")] == [1, 2]
        last = await SessionServer.last_result("a")
        assert last is not None
        assert last.text == "Bye."
        assert await SessionServer.total_cost("a") == 0.5
        assert await SessionServer.turn_count("a") == 2
        assert await SessionServer.usage("a") == sessions.Usage(10, 5)
        roles = [m.role for m in await SessionServer.messages("a")]
        assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant"]
        status = await SessionServer.status("a")
        assert (status.state, status.turn_count, status.provider_session_id) == ("idle", 2, "native-7")

    async def test_overrides_merge_over_query_opts(self, supervised: Start) -> None:
        """Per-turn keyword arguments override query_opts for that turn only."""
        provider = ScriptedProvider()
        await supervised(name="a", provider=provider, query_opts={"model": "sonnet", "effort": "low"})
        await SessionServer.send_message("a", "one", model="haiku")
        await SessionServer.send_message("a", "two")
        assert [r.options for r in provider.requests] == [
            {"model": "haiku", "effort": "low"},
            {"model": "sonnet", "effort": "low"},
        ]

    async def test_the_request_carries_the_transcript_before_the_turn(self, supervised: Start) -> None:
        """TurnRequest.messages is the transcript before this turn's prompt."""
        provider = ScriptedProvider(["first"])
        await supervised(name="a", provider=provider)
        await SessionServer.send_message("a", "one")
        await SessionServer.send_message("a", "two")
        assert [m.content for m in provider.requests[1].messages] == ["one", "first"]

    async def test_an_error_turn_is_a_result_not_an_exception(self, supervised: Start) -> None:
        """A provider-reported failure comes back as an error Result, and counts as a turn."""
        provider = ScriptedProvider([ScriptedReply(error="overloaded", api_error_status=529, cost_usd=0.1)])
        await supervised(name="a", provider=provider)
        result = await SessionServer.send_message("a", "hi")
        assert (result.is_error, result.finish_reason, result.error) == (
            True,
            FinishReason.PROVIDER_ERROR,
            "overloaded",
        )
        assert result.api_error_status == 529
        assert await SessionServer.turn_count("a") == 1
        assert await SessionServer.total_cost("a") == 0.1

    async def test_a_provider_error_fails_the_turn_and_reconnects(self, supervised: Start) -> None:
        """A raised ProviderError is an error Result; the connection is left and made again."""
        error = sessions.ProviderUnavailable("scripted", "the CLI died", kind="process_exited")
        provider = ScriptedProvider([ScriptedReply("partial", raise_=error), "fine"])
        await supervised(name="a", provider=provider)
        failed = await SessionServer.send_message("a", "one")
        assert failed.is_error
        assert failed.finish_reason is FinishReason.PROVIDER_ERROR
        assert failed.error == "scripted: the CLI died"
        assert failed.extra == {"error_kind": "process_exited", "retryable": False}
        assert failed.text == "partial"
        ok = await SessionServer.send_message("a", "two")
        assert (ok.turn, ok.text) == (2, "fine")
        assert [kind for kind, _ in provider.log] == ["enter", "exit", "enter"]
        # the partial text joined the transcript, so the next turn's provider sees it
        assert [m.content for m in provider.requests[1].messages] == ["one", "partial"]

    async def test_a_failed_connect_is_reported_on_the_next_turn(self, supervised: Start) -> None:
        """If connect fails, the session lives; the next turn tries again and reports the failure."""
        provider = ScriptedProvider(connect_error=sessions.ProviderAuthError("scripted", "bad key"))
        await supervised(name="a", provider=provider)
        result = await SessionServer.send_message("a", "hi")
        assert result.is_error
        assert result.error == "scripted: bad key"
        provider.connect_error = None
        assert (await SessionServer.send_message("a", "again")).text == "You said: again"
        assert await SessionServer.turn_count("a") == 2

    async def test_a_turn_ending_without_turn_completed_is_a_provider_error(self, supervised: Start) -> None:
        """A run_turn that stops without TurnCompleted gives an error Result."""

        class Silent(ScriptedProvider):
            def reply_for(self, request: sessions.TurnRequest) -> ScriptedReply:
                return ScriptedReply("x", raise_=None, crash_after=None)

        provider = Silent()

        async def no_end(request: sessions.TurnRequest) -> Any:
            yield TextDelta("x")

        original = sessions.ScriptedSession.run_turn
        try:
            sessions.ScriptedSession.run_turn = lambda self, request: no_end(request)  # type: ignore[method-assign]
            await supervised(name="a", provider=provider)
            result = await SessionServer.send_message("a", "hi")
        finally:
            sessions.ScriptedSession.run_turn = original  # type: ignore[method-assign]
        assert result.is_error
        assert "without a TurnCompleted" in (result.error or "")

    async def test_turn_timeout(self, supervised: Start, autojump_clock: trio.testing.MockClock) -> None:
        """A turn longer than turn_timeout ends with FinishReason.TIMEOUT; the session goes on."""
        provider = ScriptedProvider([ScriptedReply("slow", delay=100, ignore_interrupt=True), "quick"])
        await supervised(name="a", provider=provider, turn_timeout=5)
        result = await SessionServer.send_message("a", "one")
        assert (result.finish_reason, result.is_error) == (FinishReason.TIMEOUT, True)
        assert result.duration_s == pytest.approx(5)
        assert (await SessionServer.send_message("a", "two")).text == "quick"

    async def test_no_call_timeout_cuts_a_long_turn(
        self, supervised: Start, autojump_clock: trio.testing.MockClock
    ) -> None:
        """send_message waits as long as the turn takes (no 5 s call timeout)."""
        await supervised(name="a", provider=ScriptedProvider([ScriptedReply("late", delay=600)]))
        result = await SessionServer.send_message("a", "hi")
        assert result.text == "late"
        assert result.duration_s == pytest.approx(600)


class TestResponsiveness:
    async def test_calls_answer_at_once_mid_turn(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """total_cost, status, subscribe and interrupt answer while a turn runs."""
        await supervised(name="a", provider=ScriptedProvider([ScriptedReply("slow", delay=100)]))
        results: list[Any] = []
        await send_in_background(nursery, "a", "hi", results)
        await trio.sleep(1)
        before = trio.current_time()
        assert await SessionServer.total_cost("a") == 0.0
        status = await SessionServer.status("a")
        assert (status.state, status.turn) == ("running", 1)
        assert status.turn_elapsed == pytest.approx(1, abs=0.01)
        subscription = await SessionServer.subscribe("a")
        assert trio.current_time() == before  # no virtual time passed: nothing waited for the turn
        assert await SessionServer.interrupt("a") is True
        await wait_until(lambda: bool(results))
        assert results[0].finish_reason is FinishReason.INTERRUPTED
        subscription.close()

    async def test_queued_turns_run_in_order_and_a_full_queue_refuses(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A send during a turn waits in the queue; past max_queued_turns it raises SessionBusy."""
        provider = ScriptedProvider(default=lambda req: ScriptedReply(f"answer {req.prompt}", delay=10))
        await supervised(name="a", provider=provider, max_queued_turns=2)
        results: list[Any] = []
        for prompt in ("1", "2", "3"):
            await send_in_background(nursery, "a", prompt, results)
        with pytest.raises(sessions.SessionBusy) as info:
            await SessionServer.send_message("a", "4")
        assert info.value.queued == 2
        assert (await SessionServer.status("a")).queued == 2
        await wait_until(lambda: len(results) == 3)
        assert [(r.turn, r.text) for r in results] == [(1, "answer 1"), (2, "answer 2"), (3, "answer 3")]

    async def test_a_queued_turn_whose_caller_gave_up_is_not_run(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A caller cancelled while its turn waits in the queue takes the turn with it."""
        provider = ScriptedProvider(default=lambda req: ScriptedReply("ok", delay=10))
        await supervised(name="a", provider=provider)
        results: list[Any] = []
        await send_in_background(nursery, "a", "first", results)
        with trio.move_on_after(1):
            await SessionServer.send_message("a", "abandoned")
        await wait_until(lambda: bool(results))
        await SessionServer.send_message("a", "third")
        assert [r.prompt for r in provider.requests] == ["first", "third"]
        assert await SessionServer.turn_count("a") == 2


class TestInterrupt:
    async def test_interrupt_keeps_the_session(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An interrupted turn returns INTERRUPTED with the text so far; the next turn runs normally."""
        provider = ScriptedProvider([ScriptedReply("a b c d e", delta_delay=1), "next"])
        await supervised(name="a", provider=provider)
        results: list[Any] = []
        await send_in_background(nursery, "a", "one", results)
        await trio.sleep(2.5)
        assert await SessionServer.interrupt("a")
        await wait_until(lambda: bool(results))
        [result] = results
        assert (result.finish_reason, result.is_error, result.text) == (FinishReason.INTERRUPTED, True, "a b c ")
        assert trio.current_time() == pytest.approx(2.5, abs=0.1)  # the provider stopped at once
        assert (await SessionServer.send_message("a", "two")).text == "next"
        assert [kind for kind, _ in provider.log] == ["enter"]  # the same connection throughout

    async def test_a_provider_that_ignores_interrupt_is_cancelled_after_the_grace(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """interrupt_grace later the turn is cancelled; the partial text is kept in the transcript."""
        provider = ScriptedProvider([ScriptedReply("a b c d e f", delta_delay=1, ignore_interrupt=True)])
        await supervised(name="a", provider=provider, interrupt_grace=2)
        results: list[Any] = []
        await send_in_background(nursery, "a", "one", results)
        await trio.sleep(1.5)
        await SessionServer.interrupt("a")
        assert (await SessionServer.status("a")).state == "interrupting"
        await wait_until(lambda: bool(results))
        assert results[0].finish_reason is FinishReason.INTERRUPTED
        assert results[0].duration_s == pytest.approx(3.5, abs=0.01)
        assert results[0].text == "a b c d "
        assert [m.content for m in await SessionServer.messages("a")] == ["one", "a b c d "]

    async def test_an_interrupt_before_the_turn_reaches_the_provider(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Interrupted while its turn_started record is being written: the turn ends as soon as it starts."""
        gate = trio.Event()

        class GatedStore(sessions.InMemoryStore):
            async def append(self, session_id: str, records: Any, *, durable: bool = False) -> None:
                if records[0].kind == "turn_started":
                    await gate.wait()
                await super().append(session_id, records, durable=durable)

        provider = ScriptedProvider([ScriptedReply("slow", delay=100, ignore_interrupt=True)])
        await supervised(name="a", provider=provider, store=GatedStore(), interrupt_grace=50)
        results: list[Any] = []
        await send_in_background(nursery, "a", "one", results)
        assert await SessionServer.interrupt("a")
        gate.set()
        await wait_until(lambda: bool(results))
        assert results[0].finish_reason is FinishReason.INTERRUPTED
        assert results[0].duration_s < 1

    async def test_interrupt_when_idle_is_false(self, supervised: Start) -> None:
        """Nothing to interrupt: False."""
        await supervised(name="a", provider=ScriptedProvider())
        assert await SessionServer.interrupt("a") is False


class TestBudgets:
    async def test_max_turns(self, supervised: Start) -> None:
        """Past max_turns, send_message raises BudgetExceeded and starts no turn."""
        provider = ScriptedProvider()
        await supervised(name="a", provider=provider, max_turns=2)
        await SessionServer.send_message("a", "1")
        await SessionServer.send_message("a", "2")
        with pytest.raises(sessions.BudgetExceeded) as info:
            await SessionServer.send_message("a", "3")
        assert (info.value.kind, info.value.limit, info.value.spent) == ("turns", 2, 2)
        assert len(provider.requests) == 2

    async def test_max_cost_checked_before_each_queued_turn(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A queued turn is refused if the turns before it spent the budget."""
        provider = ScriptedProvider(default=ScriptedReply("x", cost_usd=0.6, delay=1))
        await supervised(name="a", provider=provider, max_cost_usd=1.0)
        results: list[Any] = []
        for prompt in ("1", "2", "3"):
            await send_in_background(nursery, "a", prompt, results)
        await wait_until(lambda: len(results) == 3)
        refused = [r for r in results if isinstance(r, sessions.BudgetExceeded)]
        assert [r.turn for r in results if isinstance(r, Result)] == [1, 2]
        assert [r.kind for r in refused] == ["cost"]
        assert await SessionServer.total_cost("a") == 1.2

    async def test_budgets_survive_a_restart(self, supervised: Start) -> None:
        """The spent budget is rebuilt from the store: a restarted session is still over it."""
        await supervised(name="a", provider=ScriptedProvider(default=ScriptedReply("x", cost_usd=1.0)), max_cost_usd=1)
        await SessionServer.send_message("a", "1")
        first = otpy.whereis("a")
        assert first is not None
        otpy.exit(first, "kill")
        await wait_until(lambda: otpy.whereis("a") not in (None, first))
        with pytest.raises(sessions.BudgetExceeded):
            await SessionServer.send_message("a", "2")


class TestSubscribers:
    async def test_a_subscriber_sees_the_turn(self, supervised: Start, nursery: trio.Nursery) -> None:
        """TurnStarted, the provider's events, then TurnFinished with the Result."""
        reply = ScriptedReply("a b", tools=(ScriptedTool("t", result="r"),))
        await supervised(name="a", provider=ScriptedProvider([reply]), session_id="s")
        events = await SessionServer.subscribe("a")
        result = await SessionServer.send_message("a", "go")
        seen = [events._inner.buffer.popleft() for _ in range(len(events._inner.buffer))]
        assert [type(e).__name__ for e in seen] == [
            "TurnStarted",
            "ToolCallRequested",
            "MessageAdded",
            "ToolCallFinished",
            "MessageAdded",
            "TextDelta",
            "TextDelta",
            "MessageAdded",
            "TurnFinished",
        ]
        assert seen[0] == TurnStarted(session_id="s", turn=1, prompt="go")
        assert seen[-1] == TurnFinished(result)
        events.close()

    async def test_many_subscribers_iterate_until_the_server_stops(
        self, supervised: Start, nursery: trio.Nursery
    ) -> None:
        """Each subscriber gets every event; iteration ends when the server exits."""
        await supervised(name="a", provider=ScriptedProvider(["one two"]), restart="temporary")
        got: dict[int, list[Any]] = {0: [], 1: []}

        async def consume(n: int, subscription: sessions.Subscription) -> None:
            async for event in subscription:
                got[n].append(event)

        for n in got:
            nursery.start_soon(consume, n, await SessionServer.subscribe("a"))
        await SessionServer.send_message("a", "hi")
        await SessionServer.stop("a")
        await wait_until(lambda: len(got[0]) == 5 and len(got[1]) == 5)
        assert got[0] == got[1]
        assert isinstance(got[0][-1], TurnFinished)

    async def test_a_killed_server_ends_its_subscriptions(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A subscription of a server that was killed (no terminate) ends: its turn task closes it."""
        await supervised(name="a", provider=ScriptedProvider(), restart="temporary")
        events = await SessionServer.subscribe("a")
        pid = otpy.whereis("a")
        assert pid is not None
        otpy.exit(pid, "kill")
        with trio.fail_after(1):
            assert [event async for event in events] == []
        assert events.closed

    async def test_a_late_subscriber_gets_a_snapshot_first(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Joining mid-turn: a TurnSnapshot of the text and messages so far, then live events."""
        reply = ScriptedReply("a b c d", delta_delay=1, tools=(ScriptedTool("t", result="r"),))
        await supervised(name="a", provider=ScriptedProvider([reply]), session_id="s")
        results: list[Any] = []
        await send_in_background(nursery, "a", "go", results)
        await trio.sleep(1.5)
        events = await SessionServer.subscribe("a")
        first = await events.receive()
        assert isinstance(first, TurnSnapshot)
        assert (first.turn, first.prompt, first.text) == (1, "go", "a b ")
        assert [m.role for m in first.messages] == ["assistant", "tool"]
        rest = [await events.receive() for _ in range(4)]
        assert rest[:2] == [TextDelta("c "), TextDelta("d")]
        assert isinstance(rest[3], TurnFinished)
        events.close()

    async def test_overflow_drops_deltas_first_and_says_so(self, supervised: Start, nursery: trio.Nursery) -> None:
        """A full buffer drops deltas (incoming, then oldest), then old events; EventsDropped tells how many."""
        words = " ".join(str(n) for n in range(20))
        await supervised(name="a", provider=ScriptedProvider([words]))
        events = await SessionServer.subscribe("a", buffer=4)
        await SessionServer.send_message("a", "go")  # 1 + 20 deltas + message + finish = 23 events
        got = [await events.receive() for _ in range(5)]
        assert got[0] == EventsDropped(19)
        assert [type(e).__name__ for e in got[1:]] == ["TurnStarted", "TextDelta", "MessageAdded", "TurnFinished"]
        assert got[2] == TextDelta("2 ")  # 0 and 1 were evicted for the message and the finish
        assert events.dropped == 19
        events.close()

    async def test_a_slow_subscriber_never_blocks_the_session(self, supervised: Start) -> None:
        """With a subscriber that never reads, turns still complete."""
        await supervised(name="a", provider=ScriptedProvider(default=" ".join("x" * 100)))
        events = await SessionServer.subscribe("a", buffer=1)
        for n in range(5):
            assert (await SessionServer.send_message("a", str(n))).turn == n + 1
        assert events.dropped > 500
        events.close()

    async def test_closed_and_forgotten_subscribers_are_dropped(self, supervised: Start) -> None:
        """close(), garbage collection, or the subscribing process's exit removes a subscriber."""
        await supervised(name="a", provider=ScriptedProvider())
        closed = await SessionServer.subscribe("a")
        forgotten = await SessionServer.subscribe("a")
        kept = await SessionServer.subscribe("a")
        assert (await SessionServer.status("a")).subscribers == 3
        closed.close()
        del forgotten
        gc.collect()
        assert (await SessionServer.status("a")).subscribers == 1
        kept.close()

    async def test_a_subscribing_process_that_exits_is_dropped(self, supervised: Start, nursery: trio.Nursery) -> None:
        """A subscription taken by an otpy process is dropped when that process exits."""
        await supervised(name="a", provider=ScriptedProvider())
        holder: list[sessions.Subscription] = []

        async def subscribe() -> None:
            holder.append(await SessionServer.subscribe("a"))

        task = otpy.Task.async_(subscribe, nursery=nursery)
        await task.await_()
        await otpy.get_state("a")  # the Down has been handled
        assert (await SessionServer.status("a")).subscribers == 0
        assert holder[0].closed

    async def test_after_a_restart_the_interrupted_turn_is_reported_to_subscribers(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A subscriber joining a restarted session before its next turn gets the interrupted turn's TurnFinished."""
        await supervised(name="a", provider=ScriptedProvider([ScriptedReply("slow", delay=10)]))
        results: list[Any] = []
        await send_in_background(nursery, "a", "hi", results)
        await trio.sleep(1)
        first = otpy.whereis("a")
        assert first is not None
        otpy.exit(first, "kill")
        await wait_until(lambda: otpy.whereis("a") not in (None, first))
        events = await SessionServer.subscribe("a")
        event = await events.receive()
        assert isinstance(event, TurnFinished)
        assert (event.result.turn, event.result.finish_reason) == (1, FinishReason.INTERRUPTED)
        assert isinstance(results[0], otpy.ServerExited)
        events.close()


class TestSessionValue:
    async def test_get_and_put_session(self, supervised: Start) -> None:
        """put_session replaces the state durably; the provider is reconnected with the new transcript."""
        store = sessions.InMemoryStore()
        provider = ScriptedProvider(default=ScriptedReply("x", cost_usd=0.5))
        await supervised(name="a", provider=provider, store=store, session_id="s")
        await SessionServer.send_message("a", "1")
        await SessionServer.send_message("a", "2")
        session = await SessionServer.get_session("a")
        trimmed = attrs.evolve(session, messages=session.messages[-2:], history=session.history[-1:])
        await SessionServer.put_session("a", trimmed)
        assert await SessionServer.get_session("a") == trimmed
        assert await SessionServer.total_cost("a") == 0.5
        result = await SessionServer.send_message("a", "3")
        assert result.turn == 2
        assert provider.contexts[-1].messages == trimmed.messages
        assert [kind for kind, _ in provider.log] == ["enter", "exit", "enter"]
        records = await store.load("s")
        assert "session_put" in [r.kind for r in records]

    async def test_put_session_waits_for_the_running_turn(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A put_session sent mid-turn is applied after the turn (and the turns queued before it)."""
        provider = ScriptedProvider(default=ScriptedReply("x", delay=10))
        await supervised(name="a", provider=provider, session_id="s")
        results: list[Any] = []
        await send_in_background(nursery, "a", "one", results)
        empty = sessions.Session(session_id="s")
        await SessionServer.put_session("a", empty)
        assert trio.current_time() == pytest.approx(10, abs=0.1)
        assert [r.turn for r in results] == [1]
        assert await SessionServer.get_session("a") == empty
        assert (await SessionServer.send_message("a", "two")).turn == 1  # a fresh history numbers from 1

    async def test_put_session_of_another_id_is_refused(self, supervised: Start) -> None:
        """A Session of another session id is an InvalidOption."""
        await supervised(name="a", provider=ScriptedProvider(), session_id="s")
        with pytest.raises(sessions.InvalidOption):
            await SessionServer.put_session("a", sessions.Session(session_id="other"))


class TestConfiguration:
    def test_child_spec_makes_the_session_id_once(self) -> None:
        """child_spec generates a session id (and a store) once, so every restart is the same session."""
        spec = SessionServer.child_spec(name="a", provider=ScriptedProvider())
        kwargs = spec.start.keywords  # type: ignore[attr-defined]
        assert isinstance(kwargs["session_id"], str)
        assert len(kwargs["session_id"]) >= 16
        assert isinstance(kwargs["store"], sessions.InMemoryStore)
        assert spec.id == "a"
        assert spec.shutdown == 15.0

    @pytest.mark.parametrize(
        ("options", "option"),
        [
            ({"provider": object()}, "provider"),
            ({"provider": ScriptedProvider(), "max_queued_turns": -1}, "max_queued_turns"),
            ({"provider": ScriptedProvider(), "max_cost_usd": "a lot"}, "max_cost_usd"),
            ({"provider": ScriptedProvider(), "store": "agents.db"}, "store"),
            ({"provider": ScriptedProvider(), "query_opts": ["model"]}, "query_opts"),
            ({"provider": ScriptedProvider(), "session_id": ""}, "session_id"),
            ({"provider": ScriptedProvider(), "colour": "blue"}, "colour"),
        ],
    )
    def test_bad_options_are_refused_early(self, options: dict[str, Any], option: str) -> None:
        """A malformed option raises InvalidOption from child_spec, naming it."""
        with pytest.raises(sessions.InvalidOption) as info:
            SessionServer.child_spec(name="a", **options)
        assert info.value.option == option

    async def test_a_model_provider_needs_the_agent_loop(self, nursery: trio.Nursery) -> None:
        """A ModelProvider is wrapped in sessions.AgentLoop; without it the start fails clearly."""

        class Model:
            name = "model"

            async def chat(self, messages: Any, tools: Any, options: Any) -> Any:  # pragma: no cover
                yield None

        try:
            import sessions._loop
        except ImportError:
            with pytest.raises(otpy.StartError) as info:
                await SessionServer.start_link(provider=Model(), nursery=nursery)
            assert isinstance(info.value.reason, sessions.InvalidOption)
            assert "AgentLoop" in str(info.value.reason)
        else:
            pid = await SessionServer.start_link(provider=Model(), nursery=nursery)
            await SessionServer.stop(pid)

    async def test_start_link_with_a_via_name(self, nursery: trio.Nursery) -> None:
        """Client functions take a via name; start_link without session_id makes one."""
        registry = await otpy.Registry.start_link(keys="unique", name="reg", nursery=nursery)
        name = otpy.via(registry, "agent-1")
        await SessionServer.start_link(name=name, provider=ScriptedProvider(), nursery=nursery)
        assert (await SessionServer.send_message(name, "hi")).text == "You said: hi"
        assert await SessionServer.session_id(name)
        await SessionServer.stop(name)

    async def test_send_message_needs_a_str(self, supervised: Start) -> None:
        """A prompt that is not a str is refused before any call."""
        await supervised(name="a", provider=ScriptedProvider())
        with pytest.raises(sessions.InvalidOption):
            await SessionServer.send_message("a", 42)  # type: ignore[arg-type]

    async def test_tree_status_shows_turns_and_cost(self, supervised: Start) -> None:
        """The session's line in otpy.tree() carries its state, turns and cost."""
        await supervised(name="a", provider=ScriptedProvider(default=ScriptedReply("x", cost_usd=0.25)))
        await SessionServer.send_message("a", "1")
        node = otpy.tree("sup").find("a")
        assert node is not None
        assert node.info == "idle, 1 turn, $0.2500"
        await SessionServer.send_message("a", "2")
        assert otpy.tree("sup").find("a").info == "idle, 2 turns, $0.5000"  # type: ignore[union-attr]

    async def test_tree_status_shows_tokens_when_the_price_is_unknown(self, supervised: Start) -> None:
        """A provider with tokens but no prices (OpenAI-compatible, Ollama) shows tokens, not $0.0000."""
        reply = ScriptedReply("x", usage=sessions.Usage(input_tokens=200, output_tokens=30))
        await supervised(name="a", provider=ScriptedProvider(default=reply))
        await SessionServer.send_message("a", "1")
        node = otpy.tree("sup").find("a")
        assert node is not None
        assert node.info == "idle, 1 turn, 230 tokens, price unknown"

    def test_public_names(self) -> None:
        """The server section's names are exported from sessions."""
        for name in ("SessionServer", "Session", "SessionStatus", "Subscription", "ScriptedProvider", "ScriptedReply"):
            assert getattr(sessions, name).__module__ == "sessions"


class _SlowClose:
    """A provider whose event stream, when closed, waits three times in its clean-up (a
    transport that drains its connection); ``closed`` counts the clean-ups that ended."""

    name = "slow-close"
    runs_own_tools = True

    def __init__(self) -> None:
        self.closed = 0
        self.steps = 0

    @contextlib.asynccontextmanager
    async def connect(self, ctx: sessions.SessionContext) -> AsyncIterator[_SlowClose]:
        yield self

    async def run_turn(self, request: sessions.TurnRequest) -> AsyncIterator[sessions.ProviderEvent]:
        try:
            yield sessions.TextDelta("hi")
            yield sessions.TurnCompleted(text="hi")
            yield sessions.TextDelta("never taken")
        finally:
            for _ in range(3):
                await trio.sleep(1)
                self.steps += 1
            self.closed += 1

    async def interrupt(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_stream_whose_close_waits_is_closed_to_its_end(supervised: Start, autojump_clock: Any) -> None:
    """The turn's stream, left at its TurnCompleted, is closed before the turn's result is
    written: a clean-up that waits goes on, step by step, to its end (a shortcut that began
    the close outside its cancel scope broke trio's scope nesting here)."""
    provider = _SlowClose()
    await supervised(name="a", provider=provider)
    start = trio.current_time()
    for turn in (1, 2):
        result = await SessionServer.send_message("a", str(turn))
        assert (result.text, provider.steps, provider.closed) == ("hi", 3 * turn, turn)
    assert trio.current_time() - start == 6
