"""The cluster bench runs (a smoke run: tiny sizes, its numbers mean nothing); skipped with
one line without PostgreSQL (the ``postgres`` fixture)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.timeout(60)


def test_the_cluster_bench_runs_and_reports_every_figure(postgres: Any) -> None:
    """bench/sessions_cluster.py --quick: two nodes, every measurement, the table; no node left."""
    env = {**os.environ, "OTPY_POSTGRES_DSN": postgres.dsn}
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sessions_cluster.py"), "--quick", "--schema", postgres.schema],
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    labels = [line.split("|")[1].strip() for line in run.stdout.splitlines() if line.startswith("| ")]
    for expected in (
        "durable turns/s, 1 node",
        "durable turns/s, 2 nodes",
        "status (a read), local / routed, median",
        "send_message (a durable turn), local / routed, p99",
        "passivation (stop by name)",
        "activation (first status of a passivated session)",
        "failover, 1 SIGKILLs, lease_ttl 1 s",
        "reactivation of random sessions among them",
    ):
        assert any(label.startswith(expected) for label in labels), (expected, labels)
    left = [p for p in psutil.Process().children(recursive=True) if "sessions_cluster.py" in " ".join(p.cmdline())]
    assert left == []
