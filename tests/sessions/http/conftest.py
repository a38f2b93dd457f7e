"""Registers the fake servers module (``fake_llm.py`` beside this file) as ``sessions_fake_llm``.

This folder is not a package (see fake_llm's docstring), so its test modules cannot
import a sibling by a relative import; the conftest runs first and makes it importable.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

if "sessions_fake_llm" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("sessions_fake_llm", Path(__file__).with_name("fake_llm.py"))
    assert _spec is not None
    assert _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["sessions_fake_llm"] = _module
    _spec.loader.exec_module(_module)


# httpx and httpcore implement their response streams as async generators; a stream
# left early (a malformed chunk, a timeout, an interrupt) leaves them unexhausted, and
# trio's finalizer warns when they are collected. The response itself is closed (the
# connection is released); only the generator objects are finalized late. Upstream:
# encode/httpx#3686 (fix proposed in encode/httpx#3777, pydantic/httpx2#1036).
HTTPX_EARLY_EXIT = "ignore:Async generator 'http:ResourceWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.filterwarnings(HTTPX_EARLY_EXIT))
