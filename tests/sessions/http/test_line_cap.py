"""The HTTP providers' cap on one streamed line (Ollama) or server-sent event (OpenAI):
a server that never ends one is refused, not buffered whole (issue 18, containment)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from sessions_fake_llm import (
    Reply,
    _chunk,
    ollama_done,
    ollama_lines,
    ollama_text,
    openai_events,
    openai_text,
    openai_usage,
    serve,
    sse,
)

import sessions
from sessions import FinishReason, Message, SessionServer


async def collect(model: Any) -> list[Any]:
    return [e async for e in model.chat([Message("user", "hi")], [], {})]


def make(family: str, url: str, **options: Any) -> Any:
    if family == "ollama":
        return sessions.Ollama("m", host=url, **options)
    return sessions.OpenAICompatible("m", base_url=f"{url}/v1", **options)


def answer(family: str, text: str) -> Reply:
    return ollama_text(text) if family == "ollama" else openai_text(text)


def endless(family: str) -> Reply:
    """10,000 characters of one line (one event) with no end, then silence."""
    head = b'{"model": "m", "message": {"role": "assistant", "content": "' if family == "ollama" else b"data: {"
    pieces = (head, *(b"x" * 1000 for _ in range(10)))
    content_type = "application/x-ndjson" if family == "ollama" else "text/event-stream"
    return Reply(chunks=pieces, content_type=content_type, hang=True)


def one_long(family: str, content: str) -> tuple[Reply, int]:
    """A reply whose longest line (event) carries ``content``, and that line's length."""
    if family == "ollama":
        line = json.dumps({"model": "m", "message": {"role": "assistant", "content": content}, "done": False})
        return ollama_lines(line.encode() + b"\n", ollama_done()), len(line)
    event = sse(_chunk({"content": content}))
    tail = (sse(_chunk({}, "stop")), openai_usage(), sse("[DONE]"))
    return openai_events(sse(_chunk({"role": "assistant", "content": ""})), event, *tail), len(event) - 2


FAMILIES = pytest.mark.parametrize("family", ["ollama", "openai"])


@FAMILIES
@pytest.mark.parametrize("crlf", [False, True])
async def test_a_line_of_exactly_the_cap_is_read_and_one_more_character_is_refused(family: str, crlf: bool) -> None:
    reply, size = one_long(family, "y" * 3000)
    if crlf:  # a CRLF line end counts as one character, not two
        reply = Reply(
            chunks=tuple(c.replace(b"\n", b"\r\n") for c in reply.chunks if isinstance(c, bytes)),
            content_type=reply.content_type,
        )
    async with serve([reply, reply]) as server:
        events = await collect(make(family, server.url, max_line_size=size))
        assert "".join(e.text for e in events if isinstance(e, sessions.TextDelta)) == "y" * 3000
        with pytest.raises(sessions.ProviderProtocolError, match=f"longer than max_line_size={size - 1}"):
            await collect(make(family, server.url, max_line_size=size - 1))


@FAMILIES
async def test_a_line_cut_across_chunks_counts_whole(family: str) -> None:
    reply, size = one_long(family, "z" * 3000)
    body = b"".join(c for c in reply.chunks if isinstance(c, bytes))
    cut = Reply(chunks=tuple(body[i : i + 7] for i in range(0, len(body), 7)), content_type=reply.content_type)
    async with serve([cut, cut]) as server:
        events = await collect(make(family, server.url, max_line_size=size))
        assert isinstance(events[-1], sessions.TurnCompleted)
        with pytest.raises(sessions.ProviderProtocolError, match="max_line_size"):
            await collect(make(family, server.url, max_line_size=size - 1))


@FAMILIES
async def test_an_endless_line_ends_the_call_before_the_idle_timeout(family: str, autojump_clock: Any) -> None:
    # With virtual time, waiting for the rest of the line would reach the idle timeout
    # (ProviderTimeout): the refusal must come as soon as the line is over the cap.
    async with serve([endless(family)]) as server:
        model = make(family, server.url, max_line_size=4096, timeout=60.0)
        with pytest.raises(sessions.ProviderProtocolError, match="longer than max_line_size=4096") as caught:
            await collect(model)
    assert caught.value.kind == "protocol"
    assert len(server.requests) == 1  # not retried


@FAMILIES
async def test_through_a_session_the_turn_ends_as_a_provider_error_and_the_next_works(
    family: str, supervised: Any
) -> None:
    async with serve([endless(family), answer(family, "fine")]) as server:
        model = make(family, server.url, max_line_size=4096)
        await supervised(name="capped", provider=model, store=sessions.InMemoryStore())
        first = await SessionServer.send_message("capped", "one")
        assert first.finish_reason is FinishReason.PROVIDER_ERROR
        assert first.error is not None
        assert "longer than max_line_size=4096" in first.error
        second = await SessionServer.send_message("capped", "two")
        assert (second.finish_reason, second.text) == (FinishReason.STOP, "fine")
        await model.aclose()


@FAMILIES
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "4096", math.nan, math.inf, None])
def test_a_bad_cap_is_refused_at_construction(family: str, value: Any) -> None:
    with pytest.raises(sessions.InvalidOption) as info:
        make(family, "http://127.0.0.1:1", max_line_size=value)
    assert info.value.option == "max_line_size"


@FAMILIES
def test_the_default_cap_is_four_mib(family: str) -> None:
    assert make(family, "http://127.0.0.1:1").max_line_size == 4 * 1024 * 1024
