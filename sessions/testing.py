"""Tools for testing code built on sessions: the store conformance suite.

Every store that ships with sessions passes these checks, and so should yours. Run them
all at once with `check_store`, or as one pytest test per check by subclassing
`StoreConformance`.

Example::

    import sessions.testing

    async def test_my_store_conforms(tmp_path):
        await sessions.testing.check_store(lambda: MyStore(tmp_path / "db"))
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar

import trio

import otpy

from ._errors import SessionInUse, StoreError
from ._events import Message
from ._providers._base import TurnRequest
from ._providers._scripted import ScriptedProvider, ScriptedReply
from ._server import SessionServer
from ._stores._base import RECORD_VERSION, Record, Store

__all__ = ["CHECKS", "StoreConformance", "check_store"]

StoreFactory = Callable[[], Store]
"""Makes a store object; every call must give a store over the *same* location."""

Check = Callable[[StoreFactory], Awaitable[None]]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def _ids(*names: str) -> list[str]:
    """Session ids unique to this run, so checks never see each other's records."""
    tag = uuid.uuid4().hex[:10]
    return [f"conformance-{tag}-{name}" for name in names]


def _rec(session_id: str, seq: int, kind: str = "message", **data: Any) -> Record:
    return Record(session_id=session_id, seq=seq, kind=kind, data=data or {"n": seq}, ts=1_700_000_000.25 + seq)


def _same(loaded: Sequence[Record], expected: Sequence[Record], what: str) -> None:
    if list(loaded) == list(expected):
        return
    got = [(r.session_id, r.seq, r.kind) for r in loaded]
    want = [(r.session_id, r.seq, r.kind) for r in expected]
    if got == want:
        for a, b in zip(loaded, expected, strict=True):
            if a != b:
                raise AssertionError(f"{what}: record #{b.seq} came back changed:\n  stored {b!r}\n  loaded {a!r}")
    raise AssertionError(f"{what}: load returned {got}, expected {want}")


async def _rejected(store: Store, session_id: str, records: list[Record], what: str) -> None:
    try:
        await store.append(session_id, records)
    except StoreError:
        return
    raise AssertionError(f"append of {what} was accepted; a store must raise sessions.StoreError")


async def check_round_trip(make_store: StoreFactory) -> None:
    """Every field of a record comes back equal: unicode, nested JSON, ``ts``, ``version``.

    Example::

        await sessions.testing.check_round_trip(lambda: MyStore(path))
    """
    store = make_store()
    try:
        (sid,) = _ids("round-trip")
        nested = {
            "text": 'héllo ✓ 日本語 🎉 \u2028 line\nbreak "quoted" back\\slash \t tab \x00 nul',
            "list": [1, -2, 2.5, 1e-300, None, True, False, "", [], {}],
            "deep": {"a": {"b": {"c": [{"d": "e"}]}}},
            "big": "x" * 100_000,
            "ünïcode kéy": 0,
        }
        records = [
            Record(sid, 1, "session_started", {"options": {"model": "m"}}, ts=1712345678.123456, version=1),
            Record(sid, 2, "message", nested, ts=0.5),
            Record(sid, 3, "turn_finished", {}, ts=1e10, version=RECORD_VERSION),
        ]
        await store.append(sid, records, durable=True)
        _same(await store.load(sid), records, "round trip")
    finally:
        await store.aclose()


async def check_seq_order(make_store: StoreFactory) -> None:
    """Records come back in ``seq`` order across several appends.

    Example::

        await sessions.testing.check_seq_order(lambda: MyStore(path))
    """
    store = make_store()
    try:
        (sid,) = _ids("order")
        records = [_rec(sid, seq, kind=f"k{seq}") for seq in range(1, 7)]
        await store.append(sid, records[:1])
        await store.append(sid, records[1:3], durable=True)
        await store.append(sid, records[3:])
        _same(await store.load(sid), records, "three appends")
    finally:
        await store.aclose()


