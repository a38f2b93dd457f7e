"""The OpenAI-compatible provider against a fake /v1/chat/completions on 127.0.0.1 (real HTTP, SSE)."""

from __future__ import annotations

import copy
import json
import math
import sys
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pydantic
import pytest
import structlog
import trio
from sessions_fake_llm import (
    Reply,
    _chunk,
    error_reply,
    openai_events,
    openai_text,
    openai_tools,
    openai_usage,
    serve,
    sse,
)

import sessions
from sessions import Message, TextDelta, ThinkingDelta, ToolCallRequested, TurnCompleted

FAST_RETRY = sessions.RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=1.0)


def provider(server: Any, **options: Any) -> sessions.OpenAICompatible:
    return sessions.OpenAICompatible("m", base_url=server.url + "/v1", **options)


async def collect(model: Any, messages: list[Message] | None = None, tools: Any = (), **options: Any) -> list[Any]:
    return [e async for e in model.chat(messages or [Message("user", "hi")], list(tools), options)]


async def test_streams_text_and_takes_usage_from_the_last_chunk() -> None:
    async with serve([openai_text("Hel", "lo", prompt_tokens=50, completion_tokens=20)]) as server:
        events = await collect(provider(server))
    assert events[:2] == [TextDelta("Hel"), TextDelta("lo")]
    done = events[-1]
    assert isinstance(done, TurnCompleted)
    assert done.text == "Hello"
    assert done.usage == sessions.Usage(input_tokens=50, output_tokens=20)
    assert done.extra["stop_reason"] == "stop"


async def test_reasoning_content_is_thinking_and_keepalive_comments_are_skipped() -> None:
    async with serve([openai_text("4", reasoning=["2+2"], keepalive=True)]) as server:
        events = await collect(provider(server))
    assert events[0] == ThinkingDelta("2+2")
    assert events[1] == TextDelta("4")


async def test_tool_call_fragments_are_assembled_by_index() -> None:
    calls = (("call_1", "read", {"path": "docs/a very long name.md"}), ("call_2", "grep", {"pattern": "x+y", "n": 3}))
    async with serve([openai_tools(*calls)]) as server:
        events = await collect(provider(server))
    requested = [e.call for e in events if isinstance(e, ToolCallRequested)]
    assert [(c.id, c.name, c.arguments) for c in requested] == [(i, n, a) for i, n, a in calls]
    assert events[-1].extra["stop_reason"] == "tool_calls"


async def test_request_has_stream_options_tools_and_tool_history() -> None:
    history = [
        Message("user", "read a"),
        Message("assistant", "", tool_calls=(sessions.ToolCall("c1", "read", {"path": "a"}),)),
        Message("tool", tool_result=sessions.ToolResult("c1", "read", "A", False)),
    ]
    spec = sessions.ToolSpec("read", "Read a file", {"type": "object", "properties": {"path": {"type": "string"}}})
    async with serve([openai_text("ok")]) as server:
        model = provider(server, api_key="sk-test", headers={"X-Team": "a"}, extra_body={"top_k": 20})
        await collect(model, history, [spec], temperature=0.1, max_tokens=99, unknown_option=1)
    seen = server.requests[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.headers["x-team"] == "a"
    body = seen.body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.1
    assert body["max_tokens"] == 99
    assert body["top_k"] == 20
    assert "unknown_option" not in body
    assert body["tools"] == [{"type": "function", "function": {"name": "read", **dict(attrs_of(spec))}}]
    assistant = body["messages"][1]
    assert assistant["tool_calls"][0]["function"] == {"name": "read", "arguments": json.dumps({"path": "a"})}
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "c1", "content": "A"}


def attrs_of(spec: sessions.ToolSpec) -> list[tuple[str, Any]]:
    return [("description", spec.description), ("parameters", spec.parameters)]


async def test_api_key_and_base_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve([openai_text("ok")]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
        events = await collect(sessions.OpenAICompatible("m"))
    assert events[-1].text == "ok"
    assert server.requests[0].headers["authorization"] == "Bearer sk-env"


async def test_no_key_at_all_sends_a_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with serve([openai_text("ok")]) as server:
        await collect(provider(server))
    assert server.requests[0].headers["authorization"] == "Bearer not-needed"


async def test_usage_chunk_with_null_choices_and_cached_tokens() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "total_tokens": 110,
        "prompt_tokens_details": {"cached_tokens": 60},
    }
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": None, "usage": usage}
    script = [openai_events(sse(_chunk({"content": "hi"})), sse(_chunk({}, "stop")), sse(chunk), sse("[DONE]"))]
    price = sessions.Price(input_per_mtok=1.0, output_per_mtok=1.0, cache_read_per_mtok=0.1)
    prices = sessions.PriceTable({"m": price})
    async with serve(script) as server:
        events = await collect(provider(server, prices=prices))
    done = events[-1]
    assert done.usage == sessions.Usage(input_tokens=40, output_tokens=10, cache_read_tokens=60)
    assert done.cost_usd == pytest.approx((40 + 10 + 6) / 1_000_000)


