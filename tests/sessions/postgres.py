"""The shared PostgreSQL fixtures of the sessions tests (wired in by ``tests/sessions/conftest.py``).

``postgres_dsn`` (one per test session): the DSN from ``OTPY_TEST_POSTGRES_DSN``
(default ``postgresql://postgres@127.0.0.1:5432/test``), or a skip with one line
"PostgreSQL not reachable at <dsn>: <reason>" when there is no database there (or no
psycopg). ``postgres`` (one per test): that DSN and a fresh random schema name, which
nothing uses yet; the schema is dropped (``CASCADE``) after the test, whatever created it.
Parallel runs and agents never share a schema, so they never see each other's rows.

Example::

    async def test_round_trip(postgres):
        store = sessions.PostgresStore(postgres.dsn, schema=postgres.schema)
        ...
        await store.aclose()
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Final

import attrs
import pytest

DEFAULT_DSN: Final = "postgresql://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT: Final = 3


@attrs.frozen
class PostgresTarget:
    """Where a test keeps its tables: a DSN and a schema of its own (dropped after the test)."""

    dsn: str
    schema: str


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever libpq said
    return text or type(exc).__name__


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The test database's DSN, or a one-line skip saying why there is none."""
    dsn = os.environ.get("OTPY_TEST_POSTGRES_DSN") or DEFAULT_DSN
    try:
        import psycopg
    except ImportError as exc:
        pytest.skip(f"PostgreSQL not reachable at {dsn}: psycopg is not installed ({exc})")
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure to reach it is a reason to skip
        pytest.skip(f"PostgreSQL not reachable at {dsn}: {_reason(exc)}")
    return dsn


@pytest.fixture
def postgres(postgres_dsn: str) -> Iterator[PostgresTarget]:
    """A DSN and a fresh schema name for this test; the schema is dropped afterwards."""
    import psycopg

    target = PostgresTarget(postgres_dsn, f"otpy_test_{uuid.uuid4().hex[:16]}")
    yield target
    with psycopg.connect(postgres_dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{target.schema}" CASCADE')
