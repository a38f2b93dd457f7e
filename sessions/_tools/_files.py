"""The file tools' ground floor: opening entries below the working directory whatever races,
and doing the work off the trio thread where a timeout or an interrupt can stop it.

**Opening.** A path that passed the check (`confine`: resolved, inside ``cwd``) is opened
again from a descriptor of ``cwd``, one component at a time (``openat``), each directory
with ``O_DIRECTORY | O_NOFOLLOW`` and the last component with ``O_NOFOLLOW``. A symbolic link
that takes the place of a component after the check makes the open fail (``ELOOP``): it is
never followed, so nothing outside ``cwd`` is reached however the tree changes meanwhile.
Files are opened with ``O_NONBLOCK`` and must be regular files, so a FIFO cannot hang a
worker. ``os.fwalk`` is not used for the walks: it classifies entries by ``stat`` following
links and detects a swapped directory afterwards by comparing inodes, while this module
keeps one rule for every tool (open with ``O_NOFOLLOW``, skip links) and checks for a stop
request between entries.

**Threads.** The work runs in a worker thread (`in_thread`), abandoned at once when its
call is cancelled (``abandon_on_cancel``); a stop flag set at that moment is checked by the
worker between entries and lines, so it ends soon after. Threads come from a limiter of
the trio run's own (`TOOL_THREADS`), so abandoned workers never hold the threads other
work of the run needs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import trio

from .._errors import ToolError

TOOL_THREADS = 16
"""Worker threads the built-in file tools of one trio run use at once (more calls wait)."""

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("sessions_tool_threads")

T = TypeVar("T")


class Stopped(Exception):
    """Raised in a worker whose call was cancelled (nobody waits for its result any more)."""


def check(stop: threading.Event) -> None:
    """Raise `Stopped` once the call that started this worker is gone."""
    if stop.is_set():
        raise Stopped


async def in_thread(work: Callable[[threading.Event], T]) -> T:
    """Run ``work(stop)`` in a worker thread; on cancellation return at once and set ``stop``."""
    try:
        limiter = _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(TOOL_THREADS)
        _LIMITER.set(limiter)
    stop = threading.Event()
    try:
        return await trio.to_thread.run_sync(work, stop, abandon_on_cancel=True, limiter=limiter)
    finally:
        stop.set()


def below(root: str, real: Path, shown: str) -> tuple[str, ...]:
    """The components of ``real`` (a resolved path inside ``root``) below ``root``.

    A second line behind `confine`: a component that could climb out (``..``) is refused
    here too, with its own message.
    """
    relative = os.path.relpath(real, root)
    if relative == ".":
        return ()
    parts = tuple(relative.split(os.sep))
    if any(part in ("", ".", "..") for part in parts):
        raise ToolError(f"path {shown!r} does not name an entry below the working directory {root}")
    return parts


@contextlib.contextmanager
def open_root(root: str) -> Iterator[int]:
    """A descriptor of the working directory (resolved by the caller)."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ToolError(f"the working directory {root} cannot be opened: {exc.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _refused(exc: OSError, shown: str, dir_fd: int, part: str) -> ToolError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # Linux says ENOTDIR for a link opened with O_DIRECTORY
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return ToolError(
                    f"path {shown!r} changed while it was opened: {part!r} is now a symbolic link; refused"
                )
        if exc.errno == errno.ENOTDIR:
            return ToolError(f"path {shown!r}: {part!r} is not a directory")
    if exc.errno == errno.ENOENT:
        return ToolError(f"{shown}: no such file or directory")
    return ToolError(f"{shown}: {exc.strerror}")


@contextlib.contextmanager
def open_directory(root_fd: int, parts: tuple[str, ...], shown: str, *, create: bool = False) -> Iterator[int]:
    """A descriptor of the directory ``parts`` below ``root_fd``, opened component by component
    without following links; with ``create``, missing directories are made on the way."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                try:
                    inner = os.open(part, _DIRECTORY, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                    inner = os.open(part, _DIRECTORY, dir_fd=fd)
            except OSError as exc:
                raise _refused(exc, shown, fd, part) from None
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def open_entry(root_fd: int, parts: tuple[str, ...], shown: str, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
    """A descriptor of the last component of ``parts`` (a file or, read-only, a directory),
    opened without following a link and without blocking; the caller closes it."""
    if not parts:
        return os.dup(root_fd)
    with open_directory(root_fd, parts[:-1], shown, create=bool(flags & os.O_CREAT)) as parent:
        try:
            return os.open(parts[-1], flags | _FILE, mode, dir_fd=parent)
        except IsADirectoryError:
            raise ToolError(f"{shown} is a directory") from None
        except OSError as exc:
            raise _refused(exc, shown, parent, parts[-1]) from None


def open_regular_file(root_fd: int, parts: tuple[str, ...], shown: str, flags: int = os.O_RDONLY) -> int:
    """As `open_entry`, and refused unless it is a regular file."""
    fd = open_entry(root_fd, parts, shown, flags)
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise ToolError(f"{shown} is a directory" if stat.S_ISDIR(kind) else f"{shown} is not a regular file")
    return fd


def is_directory(fd: int) -> bool:
    """Whether ``fd`` is a directory."""
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def _listing(fd: int, stop: threading.Event) -> list[tuple[str, bool, bool]]:
    """(name, is a directory, is a regular file) of each entry, by name; links count as neither."""
    found = []
    with os.scandir(fd) as entries:
        for entry in entries:
            check(stop)
            with contextlib.suppress(OSError):  # gone meanwhile
                found.append((entry.name, entry.is_dir(follow_symlinks=False), entry.is_file(follow_symlinks=False)))
    return sorted(found)


def entries(fd: int, stop: threading.Event) -> list[tuple[str, str]]:
    """(name, kind) of each entry of the directory ``fd``, by name: kind is ``"dir"``,
    ``"link"``, ``"file"`` or ``"other"``; links are not followed."""
    found = []
    with os.scandir(fd) as listing:
        for entry in listing:
            check(stop)
            try:
                if entry.is_symlink():
                    kind = "link"
                elif entry.is_dir(follow_symlinks=False):
                    kind = "dir"
                elif entry.is_file(follow_symlinks=False):
                    kind = "file"
                else:
                    kind = "other"
            except OSError:
                continue  # gone meanwhile
            found.append((entry.name, kind))
    return sorted(found)


def walk(
    top_fd: int, stop: threading.Event, descend: Callable[[tuple[str, ...]], bool] = lambda parts: True
) -> Iterator[tuple[tuple[str, ...], bool, int]]:
    """Every directory and regular file below ``top_fd``, depth first in name order, as
    (components below the top, is a directory, descriptor of its directory). Links and
    other kinds of entry are skipped; a directory is entered if ``descend`` says so, opened
    with ``O_NOFOLLOW`` (one swapped for a link meanwhile is skipped, as is one that cannot
    be read). The descriptors are valid until the next step of the iteration."""
    opened: list[tuple[int, tuple[str, ...], Iterator[tuple[str, bool, bool]]]] = []
    try:
        fd = os.dup(top_fd)
        opened.append((fd, (), iter(_listing(fd, stop))))
        while opened:
            fd, parts, pending = opened[-1]
            item = next(pending, None)
            if item is None:
                os.close(fd)
                opened.pop()
                continue
            check(stop)
            name, is_dir, is_file = item
            here = (*parts, name)
            if is_file:
                yield here, False, fd
            if not is_dir:
                continue
            yield here, True, fd
            if not descend(here):
                continue
            try:
                inner = os.open(name, _DIRECTORY, dir_fd=fd)
            except OSError:
                continue
            try:
                listing = _listing(inner, stop)
            except OSError:
                os.close(inner)
                continue
            opened.append((inner, here, iter(listing)))
    finally:
        for fd, _, _ in opened:
            os.close(fd)


def read_head(dir_fd: int, name: str, limit: int) -> bytes | None:
    """The first ``limit`` bytes of the regular file ``name`` of the directory ``dir_fd``
    (None if it is not a regular file any more, or cannot be read)."""
    try:
        fd = os.open(name, os.O_RDONLY | _FILE, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            return handle.read(limit)
        except OSError:
            return None