async def test_one_connection_is_reused() -> None:
    async with serve([openai_text("a"), openai_text("b")]) as server:
        model = provider(server)
        await collect(model)
        await collect(model)
        await model.aclose()
    assert server.connections == 1


@pytest.mark.parametrize(
    ("status", "error_type", "kind"),
    [
        (401, sessions.ProviderAuthError, "auth"),
        (404, sessions.ProviderError, "not_found"),
        (400, sessions.ProviderError, "bad_request"),
        (413, sessions.ProviderError, "context_length"),
    ],
)
async def test_http_errors_map_to_typed_errors(status: int, error_type: type, kind: str) -> None:
    async with serve([error_reply(status, "nope", openai=True)]) as server:
        with pytest.raises(error_type) as caught:
            await collect(provider(server, retry=FAST_RETRY))
    assert caught.value.kind == kind
    assert caught.value.status == status
    assert "nope" in str(caught.value)
    assert len(server.requests) == 1


async def test_429_honours_retry_after_then_succeeds(autojump_clock: Any) -> None:
    script = [error_reply(429, "rate limited", retry_after="3", openai=True), openai_text("ok")]
    async with serve(script) as server:
        start = trio.current_time()
        events = await collect(provider(server, retry=sessions.RetryPolicy(max_delay=10.0)))
        assert trio.current_time() - start >= 3.0
    assert events[-1].text == "ok"


async def test_retry_after_is_capped_by_max_delay(autojump_clock: Any) -> None:
    script = [error_reply(429, "later", retry_after="3600", openai=True), openai_text("ok")]
    async with serve(script) as server:
        start = trio.current_time()
        await collect(provider(server, retry=sessions.RetryPolicy(max_delay=2.0)))
        assert trio.current_time() - start < 10.0


async def test_5xx_retries_are_bounded(autojump_clock: Any) -> None:
    async with serve([error_reply(502, "bad gateway", openai=True)] * 4) as server:
        with pytest.raises(sessions.ProviderError) as caught:
            await collect(provider(server, retry=FAST_RETRY))
    assert caught.value.kind == "server_error"
    assert len(server.requests) == 3


async def test_malformed_sse_data_is_a_protocol_error_and_the_provider_survives() -> None:
    bad = openai_events(sse(_chunk({"content": "Hi"})), b"data: {not json\n\n")
    async with serve([bad, openai_text("fine")]) as server:
        model = provider(server)
        with pytest.raises(sessions.ProviderProtocolError) as caught:
            await collect(model)
        assert caught.value.kind == "protocol"
        events = await collect(model)
    assert events[-1].text == "fine"


async def test_tool_arguments_that_are_not_json_are_a_protocol_error() -> None:
    first = {"index": 0, "id": "c1", "type": "function", "function": {"name": "read", "arguments": '{"path": '}}
    script = [openai_events(sse(_chunk({"tool_calls": [first]})), sse(_chunk({}, "tool_calls")), sse("[DONE]"))]
    async with serve(script) as server:
        with pytest.raises(sessions.ProviderProtocolError, match="not JSON"):
            await collect(provider(server))


async def test_an_error_event_in_the_stream_is_a_provider_error() -> None:
    script = [openai_events(sse({"error": {"message": "model overloaded", "type": "server_error"}}), sse("[DONE]"))]
    async with serve(script) as server:
        with pytest.raises(sessions.ProviderError, match="model overloaded"):
            await collect(provider(server))


async def test_a_server_that_hangs_times_out(autojump_clock: Any) -> None:
    async with serve([Reply(hang_before_headers=True)]) as server:
        with pytest.raises(sessions.ProviderTimeout):
            await collect(provider(server, timeout=20.0))


async def test_a_dropped_connection_mid_stream_is_a_transport_error() -> None:
    async with serve([Reply(chunks=(sse(_chunk({"content": "Hi"})),), drop=True)]) as server:
        with pytest.raises(sessions.ProviderError) as caught:
            await collect(provider(server))
    assert caught.value.kind in ("transport", "protocol")


