"""The built-in file tools cannot be made to leave ``cwd`` or to hold the trio thread.

- grep's regex is RE2: a pattern that backtracks for ever in Python's ``re`` answers at
  once, and what RE2 cannot run is refused with a message;
- the file work runs in a worker thread that ``tool_timeout`` and an interrupt really stop,
  while the other sessions of the run go on answering;
- every path is opened from a descriptor of ``cwd`` without following links, so a
  directory swapped for a link after the check (deterministically, or by a racing thread)
  never lets a tool reach outside;
- the confinement check does not take a sibling whose name starts with ``cwd``'s
  (``work2`` beside ``work``) for a part of ``cwd``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

import sessions
from sessions import (
    FinishReason,
    Message,
    SessionContext,
    TextDelta,
    ToolCall,
    ToolCallFinished,
    ToolCallRequested,
    ToolContext,
    ToolError,
    TurnCompleted,
    TurnRequest,
)
from sessions._tools import _builtin, _files

TOOLS = {t.name: t for t in sessions.builtin_tools()}


async def run(name: str, cwd: Path, **arguments: Any) -> str:
    return await TOOLS[name].run(arguments, ToolContext(cwd=str(cwd)))


# --- grep: a linear-time regex ------------------------------------------------------------------


async def test_a_catastrophic_pattern_answers_at_once_and_correctly(tmp_path: Path) -> None:
    """``(a+)+$`` against 30 a's and a b backtracks about 2**30 times in Python's re (minutes,
    all of them on the trio thread before the fix); RE2 answers in linear time."""
    lines = ["a" * 30 + "b", "aaaa", "baaa", "x" * 40, ("a" * 29 + "!") * 100]
    (tmp_path / "data.txt").write_text("\n".join(lines) + "\n")
    with trio.fail_after(30):  # a hang guard: the answer takes microseconds
        found = await run("grep", tmp_path, pattern="(a+)+$")
    assert found == "data.txt:2:aaaa\ndata.txt:3:baaa"
    with trio.fail_after(30):
        found = await run("grep", tmp_path, pattern="(A+)+B$", ignore_case=True)
    assert found == f"data.txt:1:{lines[0]}"


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)b", r"(?!a)b", r"(?<=a)b", r"(?<!a)b"])
async def test_what_re2_cannot_run_is_refused_with_a_message(tmp_path: Path, pattern: str) -> None:
    (tmp_path / "a.txt").write_text("aab\n")
    with pytest.raises(ToolError, match="no backreferences and no lookahead or lookbehind") as caught:
        await run("grep", tmp_path, pattern=pattern)
    assert "bad regular expression" in str(caught.value)


async def test_a_pattern_that_is_not_unicode_is_an_error_for_the_model(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="cannot be written as UTF-8"):
        await run("grep", tmp_path, pattern="\ud800")


# --- the trio thread stays free; tool_timeout and interrupt bind --------------------------------


class Model:
    """Asks for the scripted tool calls, one list per model call, then answers "done"."""

    name = "script"

    def __init__(self, *steps: list[tuple[str, dict[str, Any]]]) -> None:
        self.steps = list(steps)

    async def chat(
        self, messages: Sequence[Message], tools: Sequence[sessions.ToolSpec], options: dict[str, Any]
    ) -> AsyncIterator[sessions.ProviderEvent]:
        await trio.lowlevel.checkpoint()
        if not self.steps:
            yield TextDelta("done")
            yield TurnCompleted("done", usage=sessions.Usage(1, 1))
            return
        for index, (name, arguments) in enumerate(self.steps.pop(0)):
            yield ToolCallRequested(ToolCall(f"c{index}", name, arguments))
        yield TurnCompleted("", usage=sessions.Usage(1, 1))

    async def aclose(self) -> None:
        pass


FILES = 200


@pytest.fixture
def slow_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[int]]:
    """A tree whose scan takes seconds: 200 files of 1 MB (sparse: 8 KB of lines, then a
    hole), each of them read 10 ms slower than the disk would; and a count of the files
    the scan has read so far."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for index in range(FILES):
        with open(tree / f"f{index:03}.txt", "wb") as handle:
            handle.write(b"hay\n" * 2048)
            handle.truncate(1_000_000)
    scanned = [0]
    real_read_head = _files.read_head

    def slow_read_head(dir_fd: int, name: str, limit: int) -> bytes | None:
        scanned[0] += 1
        time.sleep(0.01)
        return real_read_head(dir_fd, name, limit)

    monkeypatch.setattr(_builtin, "read_head", slow_read_head, raising=False)
    return tmp_path, scanned


