"""The built-in tools, each confined to the session's ``cwd``: ``read``, ``write``, ``edit``,
``list``, ``glob``, ``grep`` and ``bash``.

Confinement is checked twice. First `confine` resolves the path (``os.path.realpath``:
``..``, absolute paths and symlinks all resolved) and refuses, with a clear message, one
that does not land inside the real ``cwd``. Then the resolved path is opened from a
descriptor of ``cwd``, component by component, never following a symbolic link
(``_files.py``): a directory swapped for a link after the check makes the open fail, so
no race can take a tool outside ``cwd``. ``glob`` and ``grep`` walk the tree the same way
and neither follow nor report links.

The file tools run in a worker thread, abandoned when the call is cancelled (a
``tool_timeout``, an interrupt) and told to stop: what they cost depends on the model's
input (a tree to walk, a file to scan), and nothing of that kind may hold the trio thread.
``grep`` matches with RE2 (google-re2): linear time in the text, whatever the pattern, so
no pattern can make it hang; RE2 has no backreferences and no lookaround, and such a
pattern is refused with a message saying so.

``bash`` is not confined by the file system (it is a shell): it starts in ``cwd``, in its
own process group (``start_new_session``), and the whole group is killed when it ends,
times out or is cancelled, so no process it started survives the call (a process that
calls ``setsid`` itself escapes any process group; use an OS sandbox for untrusted
commands).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import stat
import subprocess
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from threading import Event

import attrs
import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
import trio

from .._errors import InvalidOption, ToolError
from ._core import Tool, ToolContext
from ._files import (
    below,
    check,
    entries,
    in_thread,
    is_directory,
    open_entry,
    open_regular_file,
    open_root,
    read_head,
    walk,
)

DEFAULT_MAX_OUTPUT = 30_000
"""Characters of output a tool returns at most (the rest is cut, and the cut is said)."""


def confine(cwd: str, path: str) -> Path:
    """Resolve ``path`` against ``cwd`` and refuse it unless it lands inside ``cwd``.

    ``..``, absolute paths and symlinks are resolved first, so none can escape. This is the
    first, friendly check; the built-in tools then open what it returns from a descriptor
    of ``cwd`` without following links, so that a path changed after the check is refused.

    Raises:
        ToolError: the path resolves outside ``cwd``.

    Example::

        confine("/work/project", "src/app.py")   # Path("/work/project/src/app.py")
        confine("/work/project", "../etc")       # ToolError
    """
    root = os.path.realpath(cwd)
    if "\x00" in path:
        raise ToolError(f"path {path!r} contains a NUL byte")
    try:
        real = os.path.realpath(os.path.join(root, path))
    except OSError as exc:  # a link that changed while it was read (readlink: EINVAL)
        raise ToolError(f"path {path!r} changed while it was resolved: {exc.strerror}") from None
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise ToolError(f"path {path!r} is outside the working directory {root}")
    return Path(real)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[output cut: {len(text)} characters, {limit} shown]"


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
    ``max_read_bytes`` is the size of a file ``read`` and ``edit`` accept, and how much of
    each file ``grep`` searches.

    Example::

        loop = sessions.AgentLoop(model, tools=sessions.builtin_tools(["read", "grep"]), cwd=".")
    """
    if bash_timeout <= 0:
        raise InvalidOption("bash_timeout", bash_timeout, "must be a positive number")
    if max_output < 1:
        raise InvalidOption("max_output", max_output, "must be at least 1")
    if max_read_bytes < 1:
        raise InvalidOption("max_read_bytes", max_read_bytes, "must be at least 1")

    async def read(ctx: ToolContext, path: str, offset: int = 1, limit: int = 2000) -> str:
        """Read a text file in the working directory, with line numbers.

        Args:
            path: The file, relative to the working directory.
            offset: The first line to show (1 for the start).
            limit: How many lines to show.
        """
        return await in_thread(partial(_read, ctx.cwd, path, offset, limit, max_read_bytes, max_output))

    async def write(ctx: ToolContext, path: str, content: str) -> str:
        """Create or overwrite a file in the working directory.

        Args:
            path: The file, relative to the working directory.
            content: The whole new content.
        """
        return await in_thread(partial(_write, ctx.cwd, path, content))

    async def edit(ctx: ToolContext, path: str, old_string: str, new_string: str, replace_all: bool = False) -> str:
        """Replace an exact string in a file. The string must occur exactly once, unless
        replace_all is set.

        Args:
            path: The file, relative to the working directory.
            old_string: The exact text to replace (include enough context to be unique).
            new_string: The replacement.
            replace_all: Replace every occurrence.
        """
        return await in_thread(partial(_edit, ctx.cwd, path, old_string, new_string, replace_all, max_read_bytes))

    async def list_(ctx: ToolContext, path: str = ".") -> str:
        """List a directory of the working directory (directories end with /, symbolic links with @).

        Args:
            path: The directory, relative to the working directory.
        """
        return await in_thread(partial(_list, ctx.cwd, path, max_output))

    async def glob(ctx: ToolContext, pattern: str, path: str = ".") -> str:
        """Find files by name pattern (e.g. **/*.py) under a directory of the working directory.

        Args:
            pattern: A glob pattern, relative; ** matches any depth.
            path: The directory to search from.
        """
        return await in_thread(partial(_glob, ctx.cwd, path, pattern, max_output))

    async def grep(
        ctx: ToolContext, pattern: str, path: str = ".", include: str = "*", ignore_case: bool = False
    ) -> str:
        """Search file contents by regular expression; prints path:line:text for each match.

        Args:
            pattern: A regular expression in RE2 syntax (Python's, without backreferences or lookaround).
            path: A file or directory of the working directory to search.
            include: Only files whose name matches this glob (e.g. *.py).
            ignore_case: Match case-insensitively.
        """
        return await in_thread(partial(_grep, ctx.cwd, path, pattern, include, ignore_case, max_output, max_read_bytes))

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


