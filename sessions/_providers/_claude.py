"""ClaudeCode: the Claude Code CLI as a sessions provider, on claude-agent-sdk.

The SDK does the protocol: flags, the stream-json control protocol, permission and hook
callbacks, message parsing, the transcript mirror. This module adds what the SDK does
not have, and nothing else:

- a process group per CLI, stopped as a group (`_claude_process.LauncherTransport`);
- start-up, idle and whole-turn timeouts (the CLI waits out a stalled stream forever);
- per-turn cost deltas from the CLI's per-process running total, exact across restarts;
- the mapping of SDK messages onto the normalized events;
- typed errors (`sessions._errors`) for a missing CLI, a wrong version, a bad key, an
  unknown resume id, a dead process, a frame over the size cap;
- recovery: a turn that dies, times out or is abandoned never takes the session with it;
  the next turn respawns the CLI with ``--resume``;
- the transcript mirror into the session's own store (`_claude_store`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio
from claude_agent_sdk import (
    ClaudeAgentOptions,
)

import otpy

from .._errors import (
    InvalidOption,
)
from ._base import ProviderSession, SessionContext
from ._claude_options import (
    BRANCH_OPTIONS,
    DEFAULT_MAX_BUFFER_SIZE,
    UUID,
    Transport,
    apply_query_opts,
    version_tuple,
)
from ._claude_session import ClaudeSession

log = otpy.get_logger("sessions.claude")


class ClaudeCode:
    """**Provider**: the Claude Code CLI, driven through claude-agent-sdk; runs its own tools.

    Pass a `ClaudeAgentOptions`, or ClaudeWrapper's ``query_opts`` names as keywords (``model``,
    ``max_turns``, ``system_prompt``, ``append_system_prompt``, ``allowed_tools``,
    ``disallowed_tools``, ``permission_mode``, ``mcp_servers``, ``max_budget_usd``,
    ``add_dirs``, ``env``, ``cwd``, ``extra_args``; any other `ClaudeAgentOptions` field
    too, including ``can_use_tool`` and ``hooks``). The session's own ``query_opts`` and
    per-turn overrides are applied over them.

    ``transport="duplex"`` (default) keeps one CLI process per session for every turn;
    ``"per_turn"`` starts one per turn with ``--resume``. Timeouts: ``startup_timeout``
    (spawn + handshake), ``idle_timeout`` (silence within a turn), ``turn_timeout``
    (whole turn, off by default); each raises `ProviderTimeout` with its ``phase``.
    Closing: stdin EOF, ``close_grace`` s, SIGTERM to the CLI's process group,
    ``term_grace`` s, SIGKILL. ``mirror`` keeps the CLI's transcript in the session's
    store (key ``f"{session_id}.claude"``) so it resumes on another machine. ``resume`` (a
    keyword, or ``ClaudeAgentOptions(resume=...)``) makes a new session that resumes that CLI
    session (from this machine's ``~/.claude``) and mirrors it into its store;
    `SessionServer.provider_session_id` gives the CLI session id of a running session.
    See docs/providers/claude.md.

    Example::

        provider = sessions.ClaudeCode(model="claude-sonnet-5", max_turns=20, cwd="/srv/repo")
        spec = sessions.SessionServer.child_spec(name="agent", provider=provider, store=store)
    """

    name = "claude"
    runs_own_tools = True
    reports_model_calls = True

    def __init__(
        self,
        options: ClaudeAgentOptions | None = None,
        *,
        transport: Transport = "duplex",
        max_buffer_size: int = DEFAULT_MAX_BUFFER_SIZE,
        startup_timeout: float = 60.0,
        idle_timeout: float | None = 300.0,
        turn_timeout: float | None = None,
        interrupt_grace: float = 5.0,
        close_grace: float = 5.0,
        term_grace: float = 5.0,
        mirror: bool = True,
        min_version: str = "2.0.0",
        **query_opts: Any,
    ) -> None:
        if transport not in ("duplex", "per_turn"):
            raise InvalidOption("transport", transport, 'must be "duplex" or "per_turn"')
        if max_buffer_size < 1024:
            raise InvalidOption("max_buffer_size", max_buffer_size, "must be at least 1024 bytes")
        for option, value in (
            ("startup_timeout", startup_timeout),
            ("idle_timeout", idle_timeout),
            ("turn_timeout", turn_timeout),
            ("interrupt_grace", interrupt_grace),
            ("close_grace", close_grace),
            ("term_grace", term_grace),
        ):
            if value is not None and not value >= 0:
                raise InvalidOption(option, value, "must be a number of seconds >= 0")
        if version_tuple(min_version) is None:
            raise InvalidOption("min_version", min_version, "must look like 2.0.0")
        base = options or ClaudeAgentOptions()
        if "resume" in query_opts:
            base = dataclasses.replace(base, resume=query_opts.pop("resume"))
        if base.resume is not None and not UUID.fullmatch(str(base.resume)):
            raise InvalidOption("resume", base.resume, "must be a CLI session id (a UUID)")
        for flag in ("continue_conversation", "fork_session"):
            if getattr(base, flag):
                raise InvalidOption(flag, True, "not supported: resume a CLI session by its id with resume=...")
        for flag in BRANCH_OPTIONS:
            if getattr(base, flag) is not None:
                raise InvalidOption(
                    flag,
                    getattr(base, flag),
                    "set by the provider itself: use SessionServer.rewind or SessionServer.fork",
                )
        self.options = apply_query_opts(base, query_opts)
        self.transport: Transport = transport
        self.max_buffer_size = max_buffer_size
        self.startup_timeout = startup_timeout
        self.idle_timeout = idle_timeout
        self.turn_timeout = turn_timeout
        self.interrupt_grace = interrupt_grace
        self.close_grace = close_grace
        self.term_grace = term_grace
        self.mirror = mirror
        self.min_version = min_version

    def __repr__(self) -> str:
        return f"ClaudeCode(transport={self.transport!r}, model={self.options.model!r})"

    @property
    def model(self) -> str | None:
        """The model the CLI runs when a turn names none (``model=``), None for the CLI's default."""
        return self.options.model

    def connect(self, ctx: SessionContext) -> AbstractAsyncContextManager[ProviderSession]:
        """Open the provider for one session: in duplex mode the CLI starts here."""
        return self._connect(ctx)

    @contextlib.asynccontextmanager
    async def _connect(self, ctx: SessionContext) -> AsyncIterator[ProviderSession]:
        session = ClaudeSession(self, ctx)
        try:
            if self.transport == "duplex":
                await session.start_or_recover(dict(ctx.options))
            yield session
        finally:
            with trio.CancelScope(shield=True):
                await session.aclose()
