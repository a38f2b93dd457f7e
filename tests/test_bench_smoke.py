"""The benchmark suite runs: bench/run.py --quick on otpy and bare trio (no peers, no network, no timings checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_and_prints_the_table(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    out = tmp_path / "quick.json"
    args = ["--quick", "--systems", "otpy,trio", "--no-install", "--out", str(out), "--chart", "none"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "| a. call round trip, 1 client | calls/s |" in done.stdout
    assert "## Targets" in done.stdout
    assert "otpy/floor" in done.stdout
    assert out.exists()
