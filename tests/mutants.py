"""A small mutation run over the boundaries the test suite guards: ``python3 dev.py mutate``.

Each mutant is a one-line bug put into one place that a test is meant to guard (path
confinement, permissions, budgets, the call path's release and deadlines, the stores'
acknowledgement, supervision), with the tests that should notice it. For each mutant the
repository is copied to a temporary directory, the bug is put into the copy, and the
selected tests run there with pytest; the working tree is never touched, so an
interrupted run leaves nothing behind. A mutant is *killed* when its tests fail, and
*survives* when they pass: then nothing would notice that bug.

Why hand-written mutants rather than mutmut or cosmic-ray: those mutate every
operator of a module and run its whole test selection for each, hours on this machine,
and most of their mutants are in code no boundary depends on. A short list of the bugs
that matter, each named, runs in minutes and says which guard is weak.

    python3 dev.py mutate               # every mutant (a few minutes)
    python3 dev.py mutate -k confine    # the mutants whose name contains "confine"
    python3 dev.py mutate --list        # the mutants, run nothing

Not part of the test suite (pytest does not collect this file) nor of CI. The ratio it
printed last is in docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", ".hypothesis", ".ruff_cache", ".mypy_cache", "__pycache__", "_build", ".cache", "*.egg-info"
)
MUTANT_TIMEOUT = 900  # seconds for one mutant's tests; each test has its own 60 s timeout too


class Mutant(NamedTuple):
    name: str
    path: str  # relative to the repository
    original: str  # must occur exactly once in the file
    mutated: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions


STORE_TESTS = (
    "tests/sessions/test_stores.py",
    "tests/sessions/test_stores_jsonl.py",
    "tests/sessions/test_stores_sqlite.py",
)

MUTANTS = [
    # --- path confinement (sessions/_tools/_builtin.py) ---
    Mutant(
        "confine: no separator after the root (../work2 escapes work)",
        "sessions/_tools/_builtin.py",
        "real.startswith(root.rstrip(os.sep) + os.sep)",
        "real.startswith(root.rstrip(os.sep))",
        ("tests/sessions/http/test_tools.py", "tests/sessions/http/test_tools_containment.py"),
    ),
    Mutant(
        "confine: NUL bytes not refused",
        "sessions/_tools/_builtin.py",
        'if "\\x00" in path:',
        "if False:",
        ("tests/sessions/http/test_tools.py", "tests/sessions/http/test_tools_containment.py"),
    ),
    # --- permissions (sessions/_tools/_policy.py) ---
    Mutant(
        "permissions: can_use_tool returning None allows",
        "sessions/_tools/_policy.py",
        "    if decision is True:\n",
        "    if decision is True or decision is None:\n",
        ("tests/sessions/http/test_policy.py",),
    ),
    Mutant(
        "permissions: a hook's Allow overrides the deny list",
        "sessions/_tools/_policy.py",
        "    if is_disallowed(call.name, disallowed):\n",
        "    if is_disallowed(call.name, disallowed) and not hook_allowed:\n",
        ("tests/sessions/http/test_policy.py",),
    ),
    Mutant(
        "permissions: plan mode runs tools that are not read-only",
        "sessions/_tools/_policy.py",
        'return Allow() if tool.read_only else Deny(f"plan mode is read-only: {call.name!r} is not allowed")',
        "return Allow()",
        ("tests/sessions/http/test_policy.py",),
    ),
    Mutant(
        "permissions: accept_edits allows every tool",
        "sessions/_tools/_policy.py",
        '(mode == "accept_edits" and tool.edits_files)',
        '(mode == "accept_edits")',
        ("tests/sessions/http/test_policy.py",),
    ),
    # --- budgets (sessions/_loop.py, sessions/_server.py) ---
    Mutant(
        "budget: a turn goes on with its budget exactly spent",
        "sessions/_loop.py",
        "if budget is not None and cost >= budget:",
        "if budget is not None and cost > budget:",
        ("tests/sessions/http/test_loop.py",),
    ),
    Mutant(
        "budget: max_turns allows one turn more",
        "sessions/_server.py",
        "config.max_turns is not None and session.turn_count >= config.max_turns",
        "config.max_turns is not None and session.turn_count > config.max_turns",
        ("tests/sessions/test_server.py",),
    ),
    Mutant(
        "budget: max_cost_usd allows a turn with the budget exactly spent",
        "sessions/_server.py",
        "config.max_cost_usd is not None and session.total_cost >= config.max_cost_usd",
        "config.max_cost_usd is not None and session.total_cost > config.max_cost_usd",
        ("tests/sessions/test_server.py",),
    ),
    # --- the stores' acknowledgement (sessions/_stores) ---
    Mutant(
        "stores: a failed write is acknowledged as done",
        "sessions/_stores/_writer.py",
        "        if job.error is not None:\n            raise job.error\n",
        "",
        STORE_TESTS,
    ),
    Mutant(
        "stores: JsonlStore never fsyncs",
        "sessions/_stores/_jsonl.py",
        "    try:\n        os.fsync(fd)\n    except OSError as exc:",
        "    try:\n        pass\n    except OSError as exc:",
        (*STORE_TESTS, "tests/sessions/test_stores_crash.py"),
    ),
    Mutant(
        "stores: SqliteStore commits durable appends with synchronous=NORMAL",
        "sessions/_stores/_sqlite.py",
        'self._set_synchronous(db, "FULL" if durable else "NORMAL")',
        'self._set_synchronous(db, "NORMAL")',
        (*STORE_TESTS, "tests/sessions/test_stores_crash.py"),
    ),
    # --- otpy's call path (otpy/_process.py) ---
    Mutant(
        "call path: otpy.reply does not release the answered call",
        "otpy/_process.py",
        "    from_._task = None\n    from_._release()\n    reschedule(task, outcome.Value(value))",
        "    from_._task = None\n    reschedule(task, outcome.Value(value))",
        ("tests/test_call_paths.py",),
    ),
    Mutant(
        "call path: a caller that gave up leaves its deferred call pending",
        "otpy/_process.py",
        "        if self._deferred:\n            self._release()\n        return Abort.SUCCEEDED",
        "        return Abort.SUCCEEDED",
        ("tests/test_call_paths.py",),
    ),
    Mutant(
        "call path: a new earlier deadline does not wake the deadline task",
        "otpy/_process.py",
        "        if scope is not None and deadline < scope.deadline:\n            scope.deadline = deadline",
        "        if scope is not None and deadline < scope.deadline:\n            pass",
        ("tests/test_call_paths.py", "tests/test_gen_server.py"),
    ),
    # --- supervision (otpy/_supervisor.py) ---
    Mutant(
        "supervisor: rest_for_one does not restart the child that exited",
        "otpy/_supervisor.py",
        "group = self._children[self._children.index(child) :]",
        "group = self._children[self._children.index(child) + 1 :]",
        ("tests/test_model.py", "tests/test_supervisor.py"),
    ),
    Mutant(
        "supervisor: a failed group restart is retried from the child that exited",
        "otpy/_supervisor.py",
        "            cast(self._pid, _TryAgain(failed_child.spec.id))",
        "            cast(self._pid, _TryAgain(child.spec.id))",
        ("tests/test_model.py", "tests/test_supervisor.py"),
    ),
]


def copy_tree(destination: Path) -> Path:
    tree = destination / "repo"
    shutil.copytree(ROOT, tree, ignore=IGNORED, symlinks=True)
    return tree


def apply(tree: Path, mutant: Mutant) -> None:
    path = tree / mutant.path
    path.write_text(mutated_text(path, mutant))


def mutated_text(path: Path, mutant: Mutant) -> str:
    text = path.read_text()
    found = text.count(mutant.original)
    if found != 1:
        sys.exit(f"mutants: {mutant.name}: its original text occurs {found} times in {mutant.path}, not once")
    return text.replace(mutant.original, mutant.mutated)


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    """Run ``tests`` in ``tree`` (its own otpy and sessions, not the working tree's)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-p", "no:randomly", *tests]
    try:
        result = subprocess.run(
            command, cwd=tree, env=env, capture_output=True, text=True, timeout=MUTANT_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return -1, f"still running after {MUTANT_TIMEOUT} s"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return result.returncode, lines[-1] if lines else result.stderr.strip()[-200:]


def check_imports(tree: Path) -> None:
    """The copy's packages are the ones imported there, or the run would test the working tree."""
    probe = "import otpy, sessions; print(otpy.__file__); print(sessions.__file__)"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tree, env=env, capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if not Path(line).resolve().is_relative_to(tree.resolve()):
            sys.exit(f"mutants: the copy imports {line}, not its own packages; nothing would be mutated")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the hand-written mutants; print each one's fate and the ratio.")
    parser.add_argument("-k", dest="keyword", default="", help="only the mutants whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutants and run nothing")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the selections unmutated")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if args.keyword.lower() in m.name.lower()]
    if args.list or not mutants:
        for mutant in mutants:
            print(f"{mutant.name}  [{mutant.path}; {' '.join(mutant.tests)}]")
        return
    for mutant in mutants:  # every mutant still applies to the working tree's code
        mutated_text(ROOT / mutant.path, mutant)
    with tempfile.TemporaryDirectory(prefix="otpy-mutants-") as folder:
        tree = copy_tree(Path(folder))
        check_imports(tree)
        if not args.no_baseline:
            selections = sorted({mutant.tests for mutant in mutants})
            for tests in selections:
                code, summary = run_tests(tree, tests)
                if code != 0:
                    sys.exit(f"mutants: the unmutated tree fails {' '.join(tests)} ({summary}); fix that first")
            print(f"baseline: the {len(selections)} selections pass unmutated\n", flush=True)
        shutil.rmtree(tree)
        killed = 0
        for number, mutant in enumerate(mutants, 1):
            tree = copy_tree(Path(folder) / str(number))
            apply(tree, mutant)
            started = time.monotonic()
            code, summary = run_tests(tree, mutant.tests)
            seconds = time.monotonic() - started
            shutil.rmtree(tree)
            if code in (1, 2):  # tests failed, or could not even be collected
                fate = "KILLED"
                killed += 1
            elif code == -1:
                fate = "KILLED (the tests hung)"
                killed += 1
            elif code == 0:
                fate = "SURVIVED"
            else:
                fate = f"ERROR (pytest exit status {code})"
            print(f"{number:2}. {fate:9} {mutant.name}  ({seconds:.0f} s; {summary})", flush=True)
    print(f"\nkilled {killed} of {len(mutants)} mutants ({100 * killed / len(mutants):.0f}%)")


if __name__ == "__main__":
    main()
