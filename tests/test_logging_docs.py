"""docs/logging.md lists every logger and every event otpy and sessions emit."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "logging.md").read_text()

LOGGER = re.compile(r"""get_logger\(\s*["']((?:otpy|sessions)[\w.]*)["']""")
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def logged_levels(tree: ast.AST) -> dict[str, str]:
    """Each event's level, as the code logs it."""
    levels = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                levels[first.value] = node.func.attr
    return levels


def logged_events(tree: ast.AST) -> set[str]:
    """The names in ``log.info("event", ...)`` calls (``_log``, ``self._log`` too); not docstrings' examples."""
    events = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS:
            owner = node.func.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            first = node.args[0] if node.args else None
            if name in ("log", "_log") and isinstance(first, ast.Constant) and isinstance(first.value, str):
                events.add(first.value)
    return events


def emitted(package: str) -> tuple[set[str], set[str]]:
    loggers: set[str] = set()
    events: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        source = path.read_text()
        loggers |= set(LOGGER.findall(source))
        events |= logged_events(ast.parse(source))
    return loggers, events


def test_every_otpy_logger_and_event_is_on_the_logging_page() -> None:
    loggers, events = emitted("otpy")
    assert {"otpy.supervisor", "otpy.gen_server"} <= loggers  # the scan finds them
    assert {"server_crashed", "child_terminated"} <= events
    missing = sorted(name for name in loggers | events if f"`{name}`" not in PAGE)
    assert not missing, f"docs/logging.md does not mention: {missing}"


def test_every_sessions_logger_and_event_is_on_the_logging_page() -> None:
    loggers, events = emitted("sessions")
    assert {"sessions.server", "sessions.stores", "sessions.loop"} <= loggers
    assert {"turn_interrupted", "provider_retry", "store_batch_failed"} <= events
    missing = sorted(name for name in loggers | events if f"`{name}`" not in PAGE)
    assert not missing, f"docs/logging.md does not mention: {missing}"


def test_structlog_recipes_write_to_stderr() -> None:
    """The page says otpy keeps stdout clean; its structlog recipes must not print there."""
    configures = PAGE.count("structlog.configure(\n")  # in the code blocks
    assert configures >= 2
    assert PAGE.count("PrintLoggerFactory(sys.stderr)") + PAGE.count("stdlib.LoggerFactory()") == configures


def test_the_sessions_table_gives_each_event_the_level_the_code_logs_it_at() -> None:
    levels: dict[str, str] = {}
    for path in (ROOT / "sessions").rglob("*.py"):
        levels |= logged_levels(ast.parse(path.read_text()))
    rows = re.findall(r"^\| `(sessions\.\w+)` \| (.+?) \| (\w+) \| .+ \|$", PAGE, re.MULTILINE)
    assert len(rows) >= 10
    wrong = {
        event: (level, levels.get(event))
        for _, events, level in rows
        for event in re.findall(r"`(\w+)`", events)
        if levels.get(event) != level
    }
    assert wrong == {}, "docs/logging.md's level (first) differs from the code's (second)"