async def test_concurrency_limit() -> None:
    async with serve(lambda seen: openai_text("a", delay=0.01)) as server:
        model = provider(server, max_concurrency=2)
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(collect, model)
    assert server.max_in_flight == 2


async def test_usage_can_be_left_out_for_servers_that_refuse_stream_options() -> None:
    script = [openai_events(sse(_chunk({"content": "hi"})), sse(_chunk({}, "stop")), sse("[DONE]"))]
    async with serve(script) as server:
        events = await collect(provider(server, include_usage=False))
    assert "stream_options" not in server.requests[0].body
    assert events[-1].usage == sessions.Usage()


def test_price_table_lookup_by_prefix() -> None:
    table = sessions.PriceTable({"gpt-4o": sessions.Price(2.5, 10.0), "gpt-4o-mini": sessions.Price(0.15, 0.6)})
    assert table.price("gpt-4o-mini-2024-07-18") == sessions.Price(0.15, 0.6)
    assert table.price("gpt-4o-2024-08-06") == sessions.Price(2.5, 10.0)
    assert table.cost("llama3.1", sessions.Usage(1000, 1000)) == 0.0


def test_usage_chunk_helper_is_well_formed() -> None:
    assert json.loads(openai_usage(1, 2)[len(b"data: ") :])["usage"]["total_tokens"] == 3


async def test_tool_calls_without_an_index_are_read_by_position() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "read", "arguments": '{"path": "a"}'}}
    script = [openai_events(sse(_chunk({"tool_calls": [call]})), sse(_chunk({}, "tool_calls")), sse("[DONE]"))]
    async with serve(script) as server:
        events = await collect(provider(server))
    assert [e.call for e in events if isinstance(e, ToolCallRequested)] == [
        sessions.ToolCall("c1", "read", {"path": "a"})
    ]


async def test_a_response_that_is_not_a_stream_is_a_protocol_error() -> None:
    body = {"id": "x", "object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}
    async with serve([Reply(chunks=(json.dumps(body).encode(),))]) as server:
        with pytest.raises(sessions.ProviderProtocolError, match="no chunks"):
            await collect(provider(server))


# --- what a server sends is data: Retry-After, token counts, text (issue 15, items 3 and 7) -------


@pytest.mark.parametrize("retry_after", ["nan", "inf", "-inf", "-5", "soon", "1e400", ""])
async def test_a_retry_after_that_is_no_number_of_seconds_is_ignored(retry_after: str, autojump_clock: Any) -> None:
    """The policy's own backoff applies (within max_delay); the retry happens and succeeds."""
    script = [error_reply(429, "later", retry_after=retry_after, openai=True), openai_text("ok")]
    policy = sessions.RetryPolicy(base_delay=0.5, max_delay=2.0)
    async with serve(script) as server:
        start = trio.current_time()
        events = await collect(provider(server, retry=policy))
        assert trio.current_time() - start <= 0.5  # base_delay * 2**0: the header was not used
    assert events[-1].text == "ok"
    assert len(server.requests) == 2


async def test_a_huge_retry_after_is_capped(autojump_clock: Any) -> None:
    script = [error_reply(503, "later", retry_after="1e300", openai=True), openai_text("ok")]
    async with serve(script) as server:
        start = trio.current_time()
        events = await collect(provider(server, retry=sessions.RetryPolicy(max_delay=2.0)))
        assert trio.current_time() - start == pytest.approx(2.0)
    assert events[-1].text == "ok"


def test_retry_delay_ignores_values_that_are_no_seconds() -> None:
    policy = sessions.RetryPolicy(base_delay=1.0, max_delay=4.0)
    for value in (math.nan, math.inf, -math.inf, -5.0):
        assert 0 <= policy.delay(0, retry_after=value) <= 1.0
    assert policy.delay(0, retry_after=3.0) == 3.0
    assert policy.delay(0, retry_after=0.0) == 0.0
    assert 0 <= policy.delay(10_000) <= 4.0  # no OverflowError for a late attempt


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout", math.nan),
        ("timeout", "30"),
        ("timeout", True),
        ("timeout", 0),
        ("connect_timeout", math.nan),
        ("connect_timeout", -1),
        ("max_concurrency", math.nan),
        ("max_concurrency", "2"),
        ("max_concurrency", 2.5),
        ("max_concurrency", True),
        ("model", 42),
    ],
)
def test_provider_options_are_checked(option: str, value: Any) -> None:
    with pytest.raises(sessions.InvalidOption) as info:
        sessions.OpenAICompatible(**{"model": "m", option: value})
    assert info.value.option == option


