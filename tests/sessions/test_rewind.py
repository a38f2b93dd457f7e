"""SessionServer.rewind: the next turn continues from an earlier point, by an appended record.

The log keeps everything; `Session.messages` is the rewound transcript; `Session.history`
keeps every turn that ran, so budgets, costs and turn numbers go on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio

import otpy
import sessions
from sessions import FinishReason, Message, Record, Result, ScriptedProvider, ScriptedReply, SessionServer
from sessions._session import fold

Start = Callable[..., Any]


@pytest.fixture(params=["memory", "jsonl", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[sessions.Store]:
    """A real store of each kind, closed at the end."""
    match request.param:
        case "memory":
            opened: sessions.Store = sessions.InMemoryStore()
        case "jsonl":
            opened = sessions.JsonlStore(tmp_path / "logs")
        case _:
            opened = sessions.SqliteStore(tmp_path / "s.db")
    yield opened
    await opened.aclose()


def echo(cost: float = 0.25) -> ScriptedProvider:
    """Each turn answers "re: <prompt>" and costs ``cost``; it reports a provider session id."""

    def reply(request: sessions.TurnRequest) -> ScriptedReply:
        return ScriptedReply(f"re: {request.prompt}", cost_usd=cost, provider_session_id=f"native-{request.turn}")

    return ScriptedProvider(default=reply)


def contents(messages: Any) -> list[str]:
    return [m.content for m in messages]


class TestRewind:
    async def test_the_next_turn_continues_from_the_rewound_point(
        self, store: sessions.Store, supervised: Start
    ) -> None:
        """After rewind(1), the provider sees turn 1's transcript only; history, cost and turn
        numbers keep everything that was spent; the log keeps the rewound turns."""
        provider = echo()
        await supervised(name="a", provider=provider, store=store, session_id="s")
        for prompt in ("one", "two", "three"):
            await SessionServer.send_message("a", prompt)
        before = await store.load("s")
        await SessionServer.rewind("a", 1)
        assert contents(await SessionServer.messages("a")) == ["one", "re: one"]
        assert await SessionServer.turn_count("a") == 3
        assert await SessionServer.total_cost("a") == 0.75
        assert await SessionServer.provider_session_id("a") is None
        result = await SessionServer.send_message("a", "four")
        assert result.turn == 4
        assert contents(provider.requests[-1].messages) == ["one", "re: one"]
        assert provider.contexts[-1].provider_session_id is None  # reconnected, the native session dropped
        assert contents(provider.contexts[-1].messages) == ["one", "re: one"]
        session = await SessionServer.get_session("a")
        assert [r.turn for r in session.history] == [1, 2, 3, 4]
        assert session.total_cost == 1.0
        assert contents(session.messages) == ["one", "re: one", "four", "re: four"]
        records = await store.load("s")
        assert records[: len(before)] == before  # appended, never rewritten
        rewound = records[len(before)]
        assert (rewound.kind, rewound.data) == ("session_rewound", {"to_turn": 1})
        # load, and a restart, fold the same session
        assert await SessionServer.load(store, "s") == session
        assert fold("s", records).session == session

    async def test_a_rewind_survives_a_restart(self, store: sessions.Store, supervised: Start) -> None:
        """A server restarted after a rewind starts from the rewound transcript (the record is durable)."""
        provider = echo()
        await supervised(name="a", provider=provider, store=store, session_id="s")
        for prompt in ("one", "two"):
            await SessionServer.send_message("a", prompt)
        await SessionServer.rewind("a", 0)
        rewound = await SessionServer.get_session("a")
        old = otpy.whereis("a")
        assert old is not None
        otpy.exit(old, "kill")
        with trio.fail_after(10):
            while otpy.whereis("a") in (None, old):  # noqa: ASYNC110 (waiting for the supervisor)
                await trio.sleep(0.01)
        assert await SessionServer.get_session("a") == rewound
        assert rewound.messages == ()
        result = await SessionServer.send_message("a", "fresh")
        assert result.turn == 3
        assert contents(provider.requests[-1].messages) == []

    async def test_any_turn_in_the_log_can_be_the_target_even_one_rewound_over(self, supervised: Start) -> None:
        """Rewinding back to a turn that an earlier rewind went back over restores that turn's transcript."""
        provider = echo()
        await supervised(name="a", provider=provider, session_id="s")
        for prompt in ("one", "two", "three"):
            await SessionServer.send_message("a", prompt)
        await SessionServer.rewind("a", 1)
        await SessionServer.send_message("a", "four")
        await SessionServer.rewind("a", 3)  # undo: back to the end of turn 3, before the first rewind
        assert contents(await SessionServer.messages("a")) == ["one", "re: one", "two", "re: two", "three", "re: three"]
        await SessionServer.rewind("a", 4)  # and to the end of turn 4, on the other branch
        assert contents(await SessionServer.messages("a")) == ["one", "re: one", "four", "re: four"]
        assert await SessionServer.turn_count("a") == 4

    async def test_rewind_to_zero_goes_back_to_the_seed(self, supervised: Start) -> None:
        """to_turn=0 is the session's start: the messages= seed's transcript, if it was seeded."""
        provider = echo()
        seed = [Message("user", "My name is Ada."), Message("assistant", "Hello, Ada.")]
        await supervised(name="a", provider=provider, session_id="s", messages=seed)
        await SessionServer.send_message("a", "one")
        await SessionServer.rewind("a", 0)
        assert await SessionServer.messages("a") == seed

    async def test_the_budget_keeps_counting_what_was_spent(self, supervised: Start) -> None:
        """max_turns and max_cost_usd count the rewound turns: a rewind is not a refund."""
        await supervised(name="a", provider=echo(cost=0.5), session_id="s", max_turns=2)
        await SessionServer.send_message("a", "one")
        await SessionServer.send_message("a", "two")
        await SessionServer.rewind("a", 0)
        with pytest.raises(sessions.BudgetExceeded):
            await SessionServer.send_message("a", "three")
        assert await SessionServer.total_cost("a") == 1.0

    async def test_an_idempotency_key_of_a_rewound_turn_still_answers_for_it(self, supervised: Start) -> None:
        """A key names one turn for the session's life, even after a rewind went back over it."""
        provider = echo()
        await supervised(name="a", provider=provider, session_id="s")
        first = await SessionServer.send_message("a", "one", idempotency_key="k1")
        await SessionServer.send_message("a", "two")
        await SessionServer.rewind("a", 0)
        again = await SessionServer.send_message("a", "one", idempotency_key="k1")
        assert again == first
        assert [r.turn for r in provider.requests] == [1, 2]  # never run twice

    async def test_it_waits_for_the_running_and_queued_turns(
        self, supervised: Start, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
    ) -> None:
        """A rewind sent mid-turn goes through the queue: applied after the turns queued before it,
        before the turns queued after it."""
        provider = ScriptedProvider(default=lambda request: ScriptedReply(f"re: {request.prompt}", delay=1.0))
        await supervised(name="a", provider=provider, session_id="s")
        await SessionServer.send_message("a", "one")
        results: list[Result] = []

        async def send(prompt: str) -> None:
            results.append(await SessionServer.send_message("a", prompt))

        nursery.start_soon(send, "two")
        await trio.sleep(0.5)  # turn 2 is running
        nursery.start_soon(send, "three")
        await trio.sleep(0.01)
        # to_turn=3 is beyond the last turn now, but not once turns 2 and 3 are done
        await SessionServer.rewind("a", 3)
        assert [r.turn for r in results] == [2, 3]
        assert trio.current_time() >= 2.5
        nursery.start_soon(send, "four")
        await trio.sleep(0.01)
        await SessionServer.rewind("a", 1)  # queued behind "four"
        assert [r.turn for r in results] == [2, 3, 4]
        assert contents(provider.requests[-1].messages)[-2:] == ["three", "re: three"]
        assert contents(await SessionServer.messages("a")) == ["one", "re: one"]

    @pytest.mark.parametrize(
        ("to_turn", "match"),
        [(-1, "int >= 0"), (True, "int >= 0"), (1.0, "int >= 0"), ("1", "int >= 0"), (None, "int >= 0")],
    )
    async def test_a_malformed_to_turn_is_refused_in_the_callers_task(
        self, supervised: Start, to_turn: Any, match: str
    ) -> None:
        """Not an int (a bool is not one), or negative: InvalidOption naming to_turn; nothing written."""
        store = sessions.InMemoryStore()
        await supervised(name="a", provider=echo(), store=store, session_id="s")
        await SessionServer.send_message("a", "one")
        before = await store.load("s")
        with pytest.raises(sessions.InvalidOption, match=match) as info:
            await SessionServer.rewind("a", to_turn)
        assert info.value.option == "to_turn"
        assert await store.load("s") == before

    async def test_a_turn_beyond_the_last_is_refused(self, supervised: Start) -> None:
        """to_turn past the last turn: InvalidOption naming the turn count; nothing written."""
        store = sessions.InMemoryStore()
        await supervised(name="a", provider=echo(), store=store, session_id="s")
        await SessionServer.send_message("a", "one")
        await SessionServer.send_message("a", "two")
        before = await store.load("s")
        with pytest.raises(sessions.InvalidOption, match="has 2 turns") as info:
            await SessionServer.rewind("a", 3)
        assert (info.value.option, info.value.value) == ("to_turn", 3)
        await SessionServer.rewind("a", 2)  # the last turn itself is a turn
        assert await store.load("s") != before

    async def test_a_turn_that_came_whole_with_a_fork_is_refused(self, nursery: trio.Nursery) -> None:
        """A fork's turns came in one session_put: their ends are not in its log, so they cannot be
        rewound to; the fork's own point (and 0) can."""
        store = sessions.InMemoryStore()
        provider = echo()
        pid = await SessionServer.start_link(provider=provider, store=store, session_id="src", nursery=nursery)
        for prompt in ("one", "two", "three"):
            await SessionServer.send_message(pid, prompt)
        await SessionServer.stop(pid)
        branch = await SessionServer.fork(store, "src", at_turn=2)
        pid = await SessionServer.start_link(provider=provider, store=store, session_id=branch, nursery=nursery)
        await SessionServer.send_message(pid, "other")
        with pytest.raises(sessions.InvalidOption, match="not in session"):
            await SessionServer.rewind(pid, 1)
        await SessionServer.rewind(pid, 2)
        assert contents(await SessionServer.messages(pid)) == ["one", "re: one", "two", "re: two"]
        await SessionServer.stop(pid)

    async def test_an_interrupted_turn_can_be_rewound_to(
        self, supervised: Start, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The end of an interrupted turn is a point like any other (its note included)."""
        provider = ScriptedProvider(["hello", ScriptedReply("slow", delay=5.0), "fast"])
        await supervised(name="a", provider=provider, session_id="s")
        await SessionServer.send_message("a", "one")
        async with trio.open_nursery() as senders:
            senders.start_soon(SessionServer.send_message, "a", "two")
            await trio.sleep(1)
            await SessionServer.interrupt("a")
        await SessionServer.send_message("a", "three")
        await SessionServer.rewind("a", 2)
        messages = await SessionServer.messages("a")
        assert (await SessionServer.history("a"))[1].finish_reason is FinishReason.INTERRUPTED
        assert contents(messages)[:3] == ["one", "hello", "two"]
        assert "three" not in contents(messages)

    async def test_it_is_logged(self, supervised: Start) -> None:
        """A debug event names the session and the turn (docs/logging.md lists it)."""
        await supervised(name="a", provider=echo(), session_id="s")
        await SessionServer.send_message("a", "one")
        with structlog.testing.capture_logs() as logs:
            await SessionServer.rewind("a", 0)
        [event] = [e for e in logs if e["event"] == "session_rewound"]
        assert (event["session_id"], event["to_turn"], event["turn_count"]) == ("s", 0, 1)


class TestRewindRecord:
    def records(self, *extra: tuple[str, dict[str, Any]]) -> list[Record]:
        entries: list[tuple[str, dict[str, Any]]] = [("session_started", {"options": {}})]
        for n in (1, 2):
            result = Result(text=f"a{n}", session_id="s", turn=n, cost_usd=0.5)
            entries += [
                ("turn_started", {"turn": n, "prompt": f"p{n}", "options": {}}),
                ("provider_session", {"id": f"native-{n}"}),
                ("message", {"turn": n, "message": {"role": "assistant", "content": f"a{n}"}}),
                ("turn_finished", {"turn": n, "result": result.to_dict()}),
            ]
        entries += list(extra)
        return [Record("s", seq, kind, data) for seq, (kind, data) in enumerate(entries, start=1)]

    def test_a_rewind_record_folds_into_the_rewound_transcript(self) -> None:
        """The fold: messages go back, history and cost stay, the provider's session id is dropped."""
        session = fold("s", self.records(("session_rewound", {"to_turn": 1}))).session
        assert contents(session.messages) == ["p1", "a1"]
        assert (session.turn_count, session.total_cost, session.provider_session_id) == (2, 1.0, None)

    def test_a_turn_closed_at_a_restart_can_be_rewound_to(self) -> None:
        """A turn that a crash cut (closed by turn_interrupted at the restart) has an end to go back to:
        its prompt and the note that it was interrupted."""
        session = fold(
            "s",
            self.records(
                ("turn_started", {"turn": 3, "prompt": "p3", "options": {}}),
                ("turn_interrupted", {"turn": 3, "reason": "killed"}),
                ("session_resumed", {}),
                ("turn_started", {"turn": 4, "prompt": "p4", "options": {}}),
                ("turn_finished", {"turn": 4, "result": Result(text="", session_id="s", turn=4).to_dict()}),
                ("session_rewound", {"to_turn": 3}),
            ),
        ).session
        assert contents(session.messages)[-2:] == ["p3", "Turn 3 was interrupted (killed); it was not retried."]
        assert session.turn_count == 4

    @pytest.mark.parametrize(
        "data",
        [{}, {"to_turn": None}, {"to_turn": "1"}, {"to_turn": True}, {"to_turn": 1.0}, {"to_turn": -1}, {"to_turn": 3}],
    )
    def test_a_corrupt_rewind_record_is_a_corrupt_record(self, data: dict[str, Any]) -> None:
        """A rewind record whose to_turn is missing, not an int, or not a turn of the log before it
        raises CorruptRecord naming the session and the record's seq, not a TypeError or KeyError."""
        records = self.records(("session_rewound", data))
        with pytest.raises(sessions.CorruptRecord, match="to_turn") as info:
            fold("s", records)
        assert (info.value.line, "'s'" in info.value.location) == (len(records), True)

    async def test_load_of_a_corrupt_rewind_record_raises_corrupt_record(self) -> None:
        """SessionServer.load (and so a restart) reports it as CorruptRecord."""
        store = sessions.InMemoryStore()
        await store.append("s", self.records(("session_rewound", {"to_turn": 7})), durable=True)
        with pytest.raises(sessions.CorruptRecord):
            await SessionServer.load(store, "s")


class TestForkAndRewind:
    async def test_a_fork_takes_the_transcript_at_the_end_of_its_turn(self, nursery: trio.Nursery) -> None:
        """fork(at_turn=n) copies the transcript as it stood when turn n ended, as rewind(n) would give
        it, whatever rewinds came after; fork(at_turn=None) copies the session as it is (rewound)."""
        store = sessions.InMemoryStore()
        pid = await SessionServer.start_link(provider=echo(), store=store, session_id="src", nursery=nursery)
        for prompt in ("one", "two", "three"):
            await SessionServer.send_message(pid, prompt)
        await SessionServer.rewind(pid, 1)
        await SessionServer.stop(pid)
        at_three = await SessionServer.load(store, await SessionServer.fork(store, "src", at_turn=3))
        assert contents(at_three.messages) == ["one", "re: one", "two", "re: two", "three", "re: three"]
        as_is = await SessionServer.load(store, await SessionServer.fork(store, "src"))
        assert contents(as_is.messages) == ["one", "re: one"]
        assert (as_is.turn_count, as_is.total_cost) == (3, 0.75)

    async def test_a_fork_of_a_fork_at_a_turn_it_came_with_is_refused(self, nursery: trio.Nursery) -> None:
        """A fork's earlier turns came whole in its session_put: forking it there is refused by name
        (their transcripts are not in its log), not made with the later turns' messages."""
        store = sessions.InMemoryStore()
        pid = await SessionServer.start_link(provider=echo(), store=store, session_id="src", nursery=nursery)
        for prompt in ("one", "two", "three"):
            await SessionServer.send_message(pid, prompt)
        await SessionServer.stop(pid)
        first = await SessionServer.fork(store, "src", at_turn=3)
        with pytest.raises(sessions.InvalidOption, match="end of turn 1 is not in") as info:
            await SessionServer.fork(store, first, at_turn=1)
        assert info.value.option == "at_turn"
        again = await SessionServer.load(store, await SessionServer.fork(store, first, at_turn=3))
        assert contents(again.messages) == ["one", "re: one", "two", "re: two", "three", "re: three"]


class TestPutAndRewind:
    async def test_no_rewind_goes_back_past_a_put_session(self, supervised: Start) -> None:
        """put_session replaces the state (a trimmed or redacted transcript stays so): a turn before it
        is refused; the put itself is a point to go back to; later turns' ends are too."""
        store = sessions.InMemoryStore()
        await supervised(name="a", provider=echo(), store=store, session_id="s")
        await SessionServer.send_message("a", "my password is swordfish")
        await SessionServer.send_message("a", "two")
        session = await SessionServer.get_session("a")
        redacted = attrs.evolve(session, messages=session.messages[2:])
        await SessionServer.put_session("a", redacted)
        await SessionServer.send_message("a", "three")
        with pytest.raises(sessions.InvalidOption, match="end of turn 1 is not in"):
            await SessionServer.rewind("a", 1)
        await SessionServer.rewind("a", 2)
        assert contents(await SessionServer.messages("a")) == ["two", "re: two"]
        await SessionServer.rewind("a", 3)
        assert contents(await SessionServer.messages("a")) == ["two", "re: two", "three", "re: three"]
        with pytest.raises(sessions.InvalidOption, match="end of turn 1 is not in"):
            await SessionServer.fork(store, "s", at_turn=1)
        forked = await SessionServer.load(store, await SessionServer.fork(store, "s", at_turn=2))
        assert contents(forked.messages) == ["two", "re: two"]


class TestContinuesFrom:
    """`Session.continues_from` and `SessionContext.continues_from`: the turn whose end a provider
    that keeps its own conversation (the Claude CLI) branches it at."""

    async def test_a_rewind_names_its_turn_until_the_provider_reports_a_session(
        self, store: sessions.Store, supervised: Start
    ) -> None:
        """After rewind(n) the provider is reconnected with turn n's Result; once it reports a session
        of its own the session continues from that; rewind(0) names no turn; a restart folds the same."""
        provider = echo()
        await supervised(name="a", provider=provider, store=store, session_id="s")
        for prompt in ("one", "two", "three"):
            await SessionServer.send_message("a", prompt)
        assert (await SessionServer.get_session("a")).continues_from is None
        await SessionServer.rewind("a", 2)
        session = await SessionServer.get_session("a")
        assert session.continues_from == 2
        assert fold("s", await store.load("s")).session.continues_from == 2  # what a restart starts from
        await SessionServer.send_message("a", "four")
        point = provider.contexts[-1].continues_from
        assert point is not None
        assert (point.turn, point.text, point.provider_session_id) == (2, "re: two", "native-2")
        assert (await SessionServer.get_session("a")).continues_from is None  # native-4 goes on from there
        await SessionServer.rewind("a", 4)
        await SessionServer.send_message("a", "five")
        assert provider.contexts[-1].continues_from == (await SessionServer.history("a"))[3]
        await SessionServer.rewind("a", 0)
        assert (await SessionServer.get_session("a")).continues_from is None
        await SessionServer.send_message("a", "six")
        assert provider.contexts[-1].continues_from is None

    async def test_a_fork_names_the_turn_it_was_made_at(self, nursery: trio.Nursery) -> None:
        """fork(at_turn=n): n (none for 0); fork(): the source's last turn, or the turn a rewound source
        continues from; the fork's provider is connected with that turn's Result."""
        store = sessions.InMemoryStore()
        pid = await SessionServer.start_link(provider=echo(), store=store, session_id="src", nursery=nursery)
        for prompt in ("one", "two", "three"):
            await SessionServer.send_message(pid, prompt)

        async def continues_from(at_turn: int | None) -> int | None:
            return (
                await SessionServer.load(store, await SessionServer.fork(store, "src", at_turn=at_turn))
            ).continues_from

        assert [await continues_from(n) for n in (2, None, 0)] == [2, 3, None]
        await SessionServer.rewind(pid, 1)
        assert await continues_from(None) == 1
        await SessionServer.stop(pid)
        branch = await SessionServer.fork(store, "src", at_turn=2)
        provider = echo()
        forked = await SessionServer.start_link(provider=provider, store=store, session_id=branch, nursery=nursery)
        await SessionServer.send_message(forked, "next")
        point = provider.contexts[-1].continues_from
        assert point is not None
        assert (point.turn, point.provider_session_id, point.session_id) == (2, "native-2", branch)
        await SessionServer.stop(forked)
