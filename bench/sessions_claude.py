"""Turn latency of the Claude Code provider: duplex vs per-turn, and a SessionServer vs the bare SDK.

Everything runs the real bundled CLI (claude-agent-sdk's wheel) against the tests' fake
Anthropic Messages API on 127.0.0.1 (instant answers), so the figures are the cost of the
machinery, not of a model. Four systems, each a session of ``--turns`` turns; turn 1 is
not timed (it includes the CLI's start-up in duplex mode), turns 2..n are:

- ``sdk``: ``ClaudeSDKClient`` driven directly (``query`` + ``receive_response``);
- ``duplex``: ``sessions.ClaudeCode()`` connection, ``run_turn`` (one CLI per session);
- ``per_turn``: ``sessions.ClaudeCode(transport="per_turn")`` (one CLI per turn, ``--resume``);
- ``server``: a supervised ``SessionServer`` over ``ClaudeCode()``, ``send_message`` by name.

Rounds are interleaved (each round runs every system, in a rotating order); the report
gives the median turn latency with its spread (10th-90th percentile over all timed
turns) and the ratios per_turn/duplex and server/sdk (medians).

Run it from the repository root::

    python bench/sessions_claude.py                  # 5 rounds x 8 turns (about a minute)
    python bench/sessions_claude.py --quick          # 1 round x 3 turns
    python bench/sessions_claude.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure the working tree's sessions
sys.path.insert(0, str(ROOT / "tests" / "sessions" / "claude"))  # the fake Messages API

import claude_agent_sdk  # noqa: E402
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, ResultMessage  # noqa: E402
from fake_api import FakeAnthropic, make_env  # noqa: E402

import otpy  # noqa: E402
import sessions  # noqa: E402
from sessions import SessionServer, TurnCompleted, TurnRequest  # noqa: E402

Turns = Callable[[list[str]], Awaitable[list[float]]]


async def timed(prompts: list[str], one: Callable[[str], Awaitable[None]]) -> list[float]:
    """Run every prompt; the latency of each but the first."""
    latencies = []
    for i, prompt in enumerate(prompts):
        started = time.perf_counter()
        await one(prompt)
        if i:
            latencies.append(time.perf_counter() - started)
    return latencies


async def run_sdk(prompts: list[str], env: dict[str, str], cwd: str) -> list[float]:
    options = ClaudeAgentOptions(env=env, cwd=cwd, model="claude-haiku-4-5", include_partial_messages=True)
    async with ClaudeSDKClient(options) as client:

        async def one(prompt: str) -> None:
            await client.query(prompt)
            async for message in client.receive_response():
                if isinstance(message, ResultMessage):
                    assert not message.is_error, message

        return await timed(prompts, one)


async def run_provider(prompts: list[str], env: dict[str, str], cwd: str, transport: Any) -> list[float]:
    provider = sessions.ClaudeCode(transport=transport, env=env, cwd=cwd, model="claude-haiku-4-5")
    async with provider.connect(sessions.SessionContext("bench")) as conn:
        n = 0

        async def one(prompt: str) -> None:
            nonlocal n
            n += 1
            async for event in conn.run_turn(TurnRequest(n, prompt, ())):
                if isinstance(event, TurnCompleted):
                    assert not event.is_error, event

        return await timed(prompts, one)


async def run_server(prompts: list[str], env: dict[str, str], cwd: str) -> list[float]:
    provider = sessions.ClaudeCode(env=env, cwd=cwd, model="claude-haiku-4-5")
    async with trio.open_nursery() as nursery:
        spec = SessionServer.child_spec(name="bench_agent", provider=provider)
        sup = await otpy.Supervisor.start_link([spec], strategy="one_for_one", nursery=nursery)

        async def one(prompt: str) -> None:
            result = await SessionServer.send_message("bench_agent", prompt)
            assert not result.is_error, result

        try:
            return await timed(prompts, one)
        finally:
            await otpy.stop(sup)


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    deciles = statistics.quantiles(ordered, n=10) if len(ordered) > 1 else [ordered[0]] * 9
    return {"median_ms": statistics.median(ordered) * 1e3, "p10_ms": deciles[0] * 1e3, "p90_ms": deciles[-1] * 1e3}


async def main(rounds: int, turns: int) -> dict[str, Any]:
    fake = FakeAnthropic()
    fake.usage = (10, 5)
    systems: dict[str, Callable[..., Awaitable[list[float]]]] = {
        "sdk": run_sdk,
        "duplex": lambda p, e, c: run_provider(p, e, c, "duplex"),
        "per_turn": lambda p, e, c: run_provider(p, e, c, "per_turn"),
        "server": run_server,
    }
    samples: dict[str, list[float]] = {name: [] for name in systems}
    names = list(systems)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-claude-") as tmp:
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    home = Path(tmp) / f"{name}-{r}"
                    cwd = home / "work"
                    cwd.mkdir(parents=True)
                    prompts = [f"{name} round {r} turn {t}" for t in range(turns)]
                    samples[name] += await systems[name](prompts, make_env(home, fake.url), str(cwd))
                print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    finally:
        fake.close()
    stats = {name: summary(values) for name, values in samples.items()}
    return {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "claude_agent_sdk": claude_agent_sdk.__version__,
        "cli": (Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude.version").read_text().strip(),
        "rounds": rounds,
        "turns_per_session": turns,
        "timed_turns_per_system": {name: len(values) for name, values in samples.items()},
        "stats": stats,
        "ratios": {
            "per_turn/duplex": stats["per_turn"]["median_ms"] / stats["duplex"]["median_ms"],
            "server/sdk": stats["server"]["median_ms"] / stats["sdk"]["median_ms"],
            "duplex/sdk": stats["duplex"]["median_ms"] / stats["sdk"]["median_ms"],
        },
    }


def report(data: dict[str, Any]) -> str:
    lines = [
        f"Claude Code turn latency, turns 2..{data['turns_per_session']} ({data['rounds']} rounds, "
        f"CLI {data['cli']}, claude-agent-sdk {data['claude_agent_sdk']}, fake API on 127.0.0.1)",
        f"{'system':10} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8}",
    ]
    for name, s in data["stats"].items():
        lines.append(f"{name:10} {s['median_ms']:10.1f} {s['p10_ms']:8.1f} {s['p90_ms']:8.1f}")
    lines += [f"{name}: {value:.2f}x" for name, value in data["ratios"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 turns")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    # the bench is an application: it may configure logging (quiet: warnings and up)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rounds, turns = (1, 3) if args.quick else (args.rounds, args.turns)
    data = trio.run(main, rounds, turns)
    print(report(data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
