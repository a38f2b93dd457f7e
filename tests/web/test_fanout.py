"""Many SSE subscribers on many streaming sessions: each gets every event of the turn, once,
in order; the app's memory is measured (bench/web.py runs the full size: 1,000 subscribers
on 100 sessions, and reports the figures in docs/performance.md)."""

from __future__ import annotations

import os
from typing import Any

import httpx
import psutil
import trio

from .conftest import read_events, start_web

SESSIONS = 10
PER_SESSION = 10


async def test_every_subscriber_gets_every_event_once(nursery: trio.Nursery) -> None:
    names = tuple(f"s{i}" for i in range(SESSIONS))
    web = await start_web(nursery, names=names)
    process = psutil.Process(os.getpid())
    limits = httpx.Limits(max_connections=SESSIONS * PER_SESSION + 50)
    received: dict[tuple[str, int], list[dict[str, Any]]] = {}
    attached = trio.Semaphore(0)
    before = process.memory_info().rss
    async with httpx.AsyncClient(base_url=web.url, timeout=30, limits=limits) as client:

        async def subscriber(name: str, index: int) -> None:
            async with client.stream("GET", f"/api/sessions/{name}/events", headers=web.headers) as response:
                await read_events(response, lambda e: len(e) == 1)
                attached.release()
                received[name, index] = await read_events(response, lambda e: e[-1]["event"] == "turn_finished")

        results: dict[str, dict[str, Any]] = {}

        async def send(name: str) -> None:
            reply = await client.post(f"/api/sessions/{name}/messages", headers=web.headers, json={"prompt": "slow:20"})
            results[name] = reply.json()

        with trio.fail_after(30):
            async with trio.open_nursery() as streams:
                for name in names:
                    for index in range(PER_SESSION):
                        streams.start_soon(subscriber, name, index)
                for _ in range(SESSIONS * PER_SESSION):
                    await attached.acquire()
                streaming = process.memory_info().rss
                assert web.app.state.web.hub.streams == SESSIONS * PER_SESSION
                for name in names:
                    streams.start_soon(send, name)
    peak = process.memory_info().rss
    print(
        f"\n{SESSIONS * PER_SESSION} subscribers on {SESSIONS} sessions: RSS {before / 2**20:.1f} MiB before, "
        f"{streaming / 2**20:.1f} MiB with the streams open, {peak / 2**20:.1f} MiB after the turns"
    )
    for (name, _), events in received.items():
        numbers = [int(e["id"].rsplit(":", 1)[1]) for e in events]
        assert numbers == list(range(1, len(numbers) + 1))  # every event, once, in order
        text = "".join(e["data"]["text"] for e in events if e["event"] == "text_delta")
        assert text == results[name]["text"]
    while web.app.state.web.hub.streams:  # noqa: ASYNC110 (every stream is let go when its client leaves)
        await trio.sleep(0.01)
    nursery.cancel_scope.cancel()
