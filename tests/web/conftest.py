"""A real tree of scripted sessions behind the web app, served by Hypercorn on 127.0.0.1."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import httpx
import pytest
import trio

import otpy
import sessions
import sessions.web
from sessions import ScriptedProvider, ScriptedReply, SessionServer

TOKEN = "test-token-0123456789abcdef"

# A test stops reading an endless SSE stream in the middle; httpx and httpcore body generators are then
# collected unfinished, which trio reports. Closing the response does close the connection.
UNFINISHED_STREAM = "ignore:Exception ignored in. <async_generator object :pytest.PytestUnraisableExceptionWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/web/" in str(item.path):
            item.add_marker(pytest.mark.filterwarnings(UNFINISHED_STREAM))


@attrs.define
class Web:
    url: str
    token: str
    client: httpx.AsyncClient
    provider: ScriptedProvider
    app: Any

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def slow(text: str, delay: float = 0.02, **kw: Any) -> ScriptedReply:
    """A reply streamed word by word, ``delay`` seconds apart."""
    return ScriptedReply(text, delta_delay=delay, cost_usd=0.001, usage=sessions.Usage(10, 5), **kw)


def default_reply(request: sessions.TurnRequest) -> ScriptedReply:
    prompt = request.prompt
    if prompt.startswith("slow:"):
        words = int(prompt.split(":")[1])
        return slow(" ".join(f"w{i}" for i in range(words)), delay=0.02)
    if prompt.startswith("say:"):
        return slow(prompt[4:], delay=0.01)
    return ScriptedReply(f"You said: {prompt}", cost_usd=0.001, usage=sessions.Usage(10, 5))


def spec_factory(provider: ScriptedProvider) -> Callable[[str, dict[str, Any]], otpy.ChildSpec]:
    def make(name: str, options: dict[str, Any]) -> otpy.ChildSpec:
        allowed = {"max_turns", "max_cost_usd", "max_queued_turns"}
        unknown = set(options) - allowed
        if unknown:
            raise sessions.InvalidOption("options", sorted(unknown), f"allowed: {sorted(allowed)}")
        return SessionServer.child_spec(name=name, provider=provider, restart="transient", **options)

    return make


async def start_web(
    nursery: trio.Nursery,
    names: tuple[str, ...] = ("alpha", "beta"),
    limits: sessions.web.WebLimits | None = None,
    **session_options: Any,
) -> Web:
    provider = ScriptedProvider(default=default_reply)
    children = [SessionServer.child_spec(name=name, provider=provider, **session_options) for name in names]
    agents = otpy.Supervisor.child_spec(children, strategy="one_for_one", name="agents", max_restarts=100)
    dynamic = otpy.DynamicSupervisor.child_spec(name="more")
    await otpy.Supervisor.start_link([agents, dynamic], name="root", max_restarts=100, nursery=nursery)
    app = sessions.web.create_app(
        "root", token=TOKEN, dynamic="more", session_spec=spec_factory(provider), limits=limits
    )
    url = await nursery.start(functools.partial(sessions.web.serve, app))
    client = httpx.AsyncClient(base_url=url, timeout=10)
    return Web(url, TOKEN, client, provider, app)


@pytest.fixture
async def web(nursery: trio.Nursery) -> AsyncIterator[Web]:
    w = await start_web(nursery)
    async with w.client:
        yield w
    nursery.cancel_scope.cancel()


async def read_events(response: httpx.Response, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """Parse SSE frames from a streaming response until ``until(events)`` holds."""
    events: list[dict[str, Any]] = []
    frame: dict[str, Any] = {}
    lines = getattr(response, "sse_lines", None)
    if lines is None:  # one line iterator per response, so that a later call goes on where this one stopped
        lines = response.sse_lines = response.aiter_lines()  # type: ignore[attr-defined]
    async for line in lines:
        if line == "":
            if "event" in frame:
                frame["data"] = json.loads(frame["data"])
                events.append(frame)
                if until(events):
                    return events
            frame = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(": ")
        frame[key] = value
    return events


class ServerThread:
    """The same tree and app in a trio run of its own thread, for synchronous clients
    (Playwright's sync API, schemathesis). Leaving the block stops the tree and the server."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.url = ""
        self.token = TOKEN
        self._ready = threading.Event()
        self._stop: Callable[[], None] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                web = await start_web(nursery, **self.options)
                self.url = web.url
                token = trio.lowlevel.current_trio_token()
                self._stop = lambda: trio.from_thread.run_sync(nursery.cancel_scope.cancel, trio_token=token)
                self._ready.set()
                await trio.sleep_forever()

        try:
            trio.run(main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the web server did not start in 30 s")
        if self._error is not None:
            raise RuntimeError("the web server failed to start") from self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._stop is not None:
            self._stop()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the web server's thread did not stop in 30 s"
