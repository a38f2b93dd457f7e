"""otpy's reports: structlog events when the application configured structlog, else `logging` records.

A library is a guest in an application's logging. Python's convention is that the
application decides, through the standard `logging` module: levels, handlers, where
records go. structlog left unconfigured does the opposite (every level, debug included,
printed to stdout), so otpy does not rely on its defaults:

- the application configured structlog (`structlog.is_configured`): each event goes to
  ``structlog.get_logger(name)`` as a structured event dict, as the application's
  processors expect (``structlog.testing.capture_logs`` sees them too);
- otherwise each event becomes a `logging.LogRecord` on the logger ``name``
  (``otpy.supervisor``, ``otpy.gen_server``, ...): nothing below WARNING shows unless
  the application asks, and with no handler at all Python's last-resort handler writes
  warnings and errors to stderr. The message is one readable line, ``event key=value
  ...``; the event and its keys ride along as the record attributes ``otpy_event`` and
  ``otpy_fields`` for formatters that want them (a JSON formatter, say).

otpy configures neither. The decision is taken per event, so an application may
configure structlog at any time, before or after importing otpy.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Final

import structlog

_BARE: Final = re.compile(r"[\w.:/@+-]+")


def _render_value(value: object) -> str:
    # Plain words stay bare; anything else (strings with spaces, tuples, exceptions,
    # pids) is shown as its repr, so the line can be read back without ambiguity.
    if type(value) is str and _BARE.fullmatch(value):
        return value
    return repr(value)


def render(event: str, fields: dict[str, Any]) -> str:
    """``event key=value key=value``: the message of a `logging` record."""
    parts = [event]
    parts.extend(f"{key}={_render_value(value)}" for key, value in fields.items())
    return " ".join(parts)


class Logger:
    """A logger that defers to structlog once the application has configured it."""

    __slots__ = ("_bound", "_stdlib", "_structlog")

    def __init__(self, name: str, bound: dict[str, Any] | None = None) -> None:
        self._stdlib = logging.getLogger(name)
        self._structlog = structlog.get_logger(name)
        self._bound = bound or {}

    def bind(self, **fields: Any) -> Logger:
        """A logger that adds ``fields`` to every event (structlog's ``bind``)."""
        return Logger(self._stdlib.name, {**self._bound, **fields})

    @property
    def name(self) -> str:
        return self._stdlib.name

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", event, fields)

    def _emit(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if self._bound:
            fields = {**self._bound, **fields}
        exc_info = fields.pop("exc_info", None)
        if structlog.is_configured():
            if exc_info is not None:
                fields["exc_info"] = exc_info
            getattr(self._structlog, method)(event, **fields)
            return
        logger = self._stdlib
        if not logger.isEnabledFor(level):
            return
        logger.log(
            level,
            "%s",
            render(event, fields),
            exc_info=exc_info,
            extra={"otpy_event": event, "otpy_fields": fields},
            stacklevel=3,  # the record names the otpy function that reported, not this module
        )


def get_logger(name: str) -> Logger:
    """A logger that reports the way otpy does, for libraries built on otpy.

    Events go to structlog as event dicts when the application configured structlog,
    and otherwise to the standard ``logging`` logger ``name``, one readable line each
    (see ``docs/logging.md``). It never configures either. The
    ``sessions`` package logs through it; a library of yours can too, so that its
    reports obey the same application settings as otpy's.

    Example::

        log = otpy.get_logger("mylib.worker")
        log.warning("queue_full", queue="jobs", size=1000)
        # unconfigured: a WARNING record on logging.getLogger("mylib.worker"):
        #   queue_full queue=jobs size=1000
    """
    return Logger(name)