async def ticking(ticks: list[float]) -> None:
    while True:
        await trio.sleep(0.01)
        ticks.append(trio.current_time())


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    with trio.fail_after(20):  # a hang guard, with a message
        while not predicate():  # noqa: ASYNC110 (a worker thread's progress has no event)
            await trio.sleep(0.005)
    assert predicate(), what


async def assert_the_worker_stops(scanned: list[int]) -> None:
    """Once the call is over, the worker reads at most the one file it had begun."""
    before = scanned[0]
    await trio.sleep(0.3)
    assert scanned[0] - before <= 1, "the abandoned scan went on"
    assert scanned[0] < FILES


@pytest.mark.parametrize("stopped_by", ["tool_timeout", "interrupt"])
async def test_a_slow_scan_leaves_the_trio_thread_free_and_stops_when_told(
    slow_tree: tuple[Path, list[int]], stopped_by: str
) -> None:
    cwd, scanned = slow_tree
    grep = ("grep", {"pattern": "needle", "path": "tree"})
    timeout = 1.0 if stopped_by == "tool_timeout" else None
    scanning = sessions.AgentLoop(Model([grep]), tool_timeout=timeout)
    other = sessions.AgentLoop(Model())
    ticks: list[float] = []
    events: list[Any] = []
    async with (
        scanning.connect(SessionContext("scanner", cwd=str(cwd))) as conn,
        other.connect(SessionContext("other", cwd=str(cwd))) as other_conn,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(ticking, ticks)

        async def scan() -> None:
            events.extend([e async for e in conn.run_turn(TurnRequest(1, "find the needle", ()))])

        nursery.start_soon(scan)
        await wait_until(lambda: scanned[0] >= 3, "the scan began")
        ticks_before = len(ticks)
        # another session answers while the scan runs (the scan's thread is not the trio thread)
        answered = [e async for e in other_conn.run_turn(TurnRequest(1, "hello", ()))]
        assert isinstance(answered[-1], TurnCompleted)
        assert answered[-1].text == "done"
        assert not events, "the scanning turn ended before the other session answered"
        if stopped_by == "interrupt":
            await trio.sleep(0.3)
            await conn.interrupt()
        await wait_until(lambda: bool(events), "the scanning turn ended")
        ticks_during_scan = len(ticks) - ticks_before
        nursery.cancel_scope.cancel()
    assert ticks_during_scan >= 3, "the trio thread was held during the scan"
    await assert_the_worker_stops(scanned)
    done = events[-1]
    assert isinstance(done, TurnCompleted)
    if stopped_by == "tool_timeout":
        results = [e.result for e in events if isinstance(e, ToolCallFinished)]
        assert results[0].is_error
        assert results[0].content == "grep timed out after 1s"
        assert done.finish_reason is FinishReason.STOP
    else:
        assert done.finish_reason is FinishReason.INTERRUPTED


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("glob", {"pattern": "**/*.txt"}),
        ("list", {"path": "many"}),
        ("grep", {"pattern": "hay", "path": "many"}),
        ("grep", {"pattern": "hay", "path": "long.txt"}),
    ],
    ids=["glob", "list", "grep-tree", "grep-file"],
)
async def test_every_scan_is_stopped_by_a_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, arguments: dict[str, Any]
) -> None:
    """Each scanning tool checks for a stop request between entries and lines; with every
    check made 5 ms slow (300 entries: 1.5 s), a cancellation after 0.2 s frees the caller at
    once, the trio thread ticks meanwhile, and the worker stops at its next check."""
    many = tmp_path / "many"
    many.mkdir()
    for index in range(300):
        (many / f"f{index:03}.txt").write_text("hay\n")
    (tmp_path / "long.txt").write_text("hay\n" * 300)
    checks = [0]
    real_check = _files.check

    def slow_check(stop: threading.Event) -> None:
        checks[0] += 1
        time.sleep(0.005)
        real_check(stop)

    monkeypatch.setattr(_files, "check", slow_check)
    monkeypatch.setattr(_builtin, "check", slow_check)
    ticks: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticking, ticks)
        with trio.move_on_after(0.2) as scope:
            await run(name, tmp_path, **arguments)
        nursery.cancel_scope.cancel()
    assert scope.cancelled_caught
    assert len(ticks) >= 3, "the trio thread was held during the scan"
    before = checks[0]
    await trio.sleep(0.2)
    assert checks[0] - before <= 1, "the abandoned scan went on"
    assert checks[0] < 300


