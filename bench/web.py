"""sessions.web benchmarks: a turn over HTTP against a direct call, and SSE fan-out.

    PYTHONPATH=. python bench/web.py             # both rows (about a minute)
    PYTHONPATH=. python bench/web.py --quick     # a smoke run; its numbers mean little

Row a, **turn overhead**: the same `ScriptedProvider` turn (ten text deltas, no delays)
``--turns`` times through ``SessionServer.send_message`` in the process, then the same
number through the web app over loopback HTTP (Hypercorn, httpx, one keep-alive
connection): ``POST /api/sessions/{name}/messages`` answered as JSON, and the same with
``Accept: text/event-stream`` (the turn's events, then the result). The three
alternate, ``--rounds`` times; medians per turn, and the ratio HTTP / direct.

Row b, **SSE fan-out**: ``--sessions`` sessions under one supervisor, the web app over
them, and ``--per-session`` subscribers on each (``GET /api/sessions/{name}/events``),
opened by a second process (so that the server's memory is its own). Once every
subscriber has its snapshot, each session runs one turn of ``--words`` text deltas
``--delta-delay`` s apart, all at once. Reported: the server's RSS before the
subscribers, with them, and after the turns (psutil); the events delivered, and whether
every subscriber got every event once and in order; the time from the sends to the last
subscriber's ``turn_finished``; the server's CPU time over that phase.

Prints a Markdown table and writes ``bench/results/web.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
import trio

import otpy
import sessions
import sessions.web
from sessions import ScriptedProvider, ScriptedReply, SessionServer

TOKEN = "bench-token-0123456789abcdef"
HERE = Path(__file__).resolve().parent


def reply(words: int, delay: float) -> ScriptedReply:
    return ScriptedReply(" ".join(f"w{i}" for i in range(words)), delta_delay=delay, cost_usd=0.001)


async def serve_tree(nursery: trio.Nursery, names: list[str], provider: ScriptedProvider) -> str:
    children = [SessionServer.child_spec(name=name, provider=provider) for name in names]
    await otpy.Supervisor.start_link(children, name="bench", nursery=nursery)
    app = sessions.web.create_app("bench", token=TOKEN)
    url: str = await nursery.start(functools.partial(sessions.web.serve, app))
    return url


# --- row a ----------------------------------------------------------------------------------------


async def row_a(turns: int, rounds: int) -> dict[str, Any]:
    provider = ScriptedProvider(default=lambda request: reply(10, 0.0))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    per_turn: dict[str, list[float]] = {"direct": [], "http_json": [], "http_sse": []}
    async with trio.open_nursery() as nursery:
        url = await serve_tree(nursery, ["direct", "json", "sse"], provider)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:

            async def direct() -> None:
                await SessionServer.send_message("direct", "hi")

            async def http_json() -> None:
                response = await client.post("/api/sessions/json/messages", json={"prompt": "hi"})
                response.raise_for_status()

            async def http_sse() -> None:
                async with client.stream(
                    "POST", "/api/sessions/sse/messages", json={"prompt": "hi"}, headers={"accept": "text/event-stream"}
                ) as response:
                    async for line in response.aiter_lines():
                        if line == "event: result":
                            break

            runs = {"direct": direct, "http_json": http_json, "http_sse": http_sse}
            for fn in runs.values():  # warm up
                for _ in range(min(turns, 20)):
                    await fn()
            for _ in range(rounds):
                for key, fn in runs.items():
                    start = time.perf_counter()
                    for _ in range(turns):
                        await fn()
                    per_turn[key].append((time.perf_counter() - start) / turns)
        nursery.cancel_scope.cancel()
    medians = {key: statistics.median(values) for key, values in per_turn.items()}
    return {
        "turns": turns,
        "rounds": rounds,
        "ms_per_turn": {key: value * 1000 for key, value in medians.items()},
        "ratio_json": medians["http_json"] / medians["direct"],
        "ratio_sse": medians["http_sse"] / medians["direct"],
    }


# --- row b ----------------------------------------------------------------------------------------


async def row_b(n_sessions: int, per_session: int, words: int, delay: float) -> dict[str, Any]:
    provider = ScriptedProvider(default=lambda request: reply(words, delay))
    names = [f"s{i}" for i in range(n_sessions)]
    me = psutil.Process(os.getpid())
    async with trio.open_nursery() as nursery:
        url = await serve_tree(nursery, names, provider)
        await trio.sleep(0.5)  # the app's relays subscribe to every session
        rss_before = me.memory_info().rss
        command = [sys.executable, str(HERE / "web.py"), "--client", url, "--sessions", str(n_sessions)]
        command += ["--per-session", str(per_session)]
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        client = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, env=env)
        try:
            assert client.stdout is not None
            lines = _lines(client.stdout)
            ready = await lines.__anext__()
            assert ready == "ready", ready
            rss_streams = me.memory_info().rss
            cpu_start = sum(me.cpu_times()[:2])
            report = json.loads(await lines.__anext__())
            cpu = sum(me.cpu_times()[:2]) - cpu_start
            rss_after = me.memory_info().rss
        finally:
            with trio.move_on_after(30):
                await client.wait()
            if client.returncode is None:
                client.kill()
                await client.wait()
        nursery.cancel_scope.cancel()
    subscribers = n_sessions * per_session
    return {
        "sessions": n_sessions,
        "subscribers": subscribers,
        "words": words,
        "delta_delay_s": delay,
        "rss_mib": {
            "before": rss_before / 2**20,
            "with_streams": rss_streams / 2**20,
            "after_turns": rss_after / 2**20,
        },
        "kib_per_subscriber": (rss_streams - rss_before) / 1024 / subscribers,
        "server_cpu_s": cpu,
        **report,
    }


async def _lines(stream: trio.abc.ReceiveStream) -> Any:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode()


async def subscribe_raw(host: str, port: int, name: str) -> trio.SocketStream:
    """An SSE request on a plain socket: 1,000 httpx streams would make the client, not the
    server, the bottleneck of row b (the events are counted, not parsed as JSON)."""
    stream = await trio.open_tcp_stream(host, port)
    request = (
        f"GET /api/sessions/{name}/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n"
    )
    await stream.send_all(request.encode())
    return stream


async def client_main(url: str, n_sessions: int, per_session: int) -> None:
    """The subscribers (a process of their own): open all, say ready, send, read, report."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    names = [f"s{i}" for i in range(n_sessions)]
    attached = trio.Semaphore(0)
    finished_at: list[float] = []
    problems: list[str] = []
    delivered = 0

    async def subscriber(name: str) -> None:
        nonlocal delivered
        stream = await subscribe_raw(host, int(port), name)
        expected: int | None = None
        pending = b""
        async with stream:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    problems.append(f"{name}: the stream ended early")
                    return
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(b"id: "):
                        n = int(line.rsplit(b":", 1)[1])
                        if expected is not None and n != expected:
                            problems.append(f"{name}: expected event {expected}, got {n}")
                        expected = n + 1
                    elif line == b"event: snapshot":
                        attached.release()
                    elif line.startswith(b"event: "):
                        delivered += 1
                        if line == b"event: turn_finished":
                            finished_at.append(time.perf_counter())
                            return

    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=60) as client, trio.open_nursery() as nursery:
        for name in names:
            for _ in range(per_session):
                nursery.start_soon(subscriber, name)
        for _ in range(n_sessions * per_session):
            await attached.acquire()
        print("ready", flush=True)
        start = time.perf_counter()
        for name in names:
            nursery.start_soon(functools.partial(client.post, f"/api/sessions/{name}/messages", json={"prompt": "go"}))
    report = {
        "events_delivered": delivered,
        "turn_finished_received": len(finished_at),
        "order_problems": problems[:10],
        "seconds_to_last_subscriber": max(finished_at) - start,
    }
    print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--per-session", type=int, default=10)
    parser.add_argument("--words", type=int, default=50)
    parser.add_argument("--delta-delay", type=float, default=0.01)
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "results" / "web.json"))
    args = parser.parse_args()
    if args.client:
        trio.run(client_main, args.client, args.sessions, args.per_session)
        return
    if args.quick:
        args.turns, args.rounds, args.sessions, args.per_session, args.words = 20, 2, 5, 4, 10
    a = trio.run(row_a, args.turns, args.rounds)
    b = trio.run(row_b, args.sessions, args.per_session, args.words, args.delta_delay)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"machine: {machine}; load average {os.getloadavg()[0]:.2f}\n")
    ms = a["ms_per_turn"]
    print("| row | figure |\n| --- | --- |")
    print(f"| a. turn, direct `send_message` | {ms['direct']:.3f} ms |")
    print(f"| a. turn over HTTP, JSON result | {ms['http_json']:.3f} ms ({a['ratio_json']:.1f}x direct) |")
    print(f"| a. turn over HTTP, SSE stream | {ms['http_sse']:.3f} ms ({a['ratio_sse']:.1f}x direct) |")
    rss = b["rss_mib"]
    print(f"| b. subscribers / sessions | {b['subscribers']} / {b['sessions']} |")
    print(
        f"| b. server RSS before / with streams / after turns | {rss['before']:.1f} / {rss['with_streams']:.1f} / "
        f"{rss['after_turns']:.1f} MiB ({b['kib_per_subscriber']:.1f} KiB per subscriber) |"
    )
    print(
        f"| b. events delivered | {b['events_delivered']} ({b['turn_finished_received']} turn_finished; "
        f"order problems: {len(b['order_problems'])}) |"
    )
    print(
        f"| b. sends to the last subscriber's turn_finished | {b['seconds_to_last_subscriber']:.2f} s "
        f"(the turn itself: {b['words'] * b['delta_delay_s']:.2f} s) |"
    )
    print(f"| b. server CPU over that phase | {b['server_cpu_s']:.2f} s |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "a": a, "b": b}, indent=2) + "\n")


if __name__ == "__main__":
    main()