# --- the file tools' work, in a worker thread (see _files.py) ---------------------------------


def _locate(cwd: str, path: str) -> tuple[str, tuple[str, ...]]:
    """The resolved working directory and the components of ``path`` below it (checked)."""
    real = confine(cwd, path)
    root = os.path.realpath(cwd)
    return root, below(root, real, path)


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ToolError(f"{what} cannot be written as UTF-8: {exc.reason} at {exc.start}") from None


def _read(cwd: str, path: str, offset: int, limit: int, max_bytes: int, max_output: int, stop: Event) -> str:
    root, parts = _locate(cwd, path)
    with open_root(root) as root_fd:
        fd = open_regular_file(root_fd, parts, path)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ToolError(f"{path}: larger than {max_bytes} bytes; read a part with grep")
    check(stop)
    lines = data.decode("utf-8", errors="replace").splitlines()
    start = max(offset, 1)
    shown = lines[start - 1 : start - 1 + max(limit, 0)]
    body = "\n".join(f"{start + i:6}\t{line}" for i, line in enumerate(shown))
    return _cut(body, max_output) if shown else f"{path}: no lines from {start} (the file has {len(lines)})"


def _write(cwd: str, path: str, content: str, stop: Event) -> str:
    data = _utf8(content, "content")
    root, parts = _locate(cwd, path)
    if not parts:
        raise ToolError(f"{path} is a directory")
    check(stop)  # the last moment the call can still be abandoned with nothing written
    with open_root(root) as root_fd:
        fd = open_regular_file(root_fd, parts, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return f"wrote {len(data)} bytes to {path}"


def _edit(cwd: str, path: str, old: str, new: str, replace_all: bool, max_bytes: int, stop: Event) -> str:
    root, parts = _locate(cwd, path)
    with open_root(root) as root_fd:
        fd = open_regular_file(root_fd, parts, path, os.O_RDWR)
    with os.fdopen(fd, "r+b") as handle:
        if not old:
            raise ToolError("old_string is empty")
        data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ToolError(f"{path}: larger than {max_bytes} bytes; too large to edit")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"{path} is not UTF-8 text") from None
        count = text.count(old)
        if count == 0:
            raise ToolError(f"{path}: old_string not found")
        if count > 1 and not replace_all:
            raise ToolError(f"{path}: old_string occurs {count} times; add context to make it unique")
        changed = _utf8(text.replace(old, new), "new_string")
        check(stop)  # the last moment the call can still be abandoned with nothing written
        handle.seek(0)
        handle.truncate()
        handle.write(changed)
    return f"replaced {count if replace_all else 1} occurrence(s) in {path}"


def _list(cwd: str, path: str, max_output: int, stop: Event) -> str:
    root, parts = _locate(cwd, path)
    with open_root(root) as root_fd:
        fd = open_entry(root_fd, parts, path)
    try:
        if not is_directory(fd):
            raise ToolError(f"{path}: not a directory")
        listed = entries(fd, stop)
    finally:
        os.close(fd)
    marks = {"dir": "/", "link": "@"}
    names = [name + marks.get(kind, "") for name, kind in listed]
    return _cut("\n".join(names), max_output) if names else f"{path} is empty"


