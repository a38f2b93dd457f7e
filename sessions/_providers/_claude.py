"""ClaudeCode: the Claude Code CLI as a sessions provider, on claude-agent-sdk.

The SDK does the protocol: flags, the stream-json control protocol, permission and hook
callbacks, message parsing, the transcript mirror. This module adds what the SDK does
not have, and nothing else:

- a process group per CLI, stopped as a group (`_claude_process.GroupTransport`);
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

import collections
import contextlib
import dataclasses
import json
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args

import trio
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    ClaudeSDKError,
    CLIConnectionError,
    CLIJSONDecodeError,
    CLINotFoundError,
    ProcessError,
    ResultMessage,
    StreamEvent,
    SystemMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
    project_key_for_directory,
)
from claude_agent_sdk._errors import MessageParseError
from claude_agent_sdk._internal.message_parser import parse_message
from claude_agent_sdk._internal.session_resume import (
    MaterializedResume,
    apply_materialized_options,
    materialize_resume_session,
)
from claude_agent_sdk._internal.sessions import _get_projects_dir
from claude_agent_sdk.types import PermissionMode, _configure_can_use_tool

import otpy

from .._errors import (
    InvalidOption,
    ProviderAuthError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
    ProviderUnavailable,
    ResumeRejected,
)
from .._events import (
    FinishReason,
    Message,
    MessageAdded,
    ProviderEvent,
    ProviderSessionId,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallFinished,
    ToolCallRequested,
    ToolResult,
    TurnCompleted,
    Usage,
)
from ._base import ProviderSession, SessionContext, TurnRequest
from ._claude_process import GroupTransport
from ._claude_store import ClaudeTranscriptStore

log = otpy.get_logger("sessions.claude")

DEFAULT_MAX_BUFFER_SIZE: Final = 32 * 1024 * 1024
"""The largest single stdout line (JSON message) accepted: 32 MiB (the SDK's is 1 MiB)."""

Transport = Literal["duplex", "per_turn"]

_OPTION_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(ClaudeAgentOptions))
_ALIASES: Final = {"mcp_config": "mcp_servers", "add_dir": "add_dirs", "fallback": "fallback_model"}
_NOT_FROM_QUERY_OPTS: Final = frozenset({"resume", "session_store", "continue_conversation", "fork_session"})
_RESERVED_FLAGS: Final = frozenset(
    {
        "print",
        "p",
        "verbose",
        "input-format",
        "output-format",
        "include-partial-messages",
        "resume",
        "r",
        "continue",
        "c",
        "session-id",
        "fork-session",
        "session-mirror",
        "permission-prompt-tool",
        "no-session-persistence",
    }
)
"""CLI flags the provider relies on: ``extra_args`` may not set them."""
_STDERR_LINES: Final = 40
_FINISH: Final = {
    "success": FinishReason.STOP,
    "error_max_turns": FinishReason.MAX_TURNS,
    "error_max_budget_usd": FinishReason.MAX_BUDGET,
    "error_during_execution": FinishReason.DURING_EXECUTION,
}
_ERROR_KINDS: Final = {401: "auth", 403: "auth", 429: "rate_limited", 529: "overloaded"}


def _version_tuple(text: object) -> tuple[int, int, int] | None:
    match = re.match(r"\s*(\d+)\.(\d+)\.(\d+)", str(text))
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _delta(now: float, before: float) -> float:
    """``now - before`` in decimal, rounded to a picodollar: 0.0168 - 0.0083 is 0.0085, not
    0.008500000000000001, so a turn's cost does not depend on what the process spent before."""
    return float(round(Decimal(repr(now)) - Decimal(repr(before)), 12))


def _restored_costs(path: Path, session_id: str) -> tuple[float, dict[str, dict[str, float]]]:
    """The running total a resumed CLI starts from: the last ``cost-state`` line of the
    transcript it resumes (Claude Code writes one when a process ends, and restores it
    on ``--resume``). (0, {}) when there is none."""
    total, model_usage = 0.0, {}
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if '"cost-state"' not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("type") == "cost-state" and entry.get("sessionId") == session_id:
                    total = float(entry.get("totalCostUSD") or 0.0)
                    model_usage = {
                        model: {k: float(v) for k, v in usage.items() if isinstance(v, (int, float))}
                        for model, usage in (entry.get("modelUsage") or {}).items()
                        if isinstance(usage, dict)
                    }
    except OSError:
        pass
    return total, model_usage


