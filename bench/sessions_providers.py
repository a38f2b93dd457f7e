"""CPU per streamed delta: each official client alone, against its provider and a SessionServer (issue 18).

A long reply (``--deltas``, 2,000 by default) streams from a fake server on 127.0.0.1,
run in a child process of its own so that its CPU is not counted: the tests' fake
OpenAI-compatible and Ollama servers (``tests/sessions/http/fake_llm.py``) and their
fake Anthropic Messages API behind the real bundled Claude Code CLI
(``tests/sessions/claude/fake_api.py``). Three families, three systems each, consuming
the same stream:

- ``openai.client``: ``openai.AsyncOpenAI().chat.completions.create(stream=True)``,
  every chunk's ``choices[0].delta.content`` read; ``openai.provider``:
  ``sessions.OpenAICompatible.chat`` iterated; ``openai.server``: a `SessionServer`
  over it (wrapped in an `AgentLoop`, `InMemoryStore`), ``send_message``;
- ``ollama.client``: ``ollama.AsyncClient().chat(stream=True)``; ``ollama.provider``:
  ``sessions.Ollama.chat``; ``ollama.server``;
- ``claude.client``: ``claude_agent_sdk.ClaudeSDKClient`` with partial messages,
  ``receive_response`` (the SDK reads the CLI's JSON lines and parses each into its
  message types); ``claude.provider``: ``sessions.ClaudeCode`` ``run_turn``;
  ``claude.server``: a `SessionServer` over it. The CLI is a Node process: its CPU is
  not ours and is not counted.

Every client and provider runs under trio (openai's and ollama's clients are on httpx /
httpx2, which run on trio through anyio; no asyncio loop is involved).

The figure is the CPU time of trio's thread (``time.thread_time``) of a ``--deltas``
turn minus that of a two-delta turn, over the difference in deltas: what one more
streamed delta costs. Rounds are interleaved, each system in a rotating order; the
report gives the median per delta with its min-max, and the ratio to the family's
client (the median of the per-round ratios).

``--callgrind`` also counts instructions under valgrind (steady on a loaded machine):
for each system, two child processes run the same turns, one with ``--deltas`` deltas
per turn and one with two, and the difference in instructions, over the
difference in deltas, is the count per delta.

Run it from the repository root::

    python bench/sessions_providers.py                         # 5 rounds, 2,000 deltas
    python bench/sessions_providers.py --quick                 # 1 round, 200 deltas
    python bench/sessions_providers.py --families openai,ollama --callgrind
    python bench/sessions_providers.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure the working tree's sessions

FAMILIES = ("openai", "ollama", "claude")
ROLES = ("client", "provider", "server")
SHORT = 2
"""Deltas in the short turn (the Claude fake echoes ``echo: <prompt>``: two words at least)."""
MODEL = "claude-haiku-4-5"

Turn = Callable[[int], Awaitable[None]]


def piece(i: int) -> str:
    """The i-th delta of a reply: a word and a space, as a model streams them."""
    return f"w{i % 1000:03d} "


# --- the fake servers, each in a child process ------------------------------------------------------


def _load(name: str, path: Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def deltas_of(prompt: str) -> int:
    """How many deltas a prompt asks for: its last word, ``n=<deltas>``."""
    match = re.search(r"n=(\d+)", prompt)
    return int(match.group(1)) if match else 1


def serve_http(family: str) -> None:
    """Serve the fake OpenAI-compatible or Ollama server; print its URL; run until stdin closes."""
    fake = _load("sessions_fake_llm", ROOT / "tests" / "sessions" / "http" / "fake_llm.py")
    replies: dict[int, Any] = {}

    def script(seen: Any) -> Any:
        messages = seen.body["messages"]
        n = deltas_of(str(messages[-1]["content"]))
        if n not in replies:
            pieces = [piece(i) for i in range(n)]
            replies[n] = fake.openai_text(*pieces) if family == "openai" else fake.ollama_text(*pieces)
        return replies[n]

    async def main() -> None:
        async with fake.serve(script) as server:
            print(server.url, flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)

    trio.run(main)


def serve_claude() -> None:
    """Serve the fake Anthropic Messages API; print its URL; run until stdin closes."""
    fake_api = _load("sessions_fake_api", ROOT / "tests" / "sessions" / "claude" / "fake_api.py")
    fake = fake_api.FakeAnthropic()
    fake.usage = (10, 5)
    print(fake.url, flush=True)
    sys.stdin.read()
    fake.close()


@contextlib.contextmanager
def fake_server(family: str) -> Iterator[str]:
    """Start a family's fake server in a child process; its URL."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", family], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the fake {family} server did not start")
        yield url
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


