"""No process outlives its owner: the real bundled CLI, its Bash tools (which CLI 2.1.x starts
with ``setsid``, outside its process group), what they background, stdio MCP servers.

Every process of a scenario carries a unique marker in its environment (``OTPY_MARK``, which
the CLI passes to its tools and MCP servers) and its command line; after each scenario that
kills something the whole process table is read for it (`marked`), not only our children.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

import sessions
from sessions import SessionContext, TurnRequest

from .fake_api import FakeAnthropic

REPO = Path(__file__).resolve().parents[3]


def marked(mark: str) -> list[str]:
    """Every live process on the machine whose environment or command line carries ``mark``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(process.cmdline())
            if mark in cmdline or process.environ().get("OTPY_MARK") == mark:
                found.append(f"{process.pid} (parent {process.ppid()}) {cmdline[-120:]}")
        except psutil.Error:
            continue
    return found


def gone_within(mark: str, seconds: float) -> list[str]:
    """Polls the process table until nothing carries ``mark``; what is left after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


async def wait_until(predicate: Callable[[], object], seconds: float = 30) -> Any:
    with trio.fail_after(seconds):
        while not (value := predicate()):  # noqa: ASYNC110 - polling the process table
            await trio.sleep(0.05)
    return value


def tool_processes(mark: str, name: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.name() == name and process.environ().get("OTPY_MARK") == mark:
                found.append(process)
        except psutil.Error:
            continue
    return found


def bash(command: str) -> str:
    return "[[tool:Bash:" + json.dumps({"command": command, "description": "hygiene"}) + "]]"


@pytest.fixture
def mark() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def marked_kwargs(claude_kwargs: dict[str, Any], mark: str) -> dict[str, Any]:
    return {**claude_kwargs, "env": {**claude_kwargs["env"], "OTPY_MARK": mark}, "allowed_tools": ["Bash"]}


async def test_what_a_bash_tool_backgrounds_dies_with_the_session(
    fake_api: FakeAnthropic, marked_kwargs: dict[str, Any], mark: str
):
    provider = sessions.ClaudeCode(**marked_kwargs)
    async with provider.connect(SessionContext("s1")) as conn:
        events = [e async for e in conn.run_turn(TurnRequest(1, bash(f"tail -f /dev/null & echo started-{mark}"), ()))]
        assert f"started-{mark}" in events[-1].text
        [tail] = tool_processes(mark, "tail")
        assert tail.ppid() == conn._transport.launcher_pid  # orphaned by its setsid'd shell: adopted
        assert tail.pid not in {p.pid for p in psutil.Process(conn.pid).children(recursive=True)}
    assert gone_within(mark, 2) == []


async def test_the_cli_killed_while_a_bash_tool_runs_leaves_nothing(
    fake_api: FakeAnthropic, marked_kwargs: dict[str, Any], mark: str
):
    provider = sessions.ClaudeCode(**marked_kwargs)
    async with provider.connect(SessionContext("s1")) as conn:
        cli = conn.pid
        assert cli is not None

        async def kill_when_the_tool_runs() -> None:
            await wait_until(lambda: tool_processes(mark, "tail"))
            os.kill(cli, signal.SIGKILL)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_when_the_tool_runs)
            with pytest.raises(sessions.ProviderError) as info:
                async for _ in conn.run_turn(
                    TurnRequest(1, bash(f"tail -f /dev/null & tail -f /dev/null; echo {mark}"), ())
                ):
                    pass
        assert info.value.kind == "process_exited"
        assert str(info.value).count("-9") == 1  # one clear sentence, the code once
        assert gone_within(mark, 2) == []  # before the session stops: the launcher swept it
    assert marked(mark) == []


async def test_a_stdio_mcp_server_dies_with_a_killed_cli(
    fake_api: FakeAnthropic, marked_kwargs: dict[str, Any], mark: str, tmp_path: Path
):
    server = tmp_path / "mcp_server.py"
    server.write_text("import sys, time\nsys.stdin.read()\ntime.sleep(600)\n")  # deaf, and deaf to EOF
    mcp = {"quiet": {"type": "stdio", "command": sys.executable, "args": [str(server), mark]}}
    provider = sessions.ClaudeCode(mcp_servers=mcp, **marked_kwargs)
    async with provider.connect(SessionContext("s1")) as conn:
        await wait_until(
            lambda: [p for p in psutil.process_iter(["cmdline"]) if mark in " ".join(p.info["cmdline"] or ())]
        )
        cli = conn.pid
        assert cli is not None
        os.kill(cli, signal.SIGKILL)
        assert gone_within(mark, 2) == []
    assert marked(mark) == []


OWNER = """
import os, sys, trio, sessions
sys.path.insert(0, {tests!r})
from fake_api import make_env

