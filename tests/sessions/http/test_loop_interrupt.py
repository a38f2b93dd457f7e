"""An interrupt ends the agent loop's wait for the model promptly (issue 18).

The loop asks the model for each event without a cancel scope; only a wait that blocks
gets one, which `LoopSession.interrupt` cancels. In virtual time (trio's MockClock with
autojump): a wake-up that did not happen would let the clock jump to the provider's
idle timeout (or the server's interrupt grace), and the elapsed time says which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import trio
from sessions_fake_llm import Reply, serve

import sessions
from sessions import FinishReason, Message, SessionContext, SessionServer, TextDelta, TurnCompleted, TurnRequest

FIRST = b'{"model": "m", "message": {"role": "assistant", "content": "Thinking"}, "done": false}\n'


def silent_ollama() -> Reply:
    """One line, then nothing: the model's stream waits for the next line forever."""
    return Reply(chunks=(FIRST,), hang=True, content_type="application/x-ndjson")


class Waiting:
    """A model that says one word, then waits in ``wait`` (an async callable)."""

    name = "waiting"

    def __init__(self, wait: Any) -> None:
        self.wait = wait
        self.after: list[str] = []

    async def chat(
        self, messages: Sequence[Message], tools: Sequence[Any], options: dict[str, Any]
    ) -> AsyncIterator[sessions.ProviderEvent]:
        yield TextDelta("one ")
        await self.wait()
        self.after.append("woke")
        yield TextDelta("two")
        yield TurnCompleted(text="one two")


async def interrupted_turn(loop: sessions.AgentLoop, cwd: Path, at: float) -> tuple[list[Any], float]:
    """Run a turn, interrupt it ``at`` seconds in from another task; its events and how
    long it took (virtual time)."""
    events: list[Any] = []
    start = trio.current_time()
    async with loop.connect(SessionContext("s1", cwd=str(cwd))) as conn, trio.open_nursery() as nursery:

        async def interrupt() -> None:
            await trio.sleep(at)
            await conn.interrupt()

        nursery.start_soon(interrupt)
        with trio.fail_after(10_000):
            async for event in conn.run_turn(TurnRequest(1, "go", ())):
                events.append(event)
    return events, trio.current_time() - start


async def test_an_interrupt_during_a_silent_http_stream_ends_the_turn_at_once(
    tmp_path: Path, autojump_clock: Any
) -> None:
    async with serve([silent_ollama()]) as server:
        loop = sessions.AgentLoop(sessions.Ollama("m", host=server.url, timeout=300.0))
        events, took = await interrupted_turn(loop, tmp_path, at=1.0)
    assert events[0] == TextDelta("Thinking")
    assert isinstance(events[-1], TurnCompleted)
    assert events[-1].finish_reason is FinishReason.INTERRUPTED
    assert 1.0 <= took < 2.0  # not the idle timeout's 300 s


async def test_an_interrupt_ends_a_wait_of_any_model(tmp_path: Path, autojump_clock: Any) -> None:
    model = Waiting(trio.sleep_forever)
    events, took = await interrupted_turn(sessions.AgentLoop(model, tools=None), tmp_path, at=3.0)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["one "]
    assert events[-1].finish_reason is FinishReason.INTERRUPTED
    assert 3.0 <= took < 4.0
    assert model.after == []  # the wait ended by the interrupt, not by itself


async def test_an_interrupt_reaches_a_wait_inside_the_models_own_cancel_scope(
    tmp_path: Path, autojump_clock: Any
) -> None:
    # as httpx waits for data: inside a scope with a deadline, entered by the model's code
    async def wait() -> None:
        with trio.move_on_after(1000):
            await trio.sleep_forever()

    model = Waiting(wait)
    events, took = await interrupted_turn(sessions.AgentLoop(model, tools=None), tmp_path, at=2.0)
    assert events[-1].finish_reason is FinishReason.INTERRUPTED
    assert 2.0 <= took < 3.0  # not the model's own 1000 s
    assert model.after == []


async def test_a_shielded_wait_of_the_model_is_not_cut_short(tmp_path: Path, autojump_clock: Any) -> None:
    # The loop's scope around the whole wait never reached inside a shield; the scope of a
    # blocked wait, which goes under the model's scopes, must not either.
    async def wait() -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(5)

    model = Waiting(wait)
    events, took = await interrupted_turn(sessions.AgentLoop(model, tools=None), tmp_path, at=1.0)
    assert model.after == ["woke"]  # the shielded sleep ran to its end
    assert events[-1].finish_reason is FinishReason.INTERRUPTED
    assert 5.0 <= took < 6.0


async def test_a_wait_that_ends_by_itself_and_the_turn_after_an_interrupted_one_complete(
    tmp_path: Path, autojump_clock: Any
) -> None:
    async def wait() -> None:
        await trio.sleep(1)

    model = Waiting(wait)
    loop = sessions.AgentLoop(model, tools=None)
    async with loop.connect(SessionContext("s1", cwd=str(tmp_path))) as conn:
        first = [e async for e in conn.run_turn(TurnRequest(1, "go", ()))]
        assert (first[-1].finish_reason, first[-1].text) == (FinishReason.STOP, "one two")
        await conn.interrupt()  # between turns: the next turn starts afresh
        second = [e async for e in conn.run_turn(TurnRequest(2, "again", ()))]
        assert (second[-1].finish_reason, second[-1].text) == (FinishReason.STOP, "one two")
    assert model.after == ["woke", "woke"]


async def test_through_a_session_server_the_interrupt_does_not_wait_for_the_grace(
    tmp_path: Path, autojump_clock: Any, supervised: Any, nursery: trio.Nursery
) -> None:
    async with serve([silent_ollama()]) as server:
        model = sessions.Ollama("m", host=server.url, timeout=300.0)
        await supervised(name="silent", provider=model, store=sessions.InMemoryStore(), interrupt_grace=50.0)
        outcome: list[sessions.Result] = []

        async def send() -> None:
            outcome.append(await SessionServer.send_message("silent", "go"))

        nursery.start_soon(send)
        while not server.in_flight:  # noqa: ASYNC110 (the fake server has no event to wait on)
            await trio.sleep(0.01)
        await trio.sleep(1)
        start = trio.current_time()
        assert await SessionServer.interrupt("silent")
        while not outcome:  # noqa: ASYNC110
            await trio.sleep(0.01)
        assert outcome[0].finish_reason is FinishReason.INTERRUPTED
        assert trio.current_time() - start < 1.0  # not the 50 s grace
        await model.aclose()


async def test_through_a_session_server_turn_timeout_still_ends_a_silent_stream(
    tmp_path: Path, autojump_clock: Any, supervised: Any
) -> None:
    async with serve([silent_ollama()]) as server:
        model = sessions.Ollama("m", host=server.url, timeout=300.0)
        await supervised(name="slow", provider=model, store=sessions.InMemoryStore(), turn_timeout=10.0)
        start = trio.current_time()
        result = await SessionServer.send_message("slow", "go")
        assert result.finish_reason is FinishReason.TIMEOUT
        assert 10.0 <= trio.current_time() - start < 11.0
        await model.aclose()
