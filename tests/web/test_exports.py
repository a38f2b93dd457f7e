"""sessions.web's public names: where they claim to live, their docs, and the layering."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest

import sessions.web

PUBLIC = {name: obj for name, obj in vars(sessions.web).items() if not name.startswith("_")}
ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_public_names() -> None:
    assert sorted(PUBLIC) == ["WebLimits", "create_app", "new_token", "serve"]


@pytest.mark.parametrize("obj", list(PUBLIC.values()))
def test_public_names_claim_sessions_web_and_have_an_example(obj: Any) -> None:
    assert obj.__module__ == "sessions.web"
    assert "Example" in (inspect.getdoc(obj) or "")


def test_the_web_app_reaches_sessions_only_through_public_names() -> None:
    """sessions.web imports otpy's public namespace only, and of sessions the server's
    client functions and the value types; never the turn task or the subscribers' internals."""
    allowed = {"_errors", "_events", "_server", "_util"}
    for path in (ROOT / "sessions" / "web").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module in allowed, (path.name, node.module)
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("otpy."), (path.name, node.module)


def test_limits_are_checked() -> None:
    with pytest.raises(sessions.InvalidOption, match="max_streams"):
        sessions.web.WebLimits(max_streams=0)
    with pytest.raises(sessions.InvalidOption, match="keepalive"):
        sessions.web.WebLimits(keepalive=-1.0)