def test_an_infinite_timeout_is_no_limit() -> None:
    model = sessions.OpenAICompatible("m", timeout=math.inf)
    assert model.timeout == math.inf


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"max_attempts": math.nan}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"base_delay": math.nan}, "base_delay"),
        ({"base_delay": math.inf}, "base_delay"),
        ({"max_delay": math.nan}, "max_delay"),
        ({"max_delay": -1}, "max_delay"),
        ({"max_delay": "8"}, "max_delay"),
    ],
)
def test_retry_policy_numbers_are_checked(kwargs: dict[str, Any], option: str) -> None:
    with pytest.raises(sessions.InvalidOption) as info:
        sessions.RetryPolicy(**kwargs)
    assert info.value.option == option


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5, "1"], ids=repr)
def test_prices_must_be_finite_and_not_negative(value: Any) -> None:
    with pytest.raises(sessions.InvalidOption):
        sessions.Price(input_per_mtok=value)


def usage_reply(prompt_tokens: Any, completion_tokens: Any) -> Reply:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": 0}
    last = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": usage}
    return openai_events(sse(_chunk({"content": "hi"})), sse(_chunk({}, "stop")), sse(last), sse("[DONE]"))


PRICES = sessions.PriceTable({"m": sessions.Price(input_per_mtok=1.0, output_per_mtok=1.0)})


async def test_negative_token_counts_count_as_zero_and_are_logged() -> None:
    """A negative count would give a negative cost: it is 0, logged at WARNING."""
    async with serve([usage_reply(-1_000_000, 20)]) as server:
        with structlog.testing.capture_logs() as logs:
            events = await collect(provider(server, prices=PRICES))
    done = events[-1]
    assert done.usage.input_tokens == 0
    assert done.usage.output_tokens == 20
    assert done.cost_usd == pytest.approx(20 / 1_000_000)
    warnings = [e for e in logs if e["event"] == "token_count_out_of_range"]
    assert [(w["log_level"], w["field"], w["value"]) for w in warnings] == [("warning", "input_tokens", "-1000000")]


async def test_a_huge_token_count_is_clamped_and_its_cost_stays_a_number() -> None:
    async with serve([usage_reply(10**400, 1)]) as server:
        events = await collect(provider(server, prices=PRICES))
    done = events[-1]
    assert done.usage.input_tokens == 2**53
    assert math.isfinite(done.cost_usd)
    assert done.cost_usd > 1e9


@pytest.mark.parametrize("tokens", ["NaN", "Infinity", '"many"', "1.5"])
async def test_token_counts_that_are_no_integers_are_a_protocol_error(tokens: str) -> None:
    usage = f'{{"prompt_tokens": {tokens}, "completion_tokens": 1, "total_tokens": 1}}'
    last = (
        f'{{"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": {usage}}}'
    )
    script = [openai_events(sse(_chunk({"content": "hi"})), sse(last), sse("[DONE]"))]
    async with serve(script) as server:
        with pytest.raises(sessions.ProviderProtocolError):
            await collect(provider(server, prices=PRICES))


CHUNK_HEAD = '{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, '


def raw_content(*pieces: str) -> Reply:
    """Content deltas written as raw JSON (so that "\\ud83d" reaches the wire as an escape)."""
    chunks = (sse(CHUNK_HEAD + '"delta": {"content": "' + p + '"}, "finish_reason": null}]}') for p in pieces)
    return openai_events(*chunks, sse(_chunk({}, "stop")), openai_usage(), sse("[DONE]"))


async def test_a_surrogate_pair_split_across_chunks_is_joined() -> None:
    """ "\\ud83d" in one chunk and "\\ude00" in the next are one emoji, streamed whole."""
    async with serve([raw_content("smile \\ud83d", "\\ude00!")]) as server:
        events = await collect(provider(server))
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["smile ", "\U0001f600!"]
    assert events[-1].text == "smile \U0001f600!"
    assert events[-1].text.encode("utf-8")


@pytest.mark.parametrize(
    ("pieces", "text"),
    [
        (("a\\ud83d", "b"), "a\ufffdb"),
        (("a\\ud83d",), "a\ufffd"),
        (("\\ude00a",), "\ufffda"),
        (("\\ud83d\\ud83d", "\\ude00"), "\ufffd\U0001f600"),
    ],
)
async def test_a_surrogate_without_its_pair_becomes_the_replacement_character(
    pieces: tuple[str, ...], text: str
) -> None:
    async with serve([raw_content(*pieces)]) as server:
        events = await collect(provider(server))
    assert events[-1].text == text
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == text


