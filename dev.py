#!/usr/bin/env python3
"""Run otpy's developer tasks on a machine that has only python3 (3.11+) and pip.

    python3 dev.py demo      the main demo: a supervised tree of agent sessions, offline
    python3 dev.py tests     the whole test suite (pytest arguments may follow)
    python3 dev.py lint      ruff check and ruff format --check
    python3 dev.py typing    mypy --strict, and the typing suite under mypy and pyright, also
                             against the built wheel installed in a fresh environment
    python3 dev.py docs      the documentation site, warnings as errors
    python3 dev.py bench     otpy against its peers (see bench/README.md)
    python3 dev.py web       the web dashboard over the demo's sessions; prints its URL and token
    python3 dev.py mutate    the hand-written mutants of tests/mutants.py, and the share the tests kill

Everything goes into one virtual environment, ``.venv`` in the repository, made on
first use; the project is installed there in editable mode, so a second run installs
nothing unless ``pyproject.toml`` changed. Nothing is installed into the system's
Python, so this also works where the system's pip refuses to install
(``externally-managed-environment`` on Debian and Ubuntu), and where ``venv`` has no
``ensurepip`` (Debian's ``python3`` without ``python3-venv``).

Why not just nox: nox makes its environments with ``venv`` too, and must itself be
installed with pip first, which is exactly what an externally managed Python refuses.
The noxfile stays for those who have nox; it reads the same dependency groups.
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # noqa: UP036 (this file must say so on an old Python, not crash)
    sys.exit(f"otpy needs Python 3.11 or newer; this is Python {sys.version.split()[0]} ({sys.executable}).")

import hashlib
import os
import subprocess
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
EXTRAS = ".[claude,ollama,openai,demo,web,telemetry,postgres,cluster]"

# task: (what to install: the project spec and dependency groups, the commands to run)
TASKS: dict[str, tuple[str, tuple[str, ...], list[list[str]]]] = {
    "demo": ("-e .", (), [["python", "examples/sessions_demo.py"]]),
    "tests": (f"-e {EXTRAS}", ("tests",), [["pytest"]]),
    "lint": ("", ("lint",), [["ruff", "check", "."], ["ruff", "format", "--check", "."]]),
    "typing": (
        f"-e {EXTRAS}",
        ("typing",),
        [
            ["mypy", "--strict"],
            ["mypy", "--strict", "tests/typing"],
            ["pyright", "-p", "tests/typing/pyrightconfig.json"],
            ["python", "tests/typing/run_wheel_check.py"],
        ],
    ),
    "docs": (
        f"-e {EXTRAS}",
        ("docs",),
        [
            ["python", "docs/vendor_mermaid.py"],  # the diagrams' Mermaid, into the site (once; needs npm)
            ["sphinx-build", "-n", "-W", "--keep-going", "-E", "-q", "-b", "html", "docs", "docs/_build/html"],
        ],
    ),
    "bench": ("-e .", (), [["python", "bench/run.py"]]),
    "web": ("-e .[web,demo]", (), [["python", "examples/web.py"]]),
    "mutate": (f"-e {EXTRAS}", ("tests",), [["python", "tests/mutants.py"]]),
}


def dependency_group(groups: dict[str, list[object]], name: str) -> list[str]:
    """The requirements of a PEP 735 dependency group, with its included groups."""
    requirements: list[str] = []
    for item in groups[name]:
        if isinstance(item, dict):
            requirements += dependency_group(groups, str(item["include-group"]))
        else:
            requirements.append(str(item))
    return requirements


def make_venv() -> None:
    """Create ``.venv``; where ``venv`` cannot bootstrap pip, give it pip with the system's pip."""
    try:
        venv.EnvBuilder(with_pip=True).create(VENV)
    except (subprocess.CalledProcessError, OSError):
        # Debian's python3 without python3-venv has no ensurepip: make the environment
        # without pip, then let the system's pip install pip into it (--python targets
        # the environment, which is not externally managed).
        venv.EnvBuilder(with_pip=False, clear=True).create(VENV)
        run([sys.executable, "-m", "pip", "--python", str(PYTHON), "install", "--quiet", "pip"])


def demo_extras() -> str:
    """The demo's extra (rich, for the live tree); with a provider configured, that provider's extra too."""
    providers = (("ANTHROPIC_API_KEY", "claude"), ("OLLAMA_HOST", "ollama"), ("OPENAI_BASE_URL", "openai"))
    wanted = ["demo", *(extra for variable, extra in providers if os.environ.get(variable))]
    return f"-e .[{','.join(wanted)}]"


def ensure_installed(task: str) -> None:
    project, groups, _ = TASKS[task]
    if task == "demo":
        project = demo_extras()
    pyproject_text = (ROOT / "pyproject.toml").read_text()
    stamp = VENV / f".installed-{task}"
    wanted = hashlib.sha256(f"{project}|{groups}|{pyproject_text}".encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"dev.py: creating {VENV.relative_to(ROOT)} (once)", file=sys.stderr)
        make_venv()
    pyproject = tomllib.loads(pyproject_text)
    requirements = [req for group in groups for req in dependency_group(pyproject["dependency-groups"], group)]
    print(f"dev.py: installing what '{task}' needs into .venv", file=sys.stderr)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, *project.split(), *requirements])
    stamp.write_text(wanted)


def run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, check=False)
    if result.returncode != 0:
        sys.exit(result.returncode)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in TASKS:
        sys.exit(__doc__)
    task, extra = argv[0], argv[1:]
    ensure_installed(task)
    env_path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["PATH"] = env_path
    os.environ["VIRTUAL_ENV"] = str(VENV)
    commands = TASKS[task][2]
    for index, command in enumerate(commands):
        last = index == len(commands) - 1
        run([str(BIN / command[0]) if command[0] != "python" else str(PYTHON), *command[1:], *(extra if last else [])])


if __name__ == "__main__":
    main(sys.argv[1:])
