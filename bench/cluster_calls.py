"""What a call costs in a sessions cluster: local vs routed to another node, activation, passivation.

    PYTHONPATH=. python bench/cluster_calls.py            # about a minute
    PYTHONPATH=. python bench/cluster_calls.py --quick

This process is a node (``ClusterNode``); a second node runs as an OS process
(``python -m sessions.cluster``, the scripted provider of examples/cluster.py), both on
PostgreSQL (``OTPY_POSTGRES_DSN``, default the local server; a schema of their own, dropped
at the end). Measured, in interleaved rounds (median of the rounds' per-call means):

- ``status`` by name of a session on this node, and of one on the other node (HTTP there
  and back, the JSON of the reply);
- one turn (``send_message``, the scripted reply, a durable append of its records) on a
  session here and on one there;
- activation: the first call of a new session (the claim of its lease, the load, the
  ``session_started`` append, the start of its server, and that first turn);
- passivation: ``SessionServer.stop`` by name (the lease marked inactive, the server
  stopped, the lease released).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

import sessions
from sessions import SessionServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
DSN = os.environ.get("OTPY_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


async def per_call(fn: object, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / calls


async def bench(args: argparse.Namespace, schema: str, token: str) -> dict[str, tuple[float, float, float]]:
    import httpx
    from cluster import options  # examples/cluster.py's factory

    env = {**os.environ, "OTPY_CLUSTER_TOKEN": token}
    factory = f"{ROOT / 'examples' / 'cluster.py'}:options"
    command = [sys.executable, "-m", "sessions.cluster", "--factory", factory, "--dsn", DSN, "--schema", schema]
    command += ["--node-id", "far", "--idle-timeout", "0", "--log-file", os.devnull]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)  # noqa: ASYNC220
    try:
        assert proc.stdout is not None
        far = json.loads(await trio.to_thread.run_sync(proc.stdout.readline))["address"]
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}) as client:
            body = {"request": {"op": "send", "prompt": "hi", "overrides": {}, "key": None}}
            assert (await client.post(f"{far}/v1/call/there", json=body)).status_code == 200
        store = sessions.PostgresStore(DSN, schema=schema, node_id="here")
        async with sessions.ClusterNode.open(store, options, token=token, idle_timeout=3600):
            await SessionServer.send_message("here", "hi")
            rows: dict[str, list[float]] = {k: [] for k in ("status_here", "status_there", "turn_here", "turn_there")}
            rows |= {"activate": [], "passivate": []}
            for round_ in range(args.rounds):
                for where in ("here", "there"):
                    rows[f"status_{where}"].append(await per_call(lambda w=where: SessionServer.status(w), args.calls))
                    rows[f"turn_{where}"].append(
                        await per_call(lambda w=where: SessionServer.send_message(w, "hi"), args.turns)
                    )
                names = [f"a{round_}-{i}" for i in range(args.turns)]
                started = time.perf_counter()
                for name in names:
                    await SessionServer.send_message(name, "hi")
                rows["activate"].append((time.perf_counter() - started) / len(names))
                started = time.perf_counter()
                for name in names:
                    await SessionServer.stop(name)
                rows["passivate"].append((time.perf_counter() - started) / len(names))
                print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.2f} ms" for k, v in rows.items()))
            return {k: (statistics.median(v), min(v), max(v)) for k, v in rows.items()}
    finally:
        proc.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(proc.wait)
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.rounds, args.calls, args.turns = (2, 50, 10) if args.quick else (5, 300, 40)
    import psycopg

    schema = f"otpy_bench_{secrets.token_hex(6)}"
    token = secrets.token_urlsafe(24)
    try:
        result = trio.run(bench, args, schema, token)
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print("\n| what | median per call (min-max of the rounds) |\n| --- | --- |")
    for key, label in (
        ("status_here", "`status` of a session on this node"),
        ("status_there", "`status` of a session on the other node (routed over HTTP)"),
        ("turn_here", "one turn on this node"),
        ("turn_there", "one turn on the other node (routed)"),
        ("activate", "first call of a new session (activation and its first turn)"),
        ("passivate", "passivation (`stop` by name)"),
    ):
        median, low, high = result[key]
        print(f"| {label} | {median * 1e3:.2f} ms ({low * 1e3:.2f}-{high * 1e3:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
