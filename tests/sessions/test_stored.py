"""Stored sessions without a server: SessionServer.load and list_sessions (read-only), and the
start options messages= (a seed for a new session) and system_prompt= (pinned for every turn)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import otpy
import sessions
from sessions import FinishReason, Message, ScriptedProvider, ScriptedReply, SessionServer

Start = Callable[..., Any]


async def wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(30):
        while not predicate():  # noqa: ASYNC110 (polling in virtual time)
            await trio.sleep(0.01)


@pytest.fixture(params=["memory", "jsonl", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[sessions.Store]:
    """A real store of each kind, closed at the end (requested before the servers' fixtures,
    so that it is closed after them)."""
    match request.param:
        case "memory":
            opened: sessions.Store = sessions.InMemoryStore()
        case "jsonl":
            opened = sessions.JsonlStore(tmp_path / "logs")
        case _:
            opened = sessions.SqliteStore(tmp_path / "s.db")
    yield opened
    await opened.aclose()


class TestLoad:
    async def test_load_is_what_the_live_server_holds(self, store: sessions.Store, supervised: Start) -> None:
        provider = ScriptedProvider([ScriptedReply("one", cost_usd=0.25), ScriptedReply("two", cost_usd=0.5)])
        await supervised(name="a", provider=provider, store=store, session_id="s1")
        for prompt in ("1", "2"):
            await SessionServer.send_message("a", prompt)
        live = await SessionServer.get_session("a")
        loaded = await SessionServer.load(store, "s1")
        assert loaded == live
        assert (loaded.turn_count, loaded.total_cost) == (2, 0.75)

    async def test_an_open_turn_loads_as_interrupted_and_nothing_is_written(
        self, store: sessions.Store, nursery: trio.Nursery
    ) -> None:
        """A server killed mid-turn: load shows the turn interrupted, as the resumed server does,
        and writes no record; the resumed server then holds the same session."""
        provider = ScriptedProvider([ScriptedReply("done"), ScriptedReply("never", delay=100)])
        pid = await SessionServer.start_link(provider=provider, store=store, session_id="s1", nursery=nursery)
        await SessionServer.send_message(pid, "first")
        outcome: list[BaseException] = []

        async def second() -> None:
            try:
                await SessionServer.send_message(pid, "second")
            except otpy.ServerExited as exc:
                outcome.append(exc)

        nursery.start_soon(second)
        await wait_until(lambda: len(provider.requests) == 2)
        otpy.exit(pid, "kill")
        await wait_until(lambda: not pid.alive and bool(outcome))
        before = await store.load("s1")
        loaded = await SessionServer.load(store, "s1")
        assert await store.load("s1") == before  # read-only
        assert [r.finish_reason for r in loaded.history] == [FinishReason.STOP, FinishReason.INTERRUPTED]
        assert loaded.messages[-1].role == "system"
        assert "interrupted" in loaded.messages[-1].content
        resumed = await SessionServer.start_link(provider=provider, store=store, session_id="s1", nursery=nursery)
        assert await SessionServer.get_session(resumed) == loaded
        infos = await SessionServer.list_sessions(store)
        assert [(i.session_id, i.turn_count, i.open_turn) for i in infos] == [("s1", 2, None)]
        await SessionServer.stop(resumed)

    async def test_an_unknown_session_is_not_found(self, store: sessions.Store) -> None:
        with pytest.raises(sessions.SessionNotFound) as caught:
            await SessionServer.load(store, "nope")
        assert caught.value.session_id == "nope"
        assert isinstance(caught.value, LookupError)
        assert await store.list_sessions() == []  # and nothing was created


class TestListSessions:
    async def test_lists_id_turns_cost_and_last_activity(self, store: sessions.Store, supervised: Start) -> None:
        before = datetime.datetime.now(datetime.UTC)
        provider = ScriptedProvider(default=ScriptedReply("x", cost_usd=0.125))
        await supervised(name="a", provider=provider, store=store, session_id="older")
        await supervised(name="b", provider=provider, store=store, session_id="newer")
        await SessionServer.send_message("a", "1")
        await SessionServer.send_message("a", "2")
        await trio.sleep(0.01)  # a later wall-clock timestamp for b
        await SessionServer.send_message("b", "1")
        infos = await SessionServer.list_sessions(store)
        assert [(i.session_id, i.turn_count, i.total_cost, i.open_turn) for i in infos] == [
            ("newer", 1, 0.125, None),
            ("older", 2, 0.25, None),
        ] or [i.session_id for i in infos] == ["older", "newer"]  # equal timestamps on a coarse clock
        by_id = {i.session_id: i for i in infos}
        assert (by_id["older"].turn_count, by_id["older"].total_cost) == (2, 0.25)
        assert (by_id["newer"].turn_count, by_id["newer"].total_cost) == (1, 0.125)
        for info in infos:
            assert before - datetime.timedelta(seconds=1) <= info.created_at <= info.last_activity
            assert info.last_activity.tzinfo is datetime.UTC
        assert by_id["older"].last_activity <= by_id["newer"].last_activity

    async def test_an_empty_store_lists_nothing(self, store: sessions.Store) -> None:
        assert await SessionServer.list_sessions(store) == []


class TestSeed:
    async def test_messages_seed_a_new_session(self, store: sessions.Store, supervised: Start) -> None:
        seed = [Message("user", "My name is Ada."), {"role": "assistant", "content": "Hello, Ada."}]
        provider = ScriptedProvider(["You are Ada."])
        await supervised(name="a", provider=provider, store=store, session_id="s1", messages=seed)
        assert await SessionServer.messages("a") == [
            Message("user", "My name is Ada."),
            Message("assistant", "Hello, Ada."),
        ]
        assert await SessionServer.turn_count("a") == 0
        await SessionServer.send_message("a", "Who am I?")
        assert [m.content for m in provider.requests[0].messages] == ["My name is Ada.", "Hello, Ada."]
        assert [m.content for m in await SessionServer.messages("a")][:3] == [
            "My name is Ada.",
            "Hello, Ada.",
            "Who am I?",
        ]

    async def test_a_resumed_session_keeps_its_own_transcript(self, store: sessions.Store, supervised: Start) -> None:
        """The child spec's messages= is passed again on every restart: it is not applied twice."""
        provider = ScriptedProvider(default=ScriptedReply("ok"))
        await supervised(name="a", provider=provider, store=store, session_id="s1", messages=[Message("user", "seed")])
        await SessionServer.send_message("a", "1")
        first = otpy.whereis("a")
        assert first is not None
        otpy.exit(first, "kill")
        await wait_until(lambda: otpy.whereis("a") not in (None, first))
        assert [m.content for m in await SessionServer.messages("a")] == ["seed", "1", "ok"]
        kinds = [r.kind for r in await store.load("s1")]
        assert kinds.count("session_put") == 1

    @pytest.mark.parametrize(
        "bad",
        ["just a string", [{"role": "wizard", "content": "x"}], [42], [Message("user", "\ud800")], {"role": "user"}],
    )
    def test_a_malformed_seed_is_refused(self, bad: Any) -> None:
        with pytest.raises(sessions.InvalidOption, match="messages"):
            SessionServer.child_spec(provider=ScriptedProvider([]), messages=bad)


