"""Three nodes of a sessions cluster on PostgreSQL, one of them SIGKILLed.

    python examples/cluster.py          # needs PostgreSQL at OTPY_POSTGRES_DSN or 127.0.0.1:5432

Each node is an OS process (``python -m sessions.cluster --factory examples/cluster.py:options``)
on 127.0.0.1. Six sessions are started through the three nodes, so they spread over them;
every node's tree is printed; one node is SIGKILLed; its sessions are live again on the
others within the lease (1 s here), and go on with their history and cost. Without a
database the example says so and exits 0. It uses a schema of its own, dropped at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sessions

ROOT = Path(__file__).resolve().parent.parent
DSN = os.environ.get("OTPY_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
LEASE_TTL = 1.0


def options(session_id: str) -> dict[str, Any]:
    """The nodes' session factory: every session gets a scripted agent (0.01 USD a turn)."""

    def reply(request: sessions.TurnRequest) -> sessions.ScriptedReply:
        text = f"[{session_id}] turn {request.turn}: {request.prompt}"
        return sessions.ScriptedReply(text, cost_usd=0.01)

    return {"provider": sessions.ScriptedProvider(default=reply)}


def database() -> str | None:
    """Why PostgreSQL cannot be used here, or None when it can."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc}); pip install 'otpy-sessions[cluster]'"
    try:
        with psycopg.connect(DSN, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def sql(statement: str) -> None:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(statement)


def main() -> int:
    why = database()
    if why is not None:
        print(f"skipped: PostgreSQL not reachable at {DSN}: {why}")
        return 0
    import httpx

    schema = f"otpy_example_{secrets.token_hex(6)}"
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "OTPY_CLUSTER_TOKEN": token}
    factory = f"{Path(__file__).resolve()}:options"
    procs: dict[str, subprocess.Popen[str]] = {}
    client = httpx.Client(headers={"authorization": f"Bearer {token}"}, timeout=30)
    try:
        for node in ("node-1", "node-2", "node-3"):
            command = [sys.executable, "-m", "sessions.cluster", "--factory", factory, "--dsn", DSN]
            command += ["--schema", schema, "--node-id", node, "--lease-ttl", str(LEASE_TTL)]
            command += ["--log-file", os.devnull]
            procs[node] = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        address = {}
        for node, proc in procs.items():
            assert proc.stdout is not None
            address[node] = json.loads(proc.stdout.readline())["address"]
        print("nodes:", ", ".join(f"{node} at {url}" for node, url in address.items()))

        def send(node: str, name: str, prompt: str) -> sessions.Result:
            """A turn of session ``name``, sent to ``node``, which routes it to wherever it lives."""
            body = {"request": {"op": "send", "prompt": prompt, "overrides": {}, "key": None}}
            reply = client.post(f"{address[node]}/v1/call/{name}", json=body).json()
            assert reply["type"] == "result", reply
            return sessions.Result.from_dict(reply["value"])

        def where() -> dict[str, list[str]]:
            alive = [node for node in address if procs[node].poll() is None]
            return {node: client.get(f"{address[node]}/v1/node").json()["sessions"] for node in alive}

        def trees(title: str) -> None:
            print(f"\n--- {title}")
            for node in where():
                print(f"{node}:\n{client.get(f'{address[node]}/v1/tree').text}", end="")

        names = [f"agent-{n}" for n in range(6)]
        nodes = list(address)
        for n, name in enumerate(names):
            send(nodes[n % 3], name, "hello")  # activated on the node that got its first call
            send(nodes[(n + 1) % 3], name, "how are you?")  # routed to it from another node
        trees("six sessions over three nodes")

        victim = "node-1"
        lost = where()[victim]
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        killed = time.monotonic()
        print(f"\nSIGKILLed {victim}, which ran {lost}")
        while True:
            placed = [name for names_here in where().values() for name in names_here]
            if all(name in placed for name in lost):
                break
            time.sleep(0.05)
        print(f"its sessions live again elsewhere after {time.monotonic() - killed:.2f} s")
        for name in lost:
            result = send("node-2", name, "still there?")
            print(f"{name}: {result.text!r} (turn {result.turn})")
            assert result.turn == 3
        trees("after the failover")
        return 0
    finally:
        client.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    sys.exit(main())