async def check_seq_rejected(make_store: StoreFactory) -> None:
    """A gap, a repeat, a jump inside one append, a wrong first seq or another
    session's record raises `StoreError` and leaves the log as it was.

    Example::

        await sessions.testing.check_seq_rejected(lambda: MyStore(path))
    """
    store = make_store()
    try:
        sid, other, fresh = _ids("seq", "other", "fresh")
        good = [_rec(sid, 1), _rec(sid, 2)]
        await store.append(sid, good, durable=True)
        await _rejected(store, sid, [_rec(sid, 4)], "seq 4 after 2 (a gap)")
        await _rejected(store, sid, [_rec(sid, 2)], "seq 2 after 2 (a repeat)")
        await _rejected(store, sid, [_rec(sid, 1)], "seq 1 after 2 (going back)")
        await _rejected(store, sid, [_rec(sid, 3), _rec(sid, 5)], "seqs 3, 5 in one append")
        await _rejected(store, sid, [_rec(other, 3)], "another session's record")
        await _rejected(store, fresh, [_rec(fresh, 2)], "seq 2 as a new session's first record")
        _same(await store.load(sid), good, "the log after rejected appends")
        _same(await store.load(fresh), [], "a session whose first append was rejected")
        more = [_rec(sid, 3)]
        await store.append(sid, more)
        _same(await store.load(sid), good + more, "an append after rejected ones")
    finally:
        await store.aclose()


async def check_unknown_session(make_store: StoreFactory) -> None:
    """An unknown session loads as ``[]``, is not listed, and deletes without error.

    Example::

        await sessions.testing.check_unknown_session(lambda: MyStore(path))
    """
    store = make_store()
    try:
        (sid,) = _ids("unknown")
        _same(await store.load(sid), [], "an unknown session")
        _require(sid not in await store.list_sessions(), "list_sessions lists a session that has no records")
        await store.delete(sid)
    finally:
        await store.aclose()


async def check_list_and_delete(make_store: StoreFactory) -> None:
    """`list_sessions` lists sessions with records; `delete` forgets one, which can start again at seq 1.

    Example::

        await sessions.testing.check_list_and_delete(lambda: MyStore(path))
    """
    store = make_store()
    try:
        a, b = _ids("a", "b")
        await store.append(a, [_rec(a, 1)], durable=True)
        await store.append(b, [_rec(b, 1), _rec(b, 2)], durable=True)
        listed = await store.list_sessions()
        _require({a, b} <= set(listed), f"list_sessions() = {listed} misses {sorted({a, b} - set(listed))}")
        _require(len(listed) == len(set(listed)), f"list_sessions() repeats a session: {listed}")
        await store.delete(a)
        listed = await store.list_sessions()
        _require(a not in listed, "a deleted session is still listed")
        _require(b in listed, "deleting one session dropped another from list_sessions")
        _same(await store.load(a), [], "a deleted session")
        _same(await store.load(b), [_rec(b, 1), _rec(b, 2)], "the session beside a deleted one")
        again = [_rec(a, 1, kind="again")]
        await store.append(a, again, durable=True)
        _same(await store.load(a), again, "a deleted session started again at seq 1")
        await store.delete(a)
        await store.delete(b)
    finally:
        await store.aclose()


async def check_concurrent_sessions(make_store: StoreFactory) -> None:
    """50 sessions append 20 times each, all at once; every log comes back whole and in order.

    Example::

        await sessions.testing.check_concurrent_sessions(lambda: MyStore(path))
    """
    store = make_store()
    try:
        sids = _ids(*(f"c{i}" for i in range(50)))

        async def session(sid: str) -> None:
            for seq in range(1, 21):
                await store.append(sid, [_rec(sid, seq, text=f"{sid} says {seq}")], durable=seq % 5 == 0)

        async with trio.open_nursery() as nursery:
            for sid in sids:
                nursery.start_soon(session, sid)
        for sid in sids:
            _same(await store.load(sid), [_rec(sid, s, text=f"{sid} says {s}") for s in range(1, 21)], sid)
        listed = set(await store.list_sessions())
        _require(set(sids) <= listed, f"list_sessions misses {len(set(sids) - listed)} of 50 concurrent sessions")
    finally:
        await store.aclose()


