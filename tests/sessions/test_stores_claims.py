"""One writer per session per store: a claimed session is refused to a second writer —
through the same store object, another object on the same file or directory, or another
OS process — and the claim goes away with its owner, however the owner ends."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
import trio
import trio.testing

import otpy
import sessions
from sessions import InvalidOption, JsonlStore, Record, SessionInUse, SqliteStore, Store
from sessions._stores import _claims

_ROOT = Path(__file__).resolve().parents[2]
KINDS = ["jsonl", "sqlite"]


@pytest.fixture(autouse=True)
def _nothing_left() -> Iterator[None]:
    """No writer thread and no claim outlives a test."""
    yield
    assert [t.name for t in threading.enumerate() if t.name.startswith("sessions-")] == []
    assert _claims.FILE_CLAIMS.held() == []


def _make(kind: str, tmp_path: Path) -> Store:
    return JsonlStore(tmp_path / "sessions") if kind == "jsonl" else SqliteStore(tmp_path / "agents.db")


def _location(kind: str, tmp_path: Path) -> Path:
    return tmp_path / ("sessions" if kind == "jsonl" else "agents.db")


def _lock_files(tmp_path: Path) -> list[Path]:
    return sorted(path for path in tmp_path.rglob("*.lock"))


class Writer(otpy.GenServer):
    """What a SessionServer does with its store at start: claim the session, then load it.
    ``linger`` starts a helper that goes on writing after the server is gone (a turn task
    whose last write is on its way to the disk) and is made an owner of the claim."""

    async def init(self, store: Store, session_id: str, wait: float = 5.0, linger: float = 0.0) -> None:
        self.claim = await store.claim(session_id, wait=wait)
        self.records = await store.load(session_id)
        if linger:
            helper = otpy.Task.async_(_linger, linger)
            self.claim.add_owner(helper.pid)

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        if request == "crash":
            raise RuntimeError("the writer crashed")
        return self.claim.held


async def _linger(seconds: float) -> None:
    with trio.CancelScope(shield=True):  # like the turn task's shielded appends
        await trio.sleep(seconds)


# --- within one process ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*KINDS, "memory"])
async def test_a_second_server_on_a_live_session_is_refused_at_start(
    tmp_path: Path, kind: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Two servers on one session and one store: the second does not start; its start
    fails with SessionInUse naming the session and the store, after the bounded wait."""
    store: Store = sessions.InMemoryStore() if kind == "memory" else _make(kind, tmp_path)
    first = await Writer.start(store, "agent", nursery=nursery)
    started = trio.current_time()
    with pytest.raises(otpy.StartError) as caught:
        await Writer.start(store, "agent", 3.0, nursery=nursery)
    error = caught.value.__cause__
    assert isinstance(error, SessionInUse)
    assert trio.current_time() - started == pytest.approx(3.0, abs=0.1)
    assert error.session_id == "agent"
    assert error.waited == pytest.approx(3.0, abs=0.1)
    assert error.store == (repr(store) if kind == "memory" else str(_location(kind, tmp_path)))
    assert "'agent'" in str(error)
    assert error.store in str(error)
    assert repr(first) in str(error)
    assert first.alive
    assert await otpy.call(first, "held")
    await otpy.stop(first)
    await store.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_two_store_objects_on_one_location_share_the_claims(tmp_path: Path, kind: str) -> None:
    """A second store object on the same file or directory (another part of the program
    made its own) is refused too, and can claim once the first lets go."""
    first, second = _make(kind, tmp_path), _make(kind, tmp_path)
    claim = await first.claim("agent")
    with pytest.raises(SessionInUse, match=r"'agent' is in use in .*: a task of this process holds it"):
        await second.claim("agent", wait=0)
    (await second.claim("other", wait=0)).release()  # other sessions are free
    claim.release()
    with await second.claim("agent", wait=0), pytest.raises(SessionInUse):
        await first.claim("agent", wait=0)
    await first.aclose()
    await second.aclose()


