"""Durable turns/s on PostgresStore with one node and with three: the cluster's write rate.

``--sessions`` sessions (100) in all, spread over ``N`` node processes (1 and 3), each node
a `PostgresStore` of its own (its own writer thread, connection and group commits) on one
PostgreSQL and one schema. Every session claims its lease, then runs ``--turns`` durable
turns of two records (200 B + 1 KB, as in bench/sessions_stores.py). The nodes start
their timed turns together; the rate is all turns over the slowest node's time. Rounds
alternate 1 and 3 nodes; medians are reported.

    python bench/postgres_nodes.py                 # 100 sessions x 50 turns, 3 rounds
    python bench/postgres_nodes.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure the working tree's sessions

SMALL = {"role": "user", "content": "u" * 170}
LARGE = {"role": "assistant", "content": "a" * 970}


def child(dsn: str, schema: str, node: str, sids: list[str], turns: int) -> None:
    """One node: claim every session, one untimed turn each, wait for "go", time the turns."""
    sys.modules["claude_agent_sdk"] = None  # type: ignore[assignment]  # no provider here: skip its import
    import trio

    from sessions import PostgresStore, Record

    async def main() -> None:
        store = PostgresStore(dsn, schema=schema, node_id=node)
        claims = [await store.claim(sid) for sid in sids]

        async def session(sid: str, first: int, last: int) -> None:
            for t in range(first, last):
                records = [Record(sid, 2 * t + 1, "message", SMALL), Record(sid, 2 * t + 2, "message", LARGE)]
                await store.append(sid, records, durable=True)

        async with trio.open_nursery() as nursery:
            for sid in sids:
                nursery.start_soon(session, sid, 0, 1)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for sid in sids:
                nursery.start_soon(session, sid, 1, turns + 1)
        print(json.dumps({"elapsed": time.perf_counter() - start, "turns": len(sids) * turns}), flush=True)
        for claim in claims:
            claim.release()
        await store.aclose()

    trio.run(main)


def run(dsn: str, nodes: int, sessions: int, turns: int) -> float:
    import psycopg

    schema = f"otpy_bench_{uuid.uuid4().hex[:12]}"
    procs = []
    try:
        for n in range(nodes):
            sids = [f"s{i}" for i in range(n, sessions, nodes)]
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--child", dsn, schema, f"node-{n}", str(turns), *sids],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            assert proc.stdout is not None
            results.append(json.loads(proc.stdout.readline()))
            proc.wait(timeout=60)
        return sum(r["turns"] for r in results) / max(r["elapsed"] for r in results)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        dsn, schema, node, turns, *sids = sys.argv[2:]
        child(dsn, schema, node, sids, int(turns))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("OTPY_POSTGRES_DSN") or "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.turns, args.rounds = 12, 3, 1
    print(f"{args.sessions} sessions x {args.turns} durable turns; load average at start {os.getloadavg()[0]:.2f}")
    rates: dict[int, list[float]] = {1: [], 3: []}
    for number in range(args.rounds):
        for nodes in (1, 3) if number % 2 == 0 else (3, 1):
            rate = run(args.dsn, nodes, args.sessions, args.turns)
            rates[nodes].append(rate)
            print(f"  round {number + 1}: {nodes} node(s) {rate:,.0f} turns/s", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    for nodes, values in rates.items():
        each = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{nodes} node(s): median {statistics.median(values):,.0f} turns/s ({each})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