class TestSystemPrompt:
    async def test_the_system_prompt_is_pinned_for_every_turn(self, supervised: Start) -> None:
        provider = ScriptedProvider(default=ScriptedReply("ok"))
        await supervised(name="a", provider=provider, system_prompt="Be brief.", query_opts={"model": "m"})
        await SessionServer.send_message("a", "1")
        await SessionServer.send_message("a", "2", model="other", system_prompt="Be brief.")  # the same: allowed
        assert [r.options for r in provider.requests] == [
            {"model": "m", "system_prompt": "Be brief."},
            {"model": "other", "system_prompt": "Be brief."},
        ]
        assert provider.contexts[-1].options["system_prompt"] == "Be brief."

    async def test_a_turn_cannot_replace_a_pinned_system_prompt(self, supervised: Start) -> None:
        provider = ScriptedProvider(default=ScriptedReply("ok"))
        await supervised(name="a", provider=provider, system_prompt="Be brief.")
        with pytest.raises(sessions.InvalidOption, match="pinned"):
            await SessionServer.send_message("a", "1", system_prompt="Be verbose.")
        assert provider.requests == []
        assert await SessionServer.turn_count("a") == 0

    @pytest.mark.parametrize(
        ("options", "match"),
        [
            ({"system_prompt": 3}, "expected a str"),
            ({"system_prompt": "\udfff"}, "surrogate"),
            ({"system_prompt": "a", "query_opts": {"system_prompt": "b"}}, "given twice"),
        ],
    )
    def test_a_malformed_system_prompt_is_refused(self, options: dict[str, Any], match: str) -> None:
        with pytest.raises(sessions.InvalidOption, match=match):
            SessionServer.child_spec(provider=ScriptedProvider([]), **options)

    async def test_the_agent_loop_sends_it_to_the_model(self, supervised: Start) -> None:
        """Through AgentLoop, the pinned prompt is the first message the model gets."""
        seen: list[list[Message]] = []

        class Model:
            name = "m"

            async def chat(self, messages: Any, *_: Any) -> Any:
                seen.append(list(messages))
                raise sessions.ProviderUnavailable("m", "offline")
                yield  # an async generator, as chat is

        await supervised(name="a", provider=sessions.AgentLoop(Model()), system_prompt="Be brief.")  # type: ignore[arg-type]
        await SessionServer.send_message("a", "hi")
        assert seen
        assert seen[0][0] == Message("system", "Be brief.")