_MISSING: Final = object()


def _signature(query_opts: Mapping[str, Any]) -> str:
    return json.dumps(dict(query_opts), sort_keys=True, default=repr)


def _sum(a: float, b: float) -> float:
    return float(round(Decimal(repr(a)) + Decimal(repr(b)), 12))


def apply_query_opts(base: ClaudeAgentOptions, query_opts: Mapping[str, Any]) -> ClaudeAgentOptions:
    """``base`` with the seed's ``query_opts`` names (or any `ClaudeAgentOptions` field) applied.

    ``append_system_prompt`` becomes the ``claude_code`` preset plus the text; ``env``
    and ``extra_args`` merge over the base's; a ``HOME`` in ``env`` without
    ``CLAUDE_CONFIG_DIR`` gets ``CLAUDE_CONFIG_DIR=$HOME/.claude`` (the SDK resolves
    the transcript folder from it).

    Raises:
        InvalidOption: an unknown name, or one the provider sets itself (``resume``...).

    Example::

        options = apply_query_opts(ClaudeAgentOptions(), {"model": "haiku", "max_turns": 3})
    """
    changes: dict[str, Any] = {}
    for raw_name, value in query_opts.items():
        name = _ALIASES.get(raw_name, raw_name)
        if name == "append_system_prompt":
            changes["system_prompt"] = {"type": "preset", "preset": "claude_code", "append": str(value)}
        elif name in ("env", "extra_args"):
            if not isinstance(value, Mapping):
                raise InvalidOption(raw_name, value, "must be a mapping")
            changes[name] = {**getattr(base, name), **changes.get(name, {}), **value}
        elif name in ("allowed_tools", "disallowed_tools", "add_dirs", "betas"):
            changes[name] = [value] if isinstance(value, str) else list(value)
        elif name in _NOT_FROM_QUERY_OPTS:
            raise InvalidOption(raw_name, value, "the provider sets it itself (see ClaudeCode docs: resume)")
        elif name in _OPTION_FIELDS:
            changes[name] = value
        else:
            raise InvalidOption(raw_name, value, "not a Claude Code option (see docs/providers/claude.md)")
    options = dataclasses.replace(base, **changes)
    reserved = sorted(_RESERVED_FLAGS.intersection(flag.lstrip("-") for flag in options.extra_args))
    if reserved:
        raise InvalidOption("extra_args", reserved, "the provider sets these CLI flags itself")
    env = dict(options.env)
    if "HOME" in env and "CLAUDE_CONFIG_DIR" not in env:
        env["CLAUDE_CONFIG_DIR"] = str(Path(env["HOME"]) / ".claude")
        options = dataclasses.replace(options, env=env)
    return options


class ClaudeCode:
    """**Provider**: the Claude Code CLI, driven through claude-agent-sdk; runs its own tools.

    Pass a `ClaudeAgentOptions`, or the seed's ``query_opts`` names as keywords (``model``,
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
    store (key ``f"{session_id}.claude"``) so it resumes on another machine.
    See docs/providers/claude.md.

    Example::

        provider = sessions.ClaudeCode(model="claude-sonnet-5", max_turns=20, cwd="/srv/repo")
        spec = sessions.SessionServer.child_spec(name="agent", provider=provider, store=store)
    """

    name = "claude"
    runs_own_tools = True

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
        if _version_tuple(min_version) is None:
            raise InvalidOption("min_version", min_version, "must look like 2.0.0")
        self.options = apply_query_opts(options or ClaudeAgentOptions(), query_opts)
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

    def connect(self, ctx: SessionContext) -> AbstractAsyncContextManager[ProviderSession]:
        """Open the provider for one session: in duplex mode the CLI starts here."""
        return self._connect(ctx)

    @contextlib.asynccontextmanager
    async def _connect(self, ctx: SessionContext) -> AsyncIterator[ProviderSession]:
        session = ClaudeSession(self, ctx)
        try:
            if self.transport == "duplex":
                await session.start(dict(ctx.options))
            yield session
        finally:
            with trio.CancelScope(shield=True):
                await session.aclose()


