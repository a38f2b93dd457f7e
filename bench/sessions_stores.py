"""Durable turns per second: sessions' SqliteStore, JsonlStore and PostgresStore beside openai-agents' SQLiteSession.

A *turn* is what a session makes durable at a turn boundary: two records of about 200 B
and 1 KB of JSON, appended with ``durable=True`` (for ``SQLiteSession``: one
``add_items`` of the same two items, which commits them). ``--sessions`` sessions (100)
each run ``--turns`` turns at once, on one database file or one directory; every system
gets an untimed first turn per session (files, tables and threads exist before timing).
Rounds are interleaved (each round runs every system, in a rotating order) and the report
gives the median and the spread over rounds, and the ratio to ``SQLiteSession``.

Run it from the repository root::

    python bench/sessions_stores.py                 # 100 sessions x 100 turns, 5 rounds (about 2 minutes)
    python bench/sessions_stores.py --quick         # a smoke run: 10 sessions x 3 turns, 1 round
    python bench/sessions_stores.py --json out.json

``SQLiteSession`` comes from ``pip install openai-agents``; without it that column is
skipped with a message. ``PostgresStore`` runs against ``--postgres`` (default: the
environment's ``OTPY_POSTGRES_DSN``, else ``postgresql://postgres@127.0.0.1:5432/postgres``),
in a fresh schema per round that is dropped after; with no database there (or no
psycopg) that row is skipped with the reason. Figures and their reading: ``docs/stores.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure the working tree's sessions

import sessions
from sessions import JsonlStore, Record, SqliteStore

SMALL = {"role": "user", "content": "u" * 170}  # about 200 bytes of JSON
LARGE = {"role": "assistant", "content": "a" * 970}  # about 1 KB of JSON

Result = dict[str, Any]


def _summary(turns: int, elapsed: float, latencies: list[float]) -> Result:
    latencies.sort()
    return {
        "turns_per_s": turns / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def postgres_unreachable(dsn: str) -> str | None:
    """Why PostgresStore cannot be measured at ``dsn`` (one line), or None."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc}; pip install 'otpy-sessions[postgres]')"
    try:
        with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure: the row is skipped with it
        return " ".join(str(exc).split())
    return None


def measure_postgres(dsn: str, n_sessions: int, n_turns: int) -> Result:
    """Durable turns/s of PostgresStore in a fresh schema (dropped after)."""
    import uuid

    import psycopg

    schema = f"otpy_bench_{uuid.uuid4().hex[:12]}"
    try:
        return measure_store(lambda _: sessions.PostgresStore(dsn, schema=schema), n_sessions, n_turns)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def measure_store(make_store: Callable[[Path], sessions.Store], n_sessions: int, n_turns: int) -> Result:
    """Durable turns/s of a sessions store, ``n_sessions`` trio tasks at once."""
    with tempfile.TemporaryDirectory(prefix="sessions-bench-") as directory:
        store = make_store(Path(directory))
        sids = [f"session-{i}" for i in range(n_sessions)]
        latencies: list[float] = []

        def turn(sid: str, number: int) -> list[Record]:
            return [Record(sid, 2 * number + 1, "message", SMALL), Record(sid, 2 * number + 2, "message", LARGE)]

        async def session(sid: str, first: int, last: int, timed: bool) -> None:
            for number in range(first, last):
                start = time.perf_counter()
                await store.append(sid, turn(sid, number), durable=True)
                if timed:
                    latencies.append(time.perf_counter() - start)

        async def main() -> float:
            async with trio.open_nursery() as nursery:  # untimed: files, tables, the writer thread
                for sid in sids:
                    nursery.start_soon(session, sid, 0, 1, False)
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for sid in sids:
                    nursery.start_soon(session, sid, 1, n_turns + 1, True)
            elapsed = time.perf_counter() - start
            loaded = await store.load(sids[-1])
            assert len(loaded) == 2 * (n_turns + 1), "the bench lost records"
            await store.aclose()
            return elapsed

        elapsed = trio.run(main)
        return _summary(n_sessions * n_turns, elapsed, latencies)


