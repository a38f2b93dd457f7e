"""Fake Ollama and OpenAI-compatible servers: real HTTP/1.1 on 127.0.0.1, scripted per test.

The server runs inside the test's own trio run (so virtual time reaches it too) and
speaks HTTP through h11, the parser httpx itself stands on. A script is a list of
`Reply` values, one per request, or a function from the request to its reply. Helpers
build the wire formats of SESSIONS.md §6.5 (Ollama NDJSON) and §6.6 (OpenAI SSE).

This is a plain module, not a package member: ``tests/sessions/http`` has no
``__init__.py`` because under pytest's importlib mode a package there would be named
``http`` (the standard library's) or ``sessions`` (ours). The conftest beside it
registers this module as ``fake_llm``; the bench and the example test load it by path.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio


@attrs.frozen
class Reply:
    """What the server answers to one request.

    ``chunks`` are sent one by one (a float in it means "sleep that many seconds");
    ``hang_before_headers`` never answers; ``hang`` sends the chunks and then stalls;
    ``drop`` closes the connection after the chunks without ending the body.
    """

    status: int = 200
    chunks: tuple[bytes | float, ...] = ()
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    hang_before_headers: bool = False
    hang: bool = False
    drop: bool = False


@attrs.frozen
class Seen:
    """A request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


Script = Sequence[Reply] | Callable[[Seen], Reply]