async def test_lone_surrogates_in_tool_calls_are_replaced() -> None:
    arguments = json.dumps(json.dumps({"text": "\ud83d!"}))  # the escape survives both encodings
    call = '{"index": 0, "id": "c1", "type": "function", "function": {"name": "write", "arguments": ' + arguments
    chunk = CHUNK_HEAD + '"delta": {"tool_calls": [' + call + "}}]}, " + '"finish_reason": null}]}'
    async with serve([openai_events(sse(chunk), sse(_chunk({}, "tool_calls")), sse("[DONE]"))]) as server:
        events = await collect(provider(server))
    [requested] = [e.call for e in events if isinstance(e, ToolCallRequested)]
    assert requested.arguments == {"text": "\ufffd!"}


def test_without_the_extra_construction_fails_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """No turn ever returns an empty error Result for a missing package: the constructor says so."""
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(sessions.ProviderUnavailable) as info:
        sessions.OpenAICompatible("m")
    assert info.value.kind == "missing_package"
    assert "pip install" in str(info.value)
    assert "[openai]" in str(info.value)


# --- the plain chunk's fast path: it reads only what full validation would accept ------------------

_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.sampled_from(["chat.completion.chunk", "assistant", "user", "default", "fast", "stop", "0", "1"]),
    st.builds(list),
    st.builds(dict),
    st.builds(lambda: [{}]),
)
_PATHS = [
    (),
    ("id",),
    ("object",),
    ("created",),
    ("model",),
    ("choices",),
    ("usage",),
    ("service_tier",),
    ("system_fingerprint",),
    ("obfuscation",),
    ("moderation",),
    ("timings",),
    ("choices", 0),
    ("choices", 0, "index"),
    ("choices", 0, "delta"),
    ("choices", 0, "finish_reason"),
    ("choices", 0, "logprobs"),
    *(
        ("choices", 0, "delta", key)
        for key in (
            "content",
            "role",
            "refusal",
            "tool_calls",
            "audio",
            "function_call",
            "reasoning_content",
            "reasoning",
        )
    ),
]


def _plain_chunk() -> dict[str, Any]:
    chunk = _chunk({"role": "assistant", "content": "Hi", "reasoning_content": "hmm"})
    chunk.update(service_tier="default", system_fingerprint="fp", obfuscation="xyz")
    return chunk


@st.composite
def _perturbed(draw: st.DrawFn) -> dict[str, Any]:
    """A plain chunk with one to three of its fields set to anything (or removed)."""
    chunk = _plain_chunk()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_PATHS))
        if not path:
            continue
        parent: Any = chunk
        for key in path[:-1]:
            try:
                parent = parent[key]
            except (KeyError, IndexError, TypeError):
                break
        else:
            if isinstance(parent, dict) and draw(st.booleans()):
                parent.pop(path[-1], None)
            elif isinstance(parent, dict) or (isinstance(parent, list) and parent and path[-1] == 0):
                parent[path[-1]] = draw(_ANY)
    return chunk


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(raw=_perturbed())
def test_the_fast_path_takes_only_chunks_that_validate_and_reads_them_alike(raw: dict[str, Any]) -> None:
    """What comes from a server is data: a chunk the fast path takes validates in full and
    gives the same model, text and reasoning; any other chunk is left to full validation
    (a malformed one is then a protocol error, as before)."""
    from openai.types.chat import ChatCompletionChunk

    from sessions._providers._openai import _plain_delta

    plain = _plain_delta(copy.deepcopy(raw))
    try:
        chunk = ChatCompletionChunk.model_validate(raw)
    except pydantic.ValidationError:
        assert plain is None
        return
    if plain is None:
        return
    [choice] = chunk.choices
    assert chunk.usage is None
    assert choice.finish_reason is None
    assert not choice.delta.tool_calls
    extra = choice.delta.model_extra or {}
    assert plain == (chunk.model, choice.delta.content, extra.get("reasoning_content") or extra.get("reasoning"))


def test_the_plain_chunk_takes_the_fast_path() -> None:
    from sessions._providers._openai import _plain_delta

    assert _plain_delta(_plain_chunk()) == ("m", "Hi", "hmm")
    assert _plain_delta(_chunk({"content": "Hi"}, "stop")) is None  # a finish: validated in full