async def test_a_cancelled_write_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write whose call is cancelled before its worker opens the file leaves no file."""
    reached = threading.Event()
    release = threading.Event()
    real_locate = _builtin._locate

    def held_locate(cwd: str, path: str) -> tuple[str, tuple[str, ...]]:
        reached.set()
        release.wait(10)
        return real_locate(cwd, path)

    monkeypatch.setattr(_builtin, "_locate", held_locate)
    with trio.move_on_after(5) as guard:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(run, "write", tmp_path, path="late.txt", content="x"))
            await trio.to_thread.run_sync(reached.wait, 10)
            nursery.cancel_scope.cancel()
    assert not guard.cancelled_caught
    release.set()
    await trio.sleep(0.2)
    assert not (tmp_path / "late.txt").exists()


# --- a path swapped between the check and the open ----------------------------------------------


@pytest.fixture
def swap(tmp_path: Path) -> tuple[Path, Path]:
    """``work/d`` (a directory with ``f.txt``) and ``outside`` (with a secret ``f.txt``)."""
    work = tmp_path / "work"
    (work / "d").mkdir(parents=True)
    (work / "d" / "f.txt").write_text("inside\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("SECRET outside\n")
    return work, outside


SWAPPED_CALLS = [
    ("read", {"path": "d/f.txt"}),
    ("write", {"path": "d/f.txt", "content": "pwned"}),
    ("write", {"path": "d/new.txt", "content": "pwned"}),
    ("write", {"path": "d/deeper/new.txt", "content": "pwned"}),
    ("edit", {"path": "d/f.txt", "old_string": "SECRET", "new_string": "pwned"}),
    ("list", {"path": "d"}),
    ("glob", {"pattern": "*", "path": "d"}),
    ("grep", {"pattern": "SECRET", "path": "d"}),
    ("grep", {"pattern": "SECRET", "path": "d/f.txt"}),
]


def outside_state(outside: Path) -> dict[str, str]:
    return {str(p.relative_to(outside)): p.read_text() for p in sorted(outside.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("name", "arguments"), SWAPPED_CALLS, ids=[f"{n}-{a['path']}" for n, a in SWAPPED_CALLS])
async def test_a_directory_swapped_for_a_link_after_the_check_is_refused(
    swap: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, name: str, arguments: dict[str, Any]
) -> None:
    work, outside = swap
    before = outside_state(outside)
    real_confine = _builtin.confine

    def confine_then_swap(cwd: str, path: str) -> Path:
        checked = real_confine(cwd, path)  # the check passes: d is a real directory of work
        os.rename(work / "d", work / "d_moved")
        os.symlink(outside, work / "d")  # ...and then d leads outside
        return checked

    monkeypatch.setattr(_builtin, "confine", confine_then_swap)
    with pytest.raises(ToolError, match="changed while it was opened"):
        await run(name, work, **arguments)
    assert outside_state(outside) == before


FILE_CALLS = [call for call in SWAPPED_CALLS if call[1]["path"] == "d/f.txt"]


@pytest.mark.parametrize(("name", "arguments"), FILE_CALLS, ids=[n for n, _ in FILE_CALLS])
async def test_a_file_swapped_for_a_link_after_the_check_is_refused(
    swap: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, name: str, arguments: dict[str, Any]
) -> None:
    work, outside = swap
    before = outside_state(outside)
    real_confine = _builtin.confine

    def confine_then_swap(cwd: str, path: str) -> Path:
        checked = real_confine(cwd, path)
        os.replace(work / "d" / "f.txt", work / "d" / "moved.txt")
        os.symlink(outside / "f.txt", work / "d" / "f.txt")
        return checked

    monkeypatch.setattr(_builtin, "confine", confine_then_swap)
    with pytest.raises(ToolError, match="changed while it was opened"):
        await run(name, work, **arguments)
    assert outside_state(outside) == before


def exchanger() -> Callable[[Path, Path], None]:
    """Swap two names atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        pytest.skip("this C library has no renameat2")
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

    def exchange(a: Path, b: Path) -> None:
        if renameat2(-100, bytes(a), -100, bytes(b), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))

    return exchange


