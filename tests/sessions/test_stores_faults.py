"""A fault stays with the append that caused it: a record that cannot be stored fails its
own append only, no other append's outcome is misreported, and SqliteStore's errors on a
damaged file or a full disk say what happened and where."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

import sessions
from sessions import JsonlStore, Record, SqliteStore, Store, StoreError, UnstorableRecord
from sessions._stores import _sqlite
from sessions._stores._writer import Job

LONE_SURROGATE = "half an emoji: \ud83d"  # the first half of a pair, as a stream split across chunks gives it


@pytest.fixture(autouse=True)
def _no_writer_thread_left() -> Iterator[None]:
    yield
    assert [t.name for t in threading.enumerate() if t.name.startswith("sessions-")] == []


def _turn(sid: str, turn: int, prompt: str = "hello") -> list[Record]:
    return [
        Record(sid, 2 * turn + 1, "turn_started", {"turn": turn, "prompt": prompt}, ts=1.0),
        Record(sid, 2 * turn + 2, "turn_finished", {"turn": turn, "result": {"text": "r" * 300}}, ts=2.0),
    ]


def _make(kind: str, tmp_path: Path) -> Store:
    return JsonlStore(tmp_path / "sessions") if kind == "jsonl" else SqliteStore(tmp_path / "agents.db")


async def _reopened(kind: str, tmp_path: Path) -> dict[str, list[Record]]:
    """Every session's records, read by a new store object on the same location."""
    store = _make(kind, tmp_path)
    try:
        return {sid: await store.load(sid) for sid in await store.list_sessions()}
    finally:
        await store.aclose()


# --- item: one record that cannot be stored ----------------------------------------------------


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_a_record_with_a_lone_surrogate_fails_only_its_own_append(tmp_path: Path, kind: str) -> None:
    """30 sessions append 5 durable turns each, all at once; one turn of one session
    carries a lone surrogate. That append alone is refused, with UnstorableRecord naming
    the session and the record, and writes nothing; every other append is acknowledged
    and is there after reopening, the poisoned session's other turns included."""
    store = _make(kind, tmp_path)
    refused: list[BaseException] = []
    acknowledged: dict[str, list[int]] = {}

    async def session(sid: str) -> None:
        seq_turn = 0
        for turn in range(5):
            poisoned = sid == "s17" and turn == 2
            records = _turn(sid, seq_turn, LONE_SURROGATE if poisoned else f"turn {turn}")
            try:
                await store.append(sid, records, durable=True)
            except Exception as exc:
                refused.append(exc)
                continue  # the session goes on at the same seq: nothing of it was written
            acknowledged.setdefault(sid, []).append(seq_turn)
            seq_turn += 1

    async with trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(session, f"s{i}")
    await store.aclose()

    assert len(refused) == 1, refused
    [error] = refused
    assert isinstance(error, UnstorableRecord)
    assert (error.session_id, error.seq) == ("s17", 5)
    assert "lone surrogate" in str(error)
    assert "'s17'#5" in str(error)
    assert "prompt" in error.detail  # where in the record
    found = await _reopened(kind, tmp_path)
    assert sorted(found) == sorted(f"s{i}" for i in range(30))
    for sid, turns in acknowledged.items():
        expected = [record for turn in turns for record in _turn(sid, turn, "")]
        assert [(r.seq, r.kind) for r in found[sid]] == [(r.seq, r.kind) for r in expected], sid
    assert acknowledged["s17"] == [0, 1, 2, 3]
    assert len(found["s17"]) == 8
    assert all(len(acknowledged[f"s{i}"]) == 5 for i in range(30) if i != 17)


