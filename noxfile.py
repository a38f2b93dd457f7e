"""Developer tasks: `nox -s tests`, `nox -s lint`, `nox -s typing`, `nox -s demo`, `nox -s bench`."""

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typing", "tests"]

PYPROJECT = nox.project.load_toml("pyproject.toml")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, with the oracle scenarios, on the installed package."""
    session.install(".[claude,ollama,openai,demo,telemetry]", *nox.project.dependency_groups(PYPROJECT, "tests"))
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on the package; the typing suite (tests/typing) under both mypy and pyright."""
    session.install(".[claude,ollama,openai]", *nox.project.dependency_groups(PYPROJECT, "typing"))
    session.run("mypy", "--strict")
    # Each file states what the checkers must infer (assert_type) and reject (an ignore
    # comment that is unused fails the run: warn_unused_ignores for mypy,
    # reportUnnecessaryTypeIgnoreComment for pyright, which ignores mypy's comments).
    session.run("mypy", "--strict", "tests/typing")
    session.run("pyright", "-p", "tests/typing/pyrightconfig.json")
    # The same program against the built wheel, installed into a fresh environment.
    session.run("python", "tests/typing/run_wheel_check.py")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site in docs/_build/html, nitpicky, with warnings as errors.

    The build is also the offline link check: a link to a missing page or #anchor, a
    missing image, or a reference to a name the API reference lacks is a warning, hence
    an error. External URLs are not fetched (where there is network,
    `sphinx-build -b linkcheck docs docs/_build/linkcheck` checks them).
    """
    session.install(".[claude,ollama,openai]", *nox.project.dependency_groups(PYPROJECT, "docs"))
    session.run("python", "docs/vendor_mermaid.py")  # the diagrams' Mermaid, into the site (once; needs npm)
    session.run(
        "sphinx-build", "-n", "-W", "--keep-going", "-E", "-b", "html", *session.posargs, "docs", "docs/_build/html"
    )


@nox.session
def demo(session: nox.Session) -> None:
    """The main demo (as `python3 dev.py demo`): supervised agent sessions, one killed mid-turn."""
    session.install(".[demo]")
    session.run("python", "examples/sessions_demo.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """otpy against triotp, pykka and bare trio, side by side (see bench/README.md)."""
    session.install(".")
    session.run("python", "bench/run.py", *session.posargs)