# --- the systems: each an async context manager that yields a turn function -------------------------


def prompt_for(family: str, n: int) -> str:
    """A prompt asking for ``n`` deltas: the HTTP fakes read ``n=``; the Claude fake echoes
    ``echo: <prompt>`` one word per delta, so the prompt is n - 1 words."""
    if family == "claude":
        return " ".join(piece(i).strip() for i in range(max(n - 1, 1)))
    return f"answer with n={n}"


@contextlib.asynccontextmanager
async def openai_client(url: str, home: Path) -> AsyncIterator[Turn]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0)
    try:

        async def turn(n: int) -> None:
            stream = await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": prompt_for("openai", n)}],
                stream=True,
                stream_options={"include_usage": True},
            )
            text = []
            async with stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        text.append(chunk.choices[0].delta.content)
            assert len(text) == n, len(text)

        yield turn
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def ollama_client(url: str, home: Path) -> AsyncIterator[Turn]:
    import ollama

    client = ollama.AsyncClient(host=url)
    try:

        async def turn(n: int) -> None:
            text = []
            parts = await client.chat(
                model="m", messages=[{"role": "user", "content": prompt_for("ollama", n)}], stream=True
            )
            async for part in parts:
                if part.message.content:
                    text.append(part.message.content)
            assert len(text) == n, len(text)

        yield turn
    finally:
        await client._client.aclose()


@contextlib.asynccontextmanager
async def claude_client(url: str, home: Path) -> AsyncIterator[Turn]:
    from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, ResultMessage, StreamEvent

    env = make_claude_env(home, url)
    options = ClaudeAgentOptions(env=env, cwd=str(home / "work"), model=MODEL, include_partial_messages=True)
    async with ClaudeSDKClient(options) as client:

        async def turn(n: int) -> None:
            await client.query(prompt_for("claude", n))
            deltas = 0
            async for message in client.receive_response():
                if isinstance(message, StreamEvent):
                    event = message.event
                    if event.get("type") == "content_block_delta" and event["delta"].get("type") == "text_delta":
                        deltas += 1
                elif isinstance(message, ResultMessage):
                    assert not message.is_error, message
            assert deltas == n, deltas

        yield turn


def make_claude_env(home: Path, url: str) -> dict[str, str]:
    fake_api = sys.modules.get("sessions_fake_api") or _load(
        "sessions_fake_api", ROOT / "tests" / "sessions" / "claude" / "fake_api.py"
    )
    (home / "work").mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = fake_api.make_env(home, url)
    return env


def make_provider(family: str, url: str, home: Path) -> Any:
    import sessions

    if family == "openai":
        return sessions.OpenAICompatible("m", base_url=url + "/v1")
    if family == "ollama":
        return sessions.Ollama("m", host=url)
    return sessions.ClaudeCode(env=make_claude_env(home, url), cwd=str(home / "work"), model=MODEL)


