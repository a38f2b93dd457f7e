"""The built-in tools, each confined to the session's ``cwd``: ``read``, ``write``, ``edit``,
``list``, ``glob``, ``grep`` and ``bash``.

Confinement resolves every path (``os.path.realpath``: ``..``, absolute paths and
symlinks all resolved) and refuses one that does not land inside the real ``cwd``;
``glob`` and ``grep`` skip entries that resolve outside it. ``bash`` is not confined by
the file system (it is a shell): it starts in ``cwd``, in its own process group
(``start_new_session``), and the whole group is killed when it ends, times out or is
cancelled, so no process it started survives the call (a process that calls ``setsid``
itself escapes any process group; use an OS sandbox for untrusted commands).

File I/O is done inline: these are small local files, and a worker thread per read
would cost more than the read.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import trio

from .._errors import InvalidOption, ToolError
from ._core import Tool, ToolContext

DEFAULT_MAX_OUTPUT = 30_000
"""Characters of output a tool returns at most (the rest is cut, and the cut is said)."""


def confine(cwd: str, path: str) -> Path:
    """Resolve ``path`` against ``cwd`` and refuse it unless it lands inside ``cwd``.

    ``..``, absolute paths and symlinks are resolved first, so none can escape.

    Raises:
        ToolError: the path resolves outside ``cwd``.

    Example::

        confine("/work/project", "src/app.py")   # Path("/work/project/src/app.py")
        confine("/work/project", "../etc")       # ToolError
    """
    root = os.path.realpath(cwd)
    if "\x00" in path:
        raise ToolError(f"path {path!r} contains a NUL byte")
    real = os.path.realpath(os.path.join(root, path))
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise ToolError(f"path {path!r} is outside the working directory {root}")
    return Path(real)


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[output cut: {len(text)} characters, {limit} shown]"


def _relative(root: str, path: str) -> str:
    return os.path.relpath(path, root)


def builtin_tools(
    names: Sequence[str] | None = None,
    *,
    bash_timeout: float = 120.0,
    max_output: int = DEFAULT_MAX_OUTPUT,
    max_read_bytes: int = 1_000_000,
) -> tuple[Tool, ...]:
    """The built-in tools (all of them, or those named), confined to the session's ``cwd``.

    ``bash_timeout`` is the default and the maximum a ``bash`` call may ask for;
    ``max_output`` caps what each tool returns to the model, in characters;
    ``max_read_bytes`` the size of a file ``read`` accepts.

    Example::

        loop = sessions.AgentLoop(model, tools=sessions.builtin_tools(["read", "grep"]), cwd=".")
    """
    if bash_timeout <= 0:
        raise InvalidOption("bash_timeout", bash_timeout, "must be a positive number")
    if max_output < 1:
        raise InvalidOption("max_output", max_output, "must be at least 1")

    async def read(ctx: ToolContext, path: str, offset: int = 1, limit: int = 2000) -> str:
        """Read a text file in the working directory, with line numbers.

        Args:
            path: The file, relative to the working directory.
            offset: The first line to show (1 for the start).
            limit: How many lines to show.
        """
        target = confine(ctx.cwd, path)
        await trio.lowlevel.checkpoint()
        if not target.is_file():
            raise ToolError(f"{path}: no such file")
        if target.stat().st_size > max_read_bytes:
            raise ToolError(f"{path}: larger than {max_read_bytes} bytes; read a part with grep")
        lines = target.read_bytes().decode("utf-8", errors="replace").splitlines()
        start = max(offset, 1)
        shown = lines[start - 1 : start - 1 + max(limit, 0)]
        body = "\n".join(f"{start + i:6}\t{line}" for i, line in enumerate(shown))
        return _cut(body, max_output) if shown else f"{path}: no lines from {start} (the file has {len(lines)})"

    async def write(ctx: ToolContext, path: str, content: str) -> str:
        """Create or overwrite a file in the working directory.

        Args:
            path: The file, relative to the working directory.
            content: The whole new content.
        """
        target = confine(ctx.cwd, path)
        await trio.lowlevel.checkpoint()
        if target.is_dir():
            raise ToolError(f"{path} is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        return f"wrote {len(content.encode())} bytes to {path}"

    async def edit(ctx: ToolContext, path: str, old_string: str, new_string: str, replace_all: bool = False) -> str:
        """Replace an exact string in a file. The string must occur exactly once, unless
        replace_all is set.

        Args:
            path: The file, relative to the working directory.
            old_string: The exact text to replace (include enough context to be unique).
            new_string: The replacement.
            replace_all: Replace every occurrence.
        """
        target = confine(ctx.cwd, path)
        await trio.lowlevel.checkpoint()
        if not target.is_file():
            raise ToolError(f"{path}: no such file")
        if not old_string:
            raise ToolError("old_string is empty")
        text = target.read_text(encoding="utf-8")
        count = text.count(old_string)
        if count == 0:
            raise ToolError(f"{path}: old_string not found")
        if count > 1 and not replace_all:
            raise ToolError(f"{path}: old_string occurs {count} times; add context to make it unique")
        target.write_text(text.replace(old_string, new_string), encoding="utf-8")
        return f"replaced {count if replace_all else 1} occurrence(s) in {path}"

    async def list_(ctx: ToolContext, path: str = ".") -> str:
        """List a directory of the working directory (directories end with /).

        Args:
            path: The directory, relative to the working directory.
        """
        target = confine(ctx.cwd, path)
        await trio.lowlevel.checkpoint()
        if not target.is_dir():
            raise ToolError(f"{path}: not a directory")
        entries = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(target))
        return _cut("\n".join(entries), max_output) if entries else f"{path} is empty"

    async def glob(ctx: ToolContext, pattern: str, path: str = ".") -> str:
        """Find files by name pattern (e.g. **/*.py) under a directory of the working directory.

        Args:
            pattern: A glob pattern, relative; ** matches any depth.
            path: The directory to search from.
        """
        found = _glob(ctx.cwd, path, pattern)
        await trio.lowlevel.checkpoint()
        return _cut("\n".join(found), max_output) if found else f"no files match {pattern!r}"

    async def grep(
        ctx: ToolContext, pattern: str, path: str = ".", include: str = "*", ignore_case: bool = False
    ) -> str:
        """Search file contents by regular expression; prints path:line:text for each match.

        Args:
            pattern: A Python regular expression.
            path: A file or directory of the working directory to search.
            include: Only files whose name matches this glob (e.g. *.py).
            ignore_case: Match case-insensitively.
        """
        try:
            regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise ToolError(f"bad regular expression {pattern!r}: {exc}") from None
        out = _grep(ctx.cwd, path, regex, include, max_output, max_read_bytes)
        await trio.lowlevel.checkpoint()
        return _cut("\n".join(out), max_output) if out else f"no matches for {pattern!r}"

    async def bash(ctx: ToolContext, command: str, timeout: float | None = None) -> str:  # noqa: ASYNC109 (the model's name)
        """Run a shell command (bash -c) in the working directory; returns its output and exit code.

        Args:
            command: The command line.
            timeout: Seconds before the command is killed (default and maximum set by the session).
        """
        limit = min(timeout, bash_timeout) if timeout and timeout > 0 else bash_timeout
        return await run_command(command, ctx.cwd, seconds=limit, max_output=max_output)

    tools = {
        "read": Tool.from_function(read, read_only=True),
        "write": Tool.from_function(write, edits_files=True),
        "edit": Tool.from_function(edit, edits_files=True),
        "list": Tool.from_function(list_, name="list", read_only=True),
        "glob": Tool.from_function(glob, read_only=True),
        "grep": Tool.from_function(grep, read_only=True),
        "bash": Tool.from_function(bash),
    }
    if names is None:
        return tuple(tools.values())
    unknown = [n for n in names if n not in tools]
    if unknown:
        raise InvalidOption("names", unknown, f"no such built-in tool; the built-ins are {', '.join(tools)}")
    return tuple(tools[n] for n in names)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group is alive (a zombie waiting for init to reap it is not)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not os.path.isdir("/proc"):
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


async def _until_group_gone(pgid: int, limit: float = 2.0) -> None:
    """Wait (bounded) until every process of the group has died.

    SIGKILL is delivered asynchronously, and the shell's orphans are reaped by init, not
    by us: without this wait a caller could still see them running for a moment.
    """
    with trio.move_on_after(limit):
        while _group_alive(pgid):  # noqa: ASYNC110 (no event tells when another parent reaps)
            await trio.sleep(0.005)


def _glob(cwd: str, path: str, pattern: str) -> list[str]:
    root = os.path.realpath(cwd)
    base = confine(cwd, path)
    if os.path.isabs(pattern) or ".." in Path(pattern).parts:
        raise ToolError(f"pattern {pattern!r} must be relative and stay inside the working directory")
    return sorted(_relative(root, str(p)) for p in base.glob(pattern) if _inside(root, str(p)))


def _grep(cwd: str, path: str, regex: re.Pattern[str], include: str, max_output: int, max_bytes: int) -> list[str]:
    root = os.path.realpath(cwd)
    base = confine(cwd, path)
    files = [str(base)] if base.is_file() else []
    if base.is_dir():
        for folder, dirs, names in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d != ".git")
            files += [os.path.join(folder, n) for n in sorted(names) if fnmatch.fnmatch(n, include)]
    out: list[str] = []
    size = 0
    for file in files:
        if not _inside(root, file) or not os.path.isfile(file):
            continue  # a symlink out of the working directory, or not a regular file
        with open(file, "rb") as handle:
            data = handle.read(max_bytes)
        if b"\x00" in data[:8192]:
            continue  # binary
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if regex.search(line):
                out.append(f"{_relative(root, file)}:{number}:{line}")
                size += len(out[-1]) + 1
        if size > max_output:
            break
    return out


async def run_command(command: str, cwd: str, *, seconds: float, max_output: int = DEFAULT_MAX_OUTPUT) -> str:
    """Run ``bash -c command`` in ``cwd`` in a new process group; return output and exit code.

    The group is killed (SIGKILL) when the shell exits (background jobs too), when
    ``seconds`` pass, and when the caller is cancelled; the shell is always reaped.

    Raises:
        ToolError: the command timed out or exited with a non-zero code (the output is
            in the message).
    """
    process = await trio.lowlevel.open_process(
        ["/bin/bash", "-c", command],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    kept = bytearray()
    total = 0
    assert process.stdout is not None
    stdout = process.stdout

    async def drain() -> None:
        nonlocal total
        while chunk := await stdout.receive_some(65536):
            total += len(chunk)
            if len(kept) < max_output * 4:
                kept.extend(chunk[: max_output * 4 - len(kept)])

    try:
        with trio.move_on_after(seconds) as deadline:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await process.wait()
                _kill_group(process.pid)  # what the shell left behind holds the pipe open
    finally:
        _kill_group(process.pid)
        with trio.CancelScope(shield=True):
            await process.wait()
            await stdout.aclose()
            await _until_group_gone(process.pid)
    output = _cut(kept.decode("utf-8", errors="replace"), max_output)
    if total > len(kept):
        output += f"\n[output cut: {total} bytes]"
    if deadline.cancelled_caught:
        raise ToolError(f"command timed out after {seconds:g}s and was killed\n{output}")
    code = process.returncode
    if code != 0:
        raise ToolError(f"{output}\n[exit code {code}]")
    return f"{output}\n[exit code 0]" if output else "[exit code 0]"