class ClaudeSession:
    """A connected `ClaudeCode`: one session's CLI process (duplex) or processes (per turn).

    Example::

        async with sessions.ClaudeCode(model="haiku").connect(ctx) as conn:
            async for event in conn.run_turn(sessions.TurnRequest(1, "hi", ())):
                print(event)
    """

    def __init__(self, provider: ClaudeCode, ctx: SessionContext) -> None:
        self.provider = provider
        self.ctx = ctx
        self.claude_session_id: str | None = ctx.provider_session_id
        self.mirror = (
            ClaudeTranscriptStore(ctx.store, ctx.session_id) if provider.mirror and ctx.store is not None else None
        )
        self.version: tuple[int, int, int] | None = None
        self._client: ClaudeSDKClient | None = None
        self._transport: GroupTransport | None = None
        self._materialized: MaterializedResume | None = None
        self._signature: str | None = None
        self._query_opts: dict[str, Any] = {}
        self._cost_base = 0.0
        self._carried_cost = 0.0
        self._started_once = False
        self._model_usage_base: dict[str, dict[str, float]] = {}
        self._turn_active = False
        self._interrupt_requested = False
        self._interrupt_deadline = float("inf")
        self._wait_scope: trio.CancelScope | None = None
        self._log = log.bind(session=ctx.session_id)
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)

    # --- the process -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The running CLI's pid (None when no process runs)."""
        return self._transport.pid if self._transport is not None and self._transport.alive else None

    def _options(self, query_opts: Mapping[str, Any]) -> ClaudeAgentOptions:
        options = apply_query_opts(self.provider.options, query_opts)
        changes: dict[str, Any] = {
            "include_partial_messages": True,
            "max_buffer_size": self.provider.max_buffer_size,
            "resume": self.claude_session_id,
        }
        if options.cwd is None and self.ctx.cwd is not None:
            changes["cwd"] = self.ctx.cwd
        if self.mirror is not None and options.session_store is None:
            changes["session_store"] = self.mirror
        user_stderr = options.stderr

        def stderr(line: str) -> None:
            self._stderr.append(line)
            if user_stderr is not None:
                user_stderr(line)

        changes["stderr"] = stderr
        return dataclasses.replace(options, **changes)

    def _stderr_tail(self) -> str:
        """The CLI's last lines of stderr, for an error message ('' when it said nothing)."""
        return ("; stderr: " + " | ".join(self._stderr)) if self._stderr else ""

    def _unavailable(self, message: str, kind: str) -> ProviderUnavailable:
        return ProviderUnavailable(provider=self.provider.name, message=message, kind=kind)

    async def start(self, query_opts: Mapping[str, Any]) -> None:
        """Start a CLI process (resuming the session if it has a CLI session id).

        The first start also picks up the cost that an earlier run of the session (a
        server that was killed mid-turn) could not report.

        Raises:
            ProviderUnavailable: no CLI, a wrong version, or it failed to start.
            ProviderTimeout: the start-up (spawn and handshake) took too long.
            ResumeRejected: the CLI does not know the session to resume.
        """
        options = self._options(query_opts)
        if not self._started_once:
            self._started_once = True
            if self.mirror is not None:
                self._carried_cost = await self.mirror.unreported_cost()
        cli = options.cli_path
        if cli is not None and not (os.path.isfile(cli) and os.access(cli, os.X_OK)):  # noqa: ASYNC240 - one stat
            raise self._unavailable(f"Claude Code CLI not found or not executable at {str(cli)!r}", "not_found")
        resume = options.resume
        try:
            materialized = await materialize_resume_session(options) if options.session_store is not None else None
        except RuntimeError as exc:  # the SDK's wrapper of a failed or slow SessionStore.load
            raise self._unavailable(f"could not load the mirrored transcript: {exc}", "mirror") from exc
        if materialized is not None:
            options = apply_materialized_options(options, materialized)
        try:
            transport = GroupTransport(
                _configure_can_use_tool(options),
                close_grace=self.provider.close_grace,
                term_grace=self.provider.term_grace,
            )
            client = ClaudeSDKClient(options, transport=transport)
        except ValueError as exc:
            if materialized is not None:
                await materialized.cleanup()
            raise InvalidOption("options", str(options), str(exc)) from None
        self._transport, self._client, self._materialized = transport, client, materialized
        self._signature = _signature(query_opts)
        self._query_opts = dict(query_opts)
        self._cost_base, self._model_usage_base = 0.0, {}
        if options.resume:
            projects = (
                materialized.config_dir / "projects" if materialized is not None else _get_projects_dir(options.env)
            )
            transcript = projects / project_key_for_directory(options.cwd) / f"{options.resume}.jsonl"
            self._cost_base, self._model_usage_base = await trio.to_thread.run_sync(
                _restored_costs, transcript, options.resume
            )
        try:
            with trio.fail_after(self.provider.startup_timeout):
                await client.connect()
                info = await client.get_server_info() or {}
        except trio.TooSlowError:
            await self.stop(kill=True)
            raise ProviderTimeout(
                provider=self.provider.name,
                message=f"the CLI did not start within {self.provider.startup_timeout} s",
                kind="timeout",
                retryable=True,
                phase="startup",
            ) from None
        except CLINotFoundError as exc:
            await self.stop(kill=True)
            raise self._unavailable(str(exc).splitlines()[0], "not_found") from exc
        except Exception as exc:
            await self.stop(kill=True)
            text = str(exc)
            if resume and ("No conversation found" in text or "--resume" in text):
                raise ResumeRejected(
                    provider=self.provider.name, message=f"the CLI has no session {resume!r}: {text}", kind="resume"
                ) from exc
            raise self._unavailable(f"the CLI failed to start: {text}{self._stderr_tail()}", "startup") from exc
        version = info.get("claude_code_version")
        self.version = _version_tuple(version) if version is not None else None
        minimum = _version_tuple(self.provider.min_version)
        if version is not None and (self.version is None or (minimum is not None and self.version < minimum)):
            await self.stop(kill=True)
            raise self._unavailable(
                f"Claude Code {version!r} is older than the minimum {self.provider.min_version}", "version"
            )
        self._log.info(
            "claude_cli_started", pid=transport.pid, version=version, resume=resume, mirror=materialized is not None
        )

    async def stop(self, *, kill: bool = False) -> None:
        """Stop the CLI process (``kill``: SIGKILL its group at once). Idempotent."""
        client, transport, materialized = self._client, self._transport, self._materialized
        self._client = self._transport = self._materialized = None
        self._signature = None
        with trio.CancelScope(shield=True):
            if kill and transport is not None:
                transport.kill_now()
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.disconnect()
            if materialized is not None:
                await materialized.cleanup()
        if transport is not None:
            self._log.info("claude_cli_stopped", returncode=transport.returncode)

    async def aclose(self) -> None:
        """Stop everything: no CLI process nor any of its children survives this."""
        await self.stop()

    async def _switch(self, client: ClaudeSDKClient, query_opts: Mapping[str, Any]) -> bool:
        """Apply new options to the running CLI when only the model or the permission mode
        changed (the CLI's control requests); False when a restart is needed."""
        keys = set(query_opts) | set(self._query_opts)
        changed = {k for k in keys if query_opts.get(k, _MISSING) != self._query_opts.get(k, _MISSING)}
        if not changed or not changed <= {"model", "permission_mode"}:
            return False
        try:
            with trio.fail_after(self.provider.startup_timeout):
                if "model" in changed:
                    model = query_opts.get("model", self.provider.options.model)
                    await client.set_model(str(model) if model is not None else None)
                if "permission_mode" in changed:
                    mode = query_opts.get("permission_mode", self.provider.options.permission_mode) or "default"
                    if mode not in get_args(PermissionMode):
                        return False
                    await client.set_permission_mode(cast("PermissionMode", mode))
        except Exception as exc:  # noqa: BLE001 - any failure: restart the CLI with the new options instead
            self._log.info("claude_switch_failed", error=repr(exc))
            return False
        self._log.info("claude_options_switched", changed=sorted(changed))
        self._query_opts = dict(query_opts)
        return True

    async def _ensure(self, query_opts: Mapping[str, Any]) -> ClaudeSDKClient:
        signature = _signature(query_opts)
        transport, client = self._transport, self._client
        if self.provider.transport == "duplex" and client is not None and transport is not None and transport.alive:
            if signature == self._signature:
                return client
            if await self._switch(client, query_opts):
                self._signature = signature
                return client
        await self.stop()
        await self.start(query_opts)
        assert self._client is not None
        return self._client

    # --- costs -----------------------------------------------------------------------------

    def _cost(self, total: float | None) -> tuple[float, float]:
        """(this turn's cost, the process's running total) from the CLI's running total."""
        if total is None:
            return 0.0, self._cost_base
        delta = _delta(total, self._cost_base)
        if delta < 0:  # the CLI's counter went back: treat the report as fresh
            delta = float(total)
        self._cost_base = float(total)
        return delta, float(total)

    def _model_usage(self, model_usage: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
        turn: dict[str, dict[str, float]] = {}
        for model, raw in (model_usage or {}).items():
            if not isinstance(raw, Mapping):
                continue
            before = self._model_usage_base.get(model, {})
            now = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            diff = {k: _delta(v, before.get(k, 0.0)) for k, v in now.items()}
            self._model_usage_base[model] = now
            if any(diff.get(k) for k in ("inputTokens", "outputTokens", "costUSD")):
                turn[model] = diff
        return turn

    # --- turns -------------------------------------------------------------------------

    async def interrupt(self) -> None:
        """Interrupt the running turn with the CLI's interrupt request; the process is kept.

        If the CLI has not ended the turn ``interrupt_grace`` seconds later, its process
        group is killed (the next turn resumes in a new process). The turn ends with
        ``FinishReason.INTERRUPTED``.
        """
        client, transport = self._client, self._transport
        if not self._turn_active or client is None or transport is None:
            return
        self._interrupt_requested = True
        self._interrupt_deadline = trio.current_time() + self.provider.interrupt_grace
        if self._wait_scope is not None:
            self._wait_scope.deadline = min(self._wait_scope.deadline, self._interrupt_deadline)
        with trio.move_on_after(self.provider.interrupt_grace):
            try:
                await client.interrupt()
            except Exception as exc:  # noqa: BLE001 - the SDK raises bare Exception for control errors
                self._log.warning("claude_interrupt_failed", error=str(exc))
                transport.kill_now()

    def run_turn(self, request: TurnRequest) -> AsyncIterator[ProviderEvent]:
        """Run one turn: the CLI's events, normalized, ending with one `TurnCompleted`.

        Raises:
            ProviderAuthError: the API refused the key (401/403) or none is configured.
            ProviderTimeout: ``idle_timeout`` or ``turn_timeout`` passed (the session survives).
            ProviderProtocolError: a frame over ``max_buffer_size`` or unreadable output.
            ProviderError: the CLI process died mid-turn (``kind="process_exited"``).
        """
        return self._run_turn(request)

    async def _run_turn(self, request: TurnRequest) -> AsyncGenerator[ProviderEvent, None]:
        if self._turn_active:
            raise ProviderError(provider=self.provider.name, message="a turn is already running", kind="busy")
        self._turn_active = True
        self._interrupt_requested = False
        self._interrupt_deadline = float("inf")
        completed = False
        try:
            client = await self._ensure(request.options)
            try:
                await client.query(request.prompt)
            except CLIConnectionError:
                await self.stop(kill=True)
                client = await self._ensure(request.options)
                await client.query(request.prompt)
            mapper = _TurnMapper(self)
            messages = _receive(client)
            now = trio.current_time()
            turn_deadline = now + self.provider.turn_timeout if self.provider.turn_timeout is not None else float("inf")
            try:
                while True:
                    idle_deadline = (
                        trio.current_time() + self.provider.idle_timeout
                        if self.provider.idle_timeout is not None and not mapper.tools_running
                        else float("inf")  # a tool may run quietly for long: only turn_timeout bounds it
                    )
                    message: Any = None
                    with trio.CancelScope(deadline=min(idle_deadline, turn_deadline, self._interrupt_deadline)) as wait:
                        self._wait_scope = wait
                        try:
                            message = await messages.__anext__()
                        except StopAsyncIteration:
                            message = None
                        except ClaudeSDKError as exc:
                            if self._transport is not None:
                                self._transport.kill_now()  # the SDK's reader is gone: nothing will end this turn
                            raise self._broken(exc) from exc
                        finally:
                            self._wait_scope = None
                    if wait.cancelled_caught:
                        now = trio.current_time()
                        if now >= self._interrupt_deadline or self._interrupt_requested:
                            completed = True
                            await self.stop(kill=True)
                            yield mapper.interrupted("the CLI did not stop in time; its process was killed")
                            return
                        phase, limit = (
                            ("turn", self.provider.turn_timeout)
                            if now >= turn_deadline
                            else ("idle", self.provider.idle_timeout)
                        )
                        raise ProviderTimeout(
                            provider=self.provider.name,
                            message=f"no {'end of turn' if phase == 'turn' else 'event'} from the CLI within {limit} s",
                            kind="timeout",
                            retryable=True,
                            phase=phase,
                        )
                    if message is None:
                        returncode = await self._reap()
                        tail = self._stderr_tail()
                        if self._interrupt_requested:
                            completed = True
                            yield mapper.interrupted(f"the CLI exited ({returncode}) after the interrupt")
                            return
                        raise ProviderError(
                            provider=self.provider.name,
                            message=f"the CLI exited mid-turn (exit code {returncode}){tail}",
                            kind="process_exited",
                            retryable=True,
                        )
                    for event in mapper.feed(message):
                        yield event
                    if isinstance(message, ResultMessage):
                        completed = True
                        final = mapper.finish(message)
                        carried = final.extra.get("carried_cost_usd")
                        if carried and self.mirror is not None:
                            with trio.CancelScope(shield=True):
                                await self.mirror.add_unreported_cost(-carried)
                        yield final
                        return
            finally:
                with trio.CancelScope(shield=True):
                    await messages.aclose()
        finally:
            self._turn_active = False
            self._wait_scope = None
            with trio.CancelScope(shield=True):
                if not completed:
                    await self._settle()
                if self.provider.transport == "per_turn":
                    await self.stop()

    def _broken(self, exc: ClaudeSDKError) -> ProviderError:
        if isinstance(exc, CLIJSONDecodeError):
            return ProviderProtocolError(
                provider=self.provider.name,
                message=f"unreadable output from the CLI: {exc}",
                kind="frame",
                detail=str(exc.original_error),
            )
        if isinstance(exc, MessageParseError):
            return ProviderProtocolError(
                provider=self.provider.name, message=str(exc), kind="frame", detail=json.dumps(exc.data, default=repr)
            )
        code = exc.exit_code if isinstance(exc, ProcessError) else None
        return ProviderError(
            provider=self.provider.name,
            message=f"the CLI failed mid-turn: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            + (f" (exit code {code})" if code is not None else "")
            + self._stderr_tail(),
            kind="process_exited",
            retryable=True,
        )

    async def _reap(self) -> int | None:
        transport = self._transport
        await self.stop(kill=True)
        return transport.returncode if transport is not None else None

    async def _settle(self) -> None:
        """After a turn that did not complete: interrupt it and drain to its result, or
        kill the process (the next turn resumes in a new one)."""
        client, transport = self._client, self._transport
        if client is None or transport is None:
            return
        if transport.alive and not transport.killed:
            with trio.move_on_after(self.provider.interrupt_grace):
                try:
                    await client.interrupt()
                    async with contextlib.aclosing(_receive(client)) as messages:
                        async for message in messages:
                            if isinstance(message, ResultMessage):
                                # the turn was already reported (failed or cancelled): its cost goes on the next one
                                unreported = self._cost(message.total_cost_usd)[0]
                                self._carried_cost = _sum(self._carried_cost, unreported)
                                if self.mirror is not None:
                                    await self.mirror.add_unreported_cost(unreported)
                                self._model_usage(message.model_usage)
                                self._log.info("claude_turn_settled", pid=transport.pid)
                                return
                except Exception as exc:  # noqa: BLE001 - the SDK raises bare Exception for control errors
                    self._log.info("claude_settle_failed", error=str(exc))
        await self.stop(kill=True)


class _TurnMapper:
    """Maps one turn's SDK messages onto the normalized events."""

    def __init__(self, session: ClaudeSession) -> None:
        self.session = session
        self.texts: list[str] = []
        self.tool_names: dict[str, str] = {}
        self.calls: list[ToolCall] = []
        self.model: str | None = None
        self.error_text: str | None = None
        self._message_id: str | None = None
        self._pending_text: list[str] = []
        self._pending_calls: list[ToolCall] = []
        self._running_tools: set[str] = set()

    @property
    def tools_running(self) -> bool:
        """Whether a tool call was requested and has not finished yet."""
        return bool(self._running_tools)

    def _session_id(self, message: Any) -> list[ProviderEvent]:
        sid = (
            message.data.get("session_id")
            if isinstance(message, SystemMessage)
            else getattr(message, "session_id", None)
        )
        if isinstance(sid, str) and sid and sid != self.session.claude_session_id:
            self.session.claude_session_id = sid
            return [ProviderSessionId(sid)]
        return []

    def _flush(self) -> list[ProviderEvent]:
        if not self._pending_text and not self._pending_calls:
            return []
        message = Message(role="assistant", content="".join(self._pending_text), tool_calls=tuple(self._pending_calls))
        self._pending_text, self._pending_calls, self._message_id = [], [], None
        return [MessageAdded(message)]

    def feed(self, message: Any) -> list[ProviderEvent]:
        events = self._session_id(message)
        if getattr(message, "parent_tool_use_id", None) is not None:
            return events  # a subagent's inner messages stay inside its tool call
        if isinstance(message, StreamEvent):
            event = message.event
            if event.get("type") == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    events.append(TextDelta(delta["text"]))
                elif delta.get("type") == "thinking_delta" and delta.get("thinking"):
                    events.append(ThinkingDelta(delta["thinking"]))
        elif isinstance(message, AssistantMessage):
            if message.error is not None or message.model == "<synthetic>":
                self.error_text = "".join(b.text for b in message.content if isinstance(b, TextBlock)) or message.error
                return events + self._flush()
            if self._message_id is not None and message.message_id != self._message_id:
                events += self._flush()
            self._message_id = message.message_id
            self.model = message.model
            for block in message.content:
                if isinstance(block, TextBlock):
                    self._pending_text.append(block.text)
                    self.texts.append(block.text)
                elif isinstance(block, ToolUseBlock):
                    call = ToolCall(id=block.id, name=block.name, arguments=dict(block.input))
                    self.tool_names[block.id] = block.name
                    self._running_tools.add(block.id)
                    self.calls.append(call)
                    self._pending_calls.append(call)
                    events.append(ToolCallRequested(call))
        elif isinstance(message, UserMessage):
            events += self._flush()
            if isinstance(message.content, list):
                for block in message.content:
                    if isinstance(block, ToolResultBlock):
                        self._running_tools.discard(block.tool_use_id)
                        result = ToolResult(
                            tool_call_id=block.tool_use_id,
                            name=self.tool_names.get(block.tool_use_id, ""),
                            content=_tool_text(block.content),
                            is_error=bool(block.is_error),
                        )
                        events.append(ToolCallFinished(result))
                        events.append(MessageAdded(Message(role="tool", content=result.content, tool_result=result)))
        elif isinstance(message, ResultMessage):
            self._running_tools.clear()
            events += self._flush()
        return events

    def interrupted(self, note: str) -> TurnCompleted:
        return TurnCompleted(
            text="".join(self.texts),
            finish_reason=FinishReason.INTERRUPTED,
            is_error=True,
            error=f"interrupted: {note}",
            model=self.model,
            extra={"session_id": self.session.claude_session_id},
        )

    def finish(self, result: ResultMessage) -> TurnCompleted:
        session = self.session
        cost, process_total = session._cost(result.total_cost_usd)
        carried, session._carried_cost = session._carried_cost, 0.0
        cost = _sum(cost, carried)
        model_usage = session._model_usage(result.model_usage)
        raw = result.usage or {}
        usage = Usage(
            input_tokens=int(raw.get("input_tokens") or 0),
            output_tokens=int(raw.get("output_tokens") or 0),
            cache_creation_tokens=int(raw.get("cache_creation_input_tokens") or 0),
            cache_read_tokens=int(raw.get("cache_read_input_tokens") or 0),
            reasoning_tokens=int((raw.get("output_tokens_details") or {}).get("thinking_tokens") or 0),
        )
        finish = _FINISH.get(result.subtype, FinishReason.PROVIDER_ERROR)
        if finish is FinishReason.STOP and result.is_error:
            finish = FinishReason.PROVIDER_ERROR
        if session._interrupt_requested or (result.terminal_reason or "").startswith("aborted"):
            finish = FinishReason.INTERRUPTED
        is_error = finish is not FinishReason.STOP
        result_text = result.result if isinstance(result.result, str) else None
        error: str | None = None
        if is_error:
            error = "; ".join(result.errors or ()) or result_text or self.error_text or result.subtype
        status = result.api_error_status
        denials = [d for d in result.permission_denials or () if isinstance(d, Mapping)]
        extra: dict[str, Any] = {
            "subtype": result.subtype,
            "terminal_reason": result.terminal_reason,
            "stop_reason": result.stop_reason,
            "duration_ms": result.duration_ms,
            "duration_api_ms": result.duration_api_ms,
            "model_usage": model_usage,
            "process_total_cost_usd": process_total,
            "session_id": result.session_id,
        }
        if carried:
            extra["carried_cost_usd"] = carried
        if denials:
            extra["permission_denials"] = [dict(d) for d in denials]
        if result.structured_output is not None:
            extra["structured_output"] = result.structured_output
        if is_error and finish is FinishReason.PROVIDER_ERROR:
            kind = _ERROR_KINDS.get(status or 0, "server_error" if status and status >= 500 else "api_error")
            extra["error_kind"] = kind
            extra["retryable"] = kind in ("rate_limited", "overloaded", "server_error")
            if kind == "auth" or (status is None and error and "Not logged in" in error):
                raise ProviderAuthError(
                    provider=session.provider.name, message=error or "authentication failed", kind="auth", status=status
                )
        text = result_text if result_text is not None and not is_error else "".join(self.texts)
        return TurnCompleted(
            text=text,
            finish_reason=finish,
            is_error=is_error,
            cost_usd=cost,
            usage=usage,
            num_turns=result.num_turns,
            error=error,
            api_error_status=status,
            model=self.model,
            permission_denials=tuple(str(d.get("tool_name", "")) for d in denials),
            extra=extra,
        )


async def _receive(client: ClaudeSDKClient) -> AsyncGenerator[Any, None]:
    """`ClaudeSDKClient.receive_messages`, with its inner generator closed when this one is.

    The SDK's version wraps ``Query.receive_messages()`` without closing it, so leaving it
    early (``receive_response`` does, at every result) leaves the inner generator to the
    garbage collector, and trio reports a ResourceWarning for each turn.
    """
    query = client._query
    if query is None:
        raise CLIConnectionError("Not connected. Call connect() first.")
    async with contextlib.aclosing(query.receive_messages()) as raw:
        async for data in raw:
            message = parse_message(data)
            if message is not None:
                yield message


def _tool_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [c.get("text", "") for c in content if isinstance(c, Mapping) and c.get("type") == "text"]
        if len(parts) == len(content):
            return "".join(parts)
    return json.dumps(content, default=repr)
