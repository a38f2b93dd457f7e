"""ScriptedProvider: the provider that tests and the offline demo run on."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import sessions
from sessions import (
    FinishReason,
    MessageAdded,
    ProviderEvent,
    ProviderSessionId,
    ScriptedProvider,
    ScriptedReply,
    ScriptedTool,
    SessionContext,
    TextDelta,
    ToolCallFinished,
    ToolCallRequested,
    TurnCompleted,
    TurnRequest,
    Usage,
)

CTX = SessionContext(session_id="s1")


def request(turn: int, prompt: str = "hi") -> TurnRequest:
    return TurnRequest(turn=turn, prompt=prompt, messages=())


async def play(provider: ScriptedProvider, turn: int = 1, prompt: str = "hi") -> list[ProviderEvent]:
    async with provider.connect(CTX) as conn:
        return [event async for event in conn.run_turn(request(turn, prompt))]


class TestScript:
    async def test_a_string_streams_word_by_word(self) -> None:
        """A plain string reply streams one delta per word, then the message, then TurnCompleted."""
        events = await play(ScriptedProvider(["Hello there, world"]))
        assert events[:3] == [TextDelta("Hello "), TextDelta("there, "), TextDelta("world")]
        assert events[3] == MessageAdded(sessions.Message(role="assistant", content="Hello there, world"))
        assert events[4] == TurnCompleted(text="Hello there, world", model="scripted")
        assert len(events) == 5

    async def test_replies_are_chosen_by_turn_number(self) -> None:
        """Reply n answers turn n; turns past the script get the default (an echo)."""
        provider = ScriptedProvider(["one", "two"])
        assert (await play(provider, turn=2))[-1].text == "two"  # type: ignore[union-attr]
        assert (await play(provider, turn=3, prompt="ping"))[-1].text == "You said: ping"  # type: ignore[union-attr]
        assert [r.turn for r in provider.requests] == [2, 3]

    async def test_a_function_of_the_request_is_a_reply(self) -> None:
        """A callable step gets the TurnRequest and returns the reply."""
        provider = ScriptedProvider([lambda req: f"upper {req.prompt.upper()}"])
        assert (await play(provider, prompt="abc"))[-1].text == "upper ABC"  # type: ignore[union-attr]

    async def test_tools_costs_usage_and_provider_id(self) -> None:
        """Tool calls come as requested / assistant message / finished / tool message; cost and usage at the end."""
        reply = ScriptedReply(
            "done",
            tools=(ScriptedTool("read", {"path": "a"}, result="content"),),
            cost_usd=0.25,
            usage=Usage(3, 4),
            provider_session_id="native",
        )
        events = await play(ScriptedProvider([reply]))
        kinds = [type(e).__name__ for e in events]
        assert kinds == [
            "ProviderSessionId",
            "ToolCallRequested",
            "MessageAdded",
            "ToolCallFinished",
            "MessageAdded",
            "TextDelta",
            "MessageAdded",
            "TurnCompleted",
        ]
        assert events[0] == ProviderSessionId("native")
        assert isinstance(events[1], ToolCallRequested)
        assert events[1].call.arguments == {"path": "a"}
        assert isinstance(events[3], ToolCallFinished)
        assert events[3].result.content == "content"
        last = events[-1]
        assert isinstance(last, TurnCompleted)
        assert (last.cost_usd, last.usage) == (0.25, Usage(3, 4))

    async def test_an_error_reply_is_an_error_turn(self) -> None:
        """error= ends the turn with an error TurnCompleted (PROVIDER_ERROR unless told otherwise)."""
        events = await play(ScriptedProvider([ScriptedReply(error="overloaded", api_error_status=529)]))
        last = events[-1]
        assert isinstance(last, TurnCompleted)
        assert (last.is_error, last.finish_reason, last.api_error_status) == (True, FinishReason.PROVIDER_ERROR, 529)

    async def test_raise_and_crash(self) -> None:
        """raise_ raises the ProviderError after the text; crash_after raises ScriptedCrash mid-stream."""
        error = sessions.ProviderUnavailable("scripted", "gone")
        with pytest.raises(sessions.ProviderUnavailable):
            await play(ScriptedProvider([ScriptedReply("a b", raise_=error)]))
        seen: list[ProviderEvent] = []
        provider = ScriptedProvider([ScriptedReply("a b c", crash_after=2)])

        async def crash() -> None:
            async with provider.connect(CTX) as conn:
                async for event in conn.run_turn(request(1)):
                    seen.append(event)

        with pytest.raises(sessions.ScriptedCrash):
            await crash()
        assert seen == [TextDelta("a "), TextDelta("b ")]
        assert provider.open_connections == 0

    async def test_delays_take_virtual_time(self, autojump_clock: trio.testing.MockClock) -> None:
        """delay, tool delays and delta_delay are slept."""
        reply = ScriptedReply("a b c", delay=1, delta_delay=0.5, tools=(ScriptedTool("t", delay=2),))
        start = trio.current_time()
        await play(ScriptedProvider([reply]))
        assert trio.current_time() - start == pytest.approx(4.0)


class TestInterruptAndConnection:
    async def test_interrupt_ends_the_turn_early(self, autojump_clock: trio.testing.MockClock) -> None:
        """interrupt() makes the running turn end with INTERRUPTED and the text so far."""
        provider = ScriptedProvider([ScriptedReply("a b c d", delta_delay=1), "next"])
        async with provider.connect(CTX) as conn:
            events: list[ProviderEvent] = []
            async with trio.open_nursery() as nursery:

                async def run() -> None:
                    async for event in conn.run_turn(request(1)):
                        events.append(event)

                nursery.start_soon(run)
                await trio.sleep(1.5)
                await conn.interrupt()
            last = events[-1]
            assert isinstance(last, TurnCompleted)
            assert (last.finish_reason, last.text) == (FinishReason.INTERRUPTED, "a b ")
            # the interrupt ended that turn only
            after = [event async for event in conn.run_turn(request(2))]
            assert after[-1] == TurnCompleted(text="next", model="scripted")

    async def test_connections_are_logged(self, autojump_clock: trio.testing.MockClock) -> None:
        """connect() records enter/exit, the contexts, and open_connections; close_delay is shielded."""
        provider = ScriptedProvider(close_delay=1)
        with trio.CancelScope() as scope:
            async with provider.connect(CTX):
                assert provider.open_connections == 1
                scope.cancel()
                await trio.sleep(5)
        assert provider.log == [("enter", "s1"), ("exit", "s1")]
        assert provider.contexts == [CTX]
        assert provider.open_connections == 0

    async def test_connect_error(self) -> None:
        """connect_error makes connect raise it."""
        provider = ScriptedProvider(connect_error=sessions.ProviderAuthError("scripted", "bad key"))
        with pytest.raises(sessions.ProviderAuthError):
            async with provider.connect(CTX):
                pass  # pragma: no cover
        assert provider.open_connections == 0

    def test_bad_steps_are_refused(self) -> None:
        """A reply that is not a str, a ScriptedReply or a function is an InvalidOption."""
        with pytest.raises(sessions.InvalidOption):
            ScriptedProvider([42])  # type: ignore[list-item]

    def test_it_is_a_provider(self) -> None:
        """ScriptedProvider satisfies the Provider protocol and runs its own tools."""
        provider = ScriptedProvider()
        assert isinstance(provider, sessions.Provider)
        assert provider.runs_own_tools
