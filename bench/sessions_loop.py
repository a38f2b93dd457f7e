"""The agent loop's cost, against a fake model server on 127.0.0.1 (real HTTP, in-process).

    PYTHONPATH=. python bench/sessions_loop.py                 # both parts, 7 rounds
    PYTHONPATH=. python bench/sessions_loop.py --quick         # a smoke run
    PYTHONPATH=. python bench/sessions_loop.py --sessions 1000 --limit 8 --rounds 5

Part 1, **loop overhead per iteration**: one turn of ``--iterations`` model calls (each
asks for one tool call, the last answers), run by `sessions.AgentLoop` over
`sessions.Ollama` / `sessions.OpenAICompatible`, beside the same loop written by hand
on the official client alone (``ollama.AsyncClient.chat`` / ``AsyncOpenAI``'s streaming
``chat.completions.create``) calling the same tool function. Both talk to the same fake
server in the same process, so the difference is what the loop adds per iteration:
events, hooks, the permission check, the tool runner, the retry and limit wrappers.

Part 2, **many concurrent sessions**: ``--sessions`` sessions (default 1,000), each one
turn of two model calls, all at once against one fake server that answers after
``--latency`` seconds, through one provider whose concurrency limit is ``--limit``;
beside the same with the client alone and a `trio.CapacityLimiter`, and the same again
through ``--sessions`` `sessions.SessionServer` processes (each started before the clock
runs, writing to one `InMemoryStore`). Reports the wall
time, turns per second, the most requests the server saw in flight, and turn latency.

Rounds are interleaved, and alternate which of the two goes first; each figure is the median over
rounds with the min-max spread, and each ratio is the median of the per-round ratios.
The machine shares its cores with other work: read ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sessions  # noqa: E402
from sessions import SessionContext, TurnRequest  # noqa: E402


def _load_fakes() -> Any:
    spec = importlib.util.spec_from_file_location("sessions_fake_llm", ROOT / "tests/sessions/http/fake_llm.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sessions_fake_llm"] = module
    spec.loader.exec_module(module)
    return module


fakes = _load_fakes()


async def noop(n: int) -> str:
    """Return a short result."""
    return f"result {n}"


NOOP = sessions.Tool.from_function(noop, read_only=True)


def script(iterations: int, *, openai: bool, latency: float = 0.0) -> Callable[[Any], Any]:
    """Answer each request: a tool call until the turn has had ``iterations`` model calls, then text."""

    def reply(seen: Any) -> Any:
        messages = seen.body["messages"]
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        step = sum(1 for m in messages[last_user:] if m["role"] == "assistant")
        if step + 1 < iterations:
            made = (
                fakes.openai_tools((f"c{step}", "noop", {"n": step}))
                if openai
                else fakes.ollama_tools(("noop", {"n": step}))
            )
        else:
            made = fakes.openai_text("done") if openai else fakes.ollama_text("done")
        if latency:
            made = fakes.Reply(
                status=made.status, chunks=(latency, *made.chunks), content_type=made.content_type, headers=made.headers
            )
        return made

    return reply


# --- the loop, and the same loop on the client alone ----------------------------------------


async def loop_turn(conn: sessions.LoopSession, prompt: str) -> int:
    iterations = 0
    async for event in conn.run_turn(TurnRequest(1, prompt, ())):
        if isinstance(event, sessions.TurnCompleted):
            assert not event.is_error, event.error
            iterations = event.num_turns
    return iterations


async def ollama_client_turn(client: Any, prompt: str, limiter: trio.CapacityLimiter | None = None) -> int:
    """The loop by hand on ollama.AsyncClient: call, run the tool calls, send the results, again."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    tools = [{"type": "function", "function": {"name": NOOP.name, "description": NOOP.description,
                                               "parameters": NOOP.parameters}}]  # fmt: skip
    iterations = 0
    while True:
        iterations += 1
        text, calls = "", []
        if limiter is not None:
            await limiter.acquire()
        try:
            async for part in await client.chat(model="m", messages=messages, tools=tools, stream=True):
                text += part.message.content or ""
                calls += part.message.tool_calls or []
        finally:
            if limiter is not None:
                limiter.release()
        messages.append({"role": "assistant", "content": text, "tool_calls": calls})
        if not calls:
            return iterations
        for call in calls:
            result = await noop(**call.function.arguments)
            messages.append({"role": "tool", "content": result, "tool_name": call.function.name})


