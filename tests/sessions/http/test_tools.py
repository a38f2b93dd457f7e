"""Built-in tools (confined to cwd), bash process hygiene, and tools from typed functions."""

from __future__ import annotations

import enum
import functools
import os
import uuid
from pathlib import Path
from typing import Any, Literal

import psutil
import pytest
import trio

import sessions
from sessions import ToolContext, ToolError

TOOLS = {t.name: t for t in sessions.builtin_tools()}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working directory beside a secret file and folder, with links pointing out."""
    root = tmp_path / "work"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("TOP SECRET\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "leak.txt").write_text("TOP SECRET leak\n")
    (root / "a.txt").write_text("alpha\nbeta\ngamma\n")
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("def main():\n    return 'beta'\n")
    os.symlink(tmp_path / "secret.txt", root / "link_file")
    os.symlink(tmp_path / "outside", root / "link_dir")
    return root


async def run(name: str, cwd: Path, **arguments: Any) -> str:
    return await TOOLS[name].run(arguments, ToolContext(cwd=str(cwd)))


ESCAPES = ["../secret.txt", "{abs_secret}", "link_file", "link_dir/leak.txt", "src/../../secret.txt"]


def escape_path(template: str, work: Path) -> str:
    return template.format(abs_secret=str(work.parent / "secret.txt"))


@pytest.mark.parametrize("template", ESCAPES)
async def test_read_refuses_paths_outside_cwd(work: Path, template: str) -> None:
    with pytest.raises(ToolError, match="outside the working directory"):
        await run("read", work, path=escape_path(template, work))


@pytest.mark.parametrize("template", ESCAPES)
async def test_write_refuses_paths_outside_cwd(work: Path, template: str) -> None:
    with pytest.raises(ToolError, match="outside the working directory"):
        await run("write", work, path=escape_path(template, work), content="pwned")
    assert (work.parent / "secret.txt").read_text() == "TOP SECRET\n"
    assert (work.parent / "outside" / "leak.txt").read_text() == "TOP SECRET leak\n"


@pytest.mark.parametrize("template", ESCAPES)
async def test_edit_refuses_paths_outside_cwd(work: Path, template: str) -> None:
    with pytest.raises(ToolError, match="outside the working directory"):
        await run("edit", work, path=escape_path(template, work), old_string="TOP", new_string="NOT")
    assert (work.parent / "secret.txt").read_text() == "TOP SECRET\n"


@pytest.mark.parametrize("path", ["..", "/", "link_dir", "src/../.."])
async def test_list_refuses_directories_outside_cwd(work: Path, path: str) -> None:
    with pytest.raises(ToolError, match="outside the working directory"):
        await run("list", work, path=path)


@pytest.mark.parametrize(("pattern", "path"), [("../*", "."), ("/etc/*", "."), ("*", ".."), ("*", "link_dir")])
async def test_glob_refuses_patterns_and_bases_outside_cwd(work: Path, pattern: str, path: str) -> None:
    with pytest.raises(ToolError):
        await run("glob", work, pattern=pattern, path=path)


async def test_glob_skips_symlinks_that_lead_out(work: Path) -> None:
    found = await run("glob", work, pattern="**/*")
    assert "a.txt" in found
    assert "src/app.py" in found
    assert "leak" not in found
    assert "link_file" not in found


@pytest.mark.parametrize("path", ["..", "../secret.txt", "link_dir", "link_file"])
async def test_grep_refuses_paths_outside_cwd(work: Path, path: str) -> None:
    with pytest.raises(ToolError, match="outside the working directory"):
        await run("grep", work, pattern="SECRET", path=path)


async def test_grep_does_not_follow_symlinks_out_of_cwd(work: Path) -> None:
    assert await run("grep", work, pattern="SECRET") == "no matches for 'SECRET'"


async def test_read_numbers_lines_and_pages(work: Path) -> None:
    assert await run("read", work, path="a.txt") == "     1\talpha\n     2\tbeta\n     3\tgamma"
    assert await run("read", work, path="a.txt", offset=2, limit=1) == "     2\tbeta"
    with pytest.raises(ToolError, match="no such file"):
        await run("read", work, path="missing.txt")


async def test_absolute_paths_inside_cwd_are_fine(work: Path) -> None:
    assert "alpha" in await run("read", work, path=str(work / "a.txt"))


async def test_write_creates_folders(work: Path) -> None:
    assert "wrote 2 bytes" in await run("write", work, path="new/deep/b.txt", content="hi")
    assert (work / "new" / "deep" / "b.txt").read_text() == "hi"


async def test_edit_replaces_a_unique_exact_string(work: Path) -> None:
    await run("edit", work, path="a.txt", old_string="beta", new_string="BETA")
    assert (work / "a.txt").read_text() == "alpha\nBETA\ngamma\n"


async def test_edit_refuses_a_missing_or_ambiguous_string(work: Path) -> None:
    (work / "dup.txt").write_text("x x x")
    with pytest.raises(ToolError, match="occurs 3 times"):
        await run("edit", work, path="dup.txt", old_string="x", new_string="y")
    with pytest.raises(ToolError, match="not found"):
        await run("edit", work, path="dup.txt", old_string="z", new_string="y")
    assert (work / "dup.txt").read_text() == "x x x"
    await run("edit", work, path="dup.txt", old_string="x", new_string="y", replace_all=True)
    assert (work / "dup.txt").read_text() == "y y y"


async def test_list_and_grep(work: Path) -> None:
    listing = await run("list", work)
    assert listing.splitlines() == ["a.txt", "link_dir@", "link_file@", "src/"]  # links are marked, never followed
    assert await run("grep", work, pattern="beta", include="*.py") == "src/app.py:2:    return 'beta'"
    assert "a.txt:2:beta" in await run("grep", work, pattern="BETA", ignore_case=True)
    with pytest.raises(ToolError, match="bad regular expression"):
        await run("grep", work, pattern="(")


async def test_output_is_capped(work: Path) -> None:
    tools = {t.name: t for t in sessions.builtin_tools(max_output=100)}
    (work / "big.txt").write_text("line\n" * 1000)
    text = await tools["read"].run({"path": "big.txt"}, ToolContext(cwd=str(work)))
    assert "[output cut" in text
    assert len(text) < 200


# --- bash -----------------------------------------------------------------------------------


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if any(marker in part for part in cmdline) and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def sleeper() -> tuple[str, str]:
    """A command that sleeps, marked so the process table can be searched for it."""
    seconds = f"1000.{uuid.uuid4().int % 10**8:08d}"
    return f"sleep {seconds}", seconds


async def test_bash_returns_output_and_exit_code(work: Path) -> None:
    assert await run("bash", work, command="echo hi; pwd") == f"hi\n{work}\n\n[exit code 0]"
    with pytest.raises(ToolError, match=r"oops\n\n\[exit code 3\]"):
        await run("bash", work, command="echo oops; exit 3")


async def test_bash_output_is_capped(work: Path) -> None:
    tools = {t.name: t for t in sessions.builtin_tools(max_output=50)}
    text = await tools["bash"].run({"command": "yes | head -c 100000"}, ToolContext(cwd=str(work)))
    assert "[output cut" in text
    assert len(text) < 200


async def test_bash_timeout_kills_the_whole_process_group(work: Path) -> None:
    command, marker = sleeper()
    tools = {t.name: t for t in sessions.builtin_tools(bash_timeout=0.5)}
    with pytest.raises(ToolError, match="timed out"):
        await tools["bash"].run({"command": f"{command} & {command}; echo never"}, ToolContext(cwd=str(work)))
    assert processes_with(marker) == []


async def test_bash_cancelled_leaves_no_process(work: Path) -> None:
    command, marker = sleeper()
    with trio.move_on_after(0.5) as scope:
        await run("bash", work, command=f"{command} & {command}")
    assert scope.cancelled_caught
    assert processes_with(marker) == []


async def test_bash_background_jobs_die_with_the_command(work: Path) -> None:
    command, marker = sleeper()
    with trio.fail_after(10):
        text = await run("bash", work, command=f"{command} & echo started")
    assert text.startswith("started")
    assert processes_with(marker) == []


async def test_the_process_check_can_fail(work: Path) -> None:
    """The helper does find a live sleeper (so the tests above can fail)."""
    command, marker = sleeper()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(trio.run_process, ["bash", "-c", command], check=False))
        await trio.sleep(0.3)
        assert len(processes_with(marker)) == 1
        nursery.cancel_scope.cancel()


# --- tools from typed functions --------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


async def paint(
    ctx: ToolContext,
    wall: str,
    coats: int,
    color: Color = Color.RED,
    finish: Literal["matte", "gloss"] = "matte",
    tags: list[str] | None = None,
    ratio: float = 0.5,
    dry: bool = False,
) -> dict[str, Any]:
    """Paint a wall.

    Longer text about painting.

    Args:
        wall: Which wall.
        coats: How many coats,
            at least one.
        color: The paint color.
    """
    return {"cwd": ctx.cwd, "wall": wall, "coats": coats, "color": color.value, "finish": finish, "tags": tags}


def test_schema_from_type_hints_and_docstring() -> None:
    made = sessions.tool(paint)
    assert made.name == "paint"
    assert made.description == "Paint a wall.\n\nLonger text about painting."
    assert made.parameters == {
        "type": "object",
        "properties": {
            "wall": {"type": "string", "description": "Which wall."},
            "coats": {"type": "integer", "description": "How many coats, at least one."},
            "color": {"enum": ["red", "blue"], "description": "The paint color."},
            "finish": {"enum": ["matte", "gloss"], "default": "matte"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "ratio": {"type": "number", "default": 0.5},
            "dry": {"type": "boolean", "default": False},
        },
        "required": ["wall", "coats"],
        "additionalProperties": False,
    }
    assert made.context_parameter == "ctx"


async def test_a_function_tool_gets_its_context_and_converted_arguments(tmp_path: Path) -> None:
    made = sessions.tool(paint)
    out = await made.run({"wall": "north", "coats": 2, "color": "blue"}, ToolContext(cwd=str(tmp_path)))
    assert '"color": "blue"' in out
    assert str(tmp_path) in out


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"coats": 1}, "missing wall"),
        ({"wall": "n", "coats": "two"}, "coats='two' is not integer"),
        ({"wall": "n", "coats": True}, "is not integer"),
        ({"wall": "n", "coats": 1, "color": "green"}, "color='green'"),
        ({"wall": "n", "coats": 1, "tags": [1]}, "tags=[1]"),
        ({"wall": "n", "coats": 1, "brush": "big"}, "unknown brush"),
    ],
)
async def test_arguments_are_checked(arguments: dict[str, Any], problem: str, tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="invalid arguments for paint") as caught:
        await sessions.tool(paint).run(arguments, ToolContext(cwd=str(tmp_path)))
    assert problem in str(caught.value)


def test_decorator_with_options() -> None:
    @sessions.tool(name="look", read_only=True)
    async def peek(path: str) -> str:
        """Peek at a path."""
        return path

    assert isinstance(peek, sessions.Tool)
    assert peek.name == "look"
    assert peek.read_only
    assert peek.spec == sessions.ToolSpec(
        "look",
        "Peek at a path.",
        {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
            "additionalProperties": False,
        },
    )


def test_functions_that_cannot_be_tools() -> None:
    def sync(x: int) -> int:
        """Sync."""
        return x

    async def undocumented(x: int) -> int:
        return x

    async def odd(x: complex) -> str:
        """Odd type."""
        return str(x)

    async def variadic(*xs: int) -> str:
        """Variadic."""
        return ""

    for function in (sync, undocumented, odd, variadic):
        with pytest.raises(sessions.InvalidOption):
            sessions.tool(function)  # type: ignore[arg-type]


def test_builtin_tools_by_name() -> None:
    assert [t.name for t in sessions.builtin_tools(["read", "grep"])] == ["read", "grep"]
    assert {t.name for t in sessions.builtin_tools()} == {"read", "write", "edit", "list", "glob", "grep", "bash"}
    with pytest.raises(sessions.InvalidOption):
        sessions.builtin_tools(["rm"])
    read_only = {t.name for t in sessions.builtin_tools() if t.read_only}
    assert read_only == {"read", "list", "glob", "grep"}


async def test_optional_enum_arguments_are_converted(tmp_path: Path) -> None:
    @sessions.tool
    async def shade(color: Color | None = None) -> str:
        """Say the shade."""
        return repr(color)

    context = ToolContext(cwd=str(tmp_path))
    assert await shade.run({"color": "blue"}, context) == repr(Color.BLUE)
    assert await shade.run({}, context) == "None"
