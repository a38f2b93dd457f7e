"""The sessions namespace: what it exports, where it claims to live, how it is documented,
and the layering rules (sessions uses only otpy's public names; otpy never imports sessions)."""

from __future__ import annotations

import ast
import inspect
import types
from pathlib import Path
from typing import Any

import pytest

import sessions

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = {name: obj for name, obj in vars(sessions).items() if not name.startswith("_")}
# Type aliases and constants: values without a docstring or module of their own.
DATA = {"RECORD_VERSION", "ProviderEvent", "SessionEvent", "ServerRef", "CanUseTool", "HookEvent", "PermissionMode"}
DATA |= {"SessionFactory"}


def documented() -> list[Any]:
    return [
        pytest.param(obj, id=name)
        for name, obj in sorted(PUBLIC.items())
        if name not in DATA and (inspect.isclass(obj) or inspect.isfunction(obj))
    ]


def test_the_surface_users_know_is_exported() -> None:
    """The names of the issue's example and of the seeds' API are importable from sessions."""
    wanted = {"SessionServer", "Result", "Session", "SqliteStore", "JsonlStore", "InMemoryStore", "Store"}
    wanted |= {"ScriptedProvider", "ClaudeCode", "Ollama", "OpenAICompatible", "AgentLoop", "FinishReason"}
    assert wanted <= PUBLIC.keys()
    for accessor in ("send_message", "session_id", "history", "last_result", "total_cost", "turn_count"):
        assert callable(getattr(sessions.SessionServer, accessor))
    for accessor in ("get_session", "put_session", "messages", "usage", "status", "interrupt", "subscribe"):
        assert callable(getattr(sessions.SessionServer, accessor))


def test_no_modules_leak() -> None:
    """No private submodule is exported under a public name (``sessions.testing`` and ``sessions.web``,
    public subpackages, are imported explicitly)."""
    leaked = [
        name
        for name, obj in PUBLIC.items()
        if isinstance(obj, types.ModuleType) and name not in ("testing", "web", "cluster")
    ]
    assert leaked == []


@pytest.mark.parametrize("obj", documented())
def test_public_names_claim_sessions(obj: Any) -> None:
    """Every public class and function says it lives in sessions, not in a private module."""
    assert obj.__module__ == "sessions"


@pytest.mark.parametrize("obj", documented())
def test_public_names_have_an_example(obj: Any) -> None:
    """Every public class and function has a docstring with an example."""
    assert "Example" in (inspect.getdoc(obj) or "")


def imported_modules(package: str) -> set[tuple[str, str]]:
    """(file, module) for every import in a package's source."""
    found: set[tuple[str, str]] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {(path.name, alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add((path.name, node.module))
    return found


def test_sessions_uses_only_otpys_public_names() -> None:
    """sessions imports otpy, never otpy's private modules."""
    assert [(f, m) for f, m in imported_modules("sessions") if m.startswith("otpy._")] == []


def test_otpy_never_imports_sessions() -> None:
    """The core stands alone."""
    assert [(f, m) for f, m in imported_modules("otpy") if m.split(".")[0] == "sessions"] == []
