"""bench/sessions_turns.py runs (a smoke run: its numbers are not checked, only that it works)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_turns_bench_runs_quick() -> None:
    """--quick runs every system end to end (each session's turns all counted) and the CPU rows."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sessions_turns.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    for row in ("| server+SqliteStore |", "| server+JsonlStore |", "| server+InMemoryStore |", "| SqliteStore alone |"):
        assert row in result.stdout, result.stdout
    assert "| c | overhead per turn (server - provider) |" in result.stdout
    assert "| d | server, per delta, 10 subscribers" in result.stdout
