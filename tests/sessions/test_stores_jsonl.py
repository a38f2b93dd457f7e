"""JsonlStore: torn last lines, corrupt lines, safe file names, fsync at durable appends, group fsync."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

import sessions
from sessions import CorruptRecord, InvalidOption, JsonlStore, Record
from sessions._stores import _jsonl


@pytest.fixture(autouse=True)
def _no_writer_thread_left() -> Iterator[None]:
    """Every test closes the stores it opens: no writer thread outlives it."""
    yield
    assert [t.name for t in threading.enumerate() if t.name.startswith("sessions-")] == []


def _recs(sid: str, first: int, last: int) -> list[Record]:
    return [Record(sid, seq, "message", {"n": seq}, ts=float(seq)) for seq in range(first, last + 1)]


async def _written(directory: Path, sid: str, last: int) -> Path:
    store = JsonlStore(directory)
    await store.append(sid, _recs(sid, 1, last), durable=True)
    await store.aclose()
    return store.path(sid)


async def _load_fresh(directory: Path, sid: str) -> list[Record]:
    store = JsonlStore(directory)
    try:
        return await store.load(sid)
    finally:
        await store.aclose()


def _lines(path: Path) -> list[dict[str, object]]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


async def test_the_file_holds_one_json_object_per_record(tmp_path: Path) -> None:
    """<dir>/<session_id>.jsonl has Record.to_dict() per line, unicode kept readable."""
    store = JsonlStore(tmp_path)
    record = Record("s1", 1, "message", {"text": "日本語"}, ts=2.5)
    await store.append("s1", [record], durable=True)
    await store.aclose()
    path = tmp_path / "s1.jsonl"
    assert store.path("s1") == path
    assert _lines(path) == [record.to_dict()]
    assert "日本語" in path.read_text("utf-8")


@pytest.mark.parametrize("torn", [b'{"v":1,"sid":"s","se', b"garbage\n", b"\x00\x00\x00", b'{"v":1'])
async def test_a_torn_last_line_is_ignored_and_cut_by_the_next_append(tmp_path: Path, torn: bytes) -> None:
    """A crash mid-write leaves a partial last line: load skips it; the next append
    truncates it, so the file is valid again."""
    path = await _written(tmp_path, "s", 2)
    with path.open("ab") as file:
        file.write(torn)
    store = JsonlStore(tmp_path)
    assert await store.load("s") == _recs("s", 1, 2)
    await store.append("s", _recs("s", 3, 3), durable=True)
    assert await store.load("s") == _recs("s", 1, 3)
    await store.aclose()
    assert [line["seq"] for line in _lines(path)] == [1, 2, 3]


async def test_a_complete_last_line_without_its_newline_is_torn(tmp_path: Path) -> None:
    """A line counts only once its newline is written: a whole record without one is dropped."""
    path = await _written(tmp_path, "s", 1)
    with path.open("ab") as file:
        file.write(json.dumps(_recs("s", 2, 2)[0].to_dict()).encode())
    store = JsonlStore(tmp_path)
    assert await store.load("s") == _recs("s", 1, 1)
    await store.append("s", _recs("s", 2, 2))
    await store.aclose()
    assert [line["seq"] for line in _lines(path)] == [1, 2]


async def test_a_file_with_only_a_torn_line_is_not_listed(tmp_path: Path) -> None:
    """A session whose only line is torn has no records."""
    (tmp_path / "s.jsonl").write_bytes(b'{"v":1,"si')
    store = JsonlStore(tmp_path)
    assert await store.list_sessions() == []
    assert await store.load("s") == []
    await store.append("s", _recs("s", 1, 1))
    assert await store.list_sessions() == ["s"]
    await store.aclose()


async def test_a_corrupt_middle_line_names_file_and_line(tmp_path: Path) -> None:
    """A bad line that is not the last raises CorruptRecord with the file and the 1-based line,
    from load and from append alike."""
    path = await _written(tmp_path, "s", 3)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b"this is not json\n"
    path.write_bytes(b"".join(lines))
    store = JsonlStore(tmp_path)
    with pytest.raises(CorruptRecord) as info:
        await store.load("s")
    assert (info.value.location, info.value.line) == (str(path), 2)
    assert f"corrupt record in {path} at line 2" in str(info.value)
    with pytest.raises(CorruptRecord, match="at line 2"):
        await store.append("s", _recs("s", 4, 4))
    await store.aclose()
    assert path.read_bytes() == b"".join(lines)  # a corrupt log is left for a human, untouched


async def test_a_blank_middle_line_is_corrupt(tmp_path: Path) -> None:
    """An empty line in the middle is not silently skipped."""
    path = await _written(tmp_path, "s", 2)
    first, second = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(first + b"\n" + second)
    with pytest.raises(CorruptRecord, match="at line 2"):
        await _load_fresh(tmp_path, "s")


async def test_an_unknown_record_version_is_corrupt_even_on_the_last_line(tmp_path: Path) -> None:
    """A whole line with a version this release does not know is an error, not a torn line."""
    path = await _written(tmp_path, "s", 1)
    future = _recs("s", 2, 2)[0].to_dict() | {"v": 99}
    with path.open("a") as file:
        file.write(json.dumps(future) + "\n")
    with pytest.raises(CorruptRecord, match=r"at line 2: unknown record version 99") as info:
        await _load_fresh(tmp_path, "s")
    assert info.value.location == str(path)


@pytest.mark.parametrize(("seqs", "line"), [([1, 3], 2), ([2], 1), ([1, 1], 2)])
async def test_a_seq_gap_in_the_file_is_corrupt(tmp_path: Path, seqs: list[int], line: int) -> None:
    """Seq continuity is checked on load too."""
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(_recs("s", q, q)[0].to_dict()) + "\n" for q in seqs))
    with pytest.raises(CorruptRecord, match=f"at line {line}: seq"):
        await _load_fresh(tmp_path, "s")


async def test_another_sessions_record_in_the_file_is_corrupt(tmp_path: Path) -> None:
    """A record whose sid is not the file's session is an error."""
    (tmp_path / "s.jsonl").write_text(json.dumps(_recs("t", 1, 1)[0].to_dict()) + "\n")
    with pytest.raises(CorruptRecord, match="record of session 't'"):
        await _load_fresh(tmp_path, "s")


