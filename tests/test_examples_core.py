"""The examples for the application entry point and for monitors and links run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_application_stops_in_reverse_order_on_sigterm() -> None:
    """otpy.run stops the tree in reverse start order on SIGTERM and the program exits 0."""
    lines = [line for line in run_example("application.py") if ": st" in line or line.startswith("the tree")]
    assert lines == [
        "database: started",
        "cache: started",
        "scheduler: started",
        "scheduler: stopping ('shutdown')",
        "cache: stopping ('shutdown')",
        "database: stopping ('shutdown')",
        "the tree has stopped; exiting with status 0",
    ]


def test_monitors_and_links_deliver_exits() -> None:
    """A monitor gets Down, a trapping linked process gets ExitSignal, a plain linked one dies."""
    lines = run_example("monitors_links.py")
    assert lines[1].startswith('watcher: ["Down: <Pid Worker#1')
    assert lines[1].endswith("exited with RuntimeError('the worker fell over')\"]")
    assert lines[3].startswith('trapping guardian: ["ExitSignal: <Pid Worker#')
    assert lines[3].endswith("alive: True")
    assert lines[5] == "linked bystander exited with: RuntimeError('the worker fell over')"
