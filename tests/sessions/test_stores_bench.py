"""The durable-store bench runs (a smoke run: its numbers mean nothing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
_NO_DATABASE = "postgresql://postgres@127.0.0.1:1/none"  # nothing listens on port 1


def _bench(postgres_dsn: str) -> tuple[str, list[str]]:
    run = subprocess.run(
        [sys.executable, str(_ROOT / "bench" / "sessions_stores.py"), "--quick", "--postgres", postgres_dsn],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=_ROOT,
    )
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| store | durable turns/s")
    if "openai-agents is not installed" in run.stdout:  # the header names SQLiteSession either way
        assert all(row.rstrip().endswith("| n/a |") for row in rows[1:])
    else:
        assert all(row.rstrip().endswith("x |") for row in rows[1:])
    return run.stdout, [row.split("|")[1].strip() for row in rows[1:]]


def test_the_store_bench_runs_and_reports_every_store() -> None:
    """bench/sessions_stores.py --quick measures both stores and prints the table; with no
    PostgreSQL it skips the PostgresStore row and says why, in one line."""
    out, names = _bench(_NO_DATABASE)
    assert names[:2] == ["SqliteStore", "JsonlStore"]
    assert "PostgresStore" not in names
    assert f"PostgresStore skipped: PostgreSQL not reachable at {_NO_DATABASE}: " in out


def test_the_store_bench_measures_postgres_when_there_is_one(postgres_dsn: str) -> None:
    """With a database the bench has a PostgresStore row (in a schema of its own, dropped after)."""
    _out, names = _bench(postgres_dsn)
    assert names[:3] == ["SqliteStore", "JsonlStore", "PostgresStore"]
