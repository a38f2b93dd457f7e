"""Every ```python block in docs/**/*.md and README.md runs, so that no page can rot.

The convention (docs/index.md says it too, for writers):

- A page is run like a module that is imported: its ```python blocks are executed in
  order, in one namespace, so a later block may use what an earlier one defined. The
  namespace's ``__name__`` is not ``"__main__"``, so an ``if __name__ == "__main__":``
  body (a program's entry point, such as ``otpy.run(...)`` waiting for Ctrl-C) is not run.
- A block whose top level uses ``await`` runs in its own ``trio.run``.
- Every ``trio.run`` a page makes gets a deadline (``PAGE_DEADLINE`` seconds; a day of
  clock time on a ``MockClock``, which an autojumping hang reaches at once), so a page
  that hangs fails instead of stalling the suite.
- A page whose blocks define ``test_*`` functions (docs/testing.md) is also run by
  pytest, with pytest-trio, as a test module; every test in it must pass.
- ```python fragment marks a piece of a larger program (it uses names that the page does
  not define, such as ``nursery`` or ``sup``). A fragment is compiled, top-level ``await``
  allowed, so its syntax is checked, but it is not run. GitHub and MyST both read the
  first word of the info string as the language, so a fragment is highlighted as Python.
- Other fences (```sh, ```text, ```console, ```mermaid) are not Python and are ignored.

Pages are excluded only through ``EXCLUDED`` below, each with its reason.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import inspect
import re
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import psutil
import pytest
import trio
import trio.testing

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

PAGE_DEADLINE = 20.0  # seconds for each trio.run a page makes
# A page that runs on a virtual clock (trio.run(main, clock=MockClock(autojump_threshold=0)))
# may legitimately sleep for hours of clock time; a hang there jumps straight to the deadline.
VIRTUAL_DEADLINE = 24 * 3600.0

# page (relative to the repository root) -> why its blocks are not run
EXCLUDED: dict[str, str] = {}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@attrs.frozen
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    info: str
    source: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def fragment(self) -> bool:
        return "fragment" in self.info.split()[1:]


def blocks(path: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown page, with their info strings (CommonMark fences)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = page_name(path)
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = lines[j].strip()
            if closing.startswith(fence[0] * len(fence)) and set(closing) == {fence[0]}:
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        yield Block(page, i + 1, info, "\n".join(body) + "\n")
        i = j + 1


def page_name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def pages() -> list[Path]:
    return [*sorted(path for path in DOCS.rglob("*.md") if "_build" not in path.parts), ROOT / "README.md"]


def python_blocks(path: Path) -> list[Block]:
    return [block for block in blocks(path) if block.language == "python"]


def page_params() -> list[Any]:
    params = []
    for path in pages():
        page = page_name(path)
        if not python_blocks(path):
            continue
        marks = [pytest.mark.skip(reason=EXCLUDED[page])] if page in EXCLUDED else []
        params.append(pytest.param(path, id=page, marks=marks))
    return params


def with_deadline(run: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    @functools.wraps(run)
    def run_with_deadline(async_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        deadline = VIRTUAL_DEADLINE if isinstance(kwargs.get("clock"), trio.testing.MockClock) else seconds

        async def guarded() -> Any:
            with trio.fail_after(deadline):
                return await async_fn(*args)

        return run(guarded, **kwargs)

    return run_with_deadline


def compile_block(block: Block, filename: str) -> types.CodeType:
    # Line numbers in tracebacks point into the page: the block starts after its fence line.
    tree = ast.parse(block.source, filename, "exec")
    ast.increment_lineno(tree, block.line)
    code: types.CodeType = compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    return code


def run_page(path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run a page's Python blocks in order in one module namespace; return the namespace.

    ``__blocks_run__`` in it counts the blocks that ran (fragments do not).
    """
    name = "docs_page_" + re.sub(r"\W", "_", page_name(path).removesuffix(".md"))
    module = types.ModuleType(name)
    module.__file__ = str(path)
    monkeypatch.setitem(sys.modules, name, module)  # attrs, typing and pickle look classes up here
    monkeypatch.setattr(trio, "run", with_deadline(trio.run, PAGE_DEADLINE))
    ran = 0
    for block in python_blocks(path):
        code = compile_block(block, str(path))
        if block.fragment:
            continue
        if code.co_flags & inspect.CO_COROUTINE:

            async def top_level_await(code: types.CodeType = code) -> None:
                await eval(code, module.__dict__)

            trio.run(top_level_await)
        else:
            exec(code, module.__dict__)
        ran += 1
    module.__dict__["__blocks_run__"] = ran
    return module.__dict__


