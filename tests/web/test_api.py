"""The web API over real HTTP: Hypercorn on 127.0.0.1, httpx as the client, scripted sessions."""

from __future__ import annotations

import functools
import json
from typing import Any

import httpx
import pytest
import trio

import otpy
import sessions.web

from .conftest import TOKEN, Web, read_events, start_web


def ids(events: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    out = []
    for event in events:
        sid, turn, n = event["id"].rsplit(":", 2)
        out.append((sid, int(turn), int(n)))
    return out


def node_of(tree: dict[str, Any], name: str) -> dict[str, Any]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if node["name"] == name:
            return node
        stack.extend(node["children"])
    raise KeyError(name)


# --- authorisation and headers ---------------------------------------------------------------


async def test_everything_but_health_needs_the_token(web: Web) -> None:
    c = web.client
    assert (await c.get("/healthz")).json() == {"ok": True}
    for path in ("/", "/api/sessions", "/api/tree", "/openapi.json", "/static/dashboard.js", "/api/events"):
        response = await c.get(path)
        assert response.status_code == 401, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
    wrong = await c.get("/api/sessions", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
    assert wrong.status_code == 401
    assert (await c.post("/api/sessions/alpha/interrupt")).status_code == 401


async def test_the_token_url_sets_a_strict_http_only_cookie_once(web: Web) -> None:
    c = web.client
    assert (await c.get("/", params={"token": "wrong-token-wrong-token"})).status_code == 401
    response = await c.get("/", params={"token": TOKEN})
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    page = await c.get("/")  # the client keeps the cookie
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert (await c.get("/api/sessions")).status_code == 200  # a GET by cookie is fine


async def test_state_changes_by_cookie_need_the_csrf_header_and_same_origin(web: Web) -> None:
    c = web.client
    await c.get("/", params={"token": TOKEN})
    csrf = web.app.state.web.csrf
    assert f'content="{csrf}"' in (await c.get("/")).text
    refused = await c.post("/api/sessions/alpha/interrupt")
    assert refused.status_code == 403
    assert "X-CSRF-Token" in refused.json()["detail"]
    forged = await c.post("/api/sessions/alpha/interrupt", headers={"X-CSRF-Token": csrf[:-1] + "0"})
    assert forged.status_code == 403
    cross = await c.post(
        "/api/sessions/alpha/interrupt", headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    )
    assert cross.status_code == 403
    assert "cross-origin" in cross.json()["detail"]
    same = await c.post("/api/sessions/alpha/interrupt", headers={"X-CSRF-Token": csrf, "Origin": web.url})
    assert same.status_code == 200
    assert same.json() == {"interrupted": False}


def test_a_short_token_is_refused() -> None:
    with pytest.raises(sessions.InvalidOption, match="token"):
        sessions.web.create_app("root", token="short")


# --- sessions ------------------------------------------------------------------------------------


async def test_list_state_history_and_transcript(web: Web) -> None:
    c, h = web.client, web.headers
    for prompt in ("one", "two", "three"):
        response = await c.post("/api/sessions/alpha/messages", headers=h, json={"prompt": prompt})
        assert response.status_code == 200
        assert response.json()["text"] == f"You said: {prompt}"
    listing = (await c.get("/api/sessions", headers=h)).json()["sessions"]
    assert [s["name"] for s in listing] == ["alpha", "beta"]
    alpha = listing[0]
    assert alpha["turns"] == 3
    assert alpha["status"] == "idle"
    assert alpha["restarts"] == 0
    assert alpha["cost_usd"] == pytest.approx(0.003)
    assert alpha["tokens"] == 45
    assert alpha["last_activity"] is not None
    state = (await c.get("/api/sessions/alpha", headers=h)).json()
    assert state["session_id"] == alpha["session_id"]
    page = (await c.get("/api/sessions/alpha/history", headers=h, params={"offset": 1, "limit": 1})).json()
    assert page["total"] == 3
    assert [r["turn"] for r in page["items"]] == [2]
    transcript = (await c.get("/api/sessions/alpha/messages", headers=h, params={"limit": 2})).json()
    assert transcript["total"] == 6
    assert [(m["role"], m["content"]) for m in transcript["items"]] == [("user", "one"), ("assistant", "You said: one")]


async def test_errors_are_problems_with_the_python_meaning(nursery: trio.Nursery) -> None:
    web = await start_web(nursery, names=("alpha",), max_turns=1, max_queued_turns=1)
    async with web.client as c:
        h = web.headers
        missing = await c.get("/api/sessions/nobody", headers=h)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert (await c.get("/api/nowhere", headers=h)).status_code == 404
        bad_page = await c.get("/api/sessions/alpha/history", headers=h, params={"limit": 0})
        assert bad_page.status_code == 422
        malformed = await c.post(
            "/api/sessions/alpha/messages", headers={**h, "content-type": "application/json"}, content=b"{"
        )
        assert malformed.status_code == 400
        no_prompt = await c.post("/api/sessions/alpha/messages", headers=h, json={"prompt": 3})
        assert no_prompt.status_code == 422
        bad_option = await c.post("/api/sessions", headers=h, json={"name": "x", "options": {"colour": 1}})
        assert bad_option.status_code == 422
        assert bad_option.json()["option"] == "options"
        too_big = await c.post("/api/sessions/alpha/messages", headers=h, json={"prompt": "x" * 70_000})
        assert too_big.status_code == 413

        async def long_turn() -> None:
            await c.post("/api/sessions/alpha/messages", headers=h, json={"prompt": "slow:30"})

        nursery.start_soon(long_turn)
        await wait_for_status(c, h, "alpha", "running")
        queued = trio.Event()

        async def queued_turn() -> None:
            queued.set()
            response = await c.post("/api/sessions/alpha/messages", headers=h, json={"prompt": "later"})
            assert response.status_code == 409  # max_turns=1 is spent by the time it would start

        nursery.start_soon(queued_turn)
        await queued.wait()
        while (await c.get("/api/sessions/alpha", headers=h)).json()["queued"] < 1:  # noqa: ASYNC110 (polled over HTTP, as a client would)
            await trio.sleep(0.01)
        busy = await c.post("/api/sessions/alpha/messages", headers=h, json={"prompt": "one too many"})
        assert busy.status_code == 429
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["title"] == "Session busy"
        assert busy.json()["queued"] == 1
        await wait_for_status(c, h, "alpha", "idle")
        spent = await c.post("/api/sessions/alpha/messages", headers=h, json={"prompt": "more"})
        assert spent.status_code == 409
        assert spent.json()["kind"] == "turns"
        assert spent.json()["limit"] == 1
    nursery.cancel_scope.cancel()


async def wait_for_status(c: httpx.AsyncClient, h: dict[str, str], name: str, status: str) -> None:
    with trio.fail_after(10):
        while (await c.get(f"/api/sessions/{name}", headers=h)).json()["status"] != status:  # noqa: ASYNC110 (polled over HTTP, as a client would)
            await trio.sleep(0.01)


async def test_send_streaming_gives_the_turns_events_then_the_result(web: Web) -> None:
    headers = {**web.headers, "accept": "text/event-stream"}
    with trio.fail_after(10):
        async with web.client.stream(
            "POST", "/api/sessions/beta/messages", headers=headers, json={"prompt": "slow:4"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = await read_events(response, lambda e: e[-1]["event"] == "result")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "turn_started"
    assert kinds[-2:] == ["turn_finished", "result"]
    text = "".join(e["data"]["text"] for e in events if e["event"] == "text_delta")
    assert text == events[-1]["data"]["text"] == "w0 w1 w2 w3"
    numbers = [n for _, _, n in ids(events[:-1])]
    assert numbers == list(range(1, len(numbers) + 1))


async def test_a_refused_streaming_send_is_a_problem_not_a_stream(nursery: trio.Nursery) -> None:
    web = await start_web(nursery, names=("alpha",), max_turns=0)
    async with web.client as c:
        response = await c.post(
            "/api/sessions/alpha/messages",
            headers={**web.headers, "accept": "text/event-stream"},
            json={"prompt": "hi"},
        )
        assert response.status_code == 409
        assert response.json()["title"] == "Budget exceeded"
    nursery.cancel_scope.cancel()


async def test_interrupt_ends_the_running_turn(web: Web) -> None:
    c, h = web.client, web.headers
    results: list[dict[str, Any]] = []

    async def turn() -> None:
        results.append((await c.post("/api/sessions/alpha/messages", headers=h, json={"prompt": "slow:200"})).json())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(turn)
        await wait_for_status(c, h, "alpha", "running")
        assert (await c.post("/api/sessions/alpha/interrupt", headers=h)).json() == {"interrupted": True}
    assert results[0]["finish_reason"] == "interrupted"


async def test_start_and_stop_sessions_under_the_dynamic_supervisor(web: Web) -> None:
    c, h = web.client, web.headers
    started = await c.post("/api/sessions", headers=h, json={"name": "gamma", "options": {"max_turns": 5}})
    assert started.status_code == 201
    assert started.json()["name"] == "gamma"
    assert (await c.post("/api/sessions", headers=h, json={"name": "gamma"})).status_code == 409
    reply = await c.post("/api/sessions/gamma/messages", headers=h, json={"prompt": "hello"})
    assert reply.json()["text"] == "You said: hello"
    assert "gamma" in [s["name"] for s in (await c.get("/api/sessions", headers=h)).json()["sessions"]]
    assert (await c.delete("/api/sessions/alpha", headers=h)).status_code == 409  # not the app's to stop
    assert (await c.delete("/api/sessions/gamma", headers=h)).json() == {"stopped": "gamma"}
    assert otpy.whereis("gamma") is None
    assert (await c.get("/api/sessions/gamma", headers=h)).status_code == 404


# --- subscriptions ----------------------------------------------------------------------------


async def test_reconnect_with_last_event_id_mid_turn_has_no_gap_and_no_duplicate(web: Web) -> None:
    c, h = web.client, web.headers
    results: list[dict[str, Any]] = []

    async def turn() -> None:
        results.append((await c.post("/api/sessions/alpha/messages", headers=h, json={"prompt": "slow:60"})).json())

    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            async with c.stream("GET", "/api/sessions/alpha/events", headers=h) as response:
                nursery.start_soon(turn)
                first = await read_events(response, lambda e: sum(x["event"] == "text_delta" for x in e) >= 5)
            assert first[0]["event"] == "snapshot"
            assert first[0]["data"]["turn"] is None
            await trio.sleep(0.2)  # the turn goes on while this client is away
            last_id = first[-1]["id"]
            async with c.stream(
                "GET", "/api/sessions/alpha/events", headers={**h, "Last-Event-ID": last_id}
            ) as response:
                second = await read_events(response, lambda e: e[-1]["event"] == "turn_finished")
    assert second[0]["event"] == "text_delta"  # what it missed, not a snapshot
    numbers = [n for _, _, n in ids(first[1:] + second)]
    assert numbers == list(range(1, len(numbers) + 1))  # never a gap, never a duplicate
    assert {turn for _, turn, _ in ids(first[1:] + second)} == {1}
    text = "".join(e["data"]["text"] for e in first + second if e["event"] == "text_delta")
    assert text == results[0]["text"] == " ".join(f"w{i}" for i in range(60))


@pytest.mark.parametrize(
    "limits",
    [sessions.web.WebLimits(replay_events=4), sessions.web.WebLimits(replay_bytes=600)],
    ids=["events", "bytes"],
)
async def test_reconnect_past_the_replay_buffer_gets_a_snapshot_then_the_rest(
    nursery: trio.Nursery, limits: sessions.web.WebLimits
) -> None:
    web = await start_web(nursery, names=("alpha",), limits=limits)
    c, h = web.client, web.headers
    results: list[dict[str, Any]] = []

    async def turn() -> None:
        results.append((await c.post("/api/sessions/alpha/messages", headers=h, json={"prompt": "slow:40"})).json())

    async with c, trio.open_nursery() as turns:
        with trio.fail_after(10):
            async with c.stream("GET", "/api/sessions/alpha/events", headers=h) as response:
                turns.start_soon(turn)
                first = await read_events(response, lambda e: sum(x["event"] == "text_delta" for x in e) >= 3)
            relay = web.app.state.web.hub.relays["alpha"]
            seen = ids(first)[-1][2]
            while relay.replay[0][0] <= seen + 1:  # noqa: ASYNC110 (until the replay no longer has what it missed)
                await trio.sleep(0.01)
            async with c.stream(
                "GET", "/api/sessions/alpha/events", headers={**h, "Last-Event-ID": first[-1]["id"]}
            ) as response:
                second = await read_events(response, lambda e: e[-1]["event"] == "turn_finished")
    snapshot = second[0]
    assert snapshot["event"] == "snapshot"
    _, _, covered = ids([snapshot])[0]
    rest = second[1:]
    assert [n for _, _, n in ids(rest)] == list(range(covered + 1, covered + 1 + len(rest)))
    text = snapshot["data"]["turn"]["text"] + "".join(e["data"]["text"] for e in rest if e["event"] == "text_delta")
    assert text == results[0]["text"]
    nursery.cancel_scope.cancel()


async def test_a_kill_and_the_restart_are_seen_by_an_open_stream(web: Web) -> None:
    c, h = web.client, web.headers

    async def turn() -> None:
        response = await c.post("/api/sessions/alpha/messages", headers=h, json={"prompt": "slow:100"})
        assert response.status_code == 503
        assert response.json()["title"] == "Session exited"

    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            async with c.stream("GET", "/api/sessions/alpha/events", headers=h) as response:
                nursery.start_soon(turn)
                events = await read_events(response, lambda e: sum(x["event"] == "text_delta" for x in e) >= 3)
                tree = (await c.get("/api/tree", headers=h)).json()["tree"]
                pid = node_of(tree, "alpha")["pid"]
                assert (await c.post(f"/api/processes/{pid}/kill", headers=h)).json() == {"killed": pid}
                events += await read_events(response, lambda e: e[-1]["event"] == "turn_finished")
    kinds = [e["event"] for e in events]
    assert kinds[-3:] == ["session_down", "session_up", "turn_finished"]
    assert events[-1]["data"]["result"]["finish_reason"] == "interrupted"
    assert events[-2]["data"]["restarts"] == 1
    numbers = [n for _, _, n in ids(events[1:])]
    assert numbers == list(range(1, len(numbers) + 1))
    tree = (await c.get("/api/tree", headers=h)).json()["tree"]
    assert node_of(tree, "alpha")["restarts"] == 1
    assert (await c.post(f"/api/processes/{pid}/kill", headers=h)).status_code == 404  # that process is gone


async def test_subscribers_per_session_are_bounded(nursery: trio.Nursery) -> None:
    limits = sessions.web.WebLimits(max_subscribers_per_session=2)
    web = await start_web(nursery, names=("alpha",), limits=limits)
    async with web.client as c, trio.open_nursery() as streams:
        opened = trio.Semaphore(0)
        done = trio.Event()

        async def hold() -> None:
            async with c.stream("GET", "/api/sessions/alpha/events", headers=web.headers) as response:
                assert response.status_code == 200
                opened.release()
                await done.wait()

        streams.start_soon(hold)
        streams.start_soon(hold)
        await opened.acquire()
        await opened.acquire()
        third = await c.get("/api/sessions/alpha/events", headers=web.headers)
        assert third.status_code == 503
        assert third.json()["title"] == "Too many subscribers"
        done.set()
    nursery.cancel_scope.cancel()


async def test_a_slow_client_is_dropped_and_the_session_does_not_wait(nursery: trio.Nursery) -> None:
    limits = sessions.web.WebLimits(client_buffer=8)
    web = await start_web(nursery, names=("alpha",), limits=limits)
    big = "x" * 65536
    web.provider.replies.append(sessions.ScriptedReply(deltas=(big,) * 400))
    hub = web.app.state.web.hub
    async with web.client as c:
        with trio.fail_after(20):
            async with c.stream("GET", "/api/sessions/alpha/events", headers=web.headers) as response:
                assert hub.streams == 1
                reply = await c.post("/api/sessions/alpha/messages", headers=web.headers, json={"prompt": "go"})
                assert len(reply.json()["text"]) == 400 * 65536  # the turn finished while the client read nothing
                while hub.streams:  # noqa: ASYNC110 (a count with no event to wait on)
                    await trio.sleep(0.01)
                assert hub.relays["alpha"].clients == set()
                with pytest.raises(httpx.RemoteProtocolError):
                    async for _ in response.aiter_bytes():
                        pass
    nursery.cancel_scope.cancel()


async def test_openapi_lists_every_route(web: Web) -> None:
    spec = (await web.client.get("/openapi.json", headers=web.headers)).json()
    routes = {(r.path, m) for r in web.app.routes for m in (r.methods or ()) if m != "HEAD"}
    described = {
        (path.replace("{pid}", "{pid:int}"), method.upper()) for path, ops in spec["paths"].items() for method in ops
    }
    undocumented = {("/", "GET"), ("/static/{file}", "GET"), ("/openapi.json", "GET")}
    assert routes - undocumented == described
    json.dumps(spec)


async def test_the_body_limit_is_exact_with_and_without_a_content_length(nursery: trio.Nursery) -> None:
    web = await start_web(nursery, names=("alpha",), limits=sessions.web.WebLimits(max_body_bytes=100))
    json_headers = {**web.headers, "content-type": "application/json"}

    def body(size: int) -> bytes:
        prefix, suffix = b'{"prompt": "', b'"}'
        return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix

    async def chunked(data: bytes) -> Any:
        for i in range(0, len(data), 30):
            yield data[i : i + 30]

    async with web.client as c:
        url = "/api/sessions/alpha/messages"
        assert (await c.post(url, headers=json_headers, content=body(100))).status_code == 200
        assert (await c.post(url, headers=json_headers, content=body(101))).status_code == 413
        assert (await c.post(url, headers=json_headers, content=chunked(body(100)))).status_code == 200
        assert (await c.post(url, headers=json_headers, content=chunked(body(101)))).status_code == 413
    nursery.cancel_scope.cancel()


async def test_a_relay_that_fails_hurts_neither_the_app_nor_another_session(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessions.web import _hub

    original = _hub.Relay.on_event

    def broken(self: _hub.Relay, event: Any) -> None:
        if self.name == "alpha":
            raise RuntimeError("a relay bug")
        original(self, event)

    monkeypatch.setattr(_hub.Relay, "on_event", broken)
    web = await start_web(nursery)
    async with web.client as c, trio.open_nursery() as turns:
        h = web.headers
        with trio.fail_after(10):
            async with c.stream("GET", "/api/sessions/beta/events", headers=h) as response:
                turns.start_soon(
                    functools.partial(c.post, "/api/sessions/alpha/messages", headers=h, json={"prompt": "hi"})
                )
                turns.start_soon(
                    functools.partial(c.post, "/api/sessions/beta/messages", headers=h, json={"prompt": "say:fine"})
                )
                events = await read_events(response, lambda e: e[-1]["event"] == "turn_finished")
        assert events[-1]["data"]["result"]["text"] == "fine"
        assert (await c.get("/api/sessions/alpha/history", headers=h)).json()[
            "total"
        ] == 1  # the session itself is fine
        assert (await c.get("/healthz")).json() == {"ok": True}
    nursery.cancel_scope.cancel()
