"""The private claude-agent-sdk names the provider uses are all listed, and all still there."""

from __future__ import annotations

import ast
from pathlib import Path

import attrs
import pytest

from sessions._providers import _claude_private
from sessions._providers._claude_private import PRIVATE_USES, PrivateUse, check

PROVIDERS = Path(_claude_private.__file__).parent


def test_every_private_name_is_where_the_table_says():
    assert check() == [], "claude-agent-sdk moved what the Claude provider uses"


def test_a_moved_name_is_reported_by_name(monkeypatch: pytest.MonkeyPatch):
    moved = attrs.evolve(PRIVATE_USES[0], path="SubprocessCLITransportRenamed")
    gone = PrivateUse("claude_agent_sdk._internal.no_such_module", "thing", "why")
    monkeypatch.setattr(_claude_private, "PRIVATE_USES", (*PRIVATE_USES, moved, gone))
    problems = check()
    assert problems == [
        "claude_agent_sdk._internal.transport.subprocess_cli.SubprocessCLITransportRenamed is gone",
        "claude_agent_sdk._internal.no_such_module cannot be imported (No module named "
        "'claude_agent_sdk._internal.no_such_module')",
    ]


def test_only_the_table_imports_private_sdk_modules():
    """Every other Claude module imports the SDK's public names only (or the table's)."""
    for path in sorted(PROVIDERS.glob("_claude*.py")):
        if path.name == "_claude_private.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("claude_agent_sdk"):
                assert "._" not in node.module, f"{path.name} imports {node.module}: list it in _claude_private"
                names = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not names, f"{path.name} imports private {names} from {node.module}"