async def test_a_committed_append_is_never_reported_failed(tmp_path: Path) -> None:
    """One SqliteStore batch holds appends, a load, a poisoned append and more appends
    (the writer is held by another connection's write lock while they queue up). The
    appends before the load commit in one transaction, those after it in another; the
    poisoned append is refused alone, and every other append is acknowledged. (Before the
    fix the poisoned record failed the second commit and the whole batch was reported
    failed, the first commit's appends included, though they were in the database.)"""
    path = tmp_path / "agents.db"
    store = SqliteStore(path)
    await store.append("warm", _turn("warm", 0), durable=True)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer's next BEGIN IMMEDIATE waits for this
    outcomes: dict[str, object] = {}

    async def session(sid: str, prompt: str) -> None:
        try:
            await store.append(sid, _turn(sid, 0, prompt), durable=True)
            outcomes[sid] = "ok"
        except Exception as exc:
            outcomes[sid] = exc

    async def load() -> None:
        try:
            outcomes["load"] = len(await store.load("warm"))
        except Exception as exc:
            outcomes["load"] = exc

    async with trio.open_nursery() as nursery:
        # One at a time, so that the writer's queue holds them in this order.
        nursery.start_soon(session, "first", "x")
        await trio.testing.wait_all_tasks_blocked()
        for i in range(10):
            nursery.start_soon(session, f"before{i}", "x")
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(load)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(session, "poisoned", LONE_SURROGATE)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(10):
            nursery.start_soon(session, f"after{i}", "x")
            await trio.testing.wait_all_tasks_blocked()
        blocker.execute("ROLLBACK")
    blocker.close()
    await store.aclose()

    poisoned = outcomes.pop("poisoned")
    assert isinstance(poisoned, UnstorableRecord), poisoned
    assert outcomes.pop("load") == 2
    assert outcomes == dict.fromkeys(outcomes, "ok"), outcomes
    found = await _reopened("sqlite", tmp_path)
    assert "poisoned" not in found
    assert sorted(found) == sorted([*outcomes, "warm"])
    assert all(len(records) == 2 for records in found.values())


async def test_the_writer_fails_only_the_job_sqlite_refuses(tmp_path: Path) -> None:
    """Past the check in append, a row that SQLite cannot bind fails its own job only:
    the writer rolls back, writes the batch's other appends in a new transaction, and
    reports each outcome as it is."""
    store = SqliteStore(tmp_path / "agents.db")
    await store.append("warm", _turn("warm", 0), durable=True)
    worker = store._worker

    def row(sid: str, seq: int, data: str) -> tuple[object, ...]:
        return (sid, seq, 1, 1.0, "message", data)

    outcomes: dict[str, object] = {}

    async def submit(sid: str, data: str) -> None:
        job = Job("append", (sid, 1, [row(sid, 1, data), row(sid, 2, '{"n":2}')]), durable=True)
        try:
            await worker.submit(job, shield=True)
            outcomes[sid] = "ok"
        except StoreError as exc:
            outcomes[sid] = exc

    async with trio.open_nursery() as nursery:
        for i in range(20):
            bad = i == 7
            nursery.start_soon(submit, f"s{i}", f'{{"text":"{LONE_SURROGATE}"}}' if bad else '{"n":1}')
    bad = outcomes.pop("s7")
    assert isinstance(bad, StoreError)
    assert "'s7'#1..2" in str(bad)
    assert str(store.path) in str(bad)
    assert isinstance(bad.__cause__, UnicodeEncodeError)
    assert outcomes == {f"s{i}": "ok" for i in range(20) if i != 7}
    assert "s7" not in await store.list_sessions()
    assert all([len(await store.load(f"s{i}")) == 2 for i in range(20) if i != 7])
    await store.aclose()


@pytest.mark.parametrize("kind", ["jsonl", "sqlite", "memory"])
@pytest.mark.parametrize(
    ("where", "record"),
    [
        ("kind", Record("s", 1, "kind \udc80", {})),
        ("a key of data['outer']", Record("s", 1, "m", {"outer": {"a key \udfff": 1}})),
        ("data['list'][1]", Record("s", 1, "m", {"list": ["fine", "\udbff"]})),
    ],
)
async def test_every_string_of_a_record_is_checked(tmp_path: Path, kind: str, where: str, record: Record) -> None:
    """A lone surrogate in the kind, a key, or deep in a list is refused, naming where it is."""
    store: Store = sessions.InMemoryStore() if kind == "memory" else _make(kind, tmp_path)
    with pytest.raises(UnstorableRecord, match="lone surrogate") as caught:
        await store.append("s", [record], durable=True)
    assert caught.value.detail.startswith(f"as UTF-8: {where} holds "), caught.value.detail
    assert await store.load("s") == []
    await store.aclose()


# --- item: SqliteStore on a damaged file, on a full disk -----------------------------------------


async def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    """Garbage where the database should be: every call fails with a StoreError naming the
    file and SQLite's error, and nothing is written over the file."""
    path = tmp_path / "agents.db"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    store = SqliteStore(path)
    with pytest.raises(StoreError) as caught:
        await store.append("s", _turn("s", 0), durable=True)
    assert str(path) in str(caught.value)
    assert "file is not a database" in str(caught.value)
    assert "SQLITE_NOTADB" in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(StoreError, match=str(path)):
        await store.load("s")
    await store.aclose()
    assert path.read_bytes() == garbage


