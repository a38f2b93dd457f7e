"""The README's demo runs, and shows supervision at work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_shows_crashes_restarts_and_an_ordered_shutdown() -> None:
    """The demo restarts the crashed workers, restarts db with cache, and stops in reverse order."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--seconds", "1.7"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split("s ", 1)[1] for line in result.stdout.splitlines()]
    assert "! app: child 'flaky' exited: KeyError('job 4 found no key') -> restarting it" in lines
    assert "-> flaky: call failed at once, the server exited: KeyError('job 4 found no key')" in lines
    crash = lines.index("! storage: child 'db' exited: ConnectionError('db lost its connection') -> restarting it")
    assert lines[crash + 1 : crash + 6] == [
        "  cache: stopping ('shutdown')",
        "  db: up",
        "  storage: started 'db'",
        "  cache: up",
        "  storage: started 'cache'",
    ]
    stop = lines.index("tree stopped")
    assert lines[stop - 4 : stop] == [
        "  cache: stopping ('shutdown')",
        "  db: stopping ('shutdown')",
        "  flaky: stopping ('shutdown')",
        lines[stop - 1],
    ]
    assert lines[stop - 1].startswith("  clock: stopping after ")