class FakeServer:
    """A scripted HTTP server; see `serve`."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self._next = 0
        self.requests: list[Seen] = []
        self.port = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _pick(self, seen: Seen) -> Reply:
        if callable(self._script):
            return self._script(seen)
        if self._next >= len(self._script):
            return error_reply(500, f"fake server: script exhausted after {len(self._script)} replies")
        reply = self._script[self._next]
        self._next += 1
        return reply

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await _next_event(conn, stream)
                if not isinstance(event, h11.Request):
                    return
                body = b""
                while True:
                    part = await _next_event(conn, stream)
                    if isinstance(part, h11.Data):
                        body += part.data
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:
                        return
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                seen = Seen(event.method.decode(), event.target.decode(), headers, json.loads(body) if body else None)
                self.requests.append(seen)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    if not await self._answer(conn, stream, self._pick(seen)):
                        return
                finally:
                    self.in_flight -= 1
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream, reply: Reply) -> bool:
        if reply.hang_before_headers:
            await trio.sleep_forever()
        headers = [("content-type", reply.content_type), ("transfer-encoding", "chunked"), *reply.headers]
        await stream.send_all(conn.send(h11.Response(status_code=reply.status, headers=headers)) or b"")
        for chunk in reply.chunks:
            if isinstance(chunk, float):
                await trio.sleep(chunk)
            else:
                await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
        if reply.hang:
            await trio.sleep_forever()
        if reply.drop:
            return False
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        return True


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)
            continue
        return event


@asynccontextmanager
async def serve(script: Script) -> AsyncIterator[FakeServer]:
    """Run a `FakeServer` on 127.0.0.1 (a free port) for the block's duration.

    Example::

        async with serve([ollama_text("Hel", "lo")]) as server:
            provider = sessions.Ollama("m", host=server.url)
    """
    server = FakeServer(script)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        server.port = listeners[0].socket.getsockname()[1]
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def error_reply(status: int, message: str, *, retry_after: str | None = None, openai: bool = False) -> Reply:
    """An HTTP error with a JSON body in Ollama's (``{"error": "..."}``) or OpenAI's shape."""
    body: dict[str, Any] = (
        {"error": {"message": message, "type": "server_error", "code": None}} if openai else {"error": message}
    )
    headers = (("retry-after", retry_after),) if retry_after is not None else ()
    return Reply(status=status, chunks=(json.dumps(body).encode(),), headers=headers)


# --- Ollama: /api/chat, NDJSON -------------------------------------------------------------


def _ollama_line(message: dict[str, Any], *, done: bool = False, **extra: Any) -> bytes:
    obj = {"model": "m", "created_at": "2026-12-06T00:00:00Z", "message": message, "done": done, **extra}
    return json.dumps(obj).encode() + b"\n"


def ollama_done(prompt_tokens: int = 10, eval_tokens: int = 5, reason: str = "stop") -> bytes:
    """The last NDJSON line, with token counts."""
    return _ollama_line(
        {"role": "assistant", "content": ""},
        done=True,
        done_reason=reason,
        total_duration=1000,
        prompt_eval_count=prompt_tokens,
        eval_count=eval_tokens,
    )


def ollama_text(
    *pieces: str, thinking: Sequence[str] = (), prompt_tokens: int = 10, eval_tokens: int = 5, delay: float = 0.0
) -> Reply:
    """A streamed text answer."""
    chunks: list[bytes | float] = [_ollama_line({"role": "assistant", "content": "", "thinking": t}) for t in thinking]
    for piece in pieces:
        if delay:
            chunks.append(delay)
        chunks.append(_ollama_line({"role": "assistant", "content": piece}))
    chunks.append(ollama_done(prompt_tokens, eval_tokens))
    return Reply(chunks=tuple(chunks), content_type="application/x-ndjson")


def ollama_tools(
    *calls: tuple[str, dict[str, Any]], text: str = "", prompt_tokens: int = 10, eval_tokens: int = 5
) -> Reply:
    """Tool calls: arguments as objects and no ids, as Ollama sends them."""
    chunks: list[bytes | float] = []
    if text:
        chunks.append(_ollama_line({"role": "assistant", "content": text}))
    tool_calls = [{"function": {"name": name, "arguments": args}} for name, args in calls]
    chunks.append(_ollama_line({"role": "assistant", "content": "", "tool_calls": tool_calls}))
    chunks.append(ollama_done(prompt_tokens, eval_tokens))
    return Reply(chunks=tuple(chunks), content_type="application/x-ndjson")


def ollama_lines(*lines: bytes | float) -> Reply:
    """Raw NDJSON lines (for malformed input)."""
    return Reply(chunks=tuple(lines), content_type="application/x-ndjson")


# --- OpenAI: /v1/chat/completions, SSE -----------------------------------------------------


def sse(obj: dict[str, Any] | str) -> bytes:
    """One SSE event; a str is sent as the raw data."""
    data = obj if isinstance(obj, str) else json.dumps(obj)
    return f"data: {data}\n\n".encode()


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def openai_usage(prompt_tokens: int = 10, completion_tokens: int = 5) -> bytes:
    """The final usage-only chunk (empty ``choices``)."""
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    usage["total_tokens"] = prompt_tokens + completion_tokens
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": usage,
        }
    )


def openai_text(
    *pieces: str,
    reasoning: Sequence[str] = (),
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    delay: float = 0.0,
    keepalive: bool = False,
) -> Reply:
    """A streamed text answer, then the usage chunk and ``[DONE]``."""
    chunks: list[bytes | float] = [sse(_chunk({"role": "assistant", "content": ""}))]
    if keepalive:
        chunks.append(b": keep-alive\r\n\r\n")
    chunks += [sse(_chunk({"reasoning_content": r})) for r in reasoning]
    for piece in pieces:
        if delay:
            chunks.append(delay)
        chunks.append(sse(_chunk({"content": piece})))
    chunks += [sse(_chunk({}, "stop")), openai_usage(prompt_tokens, completion_tokens), sse("[DONE]")]
    return Reply(chunks=tuple(chunks), content_type="text/event-stream")


def openai_tools(
    *calls: tuple[str, str, dict[str, Any]], text: str = "", prompt_tokens: int = 10, completion_tokens: int = 5
) -> Reply:
    """Tool calls ``(id, name, arguments)`` as fragments by index, interleaved across calls."""
    chunks: list[bytes | float] = [sse(_chunk({"role": "assistant", "content": text or None}))]
    for index, (call_id, name, _args) in enumerate(calls):
        first = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        chunks.append(sse(_chunk({"tool_calls": [first]})))
    encoded = [json.dumps(args) for _id, _name, args in calls]
    step = 4
    for start in range(0, max((len(e) for e in encoded), default=0), step):
        for index, text_args in enumerate(encoded):
            piece = text_args[start : start + step]
            if piece:
                chunks.append(sse(_chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})))
    chunks += [sse(_chunk({}, "tool_calls")), openai_usage(prompt_tokens, completion_tokens), sse("[DONE]")]
    return Reply(chunks=tuple(chunks), content_type="text/event-stream")


def openai_events(*events: bytes | float) -> Reply:
    """Raw SSE bytes (for malformed input)."""
    return Reply(chunks=tuple(events), content_type="text/event-stream")
