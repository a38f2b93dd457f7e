"""The sessions demo (the README's main demo) runs offline and shows a session carrying on after a kill."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sessions_demo_kills_a_session_mid_turn_and_it_carries_on() -> None:
    """Three supervised sessions; writer is killed mid-turn, restarted with the same id, and answers turn 3."""
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "OLLAMA_HOST", "OPENAI_BASE_URL")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sessions_demo.py"), "--fast"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("provider: ScriptedProvider (offline); store: SqliteStore agents.db")
    ids = re.findall(r"writer's session id: (\S+)|its session id is (\S+)", out)
    assert len({a or b for a, b in ids}) == 1  # the same id before and after the restart
    assert "-> writer: the call failed at once, the server exited: 'killed'" in out
    assert "writer's turn 2 is recorded as interrupted, not retried" in out
    counts = re.search(r"writer before the kill: 1 turns, (\$[\d.]+); after the restart: 2 turns, (\$[\d.]+)", out)
    assert counts is not None
    assert counts[1] == counts[2]  # the interrupted turn counts, and cost nothing
    assert re.search(r"-> writer turn 3 \(\$[\d.]+\): We were on turn 2", out)
    assert re.search(r"├── writer +worker +SessionServer +running .* restarts 1 .* idle, 3 turns, \$", out)
    assert re.search(r"running turn \d, \d turns, \$", out)  # the tree redrawn mid-turn
    assert "writer: 3 turns in the store" in out
    assert out.rstrip().endswith("done")
