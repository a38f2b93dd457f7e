"""Check the types a user gets from the built wheel, not from the source tree.

    python tests/typing/run_wheel_check.py      (``python3 dev.py typing`` runs it)

The rest of the typing suite runs against the repository, where a package without a
``py.typed`` marker still looks typed. Here, as a user would: build the wheel, install it
(not editable) into a fresh virtual environment in a temporary directory outside the
repository, then run mypy --strict and pyright (strict) on ``wheel_user.py`` there, with
that environment as the only place packages come from. It also checks what the package
index would show: the distribution's name, its summary, its project URLs, and a
description with no relative links (they would be dead there).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from email.parser import HeaderParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DISTRIBUTION = "otpy-sessions"
MARKERS = ("otpy/py.typed", "sessions/py.typed")
RELATIVE_LINK = re.compile(r"\]\((?!https?://|#)[^)]*\)")


def run(command: list[str], cwd: Path) -> None:
    print("+", " ".join(command), flush=True)
    result = subprocess.run(command, cwd=cwd, check=False)
    if result.returncode != 0:
        sys.exit(f"run_wheel_check: failed ({result.returncode}): {' '.join(command)}")


def build_wheel(out: Path) -> Path:
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT)], cwd=out)
    (wheel,) = out.glob("*.whl")
    return wheel


def check_metadata(wheel: Path) -> None:
    """What the package index shows: fail with every problem found."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = HeaderParser().parsestr(archive.read(metadata_name).decode())
    problems = [f"the wheel lacks {marker}" for marker in MARKERS if marker not in names]
    if metadata["Name"] != DISTRIBUTION:
        problems.append(f"the distribution is named {metadata['Name']!r}, not {DISTRIBUTION!r}")
    if "agent sessions" not in (metadata["Summary"] or ""):
        problems.append(f"the summary does not mention agent sessions: {metadata['Summary']!r}")
    if not metadata.get_all("Project-URL"):
        problems.append("no project URLs")
    description = metadata.get_payload()
    if not isinstance(description, str) or "otpy" not in description:
        problems.append("the long description (the README) is missing")
    else:
        problems += [f"a relative link in the description: {link}" for link in RELATIVE_LINK.findall(description)]
    if problems:
        sys.exit("run_wheel_check: " + "; ".join(problems))


def make_environment(where: Path, wheel: Path) -> Path:
    """A fresh environment with the wheel and its dependencies, and nothing of the repository."""
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / "bin" / "python"
    # The outer pip installs into it (pip --python), so the new environment needs no pip of its own.
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(wheel)], cwd=where.parent)
    return python


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="otpy-wheel-check-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(work)
        check_metadata(wheel)
        python = make_environment(work / "venv", wheel)
        program = work / "wheel_user.py"
        shutil.copy(HERE / "wheel_user.py", program)
        # The installed packages are what the environment imports (not an editable install, not the repository).
        where = subprocess.run(
            [str(python), "-c", "import otpy, sessions; print(otpy.__file__); print(sessions.__file__)"],
            cwd=work,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        if not all(Path(path).is_relative_to(work / "venv") for path in where):
            sys.exit(f"run_wheel_check: the packages were not imported from the wheel's environment: {where}")
        run([str(python), str(program)], cwd=work)  # the program also runs
        bin_dir = Path(sys.executable).parent
        run(
            [str(bin_dir / "mypy"), "--strict", "--no-incremental", "--python-executable", str(python), program.name],
            cwd=work,
        )
        config = {"typeCheckingMode": "strict", "pythonVersion": "3.11", "venvPath": str(work), "venv": "venv"}
        (work / "pyrightconfig.json").write_text(json.dumps(config))
        run([str(bin_dir / "pyright"), "-p", "pyrightconfig.json", program.name], cwd=work)
    print("run_wheel_check: the installed wheel's types reach a user's program (mypy --strict, pyright strict)")


if __name__ == "__main__":
    main()
