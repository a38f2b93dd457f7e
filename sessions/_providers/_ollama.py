"""The Ollama model provider, on the official ``ollama`` package and httpx.

Wire format (SESSIONS.md §6.5): ``POST /api/chat`` streams NDJSON; tool calls arrive
whole, with their arguments as a JSON object and no id (we make one up); the last line
has ``done: true`` and the token counts.

Each line is read into the package's own ``ollama.ChatResponse`` model, but the
request itself goes through an ``httpx.AsyncClient`` of ours rather than
``ollama.AsyncClient.chat``: that method drops the HTTP response of an error (so a 429's
``Retry-After`` is lost) and, when a line fails to parse, leaves httpx's line iterator
unclosed (a ResourceWarning under trio). The loop below is the package's, minus both,
and with lines split at LF only (see `_Lines`); a plain text line is read without
building the model (see `_plain_line`).
"""

from __future__ import annotations

import codecs
import functools
import json
import os
import urllib.parse
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, cast

import trio

from .._config import check_number
from .._errors import InvalidOption, ProviderProtocolError
from .._events import (
    FinishReason,
    Message,
    ProviderEvent,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallRequested,
    TurnCompleted,
    Usage,
)
from .._text import TextJoiner, clean_data, clean_text
from ._base import ToolSpec
from ._http_common import (
    MAX_LINE_SIZE,
    FieldRules,
    PerRun,
    PriceTable,
    RetryPolicy,
    check_line_size,
    check_positive,
    checked_usage,
    field_rules,
    fits,
    guarded_stream,
    line_too_long,
    require_package,
    seconds_or_none,
    unavailable,
)

if TYPE_CHECKING:
    import httpx

_OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "num_predict",
    "seed": "seed",
    "stop": "stop",
}


