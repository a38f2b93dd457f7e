"""The OpenAI-compatible model provider, on the official ``openai`` package's ``AsyncOpenAI``.

The client makes the request (auth, base URL, headers, timeouts, the connection pool,
HTTP errors as its typed exceptions); the chunks are read into its own
``ChatCompletionChunk`` model. Only the SSE framing is ours (see `_sse_data`).

Wire format (SESSIONS.md §6.6): ``POST /v1/chat/completions`` with ``stream: true`` and
``stream_options.include_usage`` streams SSE chunks; tool calls come as fragments keyed
by ``index`` (id and name first, then pieces of the arguments string), and a last chunk
with empty ``choices`` carries the usage. Serves OpenAI, vLLM, llama.cpp's server,
LM Studio, and Ollama's ``/v1`` too.
"""

from __future__ import annotations

import codecs
import functools
import json
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, cast

import attrs
import trio

from .._config import check_number
from .._errors import InvalidOption, ProviderError, ProviderProtocolError
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
from ._ollama import attrs_spec

if TYPE_CHECKING:
    import openai

_PASSED = ("temperature", "top_p", "max_tokens", "stop", "seed", "reasoning_effort", "response_format")


@attrs.define
class _Fragments:
    id: str | None = None
    name: str = ""
    arguments: list[str] = attrs.field(factory=list)


