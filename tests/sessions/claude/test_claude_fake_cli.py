"""ClaudeCode against a fake ``claude`` executable, for what the real CLI cannot be made to do:
a 40 MiB line, garbage on stdout, ignoring SIGTERM, a grandchild, an old version, dying."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

import sessions
from sessions import FinishReason, SessionContext, TextDelta, TurnCompleted, TurnRequest

from .conftest import live_children, wait_gone


def fake(cli: str, env: dict[str, str], **kwargs: Any) -> sessions.ClaudeCode:
    return sessions.ClaudeCode(cli_path=cli, env=env, **kwargs)


async def turn(conn: Any, prompt: str) -> TurnCompleted:
    events = [e async for e in conn.run_turn(TurnRequest(1, prompt, ()))]
    assert isinstance(events[-1], TurnCompleted)
    return events[-1]


async def test_a_40_mib_line_passes_under_a_64_mib_cap(fake_claude: str, fake_claude_env: dict[str, str]):
    provider = fake(fake_claude, fake_claude_env, max_buffer_size=64 << 20)
    async with provider.connect(SessionContext("s1")) as conn:
        done = await turn(conn, "big:40")
    assert done.text == "big done"
    assert done.cost_usd == 1.0


async def test_a_line_over_the_cap_is_a_protocol_error_and_the_session_survives(
    fake_claude: str, fake_claude_env: dict[str, str]
):
    provider = fake(fake_claude, fake_claude_env)  # the default cap: 32 MiB
    async with provider.connect(SessionContext("s1")) as conn:
        first_pid = conn.pid
        with pytest.raises(sessions.ProviderProtocolError) as info:
            await turn(conn, "big:40")
        assert "maximum buffer size" in str(info.value)
        assert first_pid is not None
        assert not wait_gone({first_pid})  # the broken process was stopped...
        done = await turn(conn, "still here?")  # ...and the next turn starts another
        assert conn.pid not in (None, first_pid)
    assert done.text == "fake: still here?"
    assert done.cost_usd == 2.0  # its own $1 and the $1 the cut turn was charged, never lost
    assert done.extra["carried_cost_usd"] == 1.0


async def test_garbage_on_stdout_is_a_protocol_error(fake_claude: str, fake_claude_env: dict[str, str]):
    provider = fake(fake_claude, fake_claude_env)
    async with provider.connect(SessionContext("s1")) as conn:
        with pytest.raises(sessions.ProviderProtocolError) as info:
            await turn(conn, "garbage")
        assert info.value.kind == "frame"
        done = await turn(conn, "after garbage")
    assert done.text == "fake: after garbage"


async def test_a_cli_that_ignores_sigterm_and_its_grandchild_are_killed(
    fake_claude: str, fake_claude_env: dict[str, str], tmp_path: Path
):
    env = {**fake_claude_env, "FAKE_CLAUDE_IGNORE_TERM": "1"}
    provider = fake(fake_claude, env, close_grace=0.3, term_grace=0.5)
    pidfile = tmp_path / "grandchild.pid"
    with trio.move_on_after(30) as hang_guard:  # a hang guard, not a speed check (it takes about 1 s)
        async with provider.connect(SessionContext("s1")) as conn:
            cli = conn.pid
            assert cli is not None
            async with trio.open_nursery() as nursery:

                async def hanging_turn() -> None:
                    async for event in conn.run_turn(TurnRequest(1, "grandchild", ())):
                        assert not isinstance(event, TextDelta)

                nursery.start_soon(hanging_turn)
                while not pidfile.exists():  # noqa: ASYNC110 - the fake writes a file, no event to wait on
                    await trio.sleep(0.02)
                grandchild = int(pidfile.read_text())
                assert grandchild in live_children()
                assert psutil.Process(grandchild).ppid() == cli
                nursery.cancel_scope.cancel()  # abandon the turn: the provider settles it, then closes
    assert not hang_guard.cancelled_caught, "hang guard: the CLI was still not closed after 30 s"
    assert not wait_gone({cli, grandchild}, seconds=0.5)


async def test_a_grandchild_orphaned_by_a_killed_cli_is_swept(
    fake_claude: str, fake_claude_env: dict[str, str], tmp_path: Path
):
    """The CLI is SIGKILLed alone: its child is re-parented away from us, yet the group sweep finds it."""
    provider = fake(fake_claude, fake_claude_env, close_grace=0.3, term_grace=0.5)
    pidfile = tmp_path / "grandchild.pid"
    async with provider.connect(SessionContext("s1")) as conn:
        cli = conn.pid
        assert cli is not None

        failures: list[sessions.ProviderError] = []

        async def orphan() -> None:
            try:
                async for _ in conn.run_turn(TurnRequest(1, "grandchild", ())):
                    pass
            except sessions.ProviderError as exc:
                failures.append(exc)

        async def kill_when_spawned() -> None:
            while not pidfile.exists():  # noqa: ASYNC110 - the fake writes a file, no event to wait on
                await trio.sleep(0.02)
            os.kill(cli, signal.SIGKILL)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_when_spawned)
            await orphan()
        assert [f.kind for f in failures] == ["process_exited"]
        assert "-9" in str(failures[0])
    grandchild = int(pidfile.read_text())
    assert grandchild not in live_children()  # not ours any more: only the group knew it
    assert not wait_gone({grandchild}, seconds=1)


async def test_an_old_cli_is_unavailable(fake_claude: str, fake_claude_env: dict[str, str]):
    provider = fake(fake_claude, {**fake_claude_env, "FAKE_CLAUDE_VERSION": "1.0.3"})
    with pytest.raises(sessions.ProviderUnavailable) as info:
        async with provider.connect(SessionContext("s1")):
            pass
    assert info.value.kind == "version"
    assert "1.0.3" in str(info.value)


async def test_a_cli_that_dies_mid_turn(fake_claude: str, fake_claude_env: dict[str, str]):
    provider = fake(fake_claude, fake_claude_env)
    async with provider.connect(SessionContext("s1")) as conn:
        with pytest.raises(sessions.ProviderError) as info:
            await turn(conn, "die")
        assert info.value.kind == "process_exited"
        assert "exit code 3" in str(info.value)
        assert "dying on purpose" in str(info.value)  # the stderr tail
        done = await turn(conn, "again")
    assert done.finish_reason is FinishReason.STOP


async def test_a_cli_that_never_finishes_its_handshake_hits_the_startup_timeout(
    fake_claude: str, fake_claude_env: dict[str, str]
):
    provider = fake(fake_claude, {**fake_claude_env, "FAKE_CLAUDE_NO_INIT": "1"}, startup_timeout=1.0, close_grace=0.2)
    with pytest.raises(sessions.ProviderTimeout) as info:
        async with provider.connect(SessionContext("s1")):
            pass
    assert info.value.phase == "startup"


async def test_a_quiet_tool_does_not_trip_the_idle_timeout(fake_claude: str, fake_claude_env: dict[str, str]):
    provider = fake(fake_claude, fake_claude_env, idle_timeout=0.5)
    async with provider.connect(SessionContext("s1")) as conn:
        done = await turn(conn, "quiet-tool:1.5")
        assert done.text == "the tool is done"
        with pytest.raises(sessions.ProviderTimeout) as info:
            await turn(conn, "hang")  # silence with no tool running is a stall
    assert info.value.phase == "idle"


async def test_silence_after_a_quiet_tool_trips_the_idle_timeout(fake_claude: str, fake_claude_env: dict[str, str]):
    """The idle deadline comes back (sooner than the turn's) once the tool has answered:
    the wait that follows is bounded by it."""
    provider = fake(fake_claude, fake_claude_env, idle_timeout=0.5)
    async with provider.connect(SessionContext("s1")) as conn:
        with trio.fail_after(20), pytest.raises(sessions.ProviderTimeout) as info:
            await turn(conn, "quiet-tool-then-hang:1.0")
    assert info.value.phase == "idle"


async def test_a_stale_wake_up_is_ignored(fake_claude: str, fake_claude_env: dict[str, str]):
    """A watchdog's wake-up read when no deadline has passed (a message came first) does
    not end the turn: the deadlines are checked again and the turn goes on."""
    from sessions._providers._claude_turn import WAKE, wake_stream

    provider = fake(fake_claude, fake_claude_env, idle_timeout=30)
    async with provider.connect(SessionContext("s1")) as conn:
        done: list[TurnCompleted] = []

        async def run() -> None:
            done.append(await turn(conn, "quiet-tool:1.0"))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                await trio.sleep(0.5)  # the tool runs: the turn waits
                wake_stream(conn._client).send_nowait(WAKE)
    assert done[0].text == "the tool is done"


async def test_a_silent_cli_hits_the_turn_timeout_before_the_idle_timeout(
    fake_claude: str, fake_claude_env: dict[str, str]
):
    provider = fake(fake_claude, fake_claude_env, idle_timeout=60, turn_timeout=1.0)
    async with provider.connect(SessionContext("s1")) as conn:
        with trio.fail_after(20), pytest.raises(sessions.ProviderTimeout) as info:
            await turn(conn, "hang")
    assert info.value.phase == "turn"


async def test_a_cli_that_ignores_the_interrupt_is_killed_after_the_grace(
    fake_claude: str, fake_claude_env: dict[str, str]
):
    """The interrupt's grace bounds the wait, long before the idle timeout would."""
    provider = fake(fake_claude, fake_claude_env, idle_timeout=60, interrupt_grace=0.5)
    events: list[Any] = []
    async with provider.connect(SessionContext("s1")) as conn:

        async def run() -> None:
            events.extend([e async for e in conn.run_turn(TurnRequest(1, "deaf", ()))])

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                await trio.sleep(1.0)  # the turn is waiting for the CLI
                await conn.interrupt()
    assert isinstance(events[-1], TurnCompleted)
    assert events[-1].finish_reason is FinishReason.INTERRUPTED
    assert "did not stop in time" in (events[-1].error or "")


def test_a_program_that_exits_without_leaving_the_context_leaves_no_process(
    fake_claude: str, fake_claude_env: dict[str, str], tmp_path: Path
):
    """A program that never exits the provider's context: trio finalizes the context's
    generator at the end of the run, which closes the CLI's whole group (the SDK's own exit
    hook would SIGTERM the CLI alone and leave the grandchild)."""
    env = {**fake_claude_env, "FAKE_CLAUDE_SPAWN_AT_START": "1"}
    pidfile = tmp_path / "grandchild.pid"
    script = tmp_path / "leaky.py"
    script.write_text(
        f"""
import os, sys, trio, sessions

async def main():
    provider = sessions.ClaudeCode(cli_path={fake_claude!r}, env={env!r})
    conn = await provider.connect(sessions.SessionContext("s1")).__aenter__()
    while not os.path.exists({str(pidfile)!r}):
        await trio.sleep(0.02)
    print("CLI", conn.pid, flush=True)
    sys.exit(0)  # no __aexit__: only the interpreter's exit hooks are left

trio.run(main)
"""
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    cli = int(next(line for line in done.stdout.splitlines() if line.startswith("CLI ")).split()[1])
    grandchild = int(pidfile.read_text())
    assert not wait_gone({cli, grandchild}, seconds=3)