async def test_two_jsonl_stores_on_one_directory_never_both_acknowledge_one_seq(tmp_path: Path) -> None:
    """Without claims (two writers appending on purpose), a JsonlStore notices that a file
    grew under it and checks the seq against the file: the second append of a seq is
    refused, and the log stays readable. (Before, both were acknowledged, and the file
    then held seq 1 twice and could not be loaded.)"""
    first, second = JsonlStore(tmp_path), JsonlStore(tmp_path)
    await first.append("s", [Record("s", 1, "session_started")], durable=True)
    await second.append("s", [Record("s", 2, "message")], durable=True)
    await first.load("s")
    with pytest.raises(sessions.StoreError, match="does not follow 's'#2"):
        await first.append("s", [Record("s", 2, "message", {"from": "first"})], durable=True)
    await first.append("s", [Record("s", 3, "message", {"from": "first"})], durable=True)
    with pytest.raises(sessions.StoreError, match="does not follow 's'#3"):
        await second.append("s", [Record("s", 3, "message", {"from": "second"})], durable=True)
    reader = JsonlStore(tmp_path)
    assert [(r.seq, r.data) for r in await reader.load("s")] == [(1, {}), (2, {}), (3, {"from": "first"})]
    for store in (first, second, reader):
        await store.aclose()


