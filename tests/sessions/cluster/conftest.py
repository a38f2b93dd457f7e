"""The cluster tests' harness: nodes as OS processes (``python -m sessions.cluster``), a
client that calls them over their HTTP API, and a look at the database.

Every node is a child of the test process; the ``cluster`` fixture kills what is left of
them and checks with psutil that none survives. Each test has its own schema (the
``postgres`` fixture drops it).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import psutil  # type: ignore[import-untyped]
import pytest
import trio

import sessions
from sessions._cluster._wire import decode_reply

ROOT = Path(__file__).resolve().parents[3]
FACTORY = f"{Path(__file__).with_name('factory.py')}:scripted"
TOKEN = "cluster-test-token-0123456789"


@attrs.define(eq=False)
class NodeProcess:
    node_id: str
    proc: subprocess.Popen[str]
    address: str
    log: Path

    def events(self) -> list[dict[str, Any]]:
        """The node's structlog events so far."""
        found = []
        for line in self.log.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def event_names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events()]


@attrs.define(eq=False)
class Cluster:
    dsn: str
    schema: str
    tmp: Path
    client: httpx.AsyncClient
    nodes: list[NodeProcess] = attrs.field(factory=list)
    token: str = TOKEN
    spawned: list[subprocess.Popen[str]] = attrs.field(factory=list)

    async def start(self, *node_ids: str, lease_ttl: float = 1.0, idle_timeout: float = 0.0) -> list[NodeProcess]:
        """Start node processes (all at once) and wait until each serves."""
        started = [self._spawn(node_id, lease_ttl, idle_timeout) for node_id in node_ids]
        nodes = []
        for node_id, proc, log in started:
            assert proc.stdout is not None
            with trio.fail_after(30):
                line = await trio.to_thread.run_sync(proc.stdout.readline)
            if not line:
                proc.wait(5)
                raise AssertionError(f"node {node_id} did not start: {log.read_text() if log.exists() else ''}")
            ready = json.loads(line)
            node = NodeProcess(node_id, proc, ready["address"], log)
            self.nodes.append(node)
            nodes.append(node)
        return nodes

    def _spawn(self, node_id: str, lease_ttl: float, idle_timeout: float) -> tuple[str, subprocess.Popen[str], Path]:
        log = self.tmp / f"{node_id}.log"
        command = [
            sys.executable,
            "-m",
            "sessions.cluster",
            "--factory",
            FACTORY,
            "--dsn",
            self.dsn,
            "--schema",
            self.schema,
            "--node-id",
            node_id,
            "--lease-ttl",
            str(lease_ttl),
            "--idle-timeout",
            str(idle_timeout),
            "--log-file",
            str(log),
        ]
        env = {**os.environ, "OTPY_CLUSTER_TOKEN": TOKEN}
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.spawned.append(proc)
        return node_id, proc, log

    async def call(self, node: NodeProcess, name: str, request: dict[str, Any], seconds: float = 20.0) -> Any:
        """Call session ``name`` through ``node`` (which routes it), as a client of the cluster."""
        response = await self.client.post(
            f"{node.address}/v1/call/{name}",
            json={"request": request, "timeout": None},
            timeout=seconds,
        )
        assert response.status_code == 200, response.text
        return decode_reply(response.json(), name)

    async def send(self, node: NodeProcess, name: str, prompt: str, key: str | None = None) -> sessions.Result:
        result = await self.call(node, name, {"op": "send", "prompt": prompt, "overrides": {}, "key": key})
        assert isinstance(result, sessions.Result)
        return result

    async def session(self, node: NodeProcess, name: str) -> sessions.Session:
        value = await self.call(node, name, {"op": "get", "what": "session"})
        assert isinstance(value, sessions.Session)
        return value

    async def local(self, node: NodeProcess) -> list[str]:
        """The sessions ``node`` runs now."""
        response = await self.client.get(f"{node.address}/v1/node", timeout=5)
        names: list[str] = response.json()["sessions"]
        return names

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql.replace("{s}", f'"{self.schema}"'), params).fetchall()

    def lease(self, session_id: str) -> tuple[str | None, int, bool] | None:
        rows = self.query("SELECT node_id, epoch, active FROM {s}.leases WHERE session_id = %s", session_id)
        return (rows[0][0], int(rows[0][1]), bool(rows[0][2])) if rows else None

    def kinds(self, session_id: str) -> list[str]:
        return [r[0] for r in self.query("SELECT kind FROM {s}.records WHERE session_id = %s ORDER BY seq", session_id)]

    async def wait_exit(self, node: NodeProcess, seconds: float = 20.0) -> int:
        returncode = await trio.to_thread.run_sync(functools.partial(node.proc.wait, seconds))
        return int(returncode)

    async def until(self, check: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
        """Wait until ``check()`` is true (polled every 50 ms), at most ``seconds``."""
        with trio.fail_after(seconds):
            while True:
                if await check():
                    return
                await trio.sleep(0.05)

    def signal(self, node: NodeProcess, signum: signal.Signals) -> float:
        node.proc.send_signal(signum)
        return time.monotonic()


@pytest.fixture
async def cluster(postgres: Any, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}) as client:
        harness = Cluster(postgres.dsn, postgres.schema, tmp_path, client)
        try:
            yield harness
        finally:
            for proc in harness.spawned:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
                proc.wait(10)
                if proc.stdout is not None:
                    proc.stdout.close()
            me = psutil.Process()
            left = [p for p in me.children(recursive=True) if p.pid in {proc.pid for proc in harness.spawned}]
            assert left == [], left