async def check_durable_flag(make_store: StoreFactory) -> None:
    """``durable=True`` and ``durable=False`` are both accepted; both are visible to `load` at once.

    Example::

        await sessions.testing.check_durable_flag(lambda: MyStore(path))
    """
    store = make_store()
    try:
        (sid,) = _ids("durable")
        records = [_rec(sid, seq) for seq in range(1, 5)]
        await store.append(sid, records[:1], durable=False)
        _same(await store.load(sid), records[:1], "after a non-durable append")
        await store.append(sid, records[1:2], durable=True)
        await store.append(sid, records[2:3])
        await store.append(sid, records[3:], durable=True)
        _same(await store.load(sid), records, "after mixed appends")
    finally:
        await store.aclose()


async def check_reopen(make_store: StoreFactory) -> None:
    """A new store object on the same location sees every record, durable or not,
    once the first one is closed (durable stores only).

    Example::

        await sessions.testing.check_reopen(lambda: MyStore(path))
    """
    (sid,) = _ids("reopen")
    records = [_rec(sid, 1, kind="session_started"), _rec(sid, 2), _rec(sid, 3, kind="late")]
    first = make_store()
    try:
        await first.append(sid, records[:2], durable=True)
        await first.append(sid, records[2:], durable=False)
    finally:
        await first.aclose()
    second = make_store()
    try:
        _same(await second.load(sid), records, "a new store object on the same location")
        _require(sid in await second.list_sessions(), "a reopened store does not list the session")
        await second.append(sid, [_rec(sid, 4)], durable=True)
        _same(await second.load(sid), [*records, _rec(sid, 4)], "an append after reopening")
    finally:
        await second.aclose()


async def check_aclose_then_reuse(make_store: StoreFactory) -> None:
    """After `aclose` (twice, even) the same store object works again and keeps its records.

    Example::

        await sessions.testing.check_aclose_then_reuse(lambda: MyStore(path))
    """
    store = make_store()
    (sid,) = _ids("reuse")
    try:
        await store.append(sid, [_rec(sid, 1)], durable=True)
        await store.aclose()
        await store.aclose()
        await store.append(sid, [_rec(sid, 2)], durable=True)
        _same(await store.load(sid), [_rec(sid, 1), _rec(sid, 2)], "the same store object after aclose")
    finally:
        await store.aclose()


async def check_cancelled_load(make_store: StoreFactory) -> None:
    """A load cancelled while it waits leaves the store working.

    Example::

        await sessions.testing.check_cancelled_load(lambda: MyStore(path))
    """
    store = make_store()
    try:
        (sid,) = _ids("cancel")
        await store.append(sid, [_rec(sid, 1)], durable=True)
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.load(sid)
        await store.append(sid, [_rec(sid, 2)], durable=True)
        _same(await store.load(sid), [_rec(sid, 1), _rec(sid, 2)], "after a cancelled load")
    finally:
        await store.aclose()


async def _second_claim_refused(store: Store, session_id: str, what: str) -> None:
    try:
        claim = await store.claim(session_id, wait=0)
    except SessionInUse as exc:
        _require(exc.session_id == session_id, f"SessionInUse names {exc.session_id!r}, not {session_id!r}")
        return
    claim.release()
    raise AssertionError(f"{what} was granted; a store must raise sessions.SessionInUse")


async def check_one_writer(make_store: StoreFactory) -> None:
    """One writer per session: while a session is claimed, a second claim — through the
    same store object or another one on the same location — raises `SessionInUse`; other
    sessions are claimed freely; once released (by `release` or by leaving its ``with``)
    the session can be claimed again.

    Example::

        await sessions.testing.check_one_writer(lambda: MyStore(path))
    """
    store, other = make_store(), make_store()
    try:
        sid, neighbour = _ids("claimed", "neighbour")
        claim = await store.claim(sid)
        _require(claim.held and claim.session_id == sid, f"claim() returned {claim!r}")
        await _second_claim_refused(store, sid, "a second claim through the same store object")
        await _second_claim_refused(other, sid, "a second claim through another store object on the same location")
        with await other.claim(neighbour, wait=0):
            await store.append(sid, [_rec(sid, 1)], durable=True)
        claim.release()
        claim.release()
        _require(not claim.held, "a released claim still says it is held")
        with await other.claim(sid, wait=0) as again:
            _same(await other.load(sid), [_rec(sid, 1)], "the session after it changed hands")
            await _second_claim_refused(store, sid, "a claim of a session claimed again")
        _require(not again.held, "leaving a claim's with block did not release it")
        (await store.claim(neighbour, wait=0)).release()
    finally:
        await store.aclose()
        await other.aclose()