async def openai_client_turn(client: Any, prompt: str, limiter: trio.CapacityLimiter | None = None) -> int:
    """The loop by hand on AsyncOpenAI: fragments by index, run the calls, send the results, again."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    tools = [{"type": "function", "function": {"name": NOOP.name, "description": NOOP.description,
                                               "parameters": NOOP.parameters}}]  # fmt: skip
    iterations = 0
    while True:
        iterations += 1
        text = ""
        calls: dict[int, dict[str, str]] = {}
        if limiter is not None:
            await limiter.acquire()
        try:
            stream = await client.chat.completions.create(
                model="m", messages=messages, tools=tools, stream=True, stream_options={"include_usage": True}
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    for fragment in choice.delta.tool_calls or ():
                        acc = calls.setdefault(fragment.index, {"id": "", "name": "", "arguments": ""})
                        acc["id"] = acc["id"] or (fragment.id or "")
                        acc["name"] += fragment.function.name or ""
                        acc["arguments"] += fragment.function.arguments or ""
        finally:
            if limiter is not None:
                limiter.release()
        wire = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls.values()]  # fmt: skip
        messages.append({"role": "assistant", "content": text or None, **({"tool_calls": wire} if wire else {})})
        if not calls:
            return iterations
        for call in calls.values():
            result = await noop(**json.loads(call["arguments"]))
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})


# --- part 1 ----------------------------------------------------------------------------------


async def timed(turns: int, one: Callable[[], Awaitable[int]]) -> float:
    """Seconds per model call over ``turns`` turns."""
    gc.collect()
    start = time.perf_counter()
    iterations = 0
    for _ in range(turns):
        iterations += await one()
    return (time.perf_counter() - start) / iterations


async def part1(kind: str, rounds: int, turns: int, iterations: int) -> dict[str, Any]:
    openai = kind == "openai"
    async with fakes.serve(script(iterations, openai=openai)) as server:
        if openai:
            import openai as openai_pkg

            model: Any = sessions.OpenAICompatible("m", base_url=server.url + "/v1")
            client: Any = openai_pkg.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            by_hand = openai_client_turn
        else:
            import ollama

            model = sessions.Ollama("m", host=server.url)
            client = ollama.AsyncClient(host=server.url)
            by_hand = ollama_client_turn
        loop = sessions.AgentLoop(model, tools=[NOOP], max_iterations=iterations + 1)
        loop_s: list[float] = []
        client_s: list[float] = []
        async with loop.connect(SessionContext("bench", cwd=str(ROOT))) as conn:
            for _ in range(2):  # warm up: connections, imports, caches
                await loop_turn(conn, "warm")
                await by_hand(client, "warm")
            for index in range(rounds):  # alternate which goes first
                if index % 2:
                    client_s.append(await timed(turns, lambda: by_hand(client, "go")))
                loop_s.append(await timed(turns, lambda: loop_turn(conn, "go")))
                if not index % 2:
                    client_s.append(await timed(turns, lambda: by_hand(client, "go")))
        await model.aclose()
        await client.close()
    ratios = [a / b for a, b in zip(loop_s, client_s, strict=True)]
    return {"kind": kind, "loop_s": loop_s, "client_s": client_s, "ratios": ratios}


# --- part 2 ----------------------------------------------------------------------------------


DRIVERS = ("loop", "client", "server")
DRIVER_NAMES = {"loop": "AgentLoop", "client": "client + CapacityLimiter", "server": "SessionServer + AgentLoop"}


async def many(kind: str, n: int, limit: int, latency: float, *, driver: str) -> dict[str, Any]:
    openai = kind == "openai"
    async with fakes.serve(script(2, openai=openai, latency=latency)) as server:
        latencies: list[float] = []
        if openai:
            import openai as openai_pkg

            model: Any = sessions.OpenAICompatible("m", base_url=server.url + "/v1", max_concurrency=limit)
            client: Any = openai_pkg.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            by_hand = openai_client_turn
        else:
            import ollama

            model = sessions.Ollama("m", host=server.url, max_concurrency=limit)
            client = ollama.AsyncClient(host=server.url)
            by_hand = ollama_client_turn
        limiter = trio.CapacityLimiter(limit)
        loop = sessions.AgentLoop(model, tools=[NOOP])

        async def session(index: int) -> None:
            start = time.perf_counter()
            if driver == "loop":
                async with loop.connect(SessionContext(f"s{index}", cwd=str(ROOT))) as conn:
                    assert await loop_turn(conn, f"go {index}") == 2
            elif driver == "server":
                result = await sessions.SessionServer.send_message(servers[index], f"go {index}")
                assert result.num_turns == 2, result
            else:
                assert await by_hand(client, f"go {index}", limiter) == 2
            latencies.append(time.perf_counter() - start)

        async with trio.open_nursery() as servers_nursery:
            servers: list[Any] = []
            if driver == "server":  # started before the clock runs: the turns are measured, not the starts
                store = sessions.InMemoryStore()
                for _ in range(n):
                    servers.append(
                        await sessions.SessionServer.start_link(
                            provider=loop, store=store, cwd=str(ROOT), nursery=servers_nursery
                        )
                    )
            gc.collect()
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for index in range(n):
                    nursery.start_soon(session, index)
            wall = time.perf_counter() - start
            for pid in servers:
                await sessions.SessionServer.stop(pid)
        await model.aclose()
        await client.close()
        latencies.sort()
        return {
            "wall_s": wall,
            "turns_per_s": n / wall,
            "max_in_flight": server.max_in_flight,
            "connections": server.connections,
            "p50_s": latencies[len(latencies) // 2],
            "p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        }


async def part2(kind: str, rounds: int, n: int, limit: int, latency: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {driver: [] for driver in DRIVERS}
    for driver in DRIVERS:  # warm up each
        await many(kind, min(n, 50), limit, latency, driver=driver)
    for index in range(rounds):  # rotate which goes first, so none always gets the fresher machine
        order = DRIVERS[index % len(DRIVERS) :] + DRIVERS[: index % len(DRIVERS)]
        for driver in order:
            runs[driver].append(await many(kind, n, limit, latency, driver=driver))
    return {"kind": kind, **runs}


# --- report ----------------------------------------------------------------------------------


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    med = statistics.median(values) * scale
    return f"{med:.{digits}f} ({min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f})"


def machine() -> dict[str, Any]:
    import httpx
    import openai

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "trio": trio.__version__,
        "httpx": httpx.__version__,
        "openai": openai.__version__,
        "ollama": importlib.metadata.version("ollama"),
    }


def report(one: list[dict[str, Any]], two: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"## Loop overhead per iteration ({args.iterations} model calls a turn, {args.turns} turns a round, "
        f"{args.rounds} rounds)",
        "",
        "| provider | AgentLoop µs/iteration | client alone µs/iteration | overhead µs | loop/client |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in one:
        overhead = [a - b for a, b in zip(row["loop_s"], row["client_s"], strict=True)]
        lines.append(
            f"| {row['kind']} | {spread(row['loop_s'], 1e6, 0)} | {spread(row['client_s'], 1e6, 0)} | "
            f"{spread(overhead, 1e6, 0)} | {spread(row['ratios'], 1, 2)} |"
        )
    lines += [
        "",
        f"## {args.sessions} concurrent sessions, one turn of 2 model calls each, limit {args.limit}, "
        f"{args.latency * 1000:g} ms server latency ({args.rounds2} rounds)",
        "",
        "| provider | driver | wall s | turns/s | max in flight | p50 turn s | p99 turn s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in two:
        for driver in DRIVERS:
            runs = row[driver]
            lines.append(
                f"| {row['kind']} | {DRIVER_NAMES[driver]} | "
                f"{spread([r['wall_s'] for r in runs], 1, 2)} | {spread([r['turns_per_s'] for r in runs], 1, 0)} | "
                f"{max(r['max_in_flight'] for r in runs)} | {spread([r['p50_s'] for r in runs], 1, 2)} | "
                f"{spread([r['p99_s'] for r in runs], 1, 2)} |"
            )
        for driver in ("loop", "server"):
            ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(row[driver], row["client"], strict=True)]
            lines.append(f"| {row['kind']} | wall ratio {driver}/client | {spread(ratios, 1, 2)} | | | | |")
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


async def main(args: argparse.Namespace) -> None:
    kinds = args.providers.split(",")
    one = [await part1(kind, args.rounds, args.turns, args.iterations) for kind in kinds]
    two = [await part2(kind, args.rounds2, args.sessions, args.limit, args.latency) for kind in kinds]
    for row in two:
        for driver in ("loop", "server"):
            assert all(r["max_in_flight"] <= args.limit for r in row[driver]), "the concurrency limit was not kept"
    info = machine()
    print(json.dumps(info))
    print(report(one, two, args))
    if args.out != "none":
        write_json(Path(args.out), {"machine": info, "args": vars(args), "part1": one, "part2": two})
        print(f"\nwrote {args.out}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", default="ollama,openai")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of part 1")
    parser.add_argument("--turns", type=int, default=20, help="turns per round of part 1")
    parser.add_argument("--iterations", type=int, default=10, help="model calls per turn in part 1")
    parser.add_argument("--rounds2", type=int, default=3, help="rounds of part 2")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=8, help="the provider's max_concurrency in part 2")
    parser.add_argument("--latency", type=float, default=0.002, help="seconds the server waits before answering")
    parser.add_argument("--out", default=str(ROOT / "bench/results/sessions_loop.json"))
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds, few turns, 50 sessions")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.turns, args.iterations, args.rounds2 = 2, 3, 3, 1
        args.sessions = min(args.sessions, 50)
        if args.out == str(ROOT / "bench/results/sessions_loop.json"):
            args.out = "none"
    return args


if __name__ == "__main__":
    trio.run(main, parse())
