"""The Ollama provider against a fake /api/chat on 127.0.0.1 (real HTTP, NDJSON)."""

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
import trio
from sessions_fake_llm import Reply, error_reply, ollama_lines, ollama_text, ollama_tools, serve

import sessions
from sessions import Message, TextDelta, ThinkingDelta, ToolCallRequested, TurnCompleted

FAST_RETRY = sessions.RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=1.0)


async def collect(provider: Any, messages: list[Message] | None = None, tools: Any = (), **options: Any) -> list[Any]:
    return [e async for e in provider.chat(messages or [Message("user", "hi")], list(tools), options)]


async def test_streams_text_then_one_turn_completed_with_token_counts() -> None:
    async with serve([ollama_text("Hel", "lo", prompt_tokens=26, eval_tokens=282)]) as server:
        model = sessions.Ollama("qwen3", host=server.url)
        events = await collect(model)
        await model.aclose()
    assert events[:2] == [TextDelta("Hel"), TextDelta("lo")]
    done = events[-1]
    assert isinstance(done, TurnCompleted)
    assert [type(e) for e in events].count(TurnCompleted) == 1
    assert done.text == "Hello"
    assert done.usage == sessions.Usage(input_tokens=26, output_tokens=282)
    assert done.cost_usd == 0.0
    assert done.extra["stop_reason"] == "stop"


async def test_thinking_is_a_thinking_delta() -> None:
    async with serve([ollama_text("42", thinking=["let me", " think"])]) as server:
        events = await collect(sessions.Ollama("m", host=server.url))
    assert events[:2] == [ThinkingDelta("let me"), ThinkingDelta(" think")]


async def test_tool_calls_with_object_arguments_and_no_id_get_an_id() -> None:
    script = [ollama_tools(("read", {"path": "a.txt"}), ("grep", {"pattern": "x"}), text="Looking.")]
    async with serve(script) as server:
        events = await collect(sessions.Ollama("m", host=server.url))
    calls = [e.call for e in events if isinstance(e, ToolCallRequested)]
    assert [(c.name, c.arguments) for c in calls] == [("read", {"path": "a.txt"}), ("grep", {"pattern": "x"})]
    assert all(c.id for c in calls)
    assert len({c.id for c in calls}) == 2


async def test_request_carries_model_tools_history_and_options() -> None:
    history = [
        Message("system", "be brief"),
        Message("user", "read a"),
        Message("assistant", "", tool_calls=(sessions.ToolCall("c1", "read", {"path": "a"}),)),
        Message("tool", tool_result=sessions.ToolResult("c1", "read", "A", False)),
    ]
    spec = sessions.ToolSpec("read", "Read a file", {"type": "object", "properties": {"path": {"type": "string"}}})
    async with serve([ollama_text("ok")]) as server:
        model = sessions.Ollama("m", host=server.url, options={"num_ctx": 8192}, keep_alive="1m", api_key="k1")
        await collect(model, history, [spec], model="other", temperature=0.2, max_tokens=64)
    seen = server.requests[0]
    assert seen.path == "/api/chat"
    assert seen.headers["authorization"] == "Bearer k1"
    body = seen.body
    assert body["model"] == "other"
    assert body["stream"] is True
    assert body["keep_alive"] == "1m"
    assert body["options"] == {"num_ctx": 8192, "temperature": 0.2, "num_predict": 64}
    assert body["tools"][0]["function"]["name"] == "read"
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool"]
    assert body["messages"][2]["tool_calls"] == [{"function": {"name": "read", "arguments": {"path": "a"}}}]
    assert body["messages"][3]["tool_name"] == "read"
    assert body["messages"][3]["content"] == "A"


async def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_OLLAMA_KEY", "from-env")
    async with serve([ollama_text("ok")]) as server:
        await collect(sessions.Ollama("m", host=server.url, api_key_env="MY_OLLAMA_KEY", headers={"X-Team": "a"}))
    assert server.requests[0].headers["authorization"] == "Bearer from-env"
    assert server.requests[0].headers["x-team"] == "a"


async def test_one_connection_is_reused_across_requests() -> None:
    async with serve([ollama_text("a"), ollama_text("b"), ollama_text("c")]) as server:
        model = sessions.Ollama("m", host=server.url)
        for _ in range(3):
            await collect(model)
        await model.aclose()
    assert len(server.requests) == 3
    assert server.connections == 1


def test_a_provider_is_usable_from_several_trio_runs() -> None:
    model_holder: list[sessions.Ollama] = []

    async def one_run() -> str:
        async with serve([ollama_text("hi")]) as server:
            if not model_holder:
                model_holder.append(sessions.Ollama("m", host=server.url))
            model_holder[0].host = server.url  # each run has its own fake server
            events = await collect(model_holder[0])
        return str(events[-1].text)

    assert trio.run(one_run) == "hi"
    assert trio.run(one_run) == "hi"