class Ollama:
    """A model served by Ollama (``/api/chat``), for the agent loop.

    Give it to `sessions.AgentLoop` (or to a SessionServer, which wraps it in one).
    One HTTP client per trio run, with connection reuse; at most ``max_concurrency``
    requests in flight from this provider (Ollama itself serves ``OLLAMA_NUM_PARALLEL``).

    Options:

    - ``model``: the model name (``"llama3.1"``); a turn's ``options["model"]`` overrides it.
    - ``host``: base URL; default ``$OLLAMA_HOST``, else ``http://127.0.0.1:11434``.
    - ``headers``: extra HTTP headers. ``api_key`` (default ``$OLLAMA_API_KEY``, the
      variable named by ``api_key_env``) is sent as ``Authorization: Bearer``.
    - ``timeout``: seconds to wait for each piece of the response (first byte included:
      a local model may load for minutes); ``connect_timeout`` for the connection.
    - ``options``: Ollama's model options (``num_ctx``, ``temperature``...);
      ``keep_alive``, ``think``: passed through.
    - ``max_concurrency``: requests in flight at once; ``retry``: a `RetryPolicy`;
      ``prices``: a `PriceTable` (a local model costs 0; usage is always reported).
    - ``max_line_size``: the most characters one NDJSON line may hold (4 MiB); a longer
      line (a server that never ends one) ends the call with `ProviderProtocolError`
      instead of being buffered whole.

    Errors: every failure is a `ProviderError` (see ``docs/providers/ollama.md``).

    Example::

        model = sessions.Ollama("llama3.1", host="http://127.0.0.1:11434")
        loop = sessions.AgentLoop(model, cwd="/path/to/project")
    """

    def __init__(
        self,
        model: str,
        *,
        host: str | None = None,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        api_key_env: str = "OLLAMA_API_KEY",
        timeout: float | None = 300.0,
        connect_timeout: float = 10.0,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
        think: bool | str | None = None,
        max_concurrency: int = 4,
        retry: RetryPolicy | None = None,
        prices: PriceTable | None = None,
        max_line_size: int = MAX_LINE_SIZE,
        name: str = "ollama",
    ) -> None:
        if not model or not isinstance(model, str):
            raise InvalidOption("model", model, "a model name is required")
        check_positive("timeout", timeout)
        check_positive("connect_timeout", connect_timeout, allow_none=False)
        check_number("max_concurrency", max_concurrency, integer=True, minimum=1)
        check_line_size(max_line_size)
        require_package(name, "ollama", "ollama")
        self.name = name
        self.model = model
        self.host = _base_url(host or os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434")
        self.headers = dict(headers or {})
        key = api_key if api_key is not None else os.environ.get(api_key_env)
        if key and not any(h.lower() == "authorization" for h in self.headers):
            self.headers["Authorization"] = f"Bearer {key}"
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.options = dict(options or {})
        self.keep_alive = keep_alive
        self.think = think
        self.max_concurrency = max_concurrency
        self.retry = retry if retry is not None else RetryPolicy()
        self.prices = prices if prices is not None else PriceTable()
        self.max_line_size = max_line_size
        self._client: PerRun[httpx.AsyncClient] = PerRun(f"sessions.ollama.client.{id(self)}", self._new_client, _close)
        self._limiter: PerRun[trio.CapacityLimiter] = PerRun(
            f"sessions.ollama.limiter.{id(self)}", lambda: trio.CapacityLimiter(self.max_concurrency)
        )

    def __repr__(self) -> str:
        return f"Ollama({self.model!r}, host={self.host!r})"

    def _new_client(self) -> httpx.AsyncClient:
        try:  # the ollama extra; httpx comes with it
            import httpx
            import ollama  # noqa: F401 (checked here, used by _once)
        except ImportError:
            raise unavailable(self.name, "ollama", "ollama") from None
        headers = {"Accept": "application/x-ndjson", "User-Agent": "sessions (ollama)"}
        return httpx.AsyncClient(
            base_url=self.host,
            headers=headers | self.headers,
            timeout=httpx.Timeout(seconds_or_none(self.timeout), connect=seconds_or_none(self.connect_timeout)),
            follow_redirects=True,
        )

    def chat(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], options: dict[str, Any]
    ) -> AsyncIterator[ProviderEvent]:
        """Send one chat request; yield its deltas and tool calls, then one `TurnCompleted`.

        Example::

            async for event in model.chat([sessions.Message("user", "hi")], [], {}):
                print(event)
        """
        model = str(options.get("model") or self.model)
        request: dict[str, Any] = {
            "model": model,
            "messages": [to_ollama_message(m) for m in messages],
            "tools": [{"type": "function", "function": attrs_spec(t)} for t in tools] or None,
            "stream": True,
            "options": self.options | {_OPTION_NAMES[k]: v for k, v in options.items() if k in _OPTION_NAMES} or None,
            "keep_alive": self.keep_alive,
            "think": options.get("think", self.think),
        }
        if "format" in options:
            request["format"] = options["format"]
        return guarded_stream(self.name, self.retry, self._limiter.get(), lambda: self._once(model, request))

    async def _once(self, model: str, request: dict[str, Any]) -> AsyncGenerator[ProviderEvent, None]:
        import ollama

        client = self._client.get()
        text: list[str] = []
        said, thought = TextJoiner(), TextJoiner()  # a surrogate pair may span two lines
        done = None
        payload = {k: v for k, v in request.items() if v is not None}
        async with client.stream("POST", "/api/chat", json=payload) as response:
            if response.is_error:
                await response.aread()
                response.raise_for_status()
            lines = _Lines(response.encoding or "utf-8", self.name, self.max_line_size)
            async with aclosing(cast("AsyncGenerator[bytes, None]", response.aiter_bytes())) as chunks:
                ended = False
                while not ended:
                    try:
                        complete = lines.feed(await chunks.__anext__())
                    except StopAsyncIteration:
                        ended, complete = True, lines.feed(b"", end=True)
                    for line in complete:
                        raw = json.loads(line)
                        if isinstance(raw, dict) and raw.get("error"):
                            raise ollama.ResponseError(clean_text(str(raw["error"])))
                        if (plain := _plain_line(raw)) is not None:
                            # the common line: read as the model would read it, without building it
                            if plain[1] and (piece := thought.push(plain[1])):
                                yield ThinkingDelta(piece)
                            if plain[0] and (piece := said.push(plain[0])):
                                text.append(piece)
                                yield TextDelta(piece)
                            continue
                        part = ollama.ChatResponse.model_validate(raw)
                        message = part.message
                        if message.thinking and (piece := thought.push(message.thinking)):
                            yield ThinkingDelta(piece)
                        if message.content and (piece := said.push(message.content)):
                            text.append(piece)
                            yield TextDelta(piece)
                        for tool_call in message.tool_calls or ():
                            given_id = getattr(tool_call, "id", None)
                            call_id = clean_text(given_id) if given_id else f"call_{uuid.uuid4().hex[:12]}"
                            function = tool_call.function
                            arguments = clean_data(dict(function.arguments))
                            yield ToolCallRequested(ToolCall(call_id, clean_text(function.name), arguments))
                        if part.done:
                            done = part
        if done is None:
            raise ProviderProtocolError(self.name, "the stream ended without a done line", kind="protocol")
        if piece := thought.flush():
            yield ThinkingDelta(piece)
        if piece := said.flush():
            text.append(piece)
            yield TextDelta(piece)
        usage = checked_usage(
            self.name, Usage(input_tokens=done.prompt_eval_count or 0, output_tokens=done.eval_count or 0)
        )
        yield TurnCompleted(
            text="".join(text),
            finish_reason=FinishReason.STOP,
            usage=usage,
            cost_usd=self.prices.cost(model, usage),
            model=done.model or model,
            extra={"stop_reason": done.done_reason, "total_duration_ns": done.total_duration},
        )

    async def aclose(self) -> None:
        """Close this trio run's HTTP client (also done when the run ends).

        Example::

            await model.aclose()
        """
        await self._client.aclose()


