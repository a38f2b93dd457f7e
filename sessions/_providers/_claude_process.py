"""The Claude CLI's subprocess, owned as a process group.

claude-agent-sdk's `SubprocessCLITransport` spawns the CLI as a plain child and, on
close, signals only that child: whatever the CLI started (Bash tool commands, stdio MCP
servers, a background shell) survives it, and a CLI that ignores SIGTERM costs 5 + 5 s.
This subclass changes two things and nothing else:

- the CLI starts in a **new session** (so a process group of its own) through a
  three-line Python launcher (``setsid`` then ``execv``: the pid stays the CLI's),
  because the SDK gives no hook into ``open_process``;
- `close` escalates on the **whole group**: stdin EOF, a grace for the CLI to flush
  its transcript, SIGTERM to the group, a grace, SIGKILL to the group, then one sweep
  for members that outlived the leader. Every wait is bounded and shielded.

The flags, the environment, the line framing and the parsing stay the SDK's.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import trio
from claude_agent_sdk import ClaudeAgentOptions
from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport

import otpy

log = otpy.get_logger("sessions.claude")

_LAUNCHER = "import os,sys\nos.setsid()\nos.execv(sys.argv[1],sys.argv[1:])"
_USE_GROUPS = os.name == "posix"
_LIVE_GROUPS: set[int] = set()
"""Process groups of CLIs not closed yet: killed at interpreter exit (the SDK's own hook
SIGTERMs the CLI alone)."""


@atexit.register
def _kill_live_groups() -> None:
    for pgid in list(_LIVE_GROUPS):
        _signal_group(pgid, signal.SIGKILL)
    _LIVE_GROUPS.clear()


async def _no_prompt() -> AsyncIterator[dict[str, Any]]:
    for _ in ():
        yield {}


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``: read from /proc on Linux,
    else probed with ``killpg(pgid, 0)`` (which also counts zombies)."""
    if os.path.isdir("/proc/self"):
        members = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
                members.append(int(entry))
        return members
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return []
    return [pgid]


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class GroupTransport(SubprocessCLITransport):
    """`SubprocessCLITransport` whose CLI runs in its own process group, closed as a group.

    ``close_grace``: seconds after stdin EOF for the CLI to exit by itself (it flushes
    its transcript then); ``term_grace``: seconds after SIGTERM before SIGKILL.
    """

    def __init__(self, options: ClaudeAgentOptions, *, close_grace: float, term_grace: float) -> None:
        super().__init__(prompt=_no_prompt(), options=options)
        self.close_grace = close_grace
        self.term_grace = term_grace
        self.pgid: int | None = None
        self.returncode: int | None = None
        self.killed = False
        self._watcher = trio.CancelScope()

    def _build_command(self) -> list[str]:
        command = super()._build_command()
        if not _USE_GROUPS:
            return command
        return [sys.executable, "-I", "-S", "-c", _LAUNCHER, *command]

    async def connect(self) -> None:
        await super().connect()
        if _USE_GROUPS and self._process is not None:
            self.pgid = self._process.pid
            _LIVE_GROUPS.add(self.pgid)
            trio.lowlevel.spawn_system_task(self._watch, self._process, self.pgid, name="claude-cli-watcher")

    async def _watch(self, process: Any, pgid: int) -> None:
        """When the CLI dies, stop what it left in its group: a leftover tool process that
        inherited the CLI's stdout would otherwise hold the pipe open, and the SDK's reader
        would wait for an end of file that never comes."""
        with self._watcher:
            try:
                await process.wait()
                await trio.sleep(0.2)  # the reader takes what the CLI wrote before it died
                if group_members(pgid):
                    log.warning("claude_cli_orphans_killed", pgid=pgid, returncode=process.returncode)
                    _signal_group(pgid, signal.SIGKILL)
            except Exception as exc:  # noqa: BLE001 - a system task must not raise
                log.warning("claude_cli_watch_failed", error=repr(exc))

    @property
    def pid(self) -> int | None:
        """The CLI's pid (the launcher exec'd into it), None before connect."""
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        """Whether the CLI process has not exited yet."""
        return self._process is not None and self._process.returncode is None

    def kill_now(self) -> None:
        """SIGKILL the whole group at once (no grace); `close` still reaps it."""
        self.killed = True
        if self.pgid is not None:
            _signal_group(self.pgid, signal.SIGKILL)
        elif self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def close(self) -> None:
        process = self._process
        if process is not None:
            with trio.CancelScope(shield=True):
                await self._stop_group(process)
        self._watcher.cancel()
        await super().close()

    async def _stop_group(self, process: Any) -> None:
        with trio.move_on_after(1):
            await self.end_input()

        async def wait_exit(seconds: float) -> bool:
            with trio.move_on_after(seconds):
                await process.wait()
            return process.returncode is not None

        if process.returncode is None and not await wait_exit(self.close_grace):
            log.info("claude_cli_terminate", pid=process.pid, signal="SIGTERM")
            self._signal(process, signal.SIGTERM)
            if not await wait_exit(self.term_grace):
                log.warning("claude_cli_kill", pid=process.pid, signal="SIGKILL")
                self._signal(process, signal.SIGKILL)
                await wait_exit(5)
        self.returncode = process.returncode
        if self.pgid is not None:
            await self._sweep(self.pgid)
            if not group_members(self.pgid):
                _LIVE_GROUPS.discard(self.pgid)

    def _signal(self, process: Any, sig: int) -> None:
        if self.pgid is not None:
            _signal_group(self.pgid, sig)
        else:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    async def _sweep(self, pgid: int) -> None:
        """Stop what the CLI left in its group (tool commands, MCP servers)."""
        if not group_members(pgid):
            return
        log.info("claude_cli_sweep", pgid=pgid, members=group_members(pgid))
        _signal_group(pgid, signal.SIGTERM)
        if not await _until_empty(pgid, self.term_grace):
            _signal_group(pgid, signal.SIGKILL)
            await _until_empty(pgid, 2)


async def _until_empty(pgid: int, seconds: float) -> bool:
    """Poll the group until it has no live member (nothing to wait on: they are not our children)."""
    with trio.move_on_after(seconds):
        while group_members(pgid):  # noqa: ASYNC110 - polling the process table, no event exists
            await trio.sleep(0.02)
    return not group_members(pgid)
