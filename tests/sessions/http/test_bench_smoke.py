"""The sessions benches run with --quick and print their tables (no timing is checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_loop_bench_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sessions_loop.py"), "--quick", "--sessions", "20", "--out", "none"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "| ollama | " in done.stdout
    assert "| openai | wall ratio loop/client |" in done.stdout
    assert "| ollama | SessionServer + AgentLoop |" in done.stdout
    assert "20 concurrent sessions" in done.stdout


def test_the_providers_bench_runs() -> None:
    """bench/sessions_providers.py --quick runs one family's three rows and prints them."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "sessions_providers.py"),
            "--quick",
            "--families",
            "ollama",
            "--deltas",
            "20",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name in ("ollama.client", "ollama.provider", "ollama.server"):
        assert f"\n{name} " in done.stdout