@pytest.mark.parametrize("bad", ["", "..", ".", ".hidden", "a/b", "../up", "a\\b", "nul\x00", "new\nline", "x" * 201])
async def test_unsafe_session_ids_are_refused(tmp_path: Path, bad: str) -> None:
    """A session id must be a plain file name in the store's directory."""
    store = JsonlStore(tmp_path / "d")
    for call in (
        lambda: store.append(bad, [Record(bad, 1, "a")]),
        lambda: store.load(bad),
        lambda: store.delete(bad),
    ):
        with pytest.raises(InvalidOption, match="session_id"):
            await call()
    await store.aclose()
    assert not (tmp_path / "up.jsonl").exists()


@pytest.mark.parametrize("good", ["agent-1", "my_agent.v2", "用户 42", "a" * 200, "a..b"])
async def test_plain_names_are_session_ids(tmp_path: Path, good: str) -> None:
    """Names with dots inside, spaces and non-ASCII letters are fine."""
    store = JsonlStore(tmp_path)
    await store.append(good, [Record(good, 1, "a")], durable=True)
    assert await store.list_sessions() == [good]
    await store.aclose()
    assert os.listdir(tmp_path) == [f"{good}.jsonl"]


class _FsyncSpy:
    """Counts os.fsync calls per path; can hold the first one until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, hold_first: bool = False) -> None:
        self.real: Callable[[int], None] = os.fsync
        self.paths: list[str] = []
        self.holding = threading.Event()
        self.release = threading.Event()
        self.hold_first = hold_first
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        self.paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        if self.hold_first:
            self.hold_first = False
            self.holding.set()
            self.release.wait(10)
        self.real(fd)

    def of(self, path: Path) -> int:
        return self.paths.count(str(path))


async def test_only_durable_appends_fsync_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """durable=False writes without fsync; durable=True returns after an fsync of the file."""
    store = JsonlStore(tmp_path)
    await store.append("s", _recs("s", 1, 1))  # creating the file fsyncs the directory, not the file
    spy = _FsyncSpy(monkeypatch)
    await store.append("s", _recs("s", 2, 2))
    assert spy.of(tmp_path / "s.jsonl") == 0
    assert await store.load("s") == _recs("s", 1, 2)  # visible before any fsync
    await store.append("s", _recs("s", 3, 3), durable=True)
    assert spy.of(tmp_path / "s.jsonl") == 1
    await store.aclose()


async def test_a_new_file_fsyncs_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating a session's file makes the directory entry durable too."""
    store = JsonlStore(tmp_path)
    spy = _FsyncSpy(monkeypatch)
    await store.append("s", _recs("s", 1, 1), durable=True)
    assert spy.of(tmp_path) == 1
    await store.append("s", _recs("s", 2, 2), durable=True)
    assert spy.of(tmp_path) == 1
    await store.aclose()