class OpenAICompatible:
    """A model behind an OpenAI-compatible ``/v1/chat/completions``, for the agent loop.

    Works with OpenAI and with local servers that speak its API (vLLM, llama.cpp,
    LM Studio, Ollama's ``/v1``). One client per trio run with connection reuse, at most
    ``max_concurrency`` requests in flight, retries by our `RetryPolicy` (the client's
    own retries are off, so that none happens behind the loop's back).

    Options:

    - ``model``: the model name; a turn's ``options["model"]`` overrides it.
    - ``base_url``: default ``$OPENAI_BASE_URL``, else ``https://api.openai.com/v1``.
    - ``api_key``: default from the variable named by ``api_key_env``
      (``$OPENAI_API_KEY``); local servers need none (a placeholder is sent).
    - ``headers``: extra HTTP headers; ``extra_body``: extra JSON fields for every request
      (``{"top_k": 20}`` for vLLM...).
    - ``timeout``: seconds to wait for each piece of the response; ``connect_timeout``.
    - ``max_concurrency``, ``retry``, ``prices``: as for `Ollama`.
    - ``include_usage``: ask for the usage-only last chunk (turn off for servers that
      reject ``stream_options``; usage is then 0).
    - ``max_line_size``: the most characters one server-sent event may hold (4 MiB); a
      longer one (a server that never ends it) ends the call with `ProviderProtocolError`
      instead of being buffered whole.

    Errors: every failure is a `ProviderError` (see ``docs/providers/openai.md``).

    Example::

        model = sessions.OpenAICompatible("gpt-4o-mini", prices=sessions.PriceTable(
            {"gpt-4o-mini": sessions.Price(0.15, 0.60)}))
        local = sessions.OpenAICompatible("qwen3", base_url="http://127.0.0.1:8000/v1")
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: float | None = 300.0,
        connect_timeout: float = 10.0,
        max_concurrency: int = 16,
        retry: RetryPolicy | None = None,
        prices: PriceTable | None = None,
        include_usage: bool = True,
        max_line_size: int = MAX_LINE_SIZE,
        name: str = "openai",
    ) -> None:
        if not model or not isinstance(model, str):
            raise InvalidOption("model", model, "a model name is required")
        check_positive("timeout", timeout)
        check_positive("connect_timeout", connect_timeout, allow_none=False)
        check_number("max_concurrency", max_concurrency, integer=True, minimum=1)
        check_line_size(max_line_size)
        require_package(name, "openai", "openai")
        self.name = name
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env) or "not-needed"
        self.headers = dict(headers or {})
        self.extra_body = dict(extra_body or {})
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_concurrency = max_concurrency
        self.retry = retry if retry is not None else RetryPolicy()
        self.prices = prices if prices is not None else PriceTable()
        self.include_usage = include_usage
        self.max_line_size = max_line_size
        self._client: PerRun[openai.AsyncOpenAI] = PerRun(
            f"sessions.openai.client.{id(self)}", self._new_client, _close
        )
        self._limiter: PerRun[trio.CapacityLimiter] = PerRun(
            f"sessions.openai.limiter.{id(self)}", lambda: trio.CapacityLimiter(self.max_concurrency)
        )

    def __repr__(self) -> str:
        return f"OpenAICompatible({self.model!r}, base_url={self.base_url!r})"

    def _new_client(self) -> openai.AsyncOpenAI:
        try:
            import openai
        except ImportError:
            raise unavailable(self.name, "openai", "openai") from None
        return openai.AsyncOpenAI(
            api_key=self.api_key,
            base_url=self.base_url,
            default_headers=self.headers or None,
            timeout=openai.Timeout(seconds_or_none(self.timeout), connect=seconds_or_none(self.connect_timeout)),
            max_retries=0,
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
            "messages": [to_openai_message(m) for m in messages],
            "stream": True,
            **{k: options[k] for k in _PASSED if k in options},
        }
        if tools:
            request["tools"] = [{"type": "function", "function": attrs_spec(t)} for t in tools]
        if self.include_usage:
            request["stream_options"] = {"include_usage": True}
        if self.extra_body:
            request["extra_body"] = self.extra_body
        return guarded_stream(self.name, self.retry, self._limiter.get(), lambda: self._once(model, request))

    async def _once(self, model: str, request: dict[str, Any]) -> AsyncGenerator[ProviderEvent, None]:
        from openai.types.chat import ChatCompletionChunk

        client = self._client.get()
        text: list[str] = []
        said, thought = TextJoiner(), TextJoiner()  # a surrogate pair may span two chunks
        calls: dict[int, _Fragments] = {}
        usage = Usage()
        finish: str | None = None
        served_model = model
        seen_events = 0
        async with client.chat.completions.with_streaming_response.create(**request) as response:
            body = response.http_response
            framer = _SSEFramer(body.encoding or "utf-8", self.name, self.max_line_size)
            chunks = cast("AsyncGenerator[bytes, None]", body.aiter_bytes())
            async with aclosing(chunks):
                ended = False
                while not ended:
                    try:
                        events = framer.feed(await chunks.__anext__())
                    except StopAsyncIteration:
                        ended, events = True, framer.feed(b"", end=True)
                    for data in events:
                        raw = json.loads(data)
                        if isinstance(raw, dict) and raw.get("error"):
                            error = raw["error"]
                            message = error.get("message") if isinstance(error, dict) else error
                            raise ProviderError(self.name, clean_text(str(message)), kind="api_error")
                        seen_events += 1
                        if (plain := _plain_delta(raw)) is not None:
                            # the common chunk: read as the model would read it, without building it
                            served_model = plain[0] or served_model
                            if isinstance(plain[2], str) and (piece := thought.push(plain[2])):
                                yield ThinkingDelta(piece)
                            if plain[1] and (piece := said.push(plain[1])):
                                text.append(piece)
                                yield TextDelta(piece)
                            continue
                        chunk = ChatCompletionChunk.model_validate(_lenient(raw))
                        served_model = chunk.model or served_model
                        if chunk.usage is not None:
                            details = chunk.usage.prompt_tokens_details
                            reasoning = chunk.usage.completion_tokens_details
                            usage = checked_usage(
                                self.name,
                                Usage(
                                    input_tokens=chunk.usage.prompt_tokens,
                                    output_tokens=chunk.usage.completion_tokens,
                                    cache_read_tokens=(details.cached_tokens or 0) if details is not None else 0,
                                    reasoning_tokens=(reasoning.reasoning_tokens or 0) if reasoning is not None else 0,
                                ),
                            )
                        for choice in chunk.choices or ():
                            delta = choice.delta
                            if choice.finish_reason is not None:
                                finish = choice.finish_reason
                            extra = delta.model_extra or {}
                            thinking = extra.get("reasoning_content") or extra.get("reasoning")
                            if isinstance(thinking, str) and (piece := thought.push(thinking)):
                                yield ThinkingDelta(piece)
                            if delta.content and (piece := said.push(delta.content)):
                                text.append(piece)
                                yield TextDelta(piece)
                            for fragment in delta.tool_calls or ():
                                acc = calls.setdefault(fragment.index, _Fragments())
                                acc.id = acc.id or fragment.id
                                if fragment.function is not None:
                                    acc.name += fragment.function.name or ""
                                    acc.arguments.append(fragment.function.arguments or "")
        if not seen_events:
            raise ProviderProtocolError(
                self.name, "the response has no chunks: is this a streaming chat completions endpoint?", kind="protocol"
            )
        if piece := thought.flush():
            yield ThinkingDelta(piece)
        if piece := said.flush():
            text.append(piece)
            yield TextDelta(piece)
        for index in sorted(calls):
            yield ToolCallRequested(self._assemble(calls[index]))
        # the prompt's cached part is included in prompt_tokens: keep `input_tokens` new tokens only
        usage = attrs.evolve(usage, input_tokens=max(0, usage.input_tokens - usage.cache_read_tokens))
        yield TurnCompleted(
            text="".join(text),
            finish_reason=FinishReason.STOP,
            usage=usage,
            cost_usd=self.prices.cost(model, usage),
            model=served_model,
            extra={"stop_reason": finish},
        )

    def _assemble(self, acc: _Fragments) -> ToolCall:
        raw = "".join(acc.arguments).strip()
        try:
            arguments = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise ProviderProtocolError(
                self.name, f"tool call {acc.name!r} has arguments that are not JSON", kind="protocol", detail=raw[:200]
            ) from exc
        if not isinstance(arguments, dict):
            raise ProviderProtocolError(
                self.name,
                f"tool call {acc.name!r} has arguments that are not an object",
                kind="protocol",
                detail=raw[:200],
            )
        if not acc.name:
            raise ProviderProtocolError(self.name, "a tool call has no name", kind="protocol", detail=raw[:200])
        call_id = clean_text(acc.id) if acc.id else f"call_{uuid.uuid4().hex[:12]}"
        return ToolCall(call_id, clean_text(acc.name), clean_data(arguments))

    async def aclose(self) -> None:
        """Close this trio run's HTTP client (also done when the run ends).

        Example::

            await model.aclose()
        """
        await self._client.aclose()


async def _close(client: openai.AsyncOpenAI) -> None:
    await client.close()


class _SSEFramer:
    """The ``data`` of each server-sent event until ``[DONE]``, from the body's bytes.

    openai's own ``AsyncStream`` stops reading at ``[DONE]`` and leaves its generators
    suspended (a ResourceWarning under trio on every turn), so the events are framed
    here: ``data:`` lines joined until a blank line; comments (``: keep-alive``),
    ``event:``/``id:``/``retry:`` fields and CR, LF or CRLF line ends are handled; what
    follows ``[DONE]`` is read to the end (so that every generator below ends) and
    ignored. The body is decoded as it comes (``encoding``, undecodable bytes replaced);
    an event of one ``data:`` line, what servers send, is taken in one slice.

    An event longer than ``limit`` characters (its lines and the line ends between them,
    CRLF counted as one), complete or not yet, raises `ProviderProtocolError`: a server
    that never ends an event is not buffered without bound.
    """

    def __init__(self, encoding: str, provider: str = "openai", limit: int = MAX_LINE_SIZE) -> None:
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self.finished = False
        self._provider = provider
        self._limit = limit

    def feed(self, chunk: bytes, *, end: bool = False) -> list[str]:
        """The data of the events that ``chunk`` completes (all that is left if ``end``);
        nothing once ``[DONE]`` was read."""
        if self.finished:
            return []  # drain what follows [DONE]
        text = self._decoder.decode(chunk, end)
        buffer = self._buffer + text if self._buffer else text
        if "\r" in buffer:
            held = buffer.endswith("\r") and not end  # maybe the first half of a CRLF
            buffer = buffer[:-1] if held else buffer
            buffer = buffer.replace("\r\n", "\n").replace("\r", "\n") + ("\r" if held else "")
        if len(buffer) > self._limit:  # no event is longer than the text that holds them all
            self._check_sizes(buffer)
        out: list[str] = []
        start = 0
        while (stop := buffer.find("\n\n", start)) >= 0 and self._block(buffer[start:stop], out):
            start = stop + 2
        self._buffer = buffer[start:] if stop < 0 else ""
        if end and stop < 0:
            self._block(self._buffer, out)
            self._buffer = ""
        return out

    def _check_sizes(self, buffer: str) -> None:
        *complete, pending = buffer.split("\n\n")
        # the line end that may close the event still pending is not part of it
        if len(pending.rstrip("\r\n")) > self._limit or any(len(block) > self._limit for block in complete):
            raise line_too_long(self._provider, "an event", self._limit)

    def _block(self, block: str, out: list[str]) -> bool:
        """One event's lines (a blank line ended them): its data, if any, goes to ``out``;
        False once ``[DONE]`` was read."""
        if block.startswith("data: ") and "\n" not in block:
            self._data.append(block[6:])
        else:
            for line in block.split("\n"):
                if not line:
                    self._dispatch(out)
                elif not line.startswith(":"):
                    field, _, value = line.partition(":")
                    if field == "data":
                        self._data.append(value[1:] if value.startswith(" ") else value)
        self._dispatch(out)
        return not self.finished

    def _dispatch(self, out: list[str]) -> None:
        if not self._data or self.finished:
            return
        joined = self._data[0] if len(self._data) == 1 else "\n".join(self._data)
        self._data = []
        if joined.strip() == "[DONE]":
            self.finished = True
        else:
            out.append(joined)


@functools.cache
def _plain_rules() -> tuple[FieldRules, FieldRules, FieldRules, tuple[str, ...]]:
    """The rules of the chunk's own fields, of its choice's and of its delta's; the keys
    of the reasoning text (fields the model does not define: its extras)."""
    from openai.types.chat import ChatCompletionChunk
    from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

    top = field_rules(ChatCompletionChunk, frozenset({"id", "choices", "created", "model", "object"}))
    choice = field_rules(Choice, frozenset({"delta", "index", "finish_reason"}))
    delta = field_rules(ChoiceDelta, frozenset())
    thinking = tuple(key for key in ("reasoning_content", "reasoning") if key not in ChoiceDelta.model_fields)
    return top, choice, delta, thinking


def _plain_delta(raw: Any) -> tuple[str, str | None, Any] | None:
    """``(model, content, thinking)`` of a chunk that carries one choice's text or
    reasoning and nothing else (no usage, tool call, finish or logprobs), if ``raw`` is
    such a chunk and ``ChatCompletionChunk.model_validate`` would take it as it is: every
    field it defines has its type (strict: no coercion), extra fields are left alone as
    the model leaves them. Anything else is None: the caller validates it in full."""
    if type(raw) is not dict:
        return None
    choices = raw.get("choices")
    if type(choices) is not list or len(choices) != 1:
        return None
    choice = choices[0]
    if type(choice) is not dict or choice.get("finish_reason") is not None:
        return None
    delta = choice.get("delta")
    model = raw.get("model")
    if (
        type(delta) is not dict
        or type(choice.get("index")) is not int
        or type(raw.get("id")) is not str
        or type(raw.get("created")) is not int
        or type(model) is not str
        or raw.get("object") != "chat.completion.chunk"
    ):
        return None
    top, rest, fields, thinking_keys = _plain_rules()
    if not fits(raw, top) or not fits(choice, rest) or not fits(delta, fields):
        return None
    thinking = None
    for key in thinking_keys:
        if thinking := delta.get(key):
            break
    return model, delta.get("content"), thinking


def _lenient(raw: Any) -> Any:
    """Fill in what some OpenAI-compatible servers leave out before the chunk is validated:
    ``choices`` (null or absent in the usage chunk) and a tool call's ``index`` (older
    llama.cpp builds: one call per position)."""
    if not isinstance(raw, dict):
        return raw
    if raw.get("choices") is None:
        raw["choices"] = []
    for choice in raw["choices"]:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        for position, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict) and call.get("index") is None:
                call["index"] = position
    return raw


def to_openai_message(message: Message) -> dict[str, Any]:
    """A transcript `Message` as an OpenAI chat message."""
    if message.role == "tool" and message.tool_result is not None:
        return {
            "role": "tool",
            "tool_call_id": message.tool_result.tool_call_id,
            "content": message.tool_result.content,
        }
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in message.tool_calls
            ],
        }
    return {"role": message.role, "content": message.content}
