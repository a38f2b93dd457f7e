"""Shared test setup: the test suite is an application, so it may configure structlog."""

from __future__ import annotations

import logging

import structlog


def _drop(_logger: object, _method: str, _event: object) -> object:
    raise structlog.DropEvent


# Keep otpy's reports out of the test output. Every level passes the filter and the
# processor chain drops each event, so that structlog.testing.capture_logs(), which
# swaps the processors, sees every report.
structlog.configure(
    processors=[_drop],
    wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    cache_logger_on_first_use=False,
)