@contextlib.asynccontextmanager
async def provider_alone(family: str, url: str, home: Path) -> AsyncIterator[Turn]:
    import sessions
    from sessions import Message, TextDelta, TurnCompleted, TurnRequest

    provider = make_provider(family, url, home)
    if family == "claude":
        async with provider.connect(sessions.SessionContext("bench")) as conn:
            turns = 0

            async def turn(n: int) -> None:
                nonlocal turns
                turns += 1
                deltas = 0
                async for event in conn.run_turn(TurnRequest(turns, prompt_for(family, n), ())):
                    if isinstance(event, TextDelta):
                        deltas += 1
                    elif isinstance(event, TurnCompleted):
                        assert not event.is_error, event
                assert deltas == n, deltas

            yield turn
        return

    async def chat_turn(n: int) -> None:
        deltas = 0
        async for event in provider.chat([Message("user", prompt_for(family, n))], [], {}):
            if isinstance(event, TextDelta):
                deltas += 1
        assert deltas == n, deltas

    try:
        yield chat_turn
    finally:
        await provider.aclose()


@contextlib.asynccontextmanager
async def through_server(family: str, url: str, home: Path) -> AsyncIterator[Turn]:
    import otpy
    import sessions
    from sessions import SessionServer

    provider = make_provider(family, url, home)
    (home / "work").mkdir(parents=True, exist_ok=True)
    async with trio.open_nursery() as nursery:
        options: dict[str, Any] = {"cwd": str(home / "work")} if family != "claude" else {}
        pid = await SessionServer.start_link(
            provider=provider, store=sessions.InMemoryStore(), nursery=nursery, **options
        )

        async def turn(n: int) -> None:
            result = await SessionServer.send_message(pid, prompt_for(family, n))
            assert not result.is_error, result
            assert len(result.text) >= n, len(result.text)

        try:
            yield turn
        finally:
            await otpy.stop(pid)
            if family != "claude":
                await provider.aclose()


def system(name: str, url: str, home: Path) -> contextlib.AbstractAsyncContextManager[Turn]:
    family, role = name.split(".")
    if role == "client":
        return {"openai": openai_client, "ollama": ollama_client, "claude": claude_client}[family](url, home)
    if role == "provider":
        return provider_alone(family, url, home)
    return through_server(family, url, home)


# --- CPU time, in one process -------------------------------------------------------------------------


async def per_delta(turn: Turn, deltas: int, repeats: int) -> float:
    """Thread CPU seconds per delta: a ``deltas`` turn minus a `SHORT` turn, over the
    difference (the least of ``repeats`` tries of each)."""
    long_turns, short_turns = [], []
    for _ in range(repeats):
        gc.collect()
        start = time.thread_time()
        await turn(deltas)
        long_turns.append(time.thread_time() - start)
        gc.collect()
        start = time.thread_time()
        await turn(SHORT)
        short_turns.append(time.thread_time() - start)
    return (min(long_turns) - min(short_turns)) / (deltas - SHORT)


async def cpu_family(
    family: str, url: str, home: Path, rounds: int, deltas: int, repeats: int
) -> dict[str, list[float]]:
    names = [f"{family}.{role}" for role in ROLES]
    samples: dict[str, list[float]] = {name: [] for name in names}
    async with contextlib.AsyncExitStack() as stack:
        turns: dict[str, Turn] = {}
        for name in names:
            turns[name] = await stack.enter_async_context(system(name, url, home / name))
            await turns[name](min(deltas, 50))  # connected, warm
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                samples[name].append(await per_delta(turns[name], deltas, repeats) * 1e6)
            print(f"{family}: round {r + 1}/{rounds} done", file=sys.stderr)
    return samples


# --- instruction counts, under valgrind -----------------------------------------------------------------


def run_one(name: str, url: str, deltas: int, turns: int) -> None:
    """A child process's work under callgrind: connect, one warm-up turn, ``turns`` turns."""

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="bench-providers-") as tmp:
            async with system(name, url, Path(tmp) / name) as turn:
                await turn(deltas)
                for _ in range(turns):
                    await turn(deltas)

    trio.run(main)