@pytest.mark.parametrize(
    ("status", "error_type", "kind"),
    [
        (401, sessions.ProviderAuthError, "auth"),
        (403, sessions.ProviderAuthError, "auth"),
        (404, sessions.ProviderError, "not_found"),
        (400, sessions.ProviderError, "bad_request"),
        (413, sessions.ProviderError, "context_length"),
    ],
)
async def test_http_errors_map_to_typed_errors_without_retry(status: int, error_type: type, kind: str) -> None:
    async with serve([error_reply(status, "model 'm' not found"), ollama_text("never")]) as server:
        with pytest.raises(error_type) as caught:
            await collect(sessions.Ollama("m", host=server.url, retry=FAST_RETRY))
    assert caught.value.kind == kind
    assert caught.value.status == status
    assert caught.value.retryable is False
    assert "not found" in str(caught.value)
    assert len(server.requests) == 1


async def test_5xx_and_429_are_retried_then_succeed(autojump_clock: Any) -> None:
    script = [error_reply(503, "loading model"), error_reply(429, "busy", retry_after="2"), ollama_text("ok")]
    async with serve(script) as server:
        start = trio.current_time()
        events = await collect(sessions.Ollama("m", host=server.url, retry=sessions.RetryPolicy(max_delay=5.0)))
        waited = trio.current_time() - start
    assert events[-1].text == "ok"
    assert len(server.requests) == 3
    assert waited >= 2.0  # the Retry-After of the 429


async def test_retries_are_bounded(autojump_clock: Any) -> None:
    async with serve([error_reply(500, "boom")] * 5) as server:
        with pytest.raises(sessions.ProviderError) as caught:
            await collect(sessions.Ollama("m", host=server.url, retry=FAST_RETRY))
    assert caught.value.kind == "server_error"
    assert caught.value.retryable is True
    assert len(server.requests) == 3


async def test_rate_limit_is_its_own_type(autojump_clock: Any) -> None:
    async with serve([error_reply(429, "slow down")]) as server:
        with pytest.raises(sessions.ProviderRateLimited):
            await collect(sessions.Ollama("m", host=server.url, retry=sessions.RetryPolicy(max_attempts=1)))


