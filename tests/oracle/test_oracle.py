"""otpy reproduces the traces that real Erlang/OTP 25 and Elixir 1.14 produced.

Every ``scenarios/NAME.json`` has its expected ``NAME.trace.jsonl``. The shipped ones
come from ``shared/oracle``; the ``x_*`` ones were written for otpy and recorded with
the same Erlang runner. Traces are compared after canonical ordering
(``trace_tool.canonicalize``), as the oracle's README prescribes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run_scenario  # noqa: E402
from trace_tool import canonicalize, load_trace, relations  # noqa: E402

SCENARIOS = sorted((HERE / "scenarios").glob("*.json"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_matches_otp(path: Path) -> None:
    """The otpy trace of the scenario equals OTP's, event for event."""
    scenario = json.loads(path.read_text())
    expected_events = load_trace(str(path.with_suffix(".trace.jsonl")))
    actual, timed_out = run_scenario.run(scenario)
    parents, dynamic = relations(scenario)
    expected = canonicalize(expected_events, parents, dynamic)
    assert canonicalize(actual, parents, dynamic) == expected
    assert timed_out == any(e.get("ev") == "runner_timeout" for e in expected)


def test_runner_cli_prints_the_trace() -> None:
    """The command-line runner prints JSON lines ending with the end event and exits 0."""
    scenario = HERE / "scenarios" / "api_child_adm.json"
    result = subprocess.run(
        [sys.executable, str(HERE / "run_scenario.py"), str(scenario)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {"ev": "step", "i": 0, "op": "start_supervisor"}
    assert lines[-1] == {"ev": "end"}
    assert result.stdout == scenario.with_suffix(".trace.jsonl").read_text()