@pytest.mark.parametrize("path", page_params())
def test_page_code_blocks_run(path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The page's ```python blocks run, in order, in one namespace, without an error.

    A page whose blocks define ``test_*`` functions (docs/testing.md) is a test module: its
    blocks are also written to a file and run by pytest with pytest-trio, and every test
    in it must pass. No process the examples start may outlive them.
    """
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    monkeypatch.chdir(tmp_path)  # what the examples write (agents.db, say) stays out of the repository
    namespace = run_page(path, monkeypatch)
    tests = sorted(name for name, obj in namespace.items() if name.startswith("test_") and callable(obj))
    if tests:
        run_as_pytest_module(path, tests, tmp_path)
    left = [child for child in psutil.Process().children(recursive=True) if child.pid not in before]
    assert left == [], "the page's examples left processes running"


def run_as_pytest_module(path: Path, tests: list[str], tmp_path: Path) -> None:
    source = "\n\n".join(block.source for block in python_blocks(path) if not block.fragment)
    (tmp_path / "test_page.py").write_text(source, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\ntrio_mode = true\nfilterwarnings = error\naddopts = -p no:cacheprovider\n", encoding="utf-8"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "test_page.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    passed = sorted(re.findall(r"^PASSED test_page\.py::(\w+)", done.stdout, re.MULTILINE))
    assert (done.returncode, passed) == (0, tests), done.stdout + done.stderr


def test_collector_finds_the_blocks(tmp_path: Path) -> None:
    """The collector reads fences as CommonMark does: info strings, indented fences, ~~~, longer fences."""
    page = tmp_path / "page.md"
    page.write_text(
        "text\n"
        "```python\nx = 1\n```\n"
        "- item\n\n  ```python fragment\n  await y\n  ```\n"
        "````markdown\n```python\nnot = a block of its own\n```\n````\n"
        "~~~python\nz = 3\n~~~\n"
        "```sh\nls\n```\n",
        encoding="utf-8",
    )
    found = [(b.line, b.language, b.fragment, b.source) for b in blocks(page)]
    assert found == [
        (2, "python", False, "x = 1\n"),
        (7, "python", True, "await y\n"),
        (10, "markdown", False, "```python\nnot = a block of its own\n```\n"),
        (15, "python", False, "z = 3\n"),
        (18, "sh", False, "ls\n"),
    ]


def test_a_failing_block_fails_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block that raises fails its page, with the page's line number in the traceback."""
    page = tmp_path / "bad.md"
    page.write_text("# bad\n\n```python\nx = 1\n```\n\n```python\nassert x == 2\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError) as info:
        run_page(page, monkeypatch)
    assert info.traceback[-1].path == page
    assert info.traceback[-1].lineno + 1 == 8  # the assert's line in the page


def test_fragments_compile_but_do_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fragment's syntax is checked; its body is not run; top-level await is allowed."""
    page = tmp_path / "frag.md"
    page.write_text("```python fragment\nawait undefined_name()\n```\n", encoding="utf-8")
    assert run_page(page, monkeypatch)["__blocks_run__"] == 0
    page.write_text("```python fragment\ndef broken(:\n```\n", encoding="utf-8")
    with pytest.raises(SyntaxError):
        run_page(page, monkeypatch)


def test_top_level_await_runs_under_trio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block with top-level await runs in a trio.run of its own, in the page's namespace."""
    page = tmp_path / "awaits.md"
    page.write_text(
        "```python\nimport trio\n```\n```python\nawait trio.sleep(0)\nafter = trio.current_time()\n```\n"
        "```python\nassert after > 0\n```\n",
        encoding="utf-8",
    )
    assert run_page(page, monkeypatch)["__blocks_run__"] == 3


def test_a_hanging_page_hits_its_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page whose trio.run never ends fails at the deadline instead of hanging the suite."""
    monkeypatch.setattr(sys.modules[__name__], "PAGE_DEADLINE", 0.05)
    page = tmp_path / "hang.md"
    page.write_text("```python\nimport trio\ntrio.run(trio.sleep_forever)\n```\n", encoding="utf-8")
    with pytest.raises(trio.TooSlowError):
        run_page(page, monkeypatch)
    page.write_text(
        "```python\nimport trio, trio.testing\n"
        "trio.run(trio.sleep_forever, clock=trio.testing.MockClock(autojump_threshold=0))\n```\n",
        encoding="utf-8",
    )
    with pytest.raises(trio.TooSlowError):
        run_page(page, monkeypatch)  # on a virtual clock, the hang jumps to the deadline at once


def test_every_page_with_code_is_collected() -> None:
    """The pages this test runs include the hand-written concept pages and the README."""
    collected = {param.id for param in page_params()}
    assert {"README.md", "docs/genserver.md", "docs/supervisor.md"} <= collected
    assert set(EXCLUDED) <= {page_name(path) for path in pages()}


# --- names the pages mention ----------------------------------------------------------------

_DOTTED = re.compile(r"(?<![\w./-])(otpy|sessions)((?:\.[A-Za-z_]\w*)+)")


def logger_names() -> set[str]:
    """The structlog logger names the packages log under (``otpy.supervisor``...): not attributes."""
    names = set()
    for package in ("otpy", "sessions"):
        for source in (ROOT / package).rglob("*.py"):
            names.update(re.findall(r"get_logger\(\s*[\"']([\w.]+)[\"']", source.read_text(encoding="utf-8")))
    return names


def unresolved_names(text: str) -> set[str]:
    loggers = logger_names()
    missing = set()
    for match in _DOTTED.finditer(text):
        dotted = match.group(1) + match.group(2)
        if dotted in loggers:
            continue
        obj: object = importlib.import_module(match.group(1))
        for part in match.group(2).split(".")[1:]:
            if not hasattr(obj, part) and isinstance(obj, types.ModuleType):
                with contextlib.suppress(ImportError):  # a public submodule: sessions.testing
                    importlib.import_module(f"{obj.__name__}.{part}")
            if not hasattr(obj, part):
                missing.add(dotted)
                break
            obj = getattr(obj, part)
    return missing


@pytest.mark.parametrize("path", [pytest.param(path, id=page_name(path)) for path in pages()])
def test_every_otpy_and_sessions_name_a_page_mentions_exists(path: Path) -> None:
    """``otpy.X.y`` and ``sessions.X`` in a page's text and code resolve in the public namespace.

    That is how docs/elixir.md's table of Elixir calls and otpy calls is checked against
    otpy/__init__.py, and how a renamed function is caught in every page's prose.
    """
    assert unresolved_names(path.read_text(encoding="utf-8")) == set()


def test_a_missing_name_is_caught() -> None:
    """The name check is not vacuous: a name that otpy does not have is reported, a logger name is not."""
    assert unresolved_names("`otpy.call` and `otpy.Supervisor.start_child` and `otpy.supervisor`") == set()
    assert unresolved_names("`otpy.Supervisor.no_such_thing` and `sessions.NoSuchName`") == {
        "otpy.Supervisor.no_such_thing",
        "sessions.NoSuchName",
    }


# --- links as the forge shows them --------------------------------------------------------

_LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s#]+)(?:#[^)\s]*)?\)")


def broken_relative_links(path: Path) -> list[str]:
    """Relative links of a Markdown page (outside code blocks) whose file does not exist."""
    text = path.read_text(encoding="utf-8")
    for block in blocks(path):  # a link-like string inside a code block is not a link
        text = text.replace(block.source, "")
    return [target for target in _LINK.findall(text) if not (path.parent / target).exists()]


@pytest.mark.parametrize("path", [pytest.param(path, id=page_name(path)) for path in pages()])
def test_relative_links_point_to_files(path: Path) -> None:
    """A page's relative links work where the Markdown is read in the repository.

    The site build checks page links and #anchors (MyST warns on a missing one); this
    checks links to files outside docs/ (bench/README.md) and the README's links into
    docs/, which the site does not build.
    """
    assert broken_relative_links(path) == []


def test_a_broken_relative_link_is_caught(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# there\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#x) [gone](missing.md) [web](https://example.com) [in](#anchor)\n"
        "```python\nx = '[not a link](nowhere.md)'\n```\n",
        encoding="utf-8",
    )
    assert broken_relative_links(page) == ["missing.md"]