@attrs.frozen
class _GlobPattern:
    """A glob pattern's components matched one path component at a time: a set of positions
    in the pattern (an NFA, so ``**`` costs no backtracking), ``**`` matching any number of
    directories and each other component matching one name (``fnmatch``)."""

    steps: tuple[str, ...]

    def closure(self, positions: set[int]) -> frozenset[int]:
        found = set(positions)
        for position in sorted(positions):
            while position < len(self.steps) and self.steps[position] == "**":
                position += 1
                found.add(position)
        return frozenset(found)

    def advance(self, positions: frozenset[int], name: str) -> frozenset[int]:
        after: set[int] = set()
        for position in positions:
            if position == len(self.steps):
                continue
            step = self.steps[position]
            if step == "**":
                after.add(position)
            elif fnmatch.fnmatchcase(name, step):
                after.add(position + 1)
        return self.closure(after)

    def matches(self, positions: frozenset[int]) -> bool:
        return len(self.steps) in positions

    def can_go_on(self, positions: frozenset[int]) -> bool:
        return any(position < len(self.steps) for position in positions)


def _glob(cwd: str, path: str, pattern: str, max_output: int, stop: Event) -> str:
    if "\x00" in pattern or os.path.isabs(pattern) or ".." in pattern.split("/"):
        raise ToolError(f"pattern {pattern!r} must be relative and stay inside the working directory")
    glob = _GlobPattern(tuple(step for step in pattern.split("/") if step not in ("", ".")))
    if not glob.steps:
        raise ToolError(f"pattern {pattern!r} is empty")
    root, parts = _locate(cwd, path)
    with open_root(root) as root_fd:
        top = open_entry(root_fd, parts, path)
    found: list[str] = []
    size = 0
    try:
        if not is_directory(top):
            raise ToolError(f"{path}: not a directory")
        reached: dict[tuple[str, ...], frozenset[int]] = {(): glob.closure({0})}
        for here, is_dir, _ in walk(top, stop, lambda here: here in reached):
            positions = glob.advance(reached[here[:-1]], here[-1])
            if is_dir and glob.can_go_on(positions):
                reached[here] = positions
            if glob.matches(positions):
                found.append("/".join((*parts, *here)))
                size += len(found[-1]) + 1
                if size > max_output:
                    break
    finally:
        os.close(top)
    if not found:
        return f"no files match {pattern!r}"
    return _cut("\n".join(sorted(found)), max_output)


def _compile(pattern: str, ignore_case: bool) -> Callable[[bytes], bool]:
    """The model's pattern compiled by RE2 (linear time in the text, whatever the pattern)."""
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True  # only whether a line matches is asked
    options.case_sensitive = not ignore_case
    try:
        regex = re2.compile(_utf8(pattern, "the pattern"), options)
    except re2.error as exc:
        detail = exc.args[0].decode("utf-8", "replace") if isinstance(exc.args[0], bytes) else str(exc)
        raise ToolError(
            f"bad regular expression {pattern!r}: {detail} (grep uses RE2, which runs in linear time and has"
            " no backreferences and no lookahead or lookbehind)"
        ) from None

    def search(line: bytes) -> bool:
        return regex.search(line) is not None

    return search


def _grep(
    cwd: str,
    path: str,
    pattern: str,
    include: str,
    ignore_case: bool,
    max_output: int,
    max_bytes: int,
    stop: Event,
) -> str:
    search = _compile(pattern, ignore_case)
    root, parts = _locate(cwd, path)
    with open_root(root) as root_fd:
        top = open_entry(root_fd, parts, path)
    out: list[str] = []
    try:
        if not is_directory(top):
            if not stat.S_ISREG(os.fstat(top).st_mode):
                raise ToolError(f"{path} is not a regular file")
            _grep_file(os.pread(top, max_bytes, 0), "/".join(parts), search, out, max_output, stop)
        else:
            size = 0
            for here, is_dir, dir_fd in walk(top, stop, lambda here: here[-1] != ".git"):
                if is_dir or not fnmatch.fnmatch(here[-1], include):
                    continue
                data = read_head(dir_fd, here[-1], max_bytes)
                if data is not None:
                    size += _grep_file(data, "/".join((*parts, *here)), search, out, max_output - size, stop)
                    if size > max_output:
                        break
    finally:
        os.close(top)
    return _cut("\n".join(out), max_output) if out else f"no matches for {pattern!r}"


def _grep_file(
    data: bytes, shown: str, search: Callable[[bytes], bool], out: list[str], budget: int, stop: Event
) -> int:
    """Append the matching lines of one file to ``out`` (until they pass ``budget`` characters);
    return the characters appended."""
    if b"\x00" in data[:8192]:
        return 0  # binary
    added = 0
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        check(stop)
        if search(line.encode("utf-8")):
            out.append(f"{shown}:{number}:{line}")
            added += len(out[-1]) + 1
            if added > budget:
                break
    return added


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