def instructions(name: str, url: str, deltas: int, turns: int) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as tmp:
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/out",
                sys.executable,
                __file__,
                "--one",
                name,
                "--url",
                url,
                "--deltas",
                str(deltas),
                "--turns",
                str(turns),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=False,
        )
    found = re.findall(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"callgrind of {name} failed: {done.stderr[-2000:]}")
    return int(found[-1])


def callgrind_family(family: str, url: str, deltas: int, turns: int) -> dict[str, float]:
    out = {}
    for role in ROLES:
        name = f"{family}.{role}"
        long = instructions(name, url, deltas, turns)
        short = instructions(name, url, SHORT, turns)
        out[name] = (long - short) / (turns * (deltas - SHORT))
        print(f"{name}: {out[name]:,.0f} instructions per delta", file=sys.stderr)
    return out


# --- report -----------------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(samples: dict[str, list[float]]) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for name, values in samples.items():
        family = name.split(".")[0]
        client = samples[f"{family}.client"]
        stats[name] = {
            "us_per_delta": spread(values),
            "ratio_to_client": spread([v / c for v, c in zip(values, client, strict=True)]),
        }
    return stats


def report(data: dict[str, Any]) -> str:
    lines = [
        f"CPU per streamed delta ({data['deltas']}-delta turn minus a {SHORT}-delta turn; {data['rounds']} rounds; "
        f"thread CPU time, min of {data['repeats']} per round)",
        f"{'system':16} {'us/delta':>9} {'min-max':>15} {'x client':>9} {'min-max':>13}"
        + (f" {'instr/delta':>12} {'x client':>9}" if data.get("callgrind") else ""),
    ]
    for name, s in data["stats"].items():
        u, r = s["us_per_delta"], s["ratio_to_client"]
        line = (
            f"{name:16} {u['median']:9.2f} {u['min']:7.2f}-{u['max']:<7.2f} {r['median']:8.2f}x "
            f"{r['min']:5.2f}-{r['max']:<5.2f}"
        )
        if data.get("callgrind") and name in data["callgrind"]:
            family = name.split(".")[0]
            count = data["callgrind"][name]
            line += f" {count:12,.0f} {count / data['callgrind'][f'{family}.client']:8.2f}x"
        lines.append(line)
    return "\n".join(lines)


def versions() -> dict[str, str]:
    import importlib.metadata

    out = {"python": platform.python_version()}
    for package in ("openai", "ollama", "claude-agent-sdk", "httpx", "httpx2", "pydantic", "trio"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[package] = importlib.metadata.version(package)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deltas", type=int, help="deltas in the long turn (default 2,000; 200 with --quick)")
    parser.add_argument("--repeats", type=int, default=2, help="tries of each turn per round (the least is kept)")
    parser.add_argument("--quick", action="store_true", help="1 round, 200-delta turns (a smoke run)")
    parser.add_argument("--callgrind", action="store_true", help="also count instructions under valgrind")
    parser.add_argument("--callgrind-deltas", type=int, default=500)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--turns", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # the bench is an application: it may configure logging (quiet: warnings and up)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.serve:
        serve_claude() if args.serve == "claude" else serve_http(args.serve)
        return 0
    if args.one:
        run_one(args.one, args.url, args.deltas, args.turns)
        return 0
    rounds = 1 if args.quick else args.rounds
    deltas = args.deltas or (200 if args.quick else 2000)
    families = [f for f in args.families.split(",") if f]
    data: dict[str, Any] = {
        "versions": versions(),
        "platform": platform.platform(),
        "deltas": deltas,
        "rounds": rounds,
        "repeats": args.repeats,
        "samples_us": {},
    }
    for family in families:
        with fake_server(family) as url, tempfile.TemporaryDirectory(prefix="bench-providers-") as tmp:
            data["samples_us"].update(trio.run(cpu_family, family, url, Path(tmp), rounds, deltas, args.repeats))
            if args.callgrind:
                data.setdefault("callgrind", {}).update(callgrind_family(family, url, args.callgrind_deltas, 2))
    data["stats"] = summarize(data["samples_us"])
    print(report(data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
