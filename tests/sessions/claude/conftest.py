"""Fixtures for the Claude provider tests: the real bundled CLI against a fake Messages API.

- ``fake_api``: one `FakeAnthropic` on 127.0.0.1 for the whole run, reset for each test;
- ``claude_env``: the CLI's environment (a temporary HOME and CLAUDE_CONFIG_DIR, the fake's
  URL, a dummy key, no retries, no non-essential traffic);
- ``fake_claude``: the path of the fake ``claude`` executable;
- every test ends with a check of the process table: no child of this process (at any
  depth) that was not there before the test is left.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from .fake_api import FakeAnthropic, make_env

HERE = Path(__file__).parent


def live_children() -> set[int]:
    """Pids of this process's descendants that are not zombies."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def all_children() -> set[int]:
    """Pids of this process's descendants, zombies included."""
    return {child.pid for child in psutil.Process().children(recursive=True)}


def wait_gone(pids: set[int], seconds: float = 5.0) -> set[int]:
    """The pids among ``pids`` still alive (not zombies) after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        alive = set()
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    before = all_children()
    yield
    deadline = time.monotonic() + 5
    while (left := all_children() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    described = []
    for pid in left:
        try:
            proc = psutil.Process(pid)
            described.append(f"{pid} {proc.status()} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    assert not described, f"processes left behind: {described}"


@pytest.fixture(scope="session")
def fake_api_server() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic()
    yield server
    server.close()


@pytest.fixture
def fake_api(fake_api_server: FakeAnthropic) -> Iterator[FakeAnthropic]:
    fake_api_server.reset()
    yield fake_api_server
    fake_api_server.release.set()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.fixture
def claude_env(tmp_path: Path, fake_api: FakeAnthropic) -> dict[str, str]:
    return make_env(tmp_path / "home", fake_api.url)


@pytest.fixture
def claude_kwargs(claude_env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """ClaudeCode keywords for the real CLI on the fake API (haiku: $6 per fake call)."""
    return {"env": claude_env, "cwd": str(workdir), "model": "claude-haiku-4-5", "close_grace": 2.0}


@pytest.fixture(scope="session")
def fake_claude() -> str:
    path = HERE / "fake_claude.py"
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


@pytest.fixture
def fake_claude_env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path), "FAKE_CLAUDE_PIDFILE": str(tmp_path / "grandchild.pid"), "PATH": os.environ["PATH"]}
