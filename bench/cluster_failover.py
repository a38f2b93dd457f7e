"""Failover time of a sessions cluster: SIGKILL the node that runs some sessions, time until
every one of them is live again on another node.

    PYTHONPATH=. python bench/cluster_failover.py                 # 3 nodes, 10 kills, lease_ttl 3 s (the default)
    PYTHONPATH=. python bench/cluster_failover.py --kills 3 --lease-ttl 1

Three nodes run as OS processes (``python -m sessions.cluster``, the scripted provider of
examples/cluster.py) on PostgreSQL (``OTPY_POSTGRES_DSN``, default the local server; a
schema of its own, dropped at the end). Each round: ``--sessions`` sessions are activated on
one node (their first call goes there) and get a turn; that node is SIGKILLed; the clock runs
from the kill until the other nodes' ``/v1/node`` list all of them; then a turn through
another node checks that each carries on (turn 2); the killed node is started again.
Prints each round and the median and max.
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

import httpx

ROOT = Path(__file__).resolve().parent.parent
DSN = os.environ.get("OTPY_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    args = parser.parse_args()
    import psycopg

    schema = f"otpy_bench_{secrets.token_hex(6)}"
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "OTPY_CLUSTER_TOKEN": token}
    factory = f"{ROOT / 'examples' / 'cluster.py'}:options"
    procs: dict[str, subprocess.Popen[str]] = {}
    address: dict[str, str] = {}
    client = httpx.Client(headers={"authorization": f"Bearer {token}"}, timeout=60)

    def start(node: str) -> None:
        command = [sys.executable, "-m", "sessions.cluster", "--factory", factory, "--dsn", DSN, "--schema", schema]
        command += ["--node-id", node, "--lease-ttl", str(args.lease_ttl), "--log-file", os.devnull]
        procs[node] = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def ready(node: str) -> None:
        stdout = procs[node].stdout
        assert stdout is not None
        address[node] = json.loads(stdout.readline())["address"]

    def send(node: str, name: str) -> int:
        body = {"request": {"op": "send", "prompt": "hi", "overrides": {}, "key": None}}
        reply = client.post(f"{address[node]}/v1/call/{name}", json=body).json()
        assert reply["type"] == "result", reply
        return int(reply["value"]["turn"])

    def local(node: str) -> set[str]:
        return set(client.get(f"{address[node]}/v1/node").json()["sessions"])

    times = []
    try:
        nodes = ["n1", "n2", "n3"]
        for node in nodes:
            start(node)
        for node in nodes:
            ready(node)
        for round_ in range(args.kills):
            victim, others = nodes[round_ % 3], [n for n in nodes if n != nodes[round_ % 3]]
            names = [f"r{round_}-s{i}" for i in range(args.sessions)]
            for name in names:
                send(victim, name)
            assert set(names) <= local(victim)
            procs[victim].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            while True:
                placed = set().union(*(local(n) for n in others))
                if set(names) <= placed:
                    break
                time.sleep(0.02)
            took = time.monotonic() - killed
            times.append(took)
            procs[victim].wait()
            for name in names:
                assert send(others[0], name) == 2
            print(f"round {round_ + 1}: {len(names)} sessions of {victim} live again in {took:.2f} s", flush=True)
            start(victim)
            ready(victim)
        print(
            f"failover, lease_ttl={args.lease_ttl}: median {statistics.median(times):.2f} s, "
            f"max {max(times):.2f} s, min {min(times):.2f} s over {len(times)} kills"
        )
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
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    sys.exit(main())