class TestFork:
    async def test_a_fork_is_a_prefix_and_goes_its_own_way(self, store: sessions.Store, nursery: trio.Nursery) -> None:
        provider = ScriptedProvider(default=ScriptedReply("ok", cost_usd=0.5))
        pid = await SessionServer.start_link(provider=provider, store=store, session_id="src", nursery=nursery)
        for prompt in ("1", "2", "3"):
            await SessionServer.send_message(pid, prompt)
        await SessionServer.stop(pid)
        source_log = await store.load("src")
        branch = await SessionServer.fork(store, "src", at_turn=2)
        assert await store.load("src") == source_log  # the source is untouched
        forked = await SessionServer.load(store, branch)
        assert (forked.turn_count, forked.total_cost) == (2, 1.0)
        assert [m.content for m in forked.messages] == ["1", "ok", "2", "ok"]
        assert {r.session_id for r in forked.history} == {branch}
        pid = await SessionServer.start_link(provider=provider, store=store, session_id=branch, nursery=nursery)
        result = await SessionServer.send_message(pid, "other")
        assert result.turn == 3
        assert [m.content for m in provider.requests[-1].messages] == ["1", "ok", "2", "ok"]
        await SessionServer.stop(pid)
        assert [m.content for m in (await SessionServer.load(store, "src")).messages][-2:] == ["3", "ok"]
        whole = await SessionServer.load(store, await SessionServer.fork(store, "src"))
        assert whole.turn_count == 3
        empty = await SessionServer.load(store, await SessionServer.fork(store, "src", at_turn=0))
        assert (empty.turn_count, empty.messages) == (0, ())

    @pytest.mark.parametrize("at_turn", [-1, 4, True, 1.5, "2"])
    async def test_a_turn_that_is_not_there_is_refused(self, store: sessions.Store, at_turn: Any) -> None:
        provider = ScriptedProvider(default=ScriptedReply("ok"))
        async with trio.open_nursery() as nursery:
            pid = await SessionServer.start_link(provider=provider, store=store, session_id="src", nursery=nursery)
            for prompt in ("1", "2", "3"):
                await SessionServer.send_message(pid, prompt)
            await SessionServer.stop(pid)
        with pytest.raises(sessions.InvalidOption, match="at_turn"):
            await SessionServer.fork(store, "src", at_turn=at_turn)
        with pytest.raises(sessions.SessionNotFound):
            await SessionServer.fork(store, "nope")
        assert await store.list_sessions() == ["src"]
