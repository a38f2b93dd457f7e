"""However the bytes of a stream are cut into TCP writes, the providers read the same events."""

from __future__ import annotations

import itertools
import json
from typing import Any

import hypothesis
import hypothesis.strategies as st
from sessions_fake_llm import (
    Reply,
    _chunk,
    ollama_done,
    ollama_lines,
    ollama_text,
    ollama_tools,
    openai_events,
    openai_text,
    openai_tools,
    serve,
    sse,
)

import sessions
from sessions import Message


def recut(reply: Reply, cuts: list[int]) -> Reply:
    """The same body, cut at other places (CRLF line ends for SSE when ``crlf``)."""
    body = b"".join(c for c in reply.chunks if isinstance(c, bytes))
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    pieces = tuple(body[a:b] for a, b in itertools.pairwise(points) if b > a)
    return Reply(chunks=pieces, content_type=reply.content_type)


def crlf_lines(chunk: bytes | float) -> bytes | float:
    return chunk.replace(b"\n", b"\r\n") if isinstance(chunk, bytes) else chunk


async def events(model: Any) -> list[Any]:
    return [e async for e in model.chat([Message("user", "hi")], [], {})]


def normalized(found: list[Any]) -> list[Any]:
    # tool call ids are made up for Ollama; compare everything else
    return [
        (type(e).__name__, e.call.name, e.call.arguments) if isinstance(e, sessions.ToolCallRequested) else e
        for e in found
    ]


SETTINGS = hypothesis.settings(max_examples=25, deadline=None)
CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=30)
TEXT = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=5)


@SETTINGS
@hypothesis.given(cuts=CUTS, pieces=TEXT)
async def test_ollama_ndjson_framing(cuts: list[int], pieces: list[str]) -> None:
    whole = [ollama_text(*pieces), ollama_tools(("read", {"path": "é/ü.txt"}))]
    async with serve([*whole, *(recut(r, cuts) for r in whole)]) as server:
        model = sessions.Ollama("m", host=server.url)
        expected = [normalized(await events(model)) for _ in whole]
        assert [normalized(await events(model)) for _ in whole] == expected
    assert "".join(e.text for e in expected[0] if isinstance(e, sessions.TextDelta)) == "".join(pieces)


@SETTINGS
@hypothesis.given(cuts=CUTS, pieces=TEXT, crlf=st.booleans())
async def test_openai_sse_framing(cuts: list[int], pieces: list[str], crlf: bool) -> None:
    whole = [
        openai_text(*pieces, keepalive=True),
        openai_tools(("c1", "read", {"path": "é/ü.txt"}), ("c2", "list", {})),
    ]
    cut = [recut(r, cuts) for r in whole]
    if crlf:
        cut = [
            Reply(chunks=tuple(c.replace(b"\n", b"\r\n") for c in r.chunks), content_type=r.content_type) for r in cut
        ]
    async with serve([*whole, *cut]) as server:
        model = sessions.OpenAICompatible("m", base_url=server.url + "/v1")
        expected = [await events(model) for _ in whole]
        assert [await events(model) for _ in whole] == expected
    assert "".join(e.text for e in expected[0] if isinstance(e, sessions.TextDelta)) == "".join(pieces)
    assert [e.call.arguments for e in expected[1] if isinstance(e, sessions.ToolCallRequested)] == [
        {"path": "é/ü.txt"},
        {},
    ]


async def test_openai_line_separators_inside_json_strings_are_text() -> None:
    """Only CR, LF and CRLF end an SSE line: a raw U+2028, U+0085 or form feed in a JSON
    string (servers that do not escape them) is text, not a line break."""
    odd = "a\u2028b\x85c\x0cd\x1ee"
    chunk = json.dumps(_chunk({"content": odd}), ensure_ascii=False)
    reply = openai_events(
        sse(_chunk({"role": "assistant", "content": ""})), f"data: {chunk}\n\n".encode(), sse("[DONE]")
    )
    async with serve([reply]) as server:
        found = await events(sessions.OpenAICompatible("m", base_url=server.url + "/v1"))
    assert [e.text for e in found if isinstance(e, sessions.TextDelta)] == [odd]


async def test_ollama_line_separators_inside_json_strings_are_text() -> None:
    """Only LF (or CR) ends an NDJSON line: a raw U+2028, U+0085 or form feed in a JSON
    string (Ollama's Go encoder leaves U+0085 unescaped) is text, not a line break."""
    odd = "a\u2028b\x85c\x0cd\x1ee"
    line = json.dumps(
        {"model": "m", "message": {"role": "assistant", "content": odd}, "done": False}, ensure_ascii=False
    )
    reply = ollama_lines(line.encode() + b"\r\n", b"\n", ollama_done())
    async with serve([reply]) as server:
        found = await events(sessions.Ollama("m", host=server.url))
    assert [e.text for e in found if isinstance(e, sessions.TextDelta)] == [odd]