async def test_a_racing_thread_that_swaps_a_directory_never_lets_a_write_out(swap: tuple[Path, Path]) -> None:
    """``work/d`` is, in turn, the real directory and a link to ``outside`` (swapped
    atomically, as fast as a thread can) while 400 writes into it run: whatever each of
    them saw, none lands outside."""
    work, outside = swap
    os.symlink(outside, work / "l")
    exchange = exchanger()
    try:
        exchange(work / "d", work / "l")
        exchange(work / "d", work / "l")
    except OSError as exc:
        pytest.skip(f"this file system cannot exchange names: {exc}")
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        while not stop.is_set():
            exchange(work / "d", work / "l")
            swaps[0] += 1

    outcomes: list[str] = []
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        for index in range(400):
            try:
                await run("write", work, path=f"d/f{index}.txt", content="x")
                outcomes.append("written")
            except ToolError:
                outcomes.append("refused")
            except OSError as exc:
                outcomes.append(f"crashed: {exc!r}")
    finally:
        stop.set()
        thread.join(10)
    assert outside_state(outside) == {"f.txt": "SECRET outside\n"}
    assert swaps[0] > 100
    assert set(outcomes) == {"written", "refused"}, [o for o in outcomes if o.startswith("crashed")][:3]
    real = work / ("l" if (work / "d").is_symlink() else "d")
    assert len(list(real.glob("f*.txt"))) == outcomes.count("written") + 1


# --- symbolic links inside cwd --------------------------------------------------------------------


async def test_links_inside_cwd_that_stay_inside_are_followed_by_the_check_only(tmp_path: Path) -> None:
    """A link is resolved by the check; what is opened is the real path, without links."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("beta\n")
    os.symlink(tmp_path / "src", tmp_path / "alias")
    os.symlink(tmp_path / "src" / "app.py", tmp_path / "app_link.py")
    assert await run("read", tmp_path, path="alias/app.py") == "     1\tbeta"
    assert await run("read", tmp_path, path="app_link.py") == "     1\tbeta"
    await run("write", tmp_path, path="alias/new.py", content="gamma\n")
    assert (tmp_path / "src" / "new.py").read_text() == "gamma\n"
    # the walks neither follow nor report links
    assert await run("glob", tmp_path, pattern="**/*.py") == "src/app.py\nsrc/new.py"
    assert await run("grep", tmp_path, pattern="beta") == "src/app.py:1:beta"
    assert await run("list", tmp_path) == "alias@\napp_link.py@\nsrc/"


async def test_a_fifo_is_refused_and_never_blocks(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with trio.fail_after(10):  # a hang guard: opening a FIFO without a writer would block
        with pytest.raises(ToolError, match="not a regular file"):
            await run("read", tmp_path, path="pipe")
        with pytest.raises(ToolError):
            await run("write", tmp_path, path="pipe", content="x")
        assert await run("grep", tmp_path, pattern="x") == "no matches for 'x'"


# --- a sibling whose name starts with cwd's --------------------------------------------------------


@pytest.fixture
def sibling(tmp_path: Path) -> Path:
    """``work`` and, beside it, ``work2/secret.txt``: a string prefix, not a parent."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("alpha\n")
    (tmp_path / "work2").mkdir()
    (tmp_path / "work2" / "secret.txt").write_text("SECRET of work2\n")
    return work


