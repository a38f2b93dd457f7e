"""Shared helpers for the sessions tests: a supervised session, and a check that nothing is left running."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import otpy
import sessions
from sessions import SessionServer

SessionFactory = Callable[..., Any]


@pytest.fixture
async def supervised(nursery: trio.Nursery) -> AsyncIterator[SessionFactory]:
    """Start SessionServers under a one_for_one supervisor named "sup" (one call per session).

    ``await supervised(name="a", provider=p, ...)`` returns the child spec it started; the
    supervisor is stopped at the end of the test, and every provider connection it had
    must be closed by then.
    """
    providers: list[sessions.ScriptedProvider] = []
    sup = await otpy.Supervisor.start_link([], name="sup", max_restarts=1000, max_seconds=1, nursery=nursery)

    async def start(**options: Any) -> otpy.ChildSpec:
        provider = options.get("provider")
        if isinstance(provider, sessions.ScriptedProvider):
            providers.append(provider)
        spec = SessionServer.child_spec(**options)
        await otpy.Supervisor.start_child(sup, spec)
        return spec

    yield start
    if sup.alive:
        await otpy.stop(sup)
    for provider in providers:
        assert provider.open_connections == 0, provider.log


# --- PostgreSQL: a DSN and a fresh schema per test (tests/sessions/postgres.py) ----------
def _load_postgres_fixtures() -> types.ModuleType:
    """Load tests/sessions/postgres.py by path (the tests run with --import-mode=importlib,
    so test directories are not on sys.path)."""
    path = Path(__file__).with_name("postgres.py")
    spec = importlib.util.spec_from_file_location("_otpy_tests_sessions_postgres", path)
    assert spec is not None
    assert spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


_postgres = _load_postgres_fixtures()
postgres_dsn = _postgres.postgres_dsn
postgres = _postgres.postgres
PostgresTarget = _postgres.PostgresTarget
