"""Every store passes the conformance suite (sessions.testing), matches a dict model under
random appends and deletes, binds lazily to trio runs, and leaves no thread behind."""

from __future__ import annotations

import enum
import functools
import math
import tempfile
import threading
import unittest.mock
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import trio
import trio.lowlevel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sessions
import sessions.testing
from sessions import InMemoryStore, JsonlStore, Record, SqliteStore, Store
from sessions._stores import _common, _jsonl, _writer

StoreFactory = Callable[[], Store]


@pytest.fixture(autouse=True)
def _no_writer_thread_left() -> Iterator[None]:
    """Every test closes the stores it opens: no writer thread outlives it."""
    yield
    assert [t.name for t in threading.enumerate() if t.name.startswith("sessions-")] == []


class TestInMemoryStoreConforms(sessions.testing.StoreConformance):
    reopens = False

    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        store = InMemoryStore()
        return lambda: store


class TestJsonlStoreConforms(sessions.testing.StoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: JsonlStore(tmp_path / "sessions")


class TestSqliteStoreConforms(sessions.testing.StoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: SqliteStore(tmp_path / "agents.db")


async def test_check_store_passes_for_sqlite(tmp_path: Path) -> None:
    """check_store runs the whole suite in one call."""
    await sessions.testing.check_store(lambda: SqliteStore(tmp_path / "agents.db"))


class _GapAcceptingStore(InMemoryStore):
    """A broken store: it accepts any seq."""

    async def append(self, session_id: str, records: Sequence[Record], *, durable: bool = False) -> None:
        self._logs.setdefault(session_id, []).extend(records)
        await trio.lowlevel.checkpoint()


class _ForgetfulStore(InMemoryStore):
    """A broken store: a new object forgets everything, yet it claims to reopen."""


async def test_check_store_names_the_failed_check() -> None:
    """The suite catches a store that accepts a gap, and says which check failed."""
    store = _GapAcceptingStore()
    with pytest.raises(AssertionError, match=r"check 'seq_rejected' failed: append of seq 4 after 2 \(a gap\)"):
        await sessions.testing.check_store(lambda: store, reopens=False)


class _KnownKindsStore(InMemoryStore):
    """A broken store: it keeps the record kinds of an older release only, and drops the others."""

    KNOWN = frozenset({"session_started", "session_resumed", "turn_started", "message", "provider_session"})
    KNOWN |= {"turn_finished", "turn_interrupted", "session_put", "provider_data"}

    async def load(self, session_id: str) -> list[Record]:
        return [r for r in await super().load(session_id) if r.kind in self.KNOWN]


async def test_check_store_catches_a_store_that_drops_rewind_records() -> None:
    """A store that drops a kind it does not know (session_rewound) fails the rewind check."""
    store = _KnownKindsStore()
    with pytest.raises(AssertionError, match=r"a rewind appended \[\]"):
        await sessions.testing.CHECKS["rewind"](lambda: store)


async def test_check_store_catches_a_store_that_does_not_reopen() -> None:
    """A store that loses its records with the object fails the reopen check."""
    with pytest.raises(AssertionError, match="check 'reopen' failed: a new store object"):
        await sessions.testing.check_store(_ForgetfulStore)


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sessions-")]


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_one_store_object_serves_separate_trio_runs(tmp_path: Path, kind: str) -> None:
    """A store made outside trio.run is used by two runs in turn, then closed by a third;
    after aclose no writer thread is left."""
    store: Store = JsonlStore(tmp_path / "j") if kind == "jsonl" else SqliteStore(tmp_path / "s.db")
    assert _writer_threads() == []

    async def first() -> None:
        await store.append("s", [Record("s", 1, "a")], durable=True)

    async def second() -> list[Record]:
        await store.append("s", [Record("s", 2, "b")], durable=False)
        return await store.load("s")

    trio.run(first)
    assert [r.seq for r in trio.run(second)] == [1, 2]
    assert len(_writer_threads()) == 1
    trio.run(store.aclose)
    assert _writer_threads() == []


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_aclose_leaves_no_thread(tmp_path: Path, kind: str) -> None:
    """Busy stores end every thread they started (the writer and JSONL's fsync helpers) at aclose."""
    store: Store = JsonlStore(tmp_path / "j") if kind == "jsonl" else SqliteStore(tmp_path / "s.db")
    before = set(threading.enumerate())
    async with trio.open_nursery() as nursery:
        for i in range(20):
            sid = f"s{i}"
            nursery.start_soon(functools.partial(store.append, sid, [Record(sid, 1, "a")], durable=True))
    assert _writer_threads() != []
    await store.aclose()
    assert set(threading.enumerate()) - before == set()


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_an_idle_writer_thread_ends_by_itself(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store nobody closes releases its thread when idle, and starts a new one when used again."""
    monkeypatch.setattr(_writer, "IDLE_SECONDS", 0.05)
    store: Store = JsonlStore(tmp_path / "j") if kind == "jsonl" else SqliteStore(tmp_path / "s.db")
    await store.append("s", [Record("s", 1, "a")], durable=True)
    [thread] = _writer_threads()
    with trio.fail_after(10):
        while thread.is_alive():  # noqa: ASYNC110 (a thread's end has no trio event)
            await trio.sleep(0.01)
    assert _writer_threads() == []
    await store.append("s", [Record("s", 2, "b")], durable=True)
    assert [r.seq for r in await store.load("s")] == [1, 2]
    await store.aclose()


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_aclose_amid_appends_loses_nothing(tmp_path: Path, kind: str) -> None:
    """Appends racing with aclose all land, on the closing thread or a fresh one."""
    store: Store = JsonlStore(tmp_path / "j") if kind == "jsonl" else SqliteStore(tmp_path / "s.db")

    async def session(sid: str) -> None:
        for seq in range(1, 11):
            await store.append(sid, [Record(sid, seq, "m")], durable=seq % 2 == 0)

    async def closer() -> None:
        for _ in range(10):
            await store.aclose()
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(session, f"s{i}")
        nursery.start_soon(closer)
    for i in range(20):
        assert [r.seq for r in await store.load(f"s{i}")] == list(range(1, 11))
    await store.aclose()


@pytest.mark.parametrize("kind", ["memory", "jsonl", "sqlite"])
async def test_an_append_that_writes_is_never_cancelled(tmp_path: Path, kind: str) -> None:
    """sessions' own stores finish an append in a cancelled scope and do not raise
    trio.Cancelled from it: the turn task appends to them without a shield of its own
    (sessions._turn), and must know that what it handed over was written."""
    makers: dict[str, StoreFactory] = {
        "memory": InMemoryStore,
        "jsonl": lambda: JsonlStore(tmp_path / "j"),
        "sqlite": lambda: SqliteStore(tmp_path / "s.db"),
    }
    store = makers[kind]()
    assert type(store)._append_never_cancelled is True  # type: ignore[attr-defined]
    with trio.CancelScope() as scope:
        scope.cancel()
        for seq, durable in ((1, False), (2, True)):
            await store.append("s", [Record("s", seq, "m")], durable=durable)  # neither raises Cancelled
        await trio.lowlevel.checkpoint()  # the cancellation surfaces at the next checkpoint
        raise AssertionError("not cancelled")
    assert scope.cancelled_caught
    assert [r.seq for r in await store.load("s")] == [1, 2]
    await store.aclose()


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_data_must_be_a_json_object(tmp_path: Path, kind: str) -> None:
    """A record whose data is not a dict, or holds something JSON cannot carry, is refused
    before anything is written."""
    store: Store = JsonlStore(tmp_path / "j") if kind == "jsonl" else SqliteStore(tmp_path / "s.db")
    with pytest.raises(sessions.StoreError, match="data must be a dict, got list"):
        await store.append("s", [Record("s", 1, "m", [1, 2])])  # type: ignore[arg-type]
    with pytest.raises(sessions.StoreError, match="cannot be stored as JSON"):
        await store.append("s", [Record("s", 1, "m", {"when": object()})])
    assert await store.load("s") == []
    await store.aclose()


# --- the stores against a dict model -------------------------------------------------------

_sids = st.sampled_from(["a", "b", "c"])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), _sids, st.integers(1, 3), st.booleans()),
        st.tuples(st.just("gap"), _sids, st.integers(2, 3), st.booleans()),
        st.tuples(st.just("delete"), _sids, st.just(0), st.just(False)),
        st.tuples(st.just("reopen"), st.just(""), st.just(0), st.just(False)),
    ),
    max_size=25,
)


async def _run_model(make_store: StoreFactory, ops: list[tuple[str, str, int, bool]], reopens: bool) -> None:
    model: dict[str, list[Record]] = {}
    store = make_store()
    try:
        for op, sid, n, durable in ops:
            log = model.setdefault(sid, []) if sid else []
            if op == "append":
                records = [Record(sid, len(log) + i, "message", {"i": i, "op": len(log)}) for i in range(1, n + 1)]
                await store.append(sid, records, durable=durable)
                log.extend(records)
            elif op == "gap":
                with pytest.raises(sessions.StoreError):
                    await store.append(sid, [Record(sid, len(log) + n, "gap")], durable=durable)
            elif op == "delete":
                await store.delete(sid)
                log.clear()
            elif reopens:
                await store.aclose()
                store = make_store()
            if sid:
                assert await store.load(sid) == log
        assert sorted(await store.list_sessions()) == sorted(s for s, log in model.items() if log)
        for sid, log in model.items():
            assert await store.load(sid) == log
    finally:
        await store.aclose()


_model_settings = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_model_settings
@given(ops=_ops)
def test_memory_store_matches_a_dict(ops: list[tuple[str, str, int, bool]]) -> None:
    """InMemoryStore: random appends, rejected gaps and deletes agree with a dict of lists."""
    store = InMemoryStore()
    trio.run(_run_model, lambda: store, ops, False)


@_model_settings
@given(ops=_ops)
def test_jsonl_store_matches_a_dict(ops: list[tuple[str, str, int, bool]]) -> None:
    """JsonlStore: the same, with reopening the directory as a new store object, and with
    fewer files kept open than there are sessions."""
    with tempfile.TemporaryDirectory() as directory, unittest.mock.patch.object(_jsonl, "MAX_OPEN_FILES", 2):
        trio.run(_run_model, lambda: JsonlStore(directory), ops, True)


@_model_settings
@given(ops=_ops)
def test_sqlite_store_matches_a_dict(ops: list[tuple[str, str, int, bool]]) -> None:
    """SqliteStore: the same, with reopening the database as a new store object."""
    with tempfile.TemporaryDirectory() as directory:
        trio.run(_run_model, lambda: SqliteStore(Path(directory) / "m.db"), ops, True)


# --- InMemoryStore's JSON check, without the encoding ---------------------------------------


class _Color(enum.IntEnum):
    RED = 1


_json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.sampled_from(["é", "\ud800", "a\udfff", '\n"\\\x00\u2028', _Color.RED, b"x", object(), math.nan, -math.inf]),
)
_json_values = st.recursive(
    _json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(
            st.one_of(st.text(max_size=3), st.integers(), st.just("\ud800"), st.just(None)), children, max_size=3
        ),
    ),
    max_leaves=12,
)


def _outcome(check: Callable[[str, int, object], object], value: object) -> str:
    try:
        check("s", 1, value)
    except Exception as exc:  # the outcome is compared, whatever it is
        return f"{type(exc).__name__}: {exc}"
    return "ok"


@settings(max_examples=300, deadline=None)
@given(value=_json_values)
def test_check_json_refuses_what_json_text_refuses(value: object) -> None:
    """InMemoryStore checks records with check_json, which walks plain values instead of
    encoding them: for any value, it accepts and refuses exactly as json_text does, with
    the same error."""
    assert _outcome(_common.check_json, {"v": value}) == _outcome(_common.json_text, {"v": value})


def test_check_json_hands_deep_and_circular_values_to_json_text() -> None:
    """Values nested deeper than the walk goes, circular ones included, get json_text's verdict."""
    circular: list[object] = []
    circular.append(circular)
    with pytest.raises(sessions.UnstorableRecord, match="Circular reference"):
        _common.check_json("s", 1, {"v": circular})
    deep: list[object] = []
    inner = deep
    for _ in range(40):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    _common.check_json("s", 1, {"v": deep})


def _text_or_error(dumps: Callable[[object], str], value: object) -> str:
    try:
        return dumps(value)
    except Exception as exc:  # the outcome is compared, whatever it is
        return f"{type(exc).__name__}: {exc}"


@settings(max_examples=300, deadline=None)
@given(value=_json_values)
def test_the_stores_json_is_json_dumps(value: object) -> None:
    """The durable stores encode records through json's C encoder directly: the same text as
    json.dumps(ensure_ascii=False, separators=(",", ":")), and the same errors."""
    assert _text_or_error(_common._dumps_with_c_encoder, value) == _text_or_error(_common._dumps_with_json, value)
