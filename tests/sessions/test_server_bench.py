"""bench/sessions_server.py runs (a smoke run: its numbers are not checked, only that it works)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_sessions_bench_runs_quick() -> None:
    """--quick measures both rows and prints their table."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sessions_server.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert "| a | ratio server / direct |" in result.stdout
    assert "| b | memory per idle session, RSS growth |" in result.stdout