async def test_waiting_durable_appends_share_one_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: while one fsync runs, 99 sessions' durable appends queue up; they are
    all written and fsynced in the next batch, each file once, and none returns before."""
    store = JsonlStore(tmp_path)
    batches: list[int] = []
    real_process = _jsonl._JsonlHandler.process

    def process(self: _jsonl._JsonlHandler, jobs: list[object]) -> None:
        batches.append(len(jobs))
        real_process(self, jobs)  # type: ignore[arg-type]

    monkeypatch.setattr(_jsonl._JsonlHandler, "process", process)
    await store.append("warm", _recs("warm", 1, 1))
    spy = _FsyncSpy(monkeypatch, hold_first=True)
    done: list[str] = []

    async def turn(sid: str) -> None:
        await store.append(sid, _recs(sid, 1, 2), durable=True)
        done.append(sid)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(turn, "first")
        await trio.to_thread.run_sync(spy.holding.wait, 10)
        for i in range(99):
            nursery.start_soon(turn, f"s{i}")
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        spy.release.set()
    assert batches == [1, 1, 99]
    assert all(spy.of(tmp_path / f"s{i}.jsonl") == 1 for i in range(99))
    assert len(done) == 100
    await store.aclose()


async def test_the_store_directory_is_created(tmp_path: Path) -> None:
    """A missing directory (and its parents) is made on first use."""
    store = JsonlStore(tmp_path / "a" / "b")
    await store.append("s", _recs("s", 1, 1))
    await store.aclose()
    assert (tmp_path / "a" / "b" / "s.jsonl").is_file()


async def test_an_unwritable_directory_is_a_store_error(tmp_path: Path) -> None:
    """When the directory cannot be made, every call fails with StoreError, and the
    store recovers once it can."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = JsonlStore(blocker / "sub")
    with pytest.raises(sessions.StoreError, match="cannot open the store directory"):
        await store.append("s", _recs("s", 1, 1))
    blocker.unlink()
    await store.append("s", _recs("s", 1, 1))
    await store.aclose()


async def test_many_sessions_beyond_the_open_file_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More sessions than the writer keeps open: the oldest files are closed and reopened."""
    monkeypatch.setattr(_jsonl, "MAX_OPEN_FILES", 4)
    store = JsonlStore(tmp_path)
    for round_ in range(3):
        for i in range(10):
            await store.append(f"s{i}", _recs(f"s{i}", round_ + 1, round_ + 1), durable=round_ == 2)
    assert all([await store.load(f"s{i}") == _recs(f"s{i}", 1, 3) for i in range(10)])
    await store.aclose()


async def test_aclose_fsyncs_every_file_written_since_its_last_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aclose makes non-durable appends durable, in files the writer had to close too, and
    leaves files already synced alone."""
    monkeypatch.setattr(_jsonl, "MAX_OPEN_FILES", 2)
    store = JsonlStore(tmp_path)
    for i in range(5):
        await store.append(f"s{i}", _recs(f"s{i}", 1, 1), durable=i == 4)
    spy = _FsyncSpy(monkeypatch)
    await store.aclose()
    assert sorted(Path(p).name for p in spy.paths) == [f"s{i}.jsonl" for i in range(4)]


async def test_an_empty_durable_append_fsyncs_earlier_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """append(sid, [], durable=True) makes the session's earlier appends durable."""
    store = JsonlStore(tmp_path)
    await store.append("s", _recs("s", 1, 1))
    spy = _FsyncSpy(monkeypatch)
    await store.append("s", [], durable=True)
    assert spy.of(tmp_path / "s.jsonl") == 1
    await store.append("nobody", [], durable=True)
    assert await store.list_sessions() == ["s"]
    await store.aclose()


async def test_a_batch_wider_than_the_open_file_limit_fsyncs_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durable appends of more sessions than MAX_OPEN_FILES in one batch: each file is still
    fsynced before its append returns, though the writer closed it meanwhile."""
    monkeypatch.setattr(_jsonl, "MAX_OPEN_FILES", 3)
    store = JsonlStore(tmp_path)
    spy = _FsyncSpy(monkeypatch, hold_first=True)

    async def turn(sid: str) -> None:
        await store.append(sid, _recs(sid, 1, 1), durable=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(turn, "first")
        await trio.to_thread.run_sync(spy.holding.wait, 10)
        for i in range(10):
            nursery.start_soon(turn, f"s{i}")
        await trio.testing.wait_all_tasks_blocked()
        spy.release.set()
    assert [spy.of(tmp_path / f"s{i}.jsonl") for i in range(10)] == [1] * 10
    await store.aclose()
    assert [spy.of(tmp_path / f"s{i}.jsonl") for i in range(10)] == [1] * 10  # nothing left dirty
