"""The Claude CLI's subprocess, started under a launcher that dies with nothing left behind.

claude-agent-sdk's `SubprocessCLITransport` spawns the CLI as a plain child and, on
close, signals only that child: whatever the CLI started (Bash tool commands, which CLI
2.1.x starts with ``setsid``; stdio MCP servers; a background shell) survives it, and if
the Python process dies the CLI lives on, re-parented to init, and keeps running tools.
This subclass changes two things and nothing else:

- the command starts `_claude_launcher` (a stdlib-only script) in front of the CLI: a
  child subreaper that kills the CLI and every descendant when the owner's pipe closes
  (the owner died, whatever killed it, or `kill_now`), passes SIGTERM on, and sweeps
  what the CLI left when it exits. The SDK gives no hook into ``open_process``, so the
  pipe's read end reaches the launcher through ``/proc/<owner>/fd/<n>``;
- `close` escalates through the launcher: stdin EOF, a grace for the CLI to flush its
  transcript, SIGTERM (the launcher forwards it to the CLI's group), a grace, then the
  pipe is closed (the launcher SIGKILLs everything). Every wait is bounded and shielded.

The flags, the environment, the line framing and the parsing stay the SDK's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
from claude_agent_sdk import ClaudeAgentOptions

import otpy

from ._claude_private import SubprocessCLITransport

log = otpy.get_logger("sessions.claude")

LAUNCHER = str(Path(__file__).with_name("_claude_launcher.py"))
_USE_LAUNCHER = os.name == "posix"


async def _no_prompt() -> AsyncIterator[dict[str, Any]]:
    for _ in ():
        yield {}


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(p) for p in fh.read().split()]
    except (OSError, ValueError):
        return []


_TAIL = 64 * 1024
_TOTAL_COST = re.compile(r'"total_cost_usd"\s*:\s*(-?[0-9][0-9.eE+-]*)')


def _result_of(head: str, tail: str, *, whole: bool) -> dict[str, Any] | None:
    """A ``result`` message from a line's first and last 64 KiB: parsed when ``whole``, else
    its cost. The keys' order is the CLI's own (seen both before and after the text); a key
    written unescaped cannot come from inside a JSON string, so the search cannot be fooled."""
    if whole:
        with contextlib.suppress(ValueError):
            data = json.loads(tail)
            if isinstance(data, dict) and data.get("type") == "result":
                return data
        return None
    if '"type":"result"' not in head and '"type":"result"' not in tail:
        return None
    match = _TOTAL_COST.search(head) or _TOTAL_COST.search(tail)
    return {"type": "result", "total_cost_usd": float(match[1])} if match else None


class LauncherTransport(SubprocessCLITransport):
    """`SubprocessCLITransport` whose CLI runs under `_claude_launcher`: closed, killed or
    orphaned, it leaves no process behind.

    ``close_grace``: seconds after stdin EOF for the CLI to exit by itself (it flushes
    its transcript then); ``term_grace``: seconds after SIGTERM before SIGKILL.
    """

    def __init__(self, options: ClaudeAgentOptions, *, close_grace: float, term_grace: float) -> None:
        super().__init__(prompt=_no_prompt(), options=options)
        self.close_grace = close_grace
        self.term_grace = term_grace
        self.returncode: int | None = None
        self.killed = False
        self._owner_pipe: tuple[int, int] | None = None
        self._cli_pid: int | None = None
        self._reader: AsyncIterator[dict[str, Any]] | None = None

    def _build_command(self) -> list[str]:
        command = super()._build_command()
        if self._owner_pipe is None:
            return command
        read_end = self._owner_pipe[0]
        return [sys.executable, "-I", "-S", LAUNCHER, str(os.getpid()), str(read_end), str(self.term_grace), *command]

    async def connect(self) -> None:
        if _USE_LAUNCHER and self._process is None and self._owner_pipe is None:
            self._owner_pipe = os.pipe()  # non-inheritable: no other child of ours holds it
        try:
            await super().connect()
        except BaseException:
            self._close_owner_pipe()
            raise

    def read_messages(self) -> AsyncIterator[dict[str, Any]]:
        """The SDK's reader, kept so that `close` closes it: the SDK's read task leaves it
        suspended when cancelled, and the garbage collector would then report it."""
        self._reader = super().read_messages()
        return self._reader

    async def result_after_a_broken_line(self, limit: int) -> dict[str, Any] | None:
        """The turn's ``result``, read from the CLI's stdout after the SDK's reader gave up on a
        line over ``limit``; None at end of file or when the CLI goes idle without one.

        A ``result`` line over ``limit`` (its ``result`` field repeats the reply's text) is not
        parsed: its ``total_cost_usd``, which the CLI writes after the text, is taken from the
        line's first or last 64 KiB. The SDK's reader is gone by then: nothing else reads stdout."""
        stream = self._stdout_stream
        if stream is None:
            return None
        head, tail, size, skipping = "", "", 0, True  # skipping: the rest of the broken line
        async for chunk in stream:
            while chunk:
                newline = chunk.find("\n")
                piece = chunk if newline < 0 else chunk[:newline]
                if not skipping:
                    head = head if len(head) >= _TAIL else (head + piece)[:_TAIL]
                    tail = (tail + piece)[-_TAIL:]
                    size += len(piece)
                if newline < 0:
                    break
                chunk = chunk[newline + 1 :]
                if not skipping:
                    found = _result_of(head, tail, whole=size <= _TAIL)
                    if found is not None:
                        return found
                    if '"session_state_changed"' in head and '"idle"' in head:
                        return None
                head, tail, size, skipping = "", "", 0, False
        return None

    @property
    def launcher_pid(self) -> int | None:
        """The launcher's pid (the SDK's process), None before connect."""
        return self._process.pid if self._process is not None else None

    @property
    def pid(self) -> int | None:
        """The CLI's pid (the launcher's child), None before connect."""
        if self._cli_pid is None and self._process is not None:
            if self._owner_pipe is None:
                self._cli_pid = self._process.pid
            else:
                children = _children(self._process.pid)
                self._cli_pid = children[0] if children else None
        return self._cli_pid

    @property
    def alive(self) -> bool:
        """Whether the launcher (so the CLI) has not exited yet."""
        return self._process is not None and self._process.returncode is None

    def _close_owner_pipe(self) -> None:
        pipe, self._owner_pipe = self._owner_pipe, None
        if pipe is not None:
            for fd in pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def kill_now(self) -> None:
        """Kill the CLI and everything under it at once (no grace); `close` still reaps."""
        self.killed = True
        cli = self.pid
        if self._owner_pipe is not None:
            self._close_owner_pipe()  # the launcher's cue: SIGKILL everything, then exit
            if cli is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(cli, signal.SIGKILL)
        elif self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def close(self) -> None:
        process = self._process
        if process is not None:
            self.pid  # noqa: B018 - learn the CLI's pid while the launcher still lists it
            with trio.CancelScope(shield=True):
                await self._stop(process)
        self._close_owner_pipe()
        reader, self._reader = self._reader, None
        await super().close()
        if reader is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(RuntimeError, Exception):
                await reader.aclose()  # type: ignore[attr-defined]

    async def _stop(self, process: Any) -> None:
        with trio.move_on_after(1):
            await self.end_input()

        async def wait_exit(seconds: float) -> bool:
            with trio.move_on_after(seconds):
                await process.wait()
            return process.returncode is not None

        if process.returncode is None and not await wait_exit(self.close_grace):
            log.info("claude_cli_terminate", pid=self.pid, signal="SIGTERM")
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            if not await wait_exit(self.term_grace + 1):
                log.warning("claude_cli_kill", pid=self.pid, signal="SIGKILL")
                self.kill_now()
                if not await wait_exit(3):
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await wait_exit(2)
        self.returncode = process.returncode
