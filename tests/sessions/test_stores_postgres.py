"""PostgresStore against a real PostgreSQL (skipped with one line when there is none):
the conformance suite, and no thread or connection left after aclose."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import sessions.testing
from sessions import PostgresStore, Store

StoreFactory = Callable[[], Store]


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    """Every test closes the stores it opens: no writer or heartbeat thread outlives it."""
    yield
    assert [t.name for t in threading.enumerate() if t.name.startswith("sessions-")] == []


class TestPostgresStoreConforms(sessions.testing.StoreConformance):
    @pytest.fixture
    def store_factory(self, postgres: Any) -> StoreFactory:
        return lambda: PostgresStore(postgres.dsn, schema=postgres.schema)
