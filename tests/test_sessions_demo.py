"""The sessions demo (the README's main demo) runs offline and tells what happened: a
session killed mid-turn, restarted by its supervisor, carrying on with its history."""

from __future__ import annotations

import importlib.util
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import sessions

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "sessions_demo.py"


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "OLLAMA_HOST", "OPENAI_BASE_URL")}
    return {**env, "PYTHONPATH": str(ROOT)}


def test_sessions_demo_kills_a_session_mid_turn_and_it_carries_on() -> None:
    """Piped: plain lines that tell the true story, in order: kill, restart, carried-on history."""
    result = subprocess.run(
        [sys.executable, str(DEMO), "--fast"], capture_output=True, text=True, timeout=60, check=False, env=demo_env()
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b" not in out  # piped: no terminal control at all
    assert out.startswith("provider: ScriptedProvider (offline); store: SqliteStore agents.db")
    ids = re.findall(r"writer's session id: (\S+)|its session id is (\S+)", out)
    assert len({a or b for a, b in ids}) == 1  # the same id before and after the restart
    story = [
        r"round 2: writer has 1 turn, \$0\.0040",
        r"writer is running turn 2: killing it mid-turn \(<Pid SessionServer#\d+ 'writer'>\)",
        r"-> writer: the call failed at once, the server exited: 'killed'",
        r"the supervisor restarted writer as <Pid SessionServer#\d+ 'writer'>",
        r"writer's turn 2 is recorded as interrupted, not retried",
        r"writer before the kill: 1 turn, (\$[\d.]+); after the restart: 2 turns, (\$[\d.]+)",
        r"round 3: writer carries on with its history \(4 messages so far\)",
        r"-> writer turn 3 \(\$[\d.]+\), to 'Where were we\?':",
        r"We were on turn 2: you asked 'Now a longer paragraph about restarts,",
        r"please\.'\. That turn was cut short; shall I redo it\?",  # the punchline, whole
        r"writer now: 3 turns, \$0\.0110",
        r"writer: 3 turns in the store",
    ]
    position = 0
    for step in story:
        found = re.compile(step).search(out, position)
        assert found is not None, f"{step!r} missing after position {position}:\n{out}"
        position = found.end()
    counts = re.search(story[5], out)
    assert counts is not None
    assert counts[1] == counts[2]  # the interrupted turn counts, and cost nothing
    assert "..." not in out.split("round 3")[1]  # nothing cut off after the restart
    assert "1 turns" not in out
    assert re.search(r"├── writer +worker +SessionServer +running .* restarts 1 .* idle, 3 turns, \$", out)
    assert re.search(r"running turn \d, \d turns?, \$", out)  # the tree drawn mid-turn
    assert out.rstrip().endswith("done")


def test_in_a_terminal_the_tree_is_redrawn_in_place_and_the_screen_is_never_cleared() -> None:
    """On a terminal (a pty): rich's live display, the story above it; no clear-screen, ever."""
    leader, follower = pty.openpty()
    env = {**demo_env(), "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    process = subprocess.Popen(
        [sys.executable, str(DEMO), "--fast"], stdin=follower, stdout=follower, stderr=subprocess.PIPE, env=env
    )
    os.close(follower)  # the demo holds the terminal now; reads end when it exits
    try:
        screen = read_until_closed(leader)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
        errors = process.communicate(timeout=10)[1].decode(errors="replace")
    assert process.returncode == 0, errors
    for clear in ("\x1b[2J", "\x1b[3J", "\x1bc", "\x1b[H\x1b[2J", "\x1b[?1049h"):  # erase display, reset, alt screen
        assert clear not in screen
    assert "\x1b[2K" in screen  # the live block erases its own lines to redraw them
    assert "--- tree at" not in screen  # not the piped form
    assert "writer is running turn 2: killing it mid-turn" in screen
    assert "That turn was cut short; shall I redo it?" in screen
    final = screen.rsplit("final tree", 1)[1]
    assert re.search(r"└── reviewer +running", final)
    assert re.search(r"├── writer +running +[\d.]+s +\S*1\S* +\S*idle, 3 turns, \$0\.0110", final)


def read_until_closed(leader: int) -> str:
    """All the demo writes to its terminal, until it exits."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60  # a hang fails with a message, not a stuck suite
    while True:
        ready, _, _ = select.select([leader], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the demo did not finish; it wrote:\n{b''.join(chunks).decode(errors='replace')}"
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the demo exited and its terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


async def test_the_story_follows_what_happened_on_a_fast_provider_without_prices(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A provider that answers at once and reports tokens but no prices (as a fast
    OpenAI-compatible server does): the kill lands between turns and the demo says so,
    claims no interrupted turn, and shows tokens rather than $0.0000."""
    spec = importlib.util.spec_from_file_location("sessions_demo", DEMO)
    assert spec is not None
    assert spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    fast = sessions.ScriptedProvider(default=sessions.ScriptedReply("Done.", usage=sessions.Usage(100, 20)))

    def pick_provider(speed: float, offline: bool) -> tuple[Any, str]:
        return fast, "an instant provider without prices"

    monkeypatch.setattr(demo, "pick_provider", pick_provider)
    await demo.main(fast=True, offline=True)
    out = capsys.readouterr().out
    assert "writer's turn 2 had already ended: killing it between turns instead" in out
    assert "-> writer turn 2 (120 tokens, price unknown): Done." in out
    assert "writer's turn 2 had finished (stop) before the kill: nothing was cut short" in out
    assert "interrupted" not in out
    assert "mid-turn" not in out
    assert "writer before the kill: 1 turn, 120 tokens, price unknown; after the restart: 2 turns, 240 tokens" in out
    assert "writer now: 3 turns, 360 tokens, price unknown" in out
    assert "idle, 3 turns, 360 tokens, price unknown" in out  # the tree's line too
    assert "$0.0000" not in out.split("round 1")[1]
