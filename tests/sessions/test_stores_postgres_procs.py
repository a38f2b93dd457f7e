"""PostgresStore nodes as separate OS processes against a real PostgreSQL, with the faults
injected: SIGKILL of the holder, SIGSTOP past its lease then SIGCONT (its writes are
refused), SIGSTOP in the middle of a commit, a restart under the same node id, and many
processes claiming one session at once. Each node is tests/sessions/pg_node_child.py,
driven line by line over a pipe. The process table is read (psutil) after each test: no
child is left, whatever happened.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

CHILD = Path(__file__).with_name("pg_node_child.py")
TTL = 1.0  # short leases, yet long enough that a loaded 2-core machine does not starve a heartbeat


class Node:
    """One node process: ``ask`` sends a command and returns its one-line answer."""

    def __init__(self, postgres: Any, node_id: str, log: Path, ttl: float = TTL, sid: str = "s") -> None:
        self.node_id = node_id
        self._log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), postgres.dsn, postgres.schema, node_id, str(ttl), sid],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self._buf = b""

    def ready(self) -> None:
        assert self.read(30) == "ready"

    def read(self, timeout: float = 15.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"node {self.node_id} did not answer in {timeout} s")
            readable, _, _ = select.select([self.proc.stdout], [], [], left)
            if readable:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise AssertionError(f"node {self.node_id} exited: {self._log.read_text()[-2000:]}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def ask(self, command: str, timeout: float = 15.0) -> str:
        self.send(command)
        return self.read(timeout)

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def finish(self) -> None:
        """Exit cleanly if it can, else kill it; reap it either way."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.send("exit")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def spawn(postgres: Any, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start node processes; every one is gone (process table read) when the test ends."""
    nodes: list[Node] = []

    def start(node_id: str, **options: Any) -> Node:
        node = Node(postgres, node_id, tmp_path / f"{node_id}-{len(nodes)}.log", **options)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.finish()
    pids = {node.proc.pid for node in nodes}
    alive = [p for p in psutil.Process().children(recursive=True) if p.pid in pids or "pg_node_child" in _cmd(p)]
    assert alive == [], f"node processes left behind: {alive}"


def _cmd(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def sql(postgres: Any, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        cur = conn.execute(query.replace("{s}", f'"{postgres.schema}"'), params)
        return cur.fetchall() if cur.description else []


def log_of(postgres: Any, sid: str = "s") -> list[tuple[int, str]]:
    """(seq, writer node) of every record of the session."""
    rows = sql(postgres, "SELECT seq, data FROM {s}.records WHERE session_id = %s ORDER BY seq", sid)
    import json

    return [(int(seq), json.loads(data)["by"]) for seq, data in rows]


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_sigkill_the_holder_and_the_other_claims_after_the_lease(postgres: Any, spawn: Callable[..., Node]) -> None:
    """A SIGKILLed holder's lease is taken by another node once its row expires, with the
    next epoch; what the dead node committed stays, and the new owner writes on."""
    a, b = spawn("a"), spawn("b")
    a.ready()
    b.ready()
    assert a.ask("claim 0") == "claimed 1"
    assert b.ask("claim 0") == "in_use"
    assert a.ask("append 1") == "appended 1"
    a.signal(signal.SIGKILL)
    a.proc.wait(timeout=10)
    killed = time.monotonic()
    assert b.ask("claim 10") == "claimed 2"
    took = time.monotonic() - killed
    assert b.ask("append 2") == "appended 2"
    assert log_of(postgres) == [(1, "a"), (2, "b")]
    print(f"takeover {took:.3f} s after SIGKILL (lease_ttl {TTL} s)")


def test_sigstop_past_the_lease_then_sigcont_its_append_is_refused(postgres: Any, spawn: Callable[..., Node]) -> None:
    """A holder paused past its lease loses the session; once resumed, its append is
    refused with LeaseLost, it is fenced, and nothing it wrote after the takeover is in the log."""
    a, b = spawn("a"), spawn("b")
    a.ready()
    b.ready()
    assert a.ask("claim 0") == "claimed 1"
    assert a.ask("append 1") == "appended 1"
    a.signal(signal.SIGSTOP)
    try:
        assert b.ask("claim 10") == "claimed 2"
        assert b.ask("append 2") == "appended 2"
    finally:
        a.signal(signal.SIGCONT)
    assert a.ask("append 2").startswith("lost 1 ")
    assert a.ask("append 3").startswith("lost 1 ")
    assert a.ask("fenced") == "fenced True"
    assert b.ask("append 3") == "appended 3"
    assert log_of(postgres) == [(1, "a"), (2, "b"), (3, "b")]


def test_sigstop_in_the_middle_of_a_commit(postgres: Any, spawn: Callable[..., Node]) -> None:
    """A holder paused after its append passed the lease check, inside the transaction,
    cannot keep the lease row locked: the server ends its idle transaction, the other node
    takes the session over, and when the paused one resumes its commit fails and nothing of
    it is in the log."""
    a, b = spawn("a"), spawn("b")
    a.ready()
    b.ready()
    assert a.ask("claim 0") == "claimed 1"
    with psycopg.connect(postgres.dsn) as locker:
        locker.execute(f'LOCK TABLE "{postgres.schema}".records IN SHARE MODE')  # the INSERT will wait
        a.send("append 1")
        wait_until(lambda: bool(sql(postgres, "SELECT 1 FROM pg_locks WHERE NOT granted AND locktype = 'relation'")))
        a.signal(signal.SIGSTOP)
        locker.rollback()  # a's INSERT goes through; its COMMIT never comes
    try:
        assert b.ask("claim 10") == "claimed 2"
        assert b.ask("append 1") == "appended 1"
    finally:
        a.signal(signal.SIGCONT)
    answer = a.read()
    assert answer.startswith(("error", "lost")), answer
    assert a.ask("append 2").startswith("lost 1 ")
    assert log_of(postgres) == [(1, "b")]


def test_a_node_restarted_under_its_id_takes_its_lease_back_at_once(postgres: Any, spawn: Callable[..., Node]) -> None:
    """A node SIGKILLed and started again with the same node id claims its session without
    waiting for the old lease to expire (a long lease here proves it)."""
    first = spawn("n1", ttl=60.0)
    first.ready()
    assert first.ask("claim 0") == "claimed 1"
    assert first.ask("append 1") == "appended 1"
    first.signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    again = spawn("n1", ttl=60.0)
    again.ready()
    assert again.ask("claim 0") == "claimed 2"
    assert again.ask("append 2") == "appended 2"
    assert log_of(postgres) == [(1, "n1"), (2, "n1")]


def test_processes_racing_for_one_session_exactly_one_wins_each_epoch(
    postgres: Any, spawn: Callable[..., Node]
) -> None:
    """Four processes claim the same session at once, three rounds: each round exactly one
    wins, with epochs 1, 2, 3."""
    nodes = [spawn(f"p{i}") for i in range(4)]
    for node in nodes:
        node.ready()
    for epoch in (1, 2, 3):
        for node in nodes:
            node.send("claim 0")
        answers = [node.read() for node in nodes]
        assert sorted(answers) == [f"claimed {epoch}", "in_use", "in_use", "in_use"], answers
        [winner] = [node for node, answer in zip(nodes, answers, strict=True) if answer.startswith("claimed")]
        assert winner.ask("release") == "released"
        wait_until(lambda: sql(postgres, "SELECT node_id FROM {s}.leases WHERE session_id = 's'") == [(None,)])
