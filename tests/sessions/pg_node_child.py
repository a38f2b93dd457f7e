"""A PostgresStore node in a process of its own, driven line by line on stdin (for
test_stores_postgres_procs.py). Each command prints one line:

    claim WAIT      -> "claimed EPOCH" | "in_use" | "lost"
    append SEQ      -> "appended SEQ" | "lost EPOCH CURRENT HOLDER" | "error MESSAGE"
    release         -> "released"
    fenced          -> "fenced True|False"
    exit            -> (closes the store and exits 0)

Usage: python pg_node_child.py DSN SCHEMA NODE_ID LEASE_TTL SESSION_ID
"""

from __future__ import annotations

import sys

# A node needs no provider: keep the Claude SDK (seconds to import on a loaded machine) out,
# as if the claude extra were not installed; sessions then exports its stand-in.
sys.modules["claude_agent_sdk"] = None  # type: ignore[assignment]

import trio  # noqa: E402

import sessions  # noqa: E402


async def main(dsn: str, schema: str, node_id: str, ttl: float, sid: str) -> None:
    store = sessions.PostgresStore(dsn, schema=schema, node_id=node_id, lease_ttl=ttl)
    claim: sessions.SessionClaim | None = None
    await store.node_info()  # the node row is up before the first command
    print("ready", flush=True)
    try:
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            words = line.split()
            if not words or words[0] == "exit":
                return
            command = words[0]
            if command == "claim":
                try:
                    claim = await store.claim(sid, wait=float(words[1]))
                    print(f"claimed {claim.epoch}", flush=True)
                except sessions.SessionInUse:
                    print("in_use", flush=True)
                except sessions.LeaseLost:
                    print("lost", flush=True)
            elif command == "append":
                seq = int(words[1])
                try:
                    await store.append(sid, [sessions.Record(sid, seq, "message", {"by": node_id})], durable=True)
                    print(f"appended {seq}", flush=True)
                except sessions.LeaseLost as exc:
                    print(f"lost {exc.epoch} {exc.current_epoch} {exc.holder}", flush=True)
                except sessions.StoreError as exc:
                    print(f"error {' '.join(str(exc).split())}", flush=True)
            elif command == "release":
                if claim is not None:
                    claim.release()
                    claim = None
                print("released", flush=True)
            elif command == "fenced":
                print(f"fenced {store.fenced}", flush=True)
    finally:
        if claim is not None:
            claim.release()
        await store.aclose()


if __name__ == "__main__":
    dsn, schema, node_id, ttl, sid = sys.argv[1:6]
    trio.run(main, dsn, schema, node_id, float(ttl), sid)