def measure_sqlite_session(n_sessions: int, n_turns: int) -> Result:
    """Durable turns/s of openai-agents' SQLiteSession: one ``add_items`` per turn, asyncio."""
    from agents import SQLiteSession

    with tempfile.TemporaryDirectory(prefix="sessions-bench-") as directory:
        db_path = Path(directory) / "agents.db"
        latencies: list[float] = []

        async def session(store: SQLiteSession, turns: int, timed: bool) -> None:
            for _ in range(turns):
                start = time.perf_counter()
                await store.add_items([SMALL, LARGE])  # type: ignore[list-item]
                if timed:
                    latencies.append(time.perf_counter() - start)

        async def main() -> float:
            stores = [SQLiteSession(f"session-{i}", db_path) for i in range(n_sessions)]
            await asyncio.gather(*(session(store, 1, False) for store in stores))
            start = time.perf_counter()
            await asyncio.gather(*(session(store, n_turns, True) for store in stores))
            elapsed = time.perf_counter() - start
            items = await stores[-1].get_items()
            assert len(items) == 2 * (n_turns + 1), "the bench lost items"
            for store in stores:
                store.close()
            return elapsed

        elapsed = asyncio.run(main())
        return _summary(n_sessions * n_turns, elapsed, latencies)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--turns", type=int, default=100, help="timed turns per session per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="10 sessions x 3 turns, 1 round (a smoke run)")
    parser.add_argument("--json", type=Path, help="write the rounds and medians here")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("OTPY_POSTGRES_DSN") or "postgresql://postgres@127.0.0.1:5432/postgres",
        help="the PostgreSQL DSN for the PostgresStore row",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.turns, args.rounds = 10, 3, 1

    systems: dict[str, Callable[[], Result]] = {
        "SqliteStore": lambda: measure_store(lambda d: SqliteStore(d / "agents.db"), args.sessions, args.turns),
        "JsonlStore": lambda: measure_store(lambda d: JsonlStore(d / "sessions"), args.sessions, args.turns),
    }
    why = postgres_unreachable(args.postgres)
    if why is None:
        systems["PostgresStore"] = lambda: measure_postgres(args.postgres, args.sessions, args.turns)
    else:
        print(f"PostgresStore skipped: PostgreSQL not reachable at {args.postgres}: {why}")
    try:
        import agents  # noqa: F401
    except ImportError:
        print("openai-agents is not installed: the SQLiteSession column is skipped (pip install openai-agents)")
    else:
        systems["SQLiteSession"] = lambda: measure_sqlite_session(args.sessions, args.turns)

    print(f"machine: {_cpu()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}")
    print(
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, trio {_version('trio')}, "
        f"openai-agents {_version('openai-agents')}; load average at start {os.getloadavg()[0]:.2f}"
    )
    print(f"{args.sessions} concurrent sessions x {args.turns} durable turns (200 B + 1 KB), {args.rounds} rounds\n")

    names = list(systems)
    rounds: dict[str, list[Result]] = {name: [] for name in names}
    for number in range(args.rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        for name in order:
            result = systems[name]()
            rounds[name].append(result)
            print(f"  round {number + 1} {name:<14} {result['turns_per_s']:>9,.0f} turns/s", flush=True)
    print(f"  load average at end {os.getloadavg()[0]:.2f}\n")

    medians = {name: statistics.median(r["turns_per_s"] for r in results) for name, results in rounds.items()}
    baseline = medians.get("SQLiteSession")
    print("| store | durable turns/s (median) | spread (min-max) | p50 / p99 per turn | vs SQLiteSession |")
    print("|---|---:|---:|---:|---:|")
    for name, results in rounds.items():
        rates = [r["turns_per_s"] for r in results]
        p50 = statistics.median(r["p50_ms"] for r in results)
        p99 = statistics.median(r["p99_ms"] for r in results)
        ratio = f"{medians[name] / baseline:.1f}x" if baseline else "n/a"
        print(
            f"| {name} | {medians[name]:,.0f} | {min(rates):,.0f}-{max(rates):,.0f} "
            f"| {p50:.1f} / {p99:.1f} ms | {ratio} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