async def test_malformed_json_line_is_a_protocol_error() -> None:
    good = json.dumps({"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False}).encode()
    async with serve([ollama_lines(good + b"\n", b"{not json\n"), ollama_text("again")]) as server:
        model = sessions.Ollama("m", host=server.url)
        with pytest.raises(sessions.ProviderProtocolError) as caught:
            await collect(model)
        assert "malformed chunk" in str(caught.value)
        # the provider survives: the next request works
        events = await collect(model)
    assert events[-1].text == "again"


async def test_a_chunk_of_the_wrong_shape_is_a_protocol_error() -> None:
    bad = json.dumps({"model": "m", "message": {"role": "assistant", "tool_calls": [{"function": {}}]}, "done": False})
    async with serve([ollama_lines(bad.encode() + b"\n")]) as server:
        with pytest.raises(sessions.ProviderProtocolError):
            await collect(sessions.Ollama("m", host=server.url))


async def test_an_error_line_in_the_stream_is_a_provider_error() -> None:
    async with serve([ollama_lines(b'{"error": "out of memory"}\n')]) as server:
        with pytest.raises(sessions.ProviderError, match="out of memory"):
            await collect(sessions.Ollama("m", host=server.url))


async def test_a_stream_without_done_is_a_protocol_error() -> None:
    line = json.dumps({"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False}).encode()
    async with serve([ollama_lines(line + b"\n")]) as server:
        with pytest.raises(sessions.ProviderProtocolError, match="without a done line"):
            await collect(sessions.Ollama("m", host=server.url))


async def test_a_server_that_hangs_times_out(autojump_clock: Any) -> None:
    async with serve([Reply(hang_before_headers=True)]) as server:
        with pytest.raises(sessions.ProviderTimeout) as caught:
            await collect(sessions.Ollama("m", host=server.url, timeout=30.0))
    assert caught.value.phase == "idle"


async def test_a_server_that_stalls_mid_stream_times_out(autojump_clock: Any) -> None:
    first = json.dumps({"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False}).encode()
    async with serve([Reply(chunks=(first + b"\n",), hang=True)]) as server:
        events: list[Any] = []

        async def consume() -> None:
            async for event in sessions.Ollama("m", host=server.url, timeout=5.0).chat([Message("user", "hi")], [], {}):
                events.append(event)

        with pytest.raises(sessions.ProviderTimeout):
            await consume()
    assert events == [TextDelta("Hi")]  # not retried once text was streamed
    assert len(server.requests) == 1


async def test_nobody_listening_is_provider_unavailable(autojump_clock: Any) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(sessions.ProviderUnavailable) as caught:
            await collect(sessions.Ollama("m", host=f"http://127.0.0.1:{port}", retry=FAST_RETRY))
    assert caught.value.kind == "connect"


async def test_concurrency_limit_caps_requests_in_flight() -> None:
    async with serve(lambda seen: ollama_text("a", "b", delay=0.01)) as server:
        model = sessions.Ollama("m", host=server.url, max_concurrency=3)
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(collect, model)
        await model.aclose()
    assert len(server.requests) == 12
    assert server.max_in_flight == 3


async def test_prices_give_a_cost() -> None:
    prices = sessions.PriceTable({"m": sessions.Price(input_per_mtok=1.0, output_per_mtok=2.0)})
    async with serve([ollama_text("ok", prompt_tokens=1_000, eval_tokens=500)]) as server:
        events = await collect(sessions.Ollama("m", host=server.url, prices=prices))
    assert events[-1].cost_usd == pytest.approx(0.002)


def test_options_are_checked() -> None:
    with pytest.raises(sessions.InvalidOption):
        sessions.Ollama("")
    with pytest.raises(sessions.InvalidOption):
        sessions.Ollama("m", max_concurrency=0)
    with pytest.raises(sessions.InvalidOption):
        sessions.Ollama("m", timeout=-1)


def test_it_is_a_model_provider() -> None:
    assert isinstance(sessions.Ollama("m"), sessions.ModelProvider)


async def test_timeouts_are_retried_only_when_asked(autojump_clock: Any) -> None:
    policy = sessions.RetryPolicy(max_attempts=2, retry_on=frozenset({"timeout"}))
    async with serve([Reply(hang_before_headers=True), ollama_text("late but fine")]) as server:
        events = await collect(sessions.Ollama("m", host=server.url, timeout=5.0, retry=policy))
    assert events[-1].text == "late but fine"


def test_retry_policy_is_checked_and_bounded() -> None:
    with pytest.raises(sessions.InvalidOption):
        sessions.RetryPolicy(max_attempts=0)
    policy = sessions.RetryPolicy(base_delay=1.0, max_delay=4.0)
    assert all(0 <= policy.delay(attempt) <= 4.0 for attempt in range(20))
    assert policy.delay(0, retry_after=100.0) == 4.0


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("", "http://127.0.0.1:11434"),
        ("example.com", "http://example.com:11434"),
        ("example.com:8080/", "http://example.com:8080"),
        (":9999", "http://127.0.0.1:9999"),
        ("[::1]:7000", "http://[::1]:7000"),
        ("https://ollama.example.com/", "https://ollama.example.com"),
    ],
)
def test_host_is_read_as_ollama_reads_it(host: str, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", host)
    assert sessions.Ollama("m").host == url


def test_retry_after_may_be_an_http_date_or_garbage() -> None:
    from sessions._providers._http_common import retry_after_of

    class Response:
        def __init__(self, value: str) -> None:
            self.headers = {"retry-after": value}

    class Failed(Exception):
        def __init__(self, value: str) -> None:
            self.response = Response(value)

    assert retry_after_of(Failed("Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0  # in the past
    assert retry_after_of(Failed("soon")) is None
    assert retry_after_of(Failed("2.5")) == 2.5
    assert sessions.RetryPolicy(retry_on={"timeout"}).retry_on == frozenset({"timeout"})  # type: ignore[arg-type]


def test_the_client_of_a_run_is_closed_when_the_run_ends() -> None:
    clients: list[Any] = []

    async def one_run() -> None:
        async with serve([ollama_text("hi")]) as server:
            model = sessions.Ollama("m", host=server.url)
            await collect(model)
            clients.append(model._client.get())  # the client this run made
            assert not clients[0].is_closed
        # no aclose(): the end of the run closes it

    trio.run(one_run)
    assert clients[0].is_closed
    trio.run(sessions.Ollama("m").aclose)  # nothing made in this run: nothing to close


def test_aclose_outside_a_run_is_harmless() -> None:
    import asyncio

    asyncio.run(sessions.OpenAICompatible("m").aclose())


# --- what a server sends is data (issue 15, items 3 and 7) -----------------------------------------


def content_line(raw: str) -> bytes:
    """An NDJSON line whose content is written raw (so "\\ud83d" is an escape on the wire)."""
    head = '{"model": "m", "created_at": "2026-12-06T00:00:00Z", "message": {"role": "assistant", "content": "'
    return (head + raw + '"}, "done": false}\n').encode()


async def test_a_surrogate_pair_split_across_lines_is_joined_and_a_lone_one_replaced() -> None:
    from sessions_fake_llm import ollama_done

    script = [ollama_lines(content_line("hi \\ud83d"), content_line("\\ude00 and \\ud83d"), ollama_done())]
    async with serve(script) as server:
        events = await collect(sessions.Ollama("m", host=server.url))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["hi ", "\U0001f600 and ", "\ufffd"]
    assert events[-1].text == "hi \U0001f600 and \ufffd"


async def test_negative_token_counts_count_as_zero() -> None:
    from sessions_fake_llm import ollama_done

    prices = sessions.PriceTable({"m": sessions.Price(input_per_mtok=1.0, output_per_mtok=1.0)})
    script = [ollama_lines(content_line("hi"), ollama_done(prompt_tokens=-(10**9), eval_tokens=5))]
    async with serve(script) as server:
        events = await collect(sessions.Ollama("m", host=server.url, prices=prices))
    assert events[-1].usage == sessions.Usage(input_tokens=0, output_tokens=5)
    assert events[-1].cost_usd == pytest.approx(5 / 1_000_000)


async def test_a_nan_token_count_is_a_protocol_error() -> None:
    done = (
        b'{"model": "m", "created_at": "2026-12-06T00:00:00Z", "message": {"role": "assistant", "content": ""}, '
        b'"done": true, "prompt_eval_count": NaN, "eval_count": 1}\n'
    )
    async with serve([ollama_lines(content_line("hi"), done)]) as server:
        with pytest.raises(sessions.ProviderProtocolError):
            await collect(sessions.Ollama("m", host=server.url))


@pytest.mark.parametrize("retry_after", ["nan", "inf", "-5", "soon"])
async def test_a_retry_after_that_is_no_number_of_seconds_is_ignored(retry_after: str, autojump_clock: Any) -> None:
    script = [error_reply(429, "busy", retry_after=retry_after), ollama_text("ok")]
    async with serve(script) as server:
        events = await collect(sessions.Ollama("m", host=server.url, retry=FAST_RETRY))
    assert events[-1].text == "ok"


def test_without_the_extra_construction_fails_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ollama", None)
    with pytest.raises(sessions.ProviderUnavailable) as info:
        sessions.Ollama("m")
    assert info.value.kind == "missing_package"
    assert "pip install" in str(info.value)
    assert "[ollama]" in str(info.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [("timeout", math.nan), ("connect_timeout", math.nan), ("max_concurrency", math.nan), ("max_concurrency", "4")],
)
def test_numbers_are_checked_nan_included(option: str, value: Any) -> None:
    with pytest.raises(sessions.InvalidOption) as info:
        sessions.Ollama(**{"model": "m", option: value})
    assert info.value.option == option


# --- the plain line's fast path: it reads only what full validation would accept -------------------

_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.sampled_from(["assistant", "0", "1"]),
    st.builds(list),
    st.builds(dict),
    st.builds(lambda: [{}]),
)
_PATHS = [
    *((key,) for key in ("model", "created_at", "done", "done_reason", "total_duration", "eval_count", "logprobs")),
    ("message",),
    ("extra_field",),
    *(("message", key) for key in ("role", "content", "thinking", "images", "tool_name", "tool_calls")),
]


def _plain_line() -> dict[str, Any]:
    return {
        "model": "m",
        "created_at": "2026-12-06T00:00:00Z",
        "message": {"role": "assistant", "content": "Hi", "thinking": "hmm"},
        "done": False,
    }


@st.composite
def _perturbed(draw: st.DrawFn) -> dict[str, Any]:
    """A plain line with one to three of its fields set to anything (or removed)."""
    line = _plain_line()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_PATHS))
        parent: Any = line
        if len(path) == 2:
            parent = line.get("message")
        if isinstance(parent, dict):
            if draw(st.booleans()):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(_ANY)
    return line


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(raw=_perturbed())
def test_the_fast_path_takes_only_lines_that_validate_and_reads_them_alike(raw: dict[str, Any]) -> None:
    """What comes from a server is data: a line the fast path takes validates in full and
    gives the same text and thinking; any other line is left to full validation."""
    import ollama

    from sessions._providers._ollama import _plain_line

    plain = _plain_line(copy.deepcopy(raw))
    try:
        part = ollama.ChatResponse.model_validate(raw)
    except pydantic.ValidationError:
        assert plain is None
        return
    if plain is None:
        return
    assert part.done is False
    assert not part.message.tool_calls
    assert plain == (part.message.content, part.message.thinking)


def test_the_plain_line_takes_the_fast_path() -> None:
    from sessions._providers._ollama import _plain_line as plain_of

    assert plain_of(_plain_line()) == ("Hi", "hmm")
    assert plain_of(_plain_line() | {"done": True}) is None  # the last line: validated in full
