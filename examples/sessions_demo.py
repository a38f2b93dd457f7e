"""Three supervised agent sessions; one is killed mid-turn and carries on where it was.

    python examples/sessions_demo.py [--fast]

What it shows, in about ten seconds (two with ``--fast``):

1. A supervisor (``one_for_one``) starts three `SessionServer` children under registered
   names, ``researcher``, ``writer`` and ``reviewer``, each writing its turns ahead to
   one SQLite file in a temporary directory.
2. Messages go to the sessions *by name*, concurrently. The supervision tree is
   redrawn as it goes; each session adds its own status line (state, turns, cost).
   In a terminal the tree is redrawn in place at the bottom (rich's live display),
   with the story scrolling above it; piped, the tree is printed now and then.
3. ``writer`` is killed in the middle of a turn (``otpy.exit(pid, "kill")``: no
   cleanup at all). Its caller gets ``otpy.ServerExited`` at once. The supervisor
   starts it again under the same name and the same session id; it reloads its log,
   records the turn the kill cut short as *interrupted* (it is never silently retried:
   tools may have had side effects), and answers the next message with its history,
   turn count and cost intact.

The story is told from what happens: on a fast real provider the kill may land
between turns instead, and the demo says so. A provider that reports tokens but no
prices (Ollama, most OpenAI-compatible servers) has its tokens shown, not $0.

Offline by default: the sessions run on `sessions.ScriptedProvider`. One small
function, `pick_provider`, chooses a real provider instead when one is configured
(``python3 dev.py demo`` then installs its extra): ``ANTHROPIC_API_KEY`` -> ``sessions.ClaudeCode``,
``OLLAMA_HOST`` -> ``sessions.Ollama`` (``$OLLAMA_MODEL``, default ``llama3.1``),
``OPENAI_BASE_URL`` -> ``sessions.OpenAICompatible`` (``$OPENAI_MODEL``). Pass
``--offline`` to ignore them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import textwrap
from collections.abc import Iterator
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
            # Told from the transcript it is given: was the last question answered?
            history = list(request.messages)
            asked = [i for i, m in enumerate(history) if m.role == "user" and "where were we" not in m.content.lower()]
            last = asked[-1]
            answered = any(m.role == "assistant" and m.content for m in history[last + 1 :])
            question = history[last].content
            if answered:
                text = f"We were on turn {n - 1}: you asked {question!r}, and I answered it. What next?"
            else:
                text = f"We were on turn {n - 1}: you asked {question!r}. That turn was cut short; shall I redo it?"
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


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def cost_text(cost_usd: float, usage: sessions.Usage) -> str:
    """A cost as the provider reported it: dollars, or tokens when it has no prices."""
    if cost_usd or not usage.total:
        return f"${cost_usd:.4f}"
    return f"{plural(usage.total, 'token')}, price unknown"


class Story:
    """Where the demo tells what happens.

    In a terminal: the lines scroll above a live view of the tree, redrawn in place at
    the bottom (rich's Live display; the terminal is never cleared, and the last tree
    stays on screen). Piped: plain lines, and the tree's text now and then.
    """

    def __init__(self, live: Any | None, kill_delay: float) -> None:
        self.start = trio.current_time()
        self.live = live
        self.kill_delay = kill_delay  # how long writer streams before it is killed

    def elapsed(self) -> float:
        return trio.current_time() - self.start

    def say(self, text: str) -> None:
        line = f"{self.elapsed():5.1f}s {text}"
        if self.live is not None:
            self.live.console.print(line, markup=False, highlight=False, soft_wrap=False)
        else:
            print(line, flush=True)

    def show_tree(self, root: str, heading: str) -> None:
        if self.live is not None:
            self.live.update(tree_view(otpy.tree(root), heading), refresh=True)
        else:
            print(f"--- {heading} ---", flush=True)
            print(otpy.tree(root), flush=True)


def tree_view(node: otpy.TreeNode, heading: str) -> Any:
    """The tree as a compact table for the live view: one row per process."""
    from rich.table import Table

    table = Table(title=heading, title_justify="left", box=None, padding=(0, 2), header_style="bold")
    for column in ("process", "status", "up", "restarts", "session"):
        table.add_column(column, no_wrap=column != "session")
    label = f"{node.name} ({node.label} {node.strategy})"
    table.add_row(label, node.status, _uptime(node), str(node.restarts), "")
    for index, child in enumerate(node.children):
        branch = "└── " if index == len(node.children) - 1 else "├── "
        restarts = f"[bold yellow]{child.restarts}[/]" if child.restarts else "0"
        table.add_row(f"{branch}{child.name}", child.status, _uptime(child), restarts, child.info or "")
    return table


def _uptime(node: otpy.TreeNode) -> str:
    return "" if node.uptime is None else f"{node.uptime:.1f}s"


async def redraw(story: Story, every: float) -> None:
    """Show the tree every ``every`` seconds (each session's line ends with its own status)."""
    while True:
        await trio.sleep(every)
        story.show_tree("agents", f"tree at {story.elapsed():.1f}s")


async def ask(story: Story, name: str, prompt: str, outcomes: dict[str, str] | None = None) -> None:
    try:
        result = await SessionServer.send_message(name, prompt)
    except otpy.ServerExited as exc:
        story.say(f"-> {name}: the call failed at once, the server exited: {exc.reason!r}")
        if outcomes is not None:
            outcomes[name] = "exited"
        return
    if outcomes is not None:
        outcomes[name] = result.finish_reason.value
    if result.is_error:
        story.say(f"-> {name} turn {result.turn} failed ({result.finish_reason.value}): {result.error}")
        return
    text = " ".join(result.text.split())
    text = text if len(text) <= 70 else text[:67] + "..."
    story.say(f"-> {name} turn {result.turn} ({cost_text(result.cost_usd, result.usage)}): {text}")


async def summary(name: str) -> str:
    session = await SessionServer.get_session(name)
    return f"{plural(session.turn_count, 'turn')}, {cost_text(session.total_cost, session.usage)}"


async def kill_writer(story: Story, events: sessions.Subscription) -> None:
    """Kill writer once its round-2 answer is streaming, and say what the kill hit."""
    streamed = False
    async for event in events:
        if isinstance(event, sessions.TextDelta):
            streamed = True
            break
        if isinstance(event, sessions.TurnFinished):
            break
    if streamed:
        await trio.sleep(story.kill_delay)
    status = await SessionServer.status("writer")
    victim = otpy.whereis("writer")
    assert victim is not None
    if status.state == "idle":
        story.say(f"writer's turn 2 had already ended: killing it between turns instead ({victim!r})")
    else:
        story.say(f"writer is {status.state} turn {status.turn}: killing it mid-turn ({victim!r})")
    otpy.exit(victim, "kill")
    await victim.wait_exited()


async def play(story: Story, sup: otpy.Pid) -> None:
    """The story: three rounds, a kill in the second."""
    story.say("round 1: one message to each session, by name, at the same time")
    async with trio.open_nursery() as round_1:
        for name in NAMES:
            round_1.start_soon(ask, story, name, PROMPTS[name][0])

    before = await summary("writer")
    writer_id = await SessionServer.session_id("writer")
    story.say(f"round 2: writer has {before}; its session id is {writer_id}")
    outcomes: dict[str, str] = {}
    events = await SessionServer.subscribe("writer")
    async with trio.open_nursery() as round_2:
        for name in NAMES:
            round_2.start_soon(ask, story, name, PROMPTS[name][1], outcomes)
        await kill_writer(story, events)
    events.close()

    await otpy.Supervisor.which_children(sup)  # answered once the supervisor has restarted it
    story.say(f"the supervisor restarted writer as {otpy.whereis('writer')!r}")
    story.say(f"writer's session id: {await SessionServer.session_id('writer')} (the same)")
    last = await SessionServer.last_result("writer")
    assert last is not None
    if last.finish_reason is sessions.FinishReason.INTERRUPTED:
        story.say(f"writer's turn {last.turn} is recorded as interrupted, not retried")
        story.say("  (a tool may have had side effects; what a killed turn cost is unknown, so it counts as 0,")
        story.say("  and its streamed text was not stored)")
    else:
        reason = last.finish_reason.value
        story.say(f"writer's turn {last.turn} had finished ({reason}) before the kill: nothing was cut short")
    story.say(f"writer before the kill: {before}; after the restart: {await summary('writer')}")
    story.show_tree("agents", f"tree after the restart, at {story.elapsed():.1f}s")

    transcript = await SessionServer.messages("writer")
    story.say(f"round 3: writer carries on with its history ({plural(len(transcript), 'message')} so far)")
    prompt = PROMPTS["writer"][2]
    result = await SessionServer.send_message("writer", prompt)
    story.say(f"-> writer turn {result.turn} ({cost_text(result.cost_usd, result.usage)}), to {prompt!r}:")
    for line in textwrap.wrap(result.text or f"(no text: {result.finish_reason.value} {result.error or ''})", 76):
        story.say(f"     {line}")
    story.say(f"writer now: {await summary('writer')}")


async def main(fast: bool, offline: bool) -> None:
    speed = 0.15 if fast else 1.0
    provider, provider_line = pick_provider(speed, offline)
    with tempfile.TemporaryDirectory(prefix="sessions-demo-") as tmp:
        store, store_line = open_store(Path(tmp))
        print(f"provider: {provider_line}; store: {store_line} in {tmp}", flush=True)
        children = [SessionServer.child_spec(name=name, provider=provider, store=store, cwd=tmp) for name in NAMES]
        with live_display() as live:
            async with trio.open_nursery() as nursery:
                sup = await otpy.Supervisor.start_link(children, strategy="one_for_one", name="agents", nursery=nursery)
                story = Story(live, kill_delay=1.0 * speed)
                story.show_tree("agents", "tree at 0.0s")
                nursery.start_soon(redraw, story, (0.25 if live is not None else 1.5) * speed)
                await play(story, sup)
                story.show_tree("agents", "final tree")
                await otpy.stop(sup)  # each session closes its provider connection, then exits
                story.say("tree stopped")
                nursery.cancel_scope.cancel()  # stops the redraw
        for name in NAMES:
            history = await store.load(await _sid(children, name))
            kinds = [r.kind for r in history]
            turns = plural(kinds.count("turn_started"), "turn")
            print(f"{name}: {turns} in the store, {len(kinds)} records", flush=True)
        await store.aclose()
    print("done", flush=True)


@contextlib.contextmanager
def live_display() -> Iterator[Any]:
    """rich's Live display when stdout is a terminal, else nothing (plain lines)."""
    if not sys.stdout.isatty():
        yield None
        return
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:  # python3 dev.py demo installs it (the demo extra); without it, plain lines
        print("(rich is not installed: pip install 'otpy-sessions[demo]' for the live tree)", flush=True)
        yield None
        return

    # No auto refresh: rich would redraw from its own thread, and otpy.tree must be
    # called from trio's; the redraw task updates it instead.
    with Live(console=Console(), auto_refresh=False, transient=False, redirect_stdout=False) as live:
        yield live


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