class _Claimer(otpy.GenServer):
    """A process that claims a session in ``init``, as a SessionServer does."""

    async def init(self, store: Store, session_id: str) -> None:
        self.claim = await store.claim(session_id)

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        if request == "crash":
            raise RuntimeError("the claimer crashed")
        return self.claim.held


async def check_claim_released_with_its_process(make_store: StoreFactory) -> None:
    """A claim made in an otpy process (a SessionServer's ``init``) is released when the
    process exits, whether it stops, crashes or is killed, so that the restarted server
    claims the session again; a claim waits for a holder that is on its way out.

    Example::

        await sessions.testing.check_claim_released_with_its_process(lambda: MyStore(path))
    """
    store = make_store()
    try:
        (sid,) = _ids("owned")
        async with trio.open_nursery() as nursery:
            for ending in ("stop", "crash", "kill"):
                pid = await _Claimer.start(store, sid, nursery=nursery)
                await _second_claim_refused(store, sid, f"a claim while a live process holds it (before {ending})")
                if ending == "stop":
                    await otpy.stop(pid)
                elif ending == "crash":
                    with contextlib.suppress(otpy.ServerExited):
                        await otpy.call(pid, "crash")
                else:
                    otpy.exit(pid, "kill")
                    await pid.wait_exited()
                try:
                    claim = await store.claim(sid, wait=1.0)
                except SessionInUse as exc:
                    raise AssertionError(
                        f"the claim of a process that exited ({ending}) was not released: {exc}"
                    ) from exc
                claim.release()
            # A restart: the new claimer waits while the old holder is still finishing.
            pid = await _Claimer.start(store, sid, nursery=nursery)
            nursery.start_soon(_stop_later, pid, 0.2)
            try:
                claim = await store.claim(sid, wait=5.0)
            except SessionInUse as exc:
                raise AssertionError(f"a claim did not wait for a holder that exited 0.2 s later: {exc}") from exc
            _require(not pid.alive, "a claim was granted while its holder was alive")
            claim.release()
    finally:
        await store.aclose()


async def _stop_later(pid: otpy.Pid, delay: float) -> None:
    await trio.sleep(delay)
    await otpy.stop(pid)