@pytest.mark.parametrize("kind", [*KINDS, "memory"])
@pytest.mark.parametrize("ending", ["stop", "crash", "kill"])
async def test_the_claim_goes_with_its_process(tmp_path: Path, kind: str, ending: str, nursery: trio.Nursery) -> None:
    """However the server ends — stopped, crashed, killed (no terminate runs) — its claim
    is released by itself, without another claimer having to look, and the session can be
    claimed at once."""
    store: Store = sessions.InMemoryStore() if kind == "memory" else _make(kind, tmp_path)
    pid = await Writer.start(store, "agent", nursery=nursery)
    claim = (await otpy.get_state(pid)).claim
    assert claim.owners == (pid,)
    if ending == "stop":
        await otpy.stop(pid)
    elif ending == "crash":
        with pytest.raises(otpy.ServerExited):
            await otpy.call(pid, "crash")
    else:
        otpy.exit(pid, "kill")
    await pid.wait_exited()
    await trio.testing.wait_all_tasks_blocked()
    assert not claim.held
    assert _lock_files(tmp_path) == []
    (await store.claim("agent", wait=0)).release()
    await store.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_restart_waits_for_the_last_writer_of_the_old_server(
    tmp_path: Path, kind: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The old server is killed while a task of its own (an owner of the claim) is still
    writing: the restarted server's claim waits until that task is gone too, then starts;
    with a wait shorter than the task's, the restart fails with SessionInUse."""
    store = _make(kind, tmp_path)
    old = await Writer.start(store, "agent", 5.0, 2.0, nursery=nursery)
    otpy.exit(old, "kill")
    await old.wait_exited()
    with pytest.raises(otpy.StartError) as caught:
        await Writer.start(store, "agent", 0.5, nursery=nursery)
    assert isinstance(caught.value.__cause__, SessionInUse)
    started = trio.current_time()
    new = await Writer.start(store, "agent", 5.0, nursery=nursery)
    assert 1.4 <= trio.current_time() - started <= 1.6  # the helper lived 2 s from the start; 0.5 s were spent
    assert await otpy.call(new, "held")
    await otpy.stop(new)
    await store.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_supervised_restart_claims_the_session_again(tmp_path: Path, kind: str, nursery: trio.Nursery) -> None:
    """Under a supervisor, a crashed writer is restarted and claims its session again."""
    store = _make(kind, tmp_path)
    spec = Writer.child_spec(store, "agent", name="agent")
    sup = await otpy.Supervisor.start_link([spec], nursery=nursery)
    for _ in range(3):
        old = otpy.whereis("agent")
        assert old is not None
        otpy.exit(old, "kill")
        with trio.fail_after(10):
            while otpy.whereis("agent") in (None, old):  # noqa: ASYNC110 (a supervisor's restart has no event)
                await trio.sleep(0.01)
        assert await otpy.call("agent", "held")
    await otpy.stop(sup)
    await store.aclose()


@pytest.mark.parametrize("kind", KINDS)
def test_claims_end_with_their_trio_run(tmp_path: Path, kind: str) -> None:
    """A claim nobody released is released when its trio run ends, so the next run (or a
    restart of the program's main loop) can claim the session."""
    store = _make(kind, tmp_path)

    async def leave_it_claimed() -> None:
        await store.claim("agent")
        await store.aclose()

    async def claim_again() -> None:
        (await store.claim("agent", wait=0)).release()
        await store.aclose()

    trio.run(leave_it_claimed)
    assert _claims.FILE_CLAIMS.held() == []
    trio.run(claim_again)


async def test_add_owner_holds_the_claim_until_every_owner_has_exited(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    store = SqliteStore(tmp_path / "agents.db")
    pid = await Writer.start(store, "agent", 5.0, 3.0, nursery=nursery)
    claim = (await otpy.get_state(pid)).claim
    assert len(claim.owners) == 2
    await otpy.stop(pid)
    await trio.sleep(2.5)
    assert claim.held
    await trio.sleep(1.0)
    assert not claim.held
    await store.aclose()


@pytest.mark.parametrize("wait", [-1, -0.001, math.nan, math.inf, "1", True, None])
async def test_a_bad_wait_is_refused(tmp_path: Path, wait: object) -> None:
    store = SqliteStore(tmp_path / "agents.db")
    with pytest.raises(InvalidOption, match="wait"):
        await store.claim("agent", wait=wait)  # type: ignore[arg-type]
    (await store.claim("agent", wait=0)).release()  # zero is a valid wait: try once
    await store.aclose()


@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", "\udc80"])
async def test_a_bad_session_id_is_refused_at_claim(tmp_path: Path, bad: str) -> None:
    for store in (JsonlStore(tmp_path / "j"), SqliteStore(tmp_path / "s.db")):
        if isinstance(store, SqliteStore) and bad in (".hidden", "a/b"):
            (await store.claim(bad, wait=0)).release()  # any string is a SqliteStore id
        else:
            with pytest.raises(InvalidOption, match="session_id"):
                await store.claim(bad)
        await store.aclose()


# --- SessionServer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "objects"),
    [(kind, objects) for kind in KINDS for objects in ("one store object", "two store objects")]
    + [("memory", "one store object")],  # two InMemoryStore objects are two stores
)
async def test_a_second_session_server_of_a_live_session_is_refused(
    tmp_path: Path, kind: str, objects: str, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Two SessionServers with one session id on one store (one object, or two on one file
    or directory): the second does not start, with SessionInUse naming the session, after
    waiting close_timeout; the first goes on serving turns untouched."""
    first_store = sessions.InMemoryStore() if kind == "memory" else _make(kind, tmp_path)
    second_store = first_store if objects == "one store object" else _make(kind, tmp_path)
    provider = sessions.ScriptedProvider(["one", "two"])
    options: dict[str, Any] = {"provider": provider, "session_id": "agent", "close_timeout": 2.0}
    first = await sessions.SessionServer.start_link(store=first_store, nursery=nursery, **options)
    assert (await sessions.SessionServer.send_message(first, "hi")).text == "one"
    started = trio.current_time()
    with pytest.raises(otpy.StartError) as caught:
        await sessions.SessionServer.start_link(store=second_store, nursery=nursery, **options)
    error = caught.value.__cause__
    assert isinstance(error, SessionInUse)
    assert error.session_id == "agent"
    assert trio.current_time() - started == pytest.approx(2.0, abs=0.1)
    assert (await sessions.SessionServer.send_message(first, "again")).text == "two"
    assert await sessions.SessionServer.turn_count(first) == 2
    await otpy.stop(first)
    for store in {id(first_store): first_store, id(second_store): second_store}.values():
        await store.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_killed_session_server_is_restarted_on_its_claim(
    tmp_path: Path, kind: str, nursery: trio.Nursery
) -> None:
    """A session server killed (no terminate) leaves its session claimable: the next server
    of the session starts and carries on its log."""
    store = _make(kind, tmp_path)
    provider = sessions.ScriptedProvider(["one", "two"])
    options: dict[str, Any] = {"provider": provider, "session_id": "agent", "store": store}
    first = await sessions.SessionServer.start(nursery=nursery, **options)
    await sessions.SessionServer.send_message(first, "hi")
    otpy.exit(first, "kill")
    await first.wait_exited()
    second = await sessions.SessionServer.start_link(nursery=nursery, **options)
    assert (await sessions.SessionServer.send_message(second, "again")).text == "two"
    assert await sessions.SessionServer.turn_count(second) == 2
    await otpy.stop(second)
    await store.aclose()


_SERVER = """
import sys, trio, otpy, sessions

async def main():
    store = sessions.SqliteStore(sys.argv[1])
    async with trio.open_nursery() as nursery:
        await sessions.SessionServer.start_link(
            provider=sessions.ScriptedProvider(), store=store, session_id="agent", nursery=nursery
        )
        print("serving", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def test_a_session_server_in_another_os_process_is_refused_until_it_dies(tmp_path: Path) -> None:
    """A SessionServer of the session runs in another OS process: a server here does not
    start (SessionInUse names that process); once the other process is SIGKILLed, it does."""
    path = tmp_path / "agents.db"
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert _line(child) == "serving"

        async def start(expect_refusal: bool) -> None:
            store = SqliteStore(path)
            options: dict[str, Any] = {"provider": sessions.ScriptedProvider(["hi"]), "session_id": "agent"}
            async with trio.open_nursery() as nursery:
                if expect_refusal:
                    with pytest.raises(otpy.StartError) as caught:
                        await sessions.SessionServer.start_link(
                            store=store, close_timeout=0.2, nursery=nursery, **options
                        )
                    assert isinstance(caught.value.__cause__, SessionInUse)
                    assert caught.value.__cause__.holder == f"OS process {child.pid}"
                else:
                    pid = await sessions.SessionServer.start_link(store=store, nursery=nursery, **options)
                    assert (await sessions.SessionServer.send_message(pid, "hello")).text == "hi"
                    await otpy.stop(pid)
            await store.aclose()

        trio.run(start, True)
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
        trio.run(start, False)
    finally:
        _reap(child)


# --- across OS processes ----------------------------------------------------------------------

_HOLDER = """
import sys, trio, sessions

kind, location, session_id = sys.argv[1:4]
store = sessions.SqliteStore(location) if kind == "sqlite" else sessions.JsonlStore(location)

async def main():
    try:
        claim = await store.claim(session_id, wait=float(sys.argv[4]))
    except sessions.SessionInUse as exc:
        print("refused", exc, flush=True)
        sys.exit(3)
    print("claimed", flush=True)
    await trio.to_thread.run_sync(sys.stdin.read)  # hold it until stdin closes (or a SIGKILL)
    claim.release()
    print("released", flush=True)

trio.run(main)
"""


def _holder(kind: str, location: Path, wait: float = 0.0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _HOLDER, kind, str(location), "agent", str(wait)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=_ROOT,
    )


def _line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    return child.stdout.readline().strip()


def _reap(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait(10)
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            stream.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("death", ["exit", "sigkill"])
def test_another_os_process_is_refused_until_the_holder_is_gone(tmp_path: Path, kind: str, death: str) -> None:
    """A second OS process on the same file or directory is refused, naming the holder's
    pid; after the holder exits — or is SIGKILLed, which runs no cleanup at all — the
    session can be claimed again (the kernel dropped the lock)."""
    location = _location(kind, tmp_path)
    child = _holder(kind, location)
    try:
        assert _line(child) == "claimed"

        async def refused() -> None:
            store = _make(kind, tmp_path)
            with pytest.raises(SessionInUse) as caught:
                await store.claim("agent", wait=0.2)
            assert caught.value.holder == f"OS process {child.pid}"
            assert str(location) in str(caught.value)
            await store.aclose()

        trio.run(refused)
        if death == "sigkill":
            child.send_signal(signal.SIGKILL)
            assert child.wait(10) == -signal.SIGKILL
            assert _lock_files(tmp_path) != []  # no cleanup ran: the file is there, unlocked
        else:
            assert child.stdin is not None
            child.stdin.close()
            assert _line(child) == "released"
            assert child.wait(10) == 0
            assert _lock_files(tmp_path) == []
        assert not psutil.pid_exists(child.pid) or psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE

        async def claimed() -> None:
            store = _make(kind, tmp_path)
            with await store.claim("agent", wait=0):
                await store.append("agent", [Record("agent", 1, "session_started")], durable=True)
            await store.aclose()

        trio.run(claimed)
        assert _lock_files(tmp_path) == []
    finally:
        _reap(child)


@pytest.mark.parametrize("kind", KINDS)
def test_a_claim_in_this_process_refuses_another_os_process(tmp_path: Path, kind: str) -> None:
    """The other way round: this process holds the session, a second process is refused
    (exit 3, naming this process), and claims it once this process lets go."""

    async def main() -> None:
        store = _make(kind, tmp_path)
        claim = await store.claim("agent")
        child = _holder(kind, _location(kind, tmp_path))
        try:
            line = await trio.to_thread.run_sync(_line, child)
            assert line.startswith("refused"), line
            assert f"OS process {os.getpid()}" in line, line
            assert await trio.to_thread.run_sync(child.wait, 10) == 3
        finally:
            _reap(child)
        claim.release()
        waiting = _holder(kind, _location(kind, tmp_path), wait=10.0)
        try:
            assert await trio.to_thread.run_sync(_line, waiting) == "claimed"
        finally:
            _reap(waiting)
        await store.aclose()

    trio.run(main)
