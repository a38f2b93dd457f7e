"""Sessions on PostgreSQL: a session moves between two nodes, and a stale owner is fenced.

    python examples/postgres_store.py [--dsn DSN] [--schema SCHEMA]

Two `sessions.PostgresStore` objects play two nodes of one cluster (in a real cluster
they are separate processes or machines; the database is what they share):

1. On ``node-a`` a `SessionServer` runs session ``s1`` and answers a turn. Its store
   holds the session's *lease*: node-a, epoch 1.
2. ``node-b`` cannot claim ``s1`` while node-a is live (`SessionInUse` names the holder).
3. The server on node-a stops (its lease is released); a server for ``s1`` starts on
   node-b: it claims the lease (epoch 2), loads the log and answers with the history.
4. Fencing: node-a claims a second session, then *leaves* (as a node being paused or
   cut off would stop counting as live); node-b takes that session over with the next
   epoch, and node-a's late append is refused with `LeaseLost`: it never reaches the log.

The DSN comes from ``--dsn``, else ``OTPY_POSTGRES_DSN``, else
``postgresql://postgres@127.0.0.1:5432/postgres``. The tables go into a fresh schema
(``--schema``, default a random ``otpy_example_...``) that is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

import trio

import otpy
import sessions
from sessions import SessionServer


async def main(dsn: str, schema: str) -> None:
    node_a = sessions.PostgresStore(dsn, schema=schema, node_id="node-a", lease_ttl=1.0)
    node_b = sessions.PostgresStore(dsn, schema=schema, node_id="node-b", lease_ttl=1.0)
    provider = sessions.ScriptedProvider(default="noted.")
    try:
        async with trio.open_nursery() as nursery:
            # 1. a session on node-a
            pid = await SessionServer.start_link(
                name="agent-on-a", provider=provider, store=node_a, session_id="s1", nursery=nursery
            )
            result = await SessionServer.send_message("agent-on-a", "remember: blue")
            lease = await node_a.lease("s1")
            assert lease is not None
            print(f"1. node-a answered {result.text!r}; lease of s1: {lease.node_id}, epoch {lease.epoch}")

            # 2. node-b is refused while node-a holds it
            try:
                await node_b.claim("s1", wait=0)
            except sessions.SessionInUse as exc:
                print(f"2. node-b refused: {exc.holder} holds s1")

            # 3. the session moves: stop it on node-a, start it on node-b
            await otpy.stop(pid)
            await SessionServer.start_link(
                name="agent-on-b", provider=provider, store=node_b, session_id="s1", nursery=nursery
            )
            turns = await SessionServer.turn_count("agent-on-b")
            lease = await node_b.lease("s1")
            assert lease is not None
            print(f"3. s1 on node-b: {turns} turn(s) of history; lease: {lease.node_id}, epoch {lease.epoch}")
            await otpy.stop("agent-on-b")

        # 4. fencing: a stale owner's append is refused
        await node_a.claim("s2")
        await node_a.append("s2", [sessions.Record("s2", 1, "session_started")], durable=True)
        await node_a.leave()  # node-a no longer counts as live: its leases may be taken
        taken = await node_b.claim("s2", wait=5)
        print(f"4. node-b took s2 over with epoch {taken.epoch}")
        try:
            await node_a.append("s2", [sessions.Record("s2", 2, "late")], durable=True)
        except sessions.LeaseLost as exc:
            print(f"   node-a's late append refused: epoch {exc.epoch}, the session is at {exc.current_epoch}")
        print(f"   s2's log: {[r.kind for r in await node_b.load('s2')]}")
        taken.release()
    finally:
        await node_a.aclose()
        await node_b.aclose()


def drop(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("OTPY_POSTGRES_DSN") or sessions.PostgresStore.DEFAULT_DSN)
    parser.add_argument("--schema", default=f"otpy_example_{uuid.uuid4().hex[:12]}")
    args = parser.parse_args()
    try:
        import psycopg

        psycopg.connect(args.dsn, connect_timeout=3).close()
    except Exception as exc:  # any failure: say why in one line
        sys.exit(f"PostgreSQL not reachable at {args.dsn}: {' '.join(str(exc).split())}")
    try:
        trio.run(main, args.dsn, args.schema)
    finally:
        drop(args.dsn, args.schema)
