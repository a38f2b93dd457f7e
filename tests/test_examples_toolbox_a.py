"""The Registry, timers and Agent examples run to completion and print what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str) -> str:
    """Run examples/<name> in a fresh interpreter; return its stdout after checking it exited with 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            "registry_pubsub.py",
            [
                "subscribers of news: ['alice', 'bob']",
                "  alice got [news] otpy has a Registry",
                "  bob got [news] otpy has a Registry",
                "  carol got [sport] trio wins again",
                "after carol left, subscribers of sport: ['alice']",
                "entries in pubsub: 3",
                "lobby members: ['alice', 'bob']",
                "done",
            ],
            id="registry_pubsub",
        ),
        pytest.param(
            "timers.py",
            [
                "hello (the old timer had",
                "heartbeat 1",
                "session expired",
                "a 5 s timer reads 5.0s; cancelled with 5.0s left",
                "reading it again: None",
                "a timer to it now reads None",
                "done",
            ],
            id="timers",
        ),
        pytest.param(
            "agent.py",
            [
                "jobs done: 6",
                "after a cast of +100: 106",
                "after a kill and a restart: 0",
                "a function that raises crashes the agent: ZeroDivisionError",
                "done",
            ],
            id="agent",
        ),
    ],
)
def test_example_runs(name: str, expected: list[str]) -> None:
    """The example exits with status 0, writes nothing to stderr, and prints each expected line."""
    output = run_example(name)
    for line in expected:
        assert line in output, f"{line!r} missing from:\n{output}"
