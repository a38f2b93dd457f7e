"""Three supervised agent sessions; one is killed mid-turn and carries on where it was.

    python examples/sessions_demo.py [--fast]

What it shows, in about ten seconds (two with ``--fast``):

1. A supervisor (``one_for_one``) starts three `SessionServer` children under registered
   names, ``researcher``, ``writer`` and ``reviewer``, each writing its turns ahead to
   one SQLite file in a temporary directory.
2. Messages go to the sessions *by name*, concurrently. The supervision tree is
   redrawn as it goes; each session adds its own status line (state, turns, cost).
3. ``writer`` is killed in the middle of a turn (``otpy.exit(pid, "kill")``: no
   cleanup at all). Its caller gets ``otpy.ServerExited`` at once. The supervisor
   starts it again under the same name and the same session id; it reloads its log,
   records the turn the kill cut short as *interrupted* (it is never silently retried:
   tools may have had side effects), and answers the next message with its history,
   turn count and cost intact.

Offline by default: the sessions run on `sessions.ScriptedProvider`. One small
function, `pick_provider`, chooses a real provider instead when one is configured
(``python3 dev.py demo`` then installs its extra): ``ANTHROPIC_API_KEY`` -> ``sessions.ClaudeCode``,
``OLLAMA_HOST`` -> ``sessions.Ollama`` (``$OLLAMA_MODEL``, default ``llama3.1``),
``OPENAI_BASE_URL`` -> ``sessions.OpenAICompatible`` (``$OPENAI_MODEL``). Pass
``--offline`` to ignore them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog
import trio

import otpy
import sessions
from sessions import ScriptedProvider, ScriptedReply, ScriptedTool, SessionServer

NAMES = ("researcher", "writer", "reviewer")

PROMPTS = {
    "researcher": ["Which files describe the supervision tree?", "And where are restarts counted?"],
    "writer": ["Draft a one-line summary of otpy.", "Now a longer paragraph about restarts, please.", "Where were we?"],
    "reviewer": ["Is the summary accurate?", "Anything to add?"],
}


def scripted(speed: float) -> ScriptedProvider:
    """The offline provider: canned answers, streamed word by word, with costs and a tool call."""

    def reply(request: sessions.TurnRequest) -> ScriptedReply:
        n = request.turn
        prompt = request.prompt.lower()
        if "where were we" in prompt:
            earlier = [m.content for m in request.messages if m.role == "user"]
            text = f"We were on turn {n - 1}: you asked {earlier[-1]!r}. That turn was cut short; shall I redo it?"
        elif "longer paragraph" in prompt:
            text = " ".join(["Restarts start the process again from its initial state;"] * 6)
        elif "files" in prompt:
            return ScriptedReply(
                "docs/supervisor.md and docs/tree.md.",
                tools=(
                    ScriptedTool("list_files", {"path": "docs"}, result="supervisor.md tree.md", delay=0.3 * speed),
                ),
                cost_usd=0.0042,
                delta_delay=0.08 * speed,
            )
        else:
            text = f"Answer {n}: otpy brings Erlang/OTP supervision trees to trio."
        return ScriptedReply(text, cost_usd=round(0.001 * (n + len(prompt) % 5), 4), delta_delay=0.08 * speed)

    return ScriptedProvider(default=reply)


def pick_provider(speed: float, offline: bool) -> tuple[Any, str]:
    """The provider every session uses, and a line saying which. The only place that looks at the environment."""
    if not offline:
        try:
            if os.environ.get("ANTHROPIC_API_KEY"):
                return sessions.ClaudeCode(), "Claude Code (ANTHROPIC_API_KEY is set)"
            if os.environ.get("OLLAMA_HOST"):
                model = os.environ.get("OLLAMA_MODEL", "llama3.1")
                return sessions.Ollama(model), f"Ollama {model} at $OLLAMA_HOST"
            if os.environ.get("OPENAI_BASE_URL"):
                model = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
                return sessions.OpenAICompatible(model), f"{model} at $OPENAI_BASE_URL"
        except sessions.SessionError as exc:
            print(f"(the configured provider cannot run: {exc}; using the scripted one)")
    return scripted(speed), "ScriptedProvider (offline)"


def open_store(directory: Path) -> tuple[sessions.Store, str]:
    """The durable store every session writes ahead to: one SQLite file."""
    return sessions.SqliteStore(directory / "agents.db"), "SqliteStore agents.db"


class Clock:
    def __init__(self) -> None:
        self.start = trio.current_time()

    def say(self, text: str) -> None:
        print(f"{trio.current_time() - self.start:5.1f}s {text}", flush=True)


async def redraw(clock: Clock, every: float, clear: str) -> None:
    """Print the tree every ``every`` seconds (each session's line ends with its own status)."""
    while True:
        await trio.sleep(every)
        print(f"{clear}--- tree at {trio.current_time() - clock.start:.1f}s ---", flush=True)
        print(otpy.tree("agents"), flush=True)


async def ask(clock: Clock, name: str, prompt: str) -> None:
    try:
        result = await SessionServer.send_message(name, prompt)
    except otpy.ServerExited as exc:
        clock.say(f"-> {name}: the call failed at once, the server exited: {exc.reason!r}")
        return
    if result.is_error:
        clock.say(f"-> {name} turn {result.turn} failed ({result.finish_reason.value}): {result.error}")
        return
    text = result.text if len(result.text) <= 70 else result.text[:67] + "..."
    clock.say(f"-> {name} turn {result.turn} (${result.cost_usd:.4f}): {text}")


async def summary(name: str) -> str:
    session = await SessionServer.get_session(name)
    return f"{session.turn_count} turns, ${session.total_cost:.4f}"


async def main(fast: bool, offline: bool) -> None:
    speed = 0.15 if fast else 1.0
    provider, provider_line = pick_provider(speed, offline)
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() and not fast else ""
    with tempfile.TemporaryDirectory(prefix="sessions-demo-") as tmp:
        store, store_line = open_store(Path(tmp))
        print(f"provider: {provider_line}; store: {store_line} in {tmp}", flush=True)
        children = [SessionServer.child_spec(name=name, provider=provider, store=store, cwd=tmp) for name in NAMES]
        async with trio.open_nursery() as nursery:
            sup = await otpy.Supervisor.start_link(children, strategy="one_for_one", name="agents", nursery=nursery)
            clock = Clock()
            print(otpy.tree(sup), flush=True)
            nursery.start_soon(redraw, clock, 1.5 * speed, clear)

            clock.say("round 1: one message to each session, by name, at the same time")
            async with trio.open_nursery() as round_1:
                for name in NAMES:
                    round_1.start_soon(ask, clock, name, PROMPTS[name][0])

            before = await summary("writer")
            writer_id = await SessionServer.session_id("writer")
            clock.say(f"round 2: writer has {before}; its session id is {writer_id}")
            events = await SessionServer.subscribe("writer")
            async with trio.open_nursery() as round_2:
                for name in NAMES:
                    round_2.start_soon(ask, clock, name, PROMPTS[name][1])
                async for event in events:  # kill writer once its answer is streaming
                    if isinstance(event, (sessions.TextDelta, sessions.TurnFinished)):
                        break
                await trio.sleep(1.0 * speed)
                status = await SessionServer.status("writer")
                victim = otpy.whereis("writer")
                assert victim is not None
                if status.state == "idle":
                    clock.say(f"writer's turn ended before it streamed: killing it between turns ({victim!r})")
                else:
                    clock.say(f"writer is {status.state} turn {status.turn}: killing it mid-turn ({victim!r})")
                otpy.exit(victim, "kill")
                await victim.wait_exited()

            events.close()
            await otpy.Supervisor.which_children(sup)  # answered once the supervisor has restarted it
            restarted = otpy.whereis("writer")
            clock.say(f"the supervisor restarted writer as {restarted!r}")
            clock.say(f"writer's session id: {await SessionServer.session_id('writer')} (the same)")
            last = await SessionServer.last_result("writer")
            assert last is not None
            clock.say(f"writer's turn {last.turn} is recorded as {last.finish_reason.value}, not retried")
            clock.say("  (what a killed turn cost is unknown: it counts as 0; its streamed text was not stored)")
            clock.say(f"writer before the kill: {before}; after the restart: {await summary('writer')}")
            print(otpy.tree(sup), flush=True)

            clock.say("round 3: writer carries on with its history")
            await ask(clock, "writer", PROMPTS["writer"][2])
            clock.say(f"writer now: {await summary('writer')}")

            print("--- final tree ---", flush=True)
            print(otpy.tree(sup), flush=True)
            await otpy.stop(sup)  # each session closes its provider connection, then exits
            clock.say("tree stopped")
            nursery.cancel_scope.cancel()  # stops the redraw
        for name in NAMES:
            history = await store.load(await _sid(children, name))
            kinds = [r.kind for r in history]
            print(f"{name}: {kinds.count('turn_started')} turns in the store, {len(kinds)} records", flush=True)
        await store.aclose()
    print("done", flush=True)


async def _sid(children: list[otpy.ChildSpec], name: str) -> str:
    for spec in children:
        if spec.id == name:
            return str(spec.start.keywords["session_id"])  # type: ignore[attr-defined]
    raise KeyError(name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="short delays (for tests)")
    parser.add_argument("--offline", action="store_true", help="always use the scripted provider")
    args = parser.parse_args()
    # An application configures structlog; sessions and otpy never do. The demo prints
    # what happens itself, so the crash reports are silenced.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    trio.run(main, args.fast, args.offline)
