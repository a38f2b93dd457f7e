"""examples/cluster.py runs: three node processes, one SIGKILLed, its sessions carry on elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(120)  # three interpreters start and stop: slow on a loaded machine, not stuck
def test_the_cluster_example_fails_a_node_over(postgres_dsn: str) -> None:
    env = {**os.environ, "OTPY_POSTGRES_DSN": postgres_dsn}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cluster.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "six sessions over three nodes" in out
    assert "SIGKILLed node-1" in out
    assert "live again elsewhere after" in out
    assert out.count("(turn 3)") >= 1
    after = out.split("--- after the failover")[1]
    assert "node-1:" not in after
    assert after.count("SessionServer") == 6  # every session lives, on the two nodes left


def test_the_cluster_example_skips_without_a_database() -> None:
    env = {**os.environ, "OTPY_POSTGRES_DSN": "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cluster.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("skipped: PostgreSQL not reachable at postgresql://postgres@127.0.0.1:1/none")