async def test_a_damaged_page_is_named(tmp_path: Path) -> None:
    """A real database whose pages after the header are overwritten with garbage: the
    error names the file (a CorruptRecord or a StoreError from SQLite), never a bare
    sqlite3 error."""
    path = tmp_path / "agents.db"
    store = SqliteStore(path)
    for turn in range(40):
        await store.append("s", _turn("s", turn), durable=True)
    await store.aclose()  # checkpointed: the rows are in the database file
    with path.open("r+b") as file:
        file.seek(4096)
        file.write(b"\xa5" * (path.stat().st_size - 4096))
    store = SqliteStore(path)
    errors: list[StoreError] = []
    for call in (
        functools.partial(store.load, "s"),
        functools.partial(store.append, "s", _turn("s", 40), durable=True),
    ):
        try:
            await call()
        except StoreError as exc:
            errors.append(exc)
    await store.aclose()
    assert errors, "a damaged database read and wrote without an error"
    for error in errors:
        assert str(path) in str(error)
        assert "malformed" in str(error) or "not a database" in str(error), error


def _full_disk(monkeypatch: pytest.MonkeyPatch, pages: int) -> None:
    """Open every SqliteStore connection with ``max_page_count`` set: past it SQLite
    fails writes with SQLITE_FULL, as on a full disk."""
    real_open = _sqlite._SqliteHandler.open

    def open_(self: _sqlite._SqliteHandler) -> None:
        real_open(self)
        assert self.db is not None
        self.db.execute(f"PRAGMA max_page_count = {pages}")

    monkeypatch.setattr(_sqlite._SqliteHandler, "open", open_)


async def test_a_full_database_is_reported_as_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLITE_FULL in a group commit: every append of that commit fails with an error that
    says the disk is full and names the file (not "cannot rollback - no transaction is
    active", which the ROLLBACK after SQLite's own rollback used to raise over it), the
    original error is its cause, and what was acknowledged before stays."""
    path = tmp_path / "agents.db"
    store = SqliteStore(path)
    await store.append("early", _turn("early", 0), durable=True)
    await store.aclose()
    _full_disk(monkeypatch, pages=8)
    store = SqliteStore(path)
    errors: list[StoreError] = []

    async def session(sid: str) -> None:
        for turn in range(20):
            try:
                await store.append(sid, _turn(sid, turn, "p" * 2000), durable=True)
            except StoreError as exc:
                errors.append(exc)
                return

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(session, f"s{i}")
    await store.aclose()
    assert errors
    for error in errors:
        assert "database or disk is full (SQLITE_FULL)" in str(error), error
        assert str(path) in str(error)
        assert "cannot rollback" not in str(error)
        assert isinstance(error.__cause__, sqlite3.OperationalError)
        assert error.__cause__.sqlite_errorname == "SQLITE_FULL"
    monkeypatch.undo()
    found = await _reopened("sqlite", tmp_path)
    assert found["early"] == _turn("early", 0)


@contextlib.contextmanager
def _tiny_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    directory.mkdir()
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a tmpfs needs root (the max_page_count test covers SQLITE_FULL without it)")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=False)
    if done.returncode != 0:
        pytest.skip("this machine does not let the tests mount a tmpfs")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


async def test_a_really_full_disk_is_reported_as_full(tmp_path: Path) -> None:
    """On a 256 KB tmpfs that fills up, the appends that do not fit fail with a StoreError
    that names the file and says the disk is full; every acknowledged append is there
    after reopening."""
    with _tiny_tmpfs(tmp_path / "disk", "256k") as disk:
        path = disk / "agents.db"
        store = SqliteStore(path)
        errors: list[StoreError] = []
        acknowledged: dict[str, int] = {}

        async def session(sid: str) -> None:
            for turn in range(200):
                try:
                    await store.append(sid, _turn(sid, turn, "p" * 1000), durable=True)
                except StoreError as exc:
                    errors.append(exc)
                    return
                acknowledged[sid] = turn

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(session, f"s{i}")
        with contextlib.suppress(StoreError):  # the checkpoint at close may not fit either
            await store.aclose()
        assert errors
        for error in errors:
            assert str(path) in str(error)
            assert "SQLITE_FULL" in str(error), error
            assert "cannot rollback" not in str(error)
        reader = SqliteStore(path)
        try:
            for sid, turn in acknowledged.items():
                assert len(await reader.load(sid)) >= 2 * (turn + 1), sid
        finally:
            with contextlib.suppress(StoreError):
                await reader.aclose()