def sibling_calls(work: Path) -> list[tuple[str, dict[str, Any]]]:
    absolute = str(work.parent / "work2")
    calls: list[tuple[str, dict[str, Any]]] = []
    for folder in ("../work2", absolute):
        calls += [
            ("read", {"path": f"{folder}/secret.txt"}),
            ("write", {"path": f"{folder}/secret.txt", "content": "pwned"}),
            ("write", {"path": f"{folder}/new.txt", "content": "pwned"}),
            ("edit", {"path": f"{folder}/secret.txt", "old_string": "SECRET", "new_string": "pwned"}),
            ("list", {"path": folder}),
            ("glob", {"pattern": "*", "path": folder}),
            ("grep", {"pattern": "SECRET", "path": folder}),
            ("grep", {"pattern": "SECRET", "path": f"{folder}/secret.txt"}),
        ]
    return calls


@pytest.mark.parametrize("index", range(16))
async def test_a_sibling_that_shares_the_prefix_of_cwd_is_outside(sibling: Path, index: int) -> None:
    calls = sibling_calls(sibling)
    assert len(calls) == 16
    name, arguments = calls[index]
    with pytest.raises(ToolError, match="is outside the working directory"):
        await run(name, sibling, **arguments)
    assert sorted(p.name for p in (sibling.parent / "work2").iterdir()) == ["secret.txt"]
    assert (sibling.parent / "work2" / "secret.txt").read_text() == "SECRET of work2\n"


async def test_a_link_to_the_sibling_is_neither_followed_nor_reported_by_the_walks(sibling: Path) -> None:
    os.symlink(sibling.parent / "work2", sibling / "sib")
    assert await run("grep", sibling, pattern="SECRET") == "no matches for 'SECRET'"
    assert await run("glob", sibling, pattern="**/*") == "a.txt"
    with pytest.raises(ToolError, match="is outside the working directory"):
        await run("read", sibling, path="sib/secret.txt")


@pytest.mark.parametrize("real", ["/srv/work2/x", "/srv/work/../work2/x", "/srv"])
def test_the_second_line_refuses_a_path_that_is_not_below_cwd(real: str) -> None:
    """`below` refuses what `confine` should already have refused, with its own message."""
    with pytest.raises(ToolError, match="does not name an entry below the working directory"):
        _files.below("/srv/work", Path(real), "p")
    assert _files.below("/srv/work", Path("/srv/work/a/b"), "p") == ("a", "b")
    assert _files.below("/srv/work", Path("/srv/work"), "p") == ()


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("read", {"path": "a\x00.txt"}),
        ("write", {"path": "new\x00.txt", "content": "x"}),
        ("list", {"path": ".\x00"}),
        ("glob", {"pattern": "*", "path": ".\x00"}),
        ("grep", {"pattern": "alpha", "path": "a\x00.txt"}),
    ],
    ids=["read", "write", "list", "glob", "grep"],
)
async def test_a_path_with_a_nul_byte_is_refused_by_name(sibling: Path, name: str, arguments: dict[str, Any]) -> None:
    """A NUL byte cannot be in a file name: the tool says so, and writes nothing."""
    with pytest.raises(ToolError, match="contains a NUL byte"):
        await run(name, sibling, **arguments)
    assert sorted(os.listdir(sibling)) == ["a.txt"]
