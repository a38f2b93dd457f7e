"""Shared test setup: the test suite is an application, so it may configure structlog."""

from __future__ import annotations

import logging

import structlog

# Keep otpy's reports quiet in test output; tests that assert on them use
# structlog.testing.capture_logs(), which overrides this configuration.
structlog.configure(
    processors=[structlog.processors.add_log_level, structlog.processors.KeyValueRenderer()],
    wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
    cache_logger_on_first_use=False,
)
