"""A process appending durably is SIGKILLed; every append it saw acknowledged is there after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest
import trio

from sessions import JsonlStore, SqliteStore, Store

_CHILD = """
import itertools, sys, trio, sessions
from sessions import Record

kind, location = sys.argv[1], sys.argv[2]
store = sessions.SqliteStore(location) if kind == "sqlite" else sessions.JsonlStore(location)

async def session(sid):
    for turn in itertools.count():
        records = [
            Record(sid, 2 * turn + 1, "turn_started", {"prompt": "p" * 200}),
            Record(sid, 2 * turn + 2, "turn_finished", {"result": "r" * 1000}),
        ]
        await store.append(sid, records, durable=True)
        print(sid, 2 * turn + 2, flush=True)   # acknowledged: durable from here on

async def main():
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(session, f"s{i}")

trio.run(main)
"""

_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_writer_thread_left() -> Iterator[None]:
    yield
    assert [t.name for t in threading.enumerate() if t.name.startswith("sessions-")] == []


def _kill_mid_stream(kind: str, location: Path, acks_before_kill: int) -> dict[str, int]:
    """Run the child until it has acknowledged ``acks_before_kill`` turns, SIGKILL it, and
    return the last acknowledged seq of each session."""
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, kind, str(location)], stdout=subprocess.PIPE, env=env, cwd=_ROOT
    )
    assert child.stdout is not None
    acked: dict[str, int] = {}
    try:
        for count, line in enumerate(child.stdout, 1):
            sid, seq = line.split()
            acked[sid.decode()] = int(seq)
            if count == acks_before_kill:
                child.send_signal(signal.SIGKILL)
                break
        # Lines already in the pipe were printed after their acknowledgement too.
        for line in child.stdout:
            if line.endswith(b"\n"):
                sid, seq = line.split()
                acked[sid.decode()] = int(seq)
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert not psutil.pid_exists(child.pid) or psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
    return acked


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_acknowledged_appends_survive_sigkill(tmp_path: Path, kind: str) -> None:
    """10 sessions append durable turns until the process is killed without warning; a new
    store finds every acknowledged record of every session, with no gap and no torn record."""
    location = tmp_path / ("sessions" if kind == "jsonl" else "agents.db")
    acked = _kill_mid_stream(kind, location, acks_before_kill=300)
    assert len(acked) == 10
    assert sum(seq // 2 for seq in acked.values()) >= 300

    async def reload() -> dict[str, list[int]]:
        store: Store = JsonlStore(location) if kind == "jsonl" else SqliteStore(location)
        try:
            return {sid: [r.seq for r in await store.load(sid)] for sid in await store.list_sessions()}
        finally:
            await store.aclose()

    found = trio.run(reload)
    for sid, last in acked.items():
        assert found[sid][:last] == list(range(1, last + 1)), sid
        assert found[sid] == list(range(1, len(found[sid]) + 1)), sid
