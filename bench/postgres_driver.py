"""psycopg 3 from trio: its synchronous API on a writer thread (what PostgresStore does) vs its async API.

Three measurements against one PostgreSQL (``--dsn``, default ``OTPY_POSTGRES_DSN`` or
``postgresql://postgres@127.0.0.1:5432/postgres``), each in a fresh schema dropped after:

1. Can ``psycopg.AsyncConnection`` run under trio at all? (It waits through asyncio's loop.)
2. One read at a time: ``PostgresStore.load`` of a short log from a trio task (a hop to the
   writer thread and back, plus the round trip) vs ``AsyncConnection`` running the same
   SELECT under ``asyncio.run`` (the round trip alone: the best the async API could do if
   an asyncio loop were driving it).
3. Durable turns/s with ``--sessions`` sessions at once (two rows of 200 B and 1 KB, as in
   bench/sessions_stores.py): PostgresStore (one connection, group commit) vs the async
   API the usual way, one ``AsyncConnection`` per session each committing its own turn.

Run it from the repository root::

    python bench/postgres_driver.py            # 100 sessions x 20 turns, 3 rounds
    python bench/postgres_driver.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure the working tree's sessions

from sessions import PostgresStore, Record

SMALL = {"role": "user", "content": "u" * 170}
LARGE = {"role": "assistant", "content": "a" * 970}


def _schema(dsn: str) -> str:
    return f"otpy_bench_{uuid.uuid4().hex[:12]}"


def _drop(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def async_under_trio(dsn: str) -> str:
    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn)
        await conn.close()

    try:
        trio.run(main)
    except Exception as exc:  # the answer is the error
        return f"{type(exc).__name__}: {exc}"
    return "it ran"


def store_reads(dsn: str, n: int) -> float:
    """Microseconds per PostgresStore.load of a 2-record log, one at a time from trio."""
    schema = _schema(dsn)
    try:

        async def main() -> float:
            store = PostgresStore(dsn, schema=schema)
            await store.append("s", [Record("s", 1, "m", SMALL), Record("s", 2, "m", LARGE)], durable=True)
            for _ in range(50):
                await store.load("s")
            start = time.perf_counter()
            for _ in range(n):
                await store.load("s")
            elapsed = time.perf_counter() - start
            await store.aclose()
            return 1e6 * elapsed / n

        return trio.run(main)
    finally:
        _drop(dsn, schema)


def async_reads(dsn: str, n: int) -> float:
    """Microseconds per SELECT of the same 2-record log on an AsyncConnection under asyncio."""
    schema = _schema(dsn)
    store = PostgresStore(dsn, schema=schema)  # make the tables and rows, then read them with the async API

    async def fill() -> None:
        await store.append("s", [Record("s", 1, "m", SMALL), Record("s", 2, "m", LARGE)], durable=True)
        await store.aclose()

    trio.run(fill)
    query = f"SELECT seq, v, ts, kind, data FROM {schema}.records WHERE session_id = %s ORDER BY seq"
    try:

        async def main() -> float:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            for _ in range(50):
                await (await conn.execute(query, ("s",))).fetchall()
            start = time.perf_counter()
            for _ in range(n):
                await (await conn.execute(query, ("s",))).fetchall()
            elapsed = time.perf_counter() - start
            await conn.close()
            return 1e6 * elapsed / n

        return asyncio.run(main())
    finally:
        _drop(dsn, schema)


def store_turns(dsn: str, sessions: int, turns: int) -> float:
    schema = _schema(dsn)
    try:

        async def main() -> float:
            store = PostgresStore(dsn, schema=schema)

            async def session(sid: str, first: int, last: int) -> None:
                for t in range(first, last):
                    records = [Record(sid, 2 * t + 1, "message", SMALL), Record(sid, 2 * t + 2, "message", LARGE)]
                    await store.append(sid, records, durable=True)

            async with trio.open_nursery() as nursery:
                for i in range(sessions):
                    nursery.start_soon(session, f"s{i}", 0, 1)
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(sessions):
                    nursery.start_soon(session, f"s{i}", 1, turns + 1)
            elapsed = time.perf_counter() - start
            await store.aclose()
            return sessions * turns / elapsed

        return trio.run(main)
    finally:
        _drop(dsn, schema)


def async_turns(dsn: str, sessions: int, turns: int) -> float:
    """One AsyncConnection per session, each turn its own transaction and commit (asyncio)."""
    schema = _schema(dsn)
    store = PostgresStore(dsn, schema=schema)
    trio.run(store.list_sessions)  # the tables
    trio.run(store.aclose)
    insert = f"INSERT INTO {schema}.records (session_id, seq, v, ts, kind, data) VALUES (%s, %s, 1, %s, 'message', %s)"
    import json

    small, large = json.dumps(SMALL), json.dumps(LARGE)
    try:

        async def main() -> float:
            conns = [await psycopg.AsyncConnection.connect(dsn) for _ in range(sessions)]

            async def session(conn: Any, sid: str, first: int, last: int) -> None:
                for t in range(first, last):
                    async with conn.transaction():
                        await conn.execute(insert, (sid, 2 * t + 1, time.time(), small))
                        await conn.execute(insert, (sid, 2 * t + 2, time.time(), large))

            await asyncio.gather(*(session(c, f"s{i}", 0, 1) for i, c in enumerate(conns)))
            start = time.perf_counter()
            await asyncio.gather(*(session(c, f"s{i}", 1, turns + 1) for i, c in enumerate(conns)))
            elapsed = time.perf_counter() - start
            for conn in conns:
                await conn.close()
            return sessions * turns / elapsed

        return asyncio.run(main())
    finally:
        _drop(dsn, schema)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("OTPY_POSTGRES_DSN") or "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.turns, args.reads, args.rounds = 10, 3, 100, 1
    print(
        f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()}, {psycopg.pq.__impl__}); "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    print(f"1. AsyncConnection under trio: {async_under_trio(args.dsn)}")
    systems: dict[str, Callable[[], float]] = {
        "read, PostgresStore.load (sync psycopg on its thread), us": lambda: store_reads(args.dsn, args.reads),
        "read, AsyncConnection under asyncio, us": lambda: async_reads(args.dsn, args.reads),
        f"turns/s, PostgresStore ({args.sessions} sessions, group commit)": lambda: store_turns(
            args.dsn, args.sessions, args.turns
        ),
        f"turns/s, AsyncConnection per session under asyncio ({args.sessions})": lambda: async_turns(
            args.dsn, args.sessions, args.turns
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in systems}
    names = list(systems)
    for number in range(args.rounds):
        for name in names[number % len(names) :] + names[: number % len(names)]:
            results[name].append(systems[name]())
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    for name, values in results.items():
        print(f"  {name}: median {statistics.median(values):,.0f} (rounds: {', '.join(f'{v:,.0f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