async def main():
    provider = sessions.ClaudeCode(env={env!r}, cwd={cwd!r}, model="claude-haiku-4-5", allowed_tools=["Bash"])
    async with provider.connect(sessions.SessionContext("s1")) as conn:
        print("CLI", conn.pid, flush=True)
        async for event in conn.run_turn(sessions.TurnRequest(1, {prompt!r}, ())):
            print(type(event).__name__, flush=True)

trio.run(main)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_owner_killed_mid_tool_leaves_nothing(
    fake_api: FakeAnthropic, marked_kwargs: dict[str, Any], mark: str, tmp_path: Path, sig: int
):
    script = tmp_path / "owner.py"
    prompt = bash(f"tail -f /dev/null & tail -f /dev/null; echo {mark}")
    script.write_text(
        OWNER.format(
            tests=str(Path(__file__).parent), env=marked_kwargs["env"], cwd=marked_kwargs["cwd"], prompt=prompt
        )
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while len(tool_processes(mark, "tail")) < 2:
            assert owner.poll() is None, "the owner exited before its tool ran"
            assert time.monotonic() < deadline, "the tool never ran"
            time.sleep(0.05)
        assert len(marked(mark)) >= 4  # launcher, CLI, the tool's shell, two tails
        owner.send_signal(sig)
        owner.wait(10)
        assert owner.returncode == -sig
        assert gone_within(mark, 2) == []
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        assert owner.stdout is not None
        owner.stdout.close()
    assert len(fake_api.message_requests()) == 1  # no later call: the tool's result never reached the API


APPLICATION = """
import os, sys, otpy, sessions

class Driver(otpy.GenServer):
    async def init(self):
        otpy.cast(otpy.self(), "go")

    async def handle_cast(self, request):
        print("asking", flush=True)
        await sessions.SessionServer.send_message("agent", {prompt!r})

provider = sessions.ClaudeCode(env={env!r}, cwd={cwd!r}, model="claude-haiku-4-5", allowed_tools=["Bash"],
                               close_grace=1.0, term_grace=1.0)
otpy.run([sessions.SessionServer.child_spec(name="agent", provider=provider), Driver.child_spec(name="driver")])
print("stopped in order", flush=True)
"""


def test_sigterm_under_otpy_run_stops_the_cli_in_order(
    fake_api: FakeAnthropic, marked_kwargs: dict[str, Any], mark: str, tmp_path: Path
):
    script = tmp_path / "app.py"
    prompt = bash(f"tail -f /dev/null & tail -f /dev/null; echo {mark}")
    script.write_text(APPLICATION.format(env=marked_kwargs["env"], cwd=marked_kwargs["cwd"], prompt=prompt))
    app = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while len(tool_processes(mark, "tail")) < 2:
            assert app.poll() is None, "the application exited before its tool ran"
            assert time.monotonic() < deadline, "the tool never ran"
            time.sleep(0.05)
        app.send_signal(signal.SIGTERM)
        out, _ = app.communicate(timeout=30)
        assert app.returncode == 0
        assert "stopped in order" in out
        assert marked(mark) == []  # gone before the program returned
    finally:
        if app.poll() is None:
            app.kill()
            app.communicate()