@contextlib.asynccontextmanager
async def _servers() -> AsyncIterator[trio.Nursery]:
    """A nursery for a check's servers, out of which a failed check comes as its AssertionError."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        failed, rest = group.split(AssertionError)
        if failed is None or rest is not None:
            raise
        error: BaseException = failed
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        raise error from None


def _echo() -> ScriptedProvider:
    def reply(request: TurnRequest) -> ScriptedReply:
        return ScriptedReply(f"re: {request.prompt}", cost_usd=0.25, provider_session_id=f"native-{request.turn}")

    return ScriptedProvider(default=reply)


def _contents(messages: Sequence[Message]) -> list[str]:
    return [message.content for message in messages]


async def _three_turns(store: Store, session_id: str, provider: ScriptedProvider, nursery: trio.Nursery) -> otpy.Pid:
    pid = await SessionServer.start_link(provider=provider, store=store, session_id=session_id, nursery=nursery)
    for prompt in ("one", "two", "three"):
        await SessionServer.send_message(pid, prompt)
    return pid


async def check_rewind(make_store: StoreFactory) -> None:
    """`SessionServer.rewind` on this store: the ``session_rewound`` record is appended (the log
    before it comes back unchanged), the rewound session loads as the live one was, and a server
    started again on the store continues from the rewound transcript, with every turn still counted.

    Example::

        await sessions.testing.check_rewind(lambda: MyStore(path))
    """
    store = make_store()
    try:
        (sid,) = _ids("rewind")
        provider = _echo()
        async with _servers() as nursery:
            pid = await _three_turns(store, sid, provider, nursery)
            before = await store.load(sid)
            await SessionServer.rewind(pid, 1)
            rewound = await SessionServer.get_session(pid)
            await SessionServer.stop(pid)
            log = await store.load(sid)
            _same(log[: len(before)], before, "the log before a rewind, loaded after it")
            added = [(r.kind, r.data) for r in log[len(before) :]]
            _require(added == [("session_rewound", {"to_turn": 1})], f"a rewind appended {added}")
            loaded = await SessionServer.load(store, sid)
            _require(loaded == rewound, f"a rewound session loads as {loaded!r}, the server had {rewound!r}")
            pid = await SessionServer.start_link(provider=provider, store=store, session_id=sid, nursery=nursery)
            result = await SessionServer.send_message(pid, "four")
            sent = _contents(provider.requests[-1].messages)
            _require(sent == ["one", "re: one"], f"after rewind(1) and a restart, the next turn was sent {sent}")
            _require(result.turn == 4, f"the turn after a rewind is numbered {result.turn}, not 4")
            total = await SessionServer.total_cost(pid)
            _require(total == 1.0, f"total_cost after a rewind is {total}: every turn spent must count (1.0)")
            await SessionServer.stop(pid)
        await store.delete(sid)
    finally:
        await store.aclose()


async def check_fork(make_store: StoreFactory) -> None:
    """`SessionServer.fork` on this store: the fork is a new, listed log of two records whose
    session is the source's prefix; a server started on it goes on from there; the source's log
    is untouched throughout.

    Example::

        await sessions.testing.check_fork(lambda: MyStore(path))
    """
    store = make_store()
    branch = None
    try:
        (sid,) = _ids("fork")
        provider = _echo()
        async with _servers() as nursery:
            await SessionServer.stop(await _three_turns(store, sid, provider, nursery))
            source_log = await store.load(sid)
            branch = await SessionServer.fork(store, sid, at_turn=2)
            _same(await store.load(sid), source_log, "the source after a fork")
            kinds = [r.kind for r in await store.load(branch)]
            _require(kinds == ["session_started", "session_put"], f"a fork's log holds {kinds}")
            _require(branch in await store.list_sessions(), "list_sessions does not list a fork")
            forked = await SessionServer.load(store, branch)
            prefix = ["one", "re: one", "two", "re: two"]
            _require(
                (forked.turn_count, forked.total_cost, _contents(forked.messages)) == (2, 0.5, prefix),
                f"a fork at turn 2 loads with {forked.turn_count} turns, ${forked.total_cost}: {forked.messages}",
            )
            pid = await SessionServer.start_link(provider=provider, store=store, session_id=branch, nursery=nursery)
            result = await SessionServer.send_message(pid, "other")
            sent = _contents(provider.requests[-1].messages)
            _require(sent == prefix, f"a fork's first turn was sent {sent}")
            _require(result.turn == 3, f"a fork at turn 2 numbered its next turn {result.turn}")
            await SessionServer.stop(pid)
            _same(await store.load(sid), source_log, "the source after its fork ran a turn")
        await store.delete(sid)
    finally:
        if branch is not None:
            await store.delete(branch)
        await store.aclose()


CHECKS: dict[str, Check] = {
    "round_trip": check_round_trip,
    "seq_order": check_seq_order,
    "seq_rejected": check_seq_rejected,
    "unknown_session": check_unknown_session,
    "list_and_delete": check_list_and_delete,
    "concurrent_sessions": check_concurrent_sessions,
    "durable_flag": check_durable_flag,
    "reopen": check_reopen,
    "aclose_then_reuse": check_aclose_then_reuse,
    "cancelled_load": check_cancelled_load,
    "one_writer": check_one_writer,
    "claim_released_with_its_process": check_claim_released_with_its_process,
    "rewind": check_rewind,
    "fork": check_fork,
}
"""Every check of the suite, by name. ``reopen`` is for stores that keep records
beyond the store object (not `InMemoryStore`)."""


async def check_store(make_store: StoreFactory, *, reopens: bool = True) -> None:
    """Run every conformance check against the stores ``make_store`` makes.

    ``make_store`` is called several times and must return a store over the *same*
    location each time (the same directory, database, bucket): the checks use their own
    session ids, so it may hold other sessions. Pass ``reopens=False`` for a store whose
    records live only as long as the store object.

    Raises:
        AssertionError: naming the check and what went wrong.

    Example::

        async def test_my_store(tmp_path):
            await sessions.testing.check_store(lambda: MyStore(tmp_path / "db"))

        async def test_memory_store():
            store = sessions.InMemoryStore()
            await sessions.testing.check_store(lambda: store, reopens=False)
    """
    for name, check in CHECKS.items():
        if name == "reopen" and not reopens:
            continue
        try:
            await check(make_store)
        except AssertionError as exc:
            raise AssertionError(f"store conformance check {name!r} failed: {exc}") from exc


class StoreConformance:
    """The conformance suite as pytest tests: subclass it and provide a ``store_factory`` fixture.

    Each check is a test of its own (``test_round_trip``, ``test_reopen``, ...). They are
    plain functions that call ``trio.run``, so no pytest plugin is needed. Set
    ``reopens = False`` for a store whose records live only as long as the object.

    Example::

        import pytest
        import sessions.testing

        class TestMyStore(sessions.testing.StoreConformance):
            @pytest.fixture
            def store_factory(self, tmp_path):
                return lambda: MyStore(tmp_path / "db")
    """

    reopens: ClassVar[bool] = True

    def _run(self, name: str, store_factory: StoreFactory) -> None:
        if name == "reopen" and not self.reopens:
            import pytest  # only ever reached under pytest

            pytest.skip("the store keeps records only as long as the store object (reopens = False)")
        trio.run(CHECKS[name], store_factory)

    def test_round_trip(self, store_factory: StoreFactory) -> None:
        """See ``check_round_trip``."""
        self._run("round_trip", store_factory)

    def test_seq_order(self, store_factory: StoreFactory) -> None:
        """See ``check_seq_order``."""
        self._run("seq_order", store_factory)

    def test_seq_rejected(self, store_factory: StoreFactory) -> None:
        """See ``check_seq_rejected``."""
        self._run("seq_rejected", store_factory)

    def test_unknown_session(self, store_factory: StoreFactory) -> None:
        """See ``check_unknown_session``."""
        self._run("unknown_session", store_factory)

    def test_list_and_delete(self, store_factory: StoreFactory) -> None:
        """See ``check_list_and_delete``."""
        self._run("list_and_delete", store_factory)

    def test_concurrent_sessions(self, store_factory: StoreFactory) -> None:
        """See ``check_concurrent_sessions``."""
        self._run("concurrent_sessions", store_factory)

    def test_durable_flag(self, store_factory: StoreFactory) -> None:
        """See ``check_durable_flag``."""
        self._run("durable_flag", store_factory)

    def test_reopen(self, store_factory: StoreFactory) -> None:
        """See ``check_reopen`` (skipped when ``reopens`` is False)."""
        self._run("reopen", store_factory)

    def test_aclose_then_reuse(self, store_factory: StoreFactory) -> None:
        """See ``check_aclose_then_reuse``."""
        self._run("aclose_then_reuse", store_factory)

    def test_cancelled_load(self, store_factory: StoreFactory) -> None:
        """See ``check_cancelled_load``."""
        self._run("cancelled_load", store_factory)

    def test_one_writer(self, store_factory: StoreFactory) -> None:
        """See ``check_one_writer``."""
        self._run("one_writer", store_factory)

    def test_claim_released_with_its_process(self, store_factory: StoreFactory) -> None:
        """See ``check_claim_released_with_its_process``."""
        self._run("claim_released_with_its_process", store_factory)

    def test_rewind(self, store_factory: StoreFactory) -> None:
        """See ``check_rewind``."""
        self._run("rewind", store_factory)

    def test_fork(self, store_factory: StoreFactory) -> None:
        """See ``check_fork``."""
        self._run("fork", store_factory)