async def _close(client: httpx.AsyncClient) -> None:
    await client.aclose()


def _base_url(host: str) -> str:
    """``host`` as a base URL, read as the ollama CLI and package read ``OLLAMA_HOST``:
    without a scheme it is ``http`` on port 11434 (``"example.com"``, ``":8080"``)."""
    host = host.strip()
    if "://" in host:
        return host.rstrip("/")
    parts = urllib.parse.urlsplit(f"//{host}")
    name = parts.hostname or "127.0.0.1"
    if ":" in name:
        name = f"[{name}]"
    return f"http://{name}:{parts.port or 11434}{parts.path.rstrip('/')}"


class _Lines:
    """The lines of an NDJSON body, from its bytes, decoded as they come.

    A line ends at LF (or CR): nothing else, so that a character such as U+2028 or U+0085
    inside a JSON string, which Ollama sends unescaped, stays in its line (httpx's
    ``aiter_lines`` would split there). Blank lines are skipped; undecodable bytes are
    replaced, as ``aiter_text`` replaces them. A line longer than ``limit`` characters
    (its end not counted), complete or not yet, raises `ProviderProtocolError`: a
    server that never ends a line is not buffered without bound.
    """

    def __init__(self, encoding: str, provider: str = "ollama", limit: int = MAX_LINE_SIZE) -> None:
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._rest = ""
        self._provider = provider
        self._limit = limit

    def feed(self, chunk: bytes, *, end: bool = False) -> list[str]:
        """The lines that ``chunk`` completes (and the last one if ``end``)."""
        text = self._decoder.decode(chunk, end)
        if "\r" in text:
            text = text.replace("\r", "\n")
        if "\n" not in text and not end:
            self._rest += text
            if len(self._rest) > self._limit:
                raise line_too_long(self._provider, "a line", self._limit)
            return []
        whole = self._rest + text
        lines = whole.split("\n")
        self._rest = "" if end else lines.pop()
        # no line is longer than the text that holds them all: one comparison per chunk
        if len(whole) > self._limit and (len(self._rest) > self._limit or any(len(x) > self._limit for x in lines)):
            raise line_too_long(self._provider, "a line", self._limit)
        return [line for line in lines if line and not line.isspace()]


@functools.cache
def _plain_rules() -> tuple[FieldRules, FieldRules]:
    import ollama

    return field_rules(ollama.ChatResponse, frozenset({"message", "done"})), field_rules(
        ollama.Message, frozenset({"role"})
    )


def _plain_line(raw: Any) -> tuple[str | None, str | None] | None:
    """``(content, thinking)`` of a line that is not the last (``done: false``) and carries
    text or thinking and nothing else (no tool call, image or logprobs), if ``raw`` is such
    a line and ``ollama.ChatResponse.model_validate`` would take it as it is (every field
    it defines has its type, strictly); anything else is None: the caller validates it in
    full."""
    if type(raw) is not dict or raw.get("done") is not False:
        return None
    message = raw.get("message")
    if type(message) is not dict or type(message.get("role")) is not str:
        return None
    top, fields = _plain_rules()
    if not fits(raw, top) or not fits(message, fields):
        return None
    return message.get("content"), message.get("thinking")


def attrs_spec(tool: ToolSpec) -> dict[str, Any]:
    """A `ToolSpec` as the ``function`` object of a tool definition (Ollama and OpenAI)."""
    return {"name": tool.name, "description": tool.description, "parameters": tool.parameters}


def to_ollama_message(message: Message) -> dict[str, Any]:
    """A transcript `Message` as Ollama's chat message."""
    if message.role == "tool" and message.tool_result is not None:
        return {"role": "tool", "content": message.tool_result.content, "tool_name": message.tool_result.name}
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        data["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}} for c in message.tool_calls]
    return data
