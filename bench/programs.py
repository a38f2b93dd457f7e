"""Whole otpy programs, timed from start to exit, each in a fresh interpreter.

The test suite checks what these programs print and their exit status, never how long
they take (tests/test_tree.py, tests/test_application.py); their wall time is measured
here instead:

- ``import``: ``python -c "import otpy"``, the interpreter and otpy's imports (the floor).
- ``gives_up``: ``otpy.run`` of one child that crashes 0.05 s after each start, with
  ``max_restarts=3``: the top supervisor gives up and the program exits with status 1
  (nominally 4 crashes, 0.2 s).
- ``application``: ``examples/application.py``: three workers start, SIGTERM after 1 s,
  ordered stop, exit 0 (nominally 1 s).
- ``live_tree``: ``examples/live_tree.py``: the tree printed every 0.3 s for 3 s while
  children crash and restart, then stopped (nominally 3 s).

Run it from the repository root::

    python bench/programs.py              # 5 rounds
    python bench/programs.py --rounds 1   # a smoke run

It prints the median and the range of the rounds, in seconds, and the overhead of each
row over its nominal time and over ``import``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GIVES_UP = textwrap.dedent(
    """
    import otpy

    class Worker(otpy.GenServer):
        async def init(self, crash_after):
            return otpy.NoReply(timeout=crash_after)

        async def handle_info(self, message):
            raise RuntimeError("crashed")

    otpy.run([Worker.child_spec(0.05, id="flaky")], max_restarts=3, max_seconds=1, name="app")
    """
)

# row: (command, expected exit status, nominal seconds)
Row = tuple[list[str], int, float]


def rows(folder: Path) -> dict[str, Row]:
    gives_up = folder / "gives_up.py"
    gives_up.write_text(GIVES_UP)
    python = sys.executable
    return {
        "import": ([python, "-c", "import otpy"], 0, 0.0),
        "gives_up": ([python, str(gives_up)], 1, 0.2),
        "application": ([python, str(ROOT / "examples" / "application.py")], 0, 1.0),
        "live_tree": ([python, str(ROOT / "examples" / "live_tree.py")], 0, 3.0),
    }


def time_once(command: list[str], status: int) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    elapsed = time.perf_counter() - start
    if result.returncode != status:
        sys.exit(f"{command} exited {result.returncode}, not {status}:\n{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        table = rows(Path(folder))
        times: dict[str, list[float]] = {name: [] for name in table}
        for _ in range(args.rounds):  # rounds interleave the rows, so that load spreads over all of them
            for name, (command, status, _nominal) in table.items():
                times[name].append(time_once(command, status))
    load = os.getloadavg()[0]
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, load {load:.2f}, {args.rounds} rounds\n")
    print("| row | median s | min-max s | over nominal s | over import s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    floor = statistics.median(times["import"])
    for name, (_command, _status, nominal) in table.items():
        median = statistics.median(times[name])
        spread = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
        over = f"{median - nominal:.2f}" if nominal else ""
        print(f"| {name} | {median:.2f} | {spread} | {over} | {median - floor:.2f} |")


if __name__ == "__main__":
    main()
