"""The durable-store bench runs (a smoke run: its numbers mean nothing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]


def test_the_store_bench_runs_and_reports_every_store() -> None:
    """bench/sessions_stores.py --quick measures both stores and prints the table."""
    run = subprocess.run(
        [sys.executable, str(_ROOT / "bench" / "sessions_stores.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=_ROOT,
    )
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| store | durable turns/s")
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names[:2] == ["SqliteStore", "JsonlStore"]
    if "SQLiteSession" in names:
        assert all(row.rstrip().endswith("x |") for row in rows[1:])
    else:
        assert "openai-agents is not installed" in run.stdout
