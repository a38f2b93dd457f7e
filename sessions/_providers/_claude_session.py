"""A connected `ClaudeCode`: the CLI process of one session, its start, stop, recovery and turns."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
import attrs
import trio
from claude_agent_sdk import (
    ClaudeAgentOptions,
    ClaudeSDKClient,
    ClaudeSDKError,
    CLIConnectionError,
    CLIJSONDecodeError,
    CLINotFoundError,
    ProcessError,
    ResultMessage,
    project_key_for_directory,
)

import otpy

from .._errors import (
    InvalidOption,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
    ProviderUnavailable,
    ResumeRejected,
    StoreError,
)
from .._events import Message, ProviderEvent, Result
from ._base import SessionContext, TurnRequest
from ._claude_costs import cost_delta, cost_sum, restored_costs
from ._claude_options import (
    UUID,
    apply_query_opts,
    options_signature,
    permission_mode,
    projects_dir,
    version_tuple,
    with_permission_prompts,
)
from ._claude_private import MaterializedResume, apply_materialized_options, materialize_resume_session
from ._claude_process import LauncherTransport
from ._claude_store import ClaudeTranscriptStore
from ._claude_turn import WAKE, TurnMapper, receive_messages, wake_stream

if TYPE_CHECKING:
    from ._claude import ClaudeCode

log = otpy.get_logger("sessions.claude")

_STDERR_LINES: Final = 40
_MISSING: Final = object()


def _read_transcript(path: Path) -> list[dict[str, Any]]:
    """The entries of a CLI transcript file ([] when it cannot be read)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


@attrs.frozen
class Branch:
    """Where the CLI's conversation stood at the end of a turn: its CLI ``session``, the uuid
    ``at`` of the turn's last transcript entry (what ``--resume`` with ``--fork-session`` and
    ``--resume-session-at`` take), and the store key of the log that mirrors that CLI session
    (``mirror_key``, None if unknown)."""

    session: str
    at: str
    mirror_key: str | None = None


def branch_point(result: Result | None) -> Branch | None:
    """The `Branch` the turn ``result`` reports (``extra["session_id"]``,
    ``extra["resume_session_at"]``, ``extra["mirror_key"]``). None when it says no such thing
    (a turn cut by a server exit, another provider's turn, a turn recorded by a release that
    did not record the uuid)."""
    if result is None:
        return None
    session = result.provider_session_id or result.extra.get("session_id")
    at = result.extra.get("resume_session_at")
    if not (isinstance(session, str) and isinstance(at, str) and UUID.fullmatch(session) and UUID.fullmatch(at)):
        return None
    mirror_key = result.extra.get("mirror_key")
    return Branch(session, at, mirror_key if isinstance(mirror_key, str) and mirror_key.endswith(".claude") else None)


def exit_text(code: int | None) -> str:
    """How the CLI ended, in words, its exit code said once: "the CLI was killed by SIGKILL (exit code -9)"."""
    if code is None:
        return "the CLI stopped"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the CLI was killed by {name} (exit code {code})"
    return f"the CLI exited with exit code {code}"


@attrs.define(eq=False)
class _Watch:
    """One turn's watchdog (`ClaudeSession._watchdog`): its whole life, and its current sleep."""

    scope: trio.CancelScope
    sleep: trio.CancelScope | None = None


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
        self.claude_session_id: str | None = ctx.provider_session_id or provider.options.resume
        """The CLI session the next start resumes: the session's own (a restart), else the one the
        provider was told to resume (``ClaudeAgentOptions(resume=...)``), else None (a new one)."""
        self.reported_session_id: str | None = ctx.provider_session_id
        """The CLI session id last reported to the server (`ProviderSessionId`)."""
        self.branch: Branch | None = None
        """After a rewind or in a fork (`SessionContext.continues_from`): the CLI session and the
        uuid of its transcript entry to fork at, until the CLI reports the new session's id."""
        self._seed = False
        """The next turn carries the session's transcript: the CLI never had this conversation."""
        if ctx.provider_session_id is None and provider.options.resume is None:
            self.branch = branch_point(ctx.continues_from)
            if self.branch is not None:
                self.claude_session_id = self.branch.session
            else:
                self._seed = any(m.role == "assistant" for m in ctx.messages)
        self.mirror = (
            ClaudeTranscriptStore(ctx.store, ctx.session_id) if provider.mirror and ctx.store is not None else None
        )
        self.version: tuple[int, int, int] | None = None
        self._client: ClaudeSDKClient | None = None
        self._transport: LauncherTransport | None = None
        self._materialized: MaterializedResume | None = None
        self._signature: str | None = None
        self._query_opts: dict[str, Any] = {}
        self._cost_base = 0.0
        self._carried_cost = 0.0
        self._started_once = False
        self._model_usage_base: dict[str, dict[str, float]] = {}
        self._turn_active = False
        self._recovered_from: str | None = None
        self._interrupt_requested = False
        self._interrupt_deadline = float("inf")
        self._idle_deadline = float("inf")
        self._watch: _Watch | None = None
        self._log = log.bind(session=ctx.session_id)
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)

    @property
    def branching(self) -> bool:
        """Whether the next CLI start forks the conversation at ``branch`` (the CLI has not
        reported the new session yet, and the one to fork is still the one to resume)."""
        return self.branch is not None and self.claude_session_id == self.branch.session

    @property
    def provider_session_id(self) -> str | None:
        """The CLI's id of this session's conversation (what ``--resume`` takes), None before
        the CLI reported one."""
        return self.claude_session_id

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
        if self.branching:
            assert self.branch is not None
            changes["fork_session"] = True
            changes["resume_session_at"] = self.branch.at
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
        if self.branching:
            await self._copy_branch_source(options)
        try:
            materialized = await materialize_resume_session(options) if options.session_store is not None else None
        except RuntimeError as exc:  # the SDK's wrapper of a failed or slow SessionStore.load
            raise self._unavailable(f"could not load the mirrored transcript: {exc}", "mirror") from exc
        if materialized is not None and resume and await self._local_is_fuller(options, materialized, resume):
            await materialized.cleanup()
            materialized = None
        if materialized is not None:
            options = apply_materialized_options(options, materialized)
        elif resume and self.mirror is not None:
            await self._mirror_local(options, resume)  # a CLI session from elsewhere: mirror it whole
        try:
            transport = LauncherTransport(
                with_permission_prompts(options),
                close_grace=self.provider.close_grace,
                term_grace=self.provider.term_grace,
            )
            client = ClaudeSDKClient(options, transport=transport)
        except ValueError as exc:
            if materialized is not None:
                await materialized.cleanup()
            raise InvalidOption("options", str(options), str(exc)) from None
        self._transport, self._client, self._materialized = transport, client, materialized
        self._signature = options_signature(query_opts)
        self._query_opts = dict(query_opts)
        self._cost_base, self._model_usage_base = 0.0, {}
        if options.resume:
            projects = materialized.config_dir / "projects" if materialized is not None else projects_dir(options.env)
            transcript = projects / project_key_for_directory(options.cwd) / f"{options.resume}.jsonl"
            self._cost_base, self._model_usage_base = await trio.to_thread.run_sync(
                restored_costs, transcript, options.resume
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
            if resume and ("No conversation found" in text or "--resume" in text or self._branch_refused(text)):
                raise ResumeRejected(
                    provider=self.provider.name, message=f"the CLI has no session {resume!r}: {text}", kind="resume"
                ) from exc
            raise self._unavailable(f"the CLI failed to start: {text}{self._stderr_tail()}", "startup") from exc
        version = info.get("claude_code_version")
        self.version = version_tuple(version) if version is not None else None
        minimum = version_tuple(self.provider.min_version)
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
                    await client.set_permission_mode(permission_mode(mode))
        except Exception as exc:  # noqa: BLE001 - any failure: restart the CLI with the new options instead
            self._log.info("claude_switch_failed", error=repr(exc))
            return False
        self._log.info("claude_options_switched", changed=sorted(changed))
        self._query_opts = dict(query_opts)
        return True

    async def _local_is_fuller(
        self, options: ClaudeAgentOptions, materialized: MaterializedResume, resume: str
    ) -> bool:
        """Whether this machine's own transcript of ``resume`` holds more than the store's mirror
        (a CLI killed before its mirror batch was sent): then the CLI resumes from it, and the
        mirror gets the lines it missed (entries are matched by uuid, so none is doubled)."""
        project = project_key_for_directory(options.cwd)
        local = projects_dir(options.env) / project / f"{resume}.jsonl"
        mirrored = materialized.config_dir / "projects" / project / f"{resume}.jsonl"

        local_entries = await trio.to_thread.run_sync(_read_transcript, local)
        if len(local_entries) <= len(await trio.to_thread.run_sync(_read_transcript, mirrored)):
            return False
        self._log.warning("claude_mirror_behind", session_id=resume, local=len(local_entries))
        if self.mirror is not None:
            await self.mirror.append({"project_key": project, "session_id": resume}, cast("Any", local_entries))
        return True

    async def _mirror_local(self, options: ClaudeAgentOptions, resume: str) -> None:
        assert self.mirror is not None
        project = project_key_for_directory(options.cwd)
        entries = await trio.to_thread.run_sync(
            _read_transcript, projects_dir(options.env) / project / f"{resume}.jsonl"
        )
        if entries:
            await self.mirror.append({"project_key": project, "session_id": resume}, cast("Any", entries))

    async def _copy_branch_source(self, options: ClaudeAgentOptions) -> None:
        """Before a fork of another session's CLI conversation (a `SessionServer.fork`): copy
        that CLI session's transcript from the source's mirror into this session's, so that the
        CLI finds it on any machine (this one's ``~/.claude`` may never have seen it)."""
        branch, mirror = self.branch, self.mirror
        if branch is None or branch.mirror_key is None or mirror is None or branch.mirror_key == mirror.key:
            return
        key: Any = {"project_key": project_key_for_directory(options.cwd), "session_id": branch.session}
        try:
            if await mirror.load(key) is not None:
                return
            entries = await ClaudeTranscriptStore(mirror.store, branch.mirror_key.removesuffix(".claude")).load(key)
            if entries:
                await mirror.append(key, entries)
        except StoreError as exc:  # the fork is still tried: this machine may have the transcript
            self._log.warning("claude_branch_copy_failed", session_id=branch.session, error=str(exc))

    def _branch_refused(self, text: str) -> bool:
        """Whether the CLI refused to fork at the branch point: no entry with that uuid in the
        transcript ("No message found with message.uuid of: ..."), or a CLI without the flag."""
        return self.branching and ("message.uuid" in text or "resume-session-at" in text)

    async def start_or_recover(self, query_opts: Mapping[str, Any], messages: Sequence[Message] = ()) -> None:
        """`start`; if the CLI has lost the conversation to resume, start a fresh CLI session
        instead, whose first turn carries the session's own transcript (``messages``, or the
        connection's), recorded as ``extra["recovered_from"]`` on that turn: never a dead end."""
        try:
            await self.start(query_opts)
        except ResumeRejected as exc:
            lost = self.claude_session_id
            self._log.warning("claude_resume_recovered", lost=lost, error=str(exc))
            self.claude_session_id = None
            self._recovered_from = lost
            await self.start(query_opts)

    def _seeded(self, prompt: str, messages: Sequence[Message]) -> str:
        history = list(messages) or list(self.ctx.messages)
        lines = []
        for message in history:
            if message.role == "tool" and message.tool_result is not None:
                lines.append(f"tool {message.tool_result.name}: {message.content}")
            elif message.role in ("user", "assistant") and message.content:
                lines.append(f"{message.role}: {message.content}")
        if not lines:
            return prompt
        transcript = "\n".join(lines)
        return (
            "(The conversation so far, restored from its saved transcript.)\n"
            f"<transcript>\n{transcript}\n</transcript>\n\n{prompt}"
        )

    async def _ensure(self, query_opts: Mapping[str, Any]) -> ClaudeSDKClient:
        signature = options_signature(query_opts)
        transport, client = self._transport, self._client
        if self.provider.transport == "duplex" and client is not None and transport is not None and transport.alive:
            if signature == self._signature:
                return client
            if await self._switch(client, query_opts):
                self._signature = signature
                return client
        await self.stop()
        await self.start_or_recover(query_opts)
        assert self._client is not None
        return self._client

    # --- costs -----------------------------------------------------------------------------

    def _cost(self, total: float | None) -> tuple[float, float]:
        """(this turn's cost, the process's running total) from the CLI's running total."""
        if total is None:
            return 0.0, self._cost_base
        delta = cost_delta(total, self._cost_base)
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
            diff = {k: cost_delta(v, before.get(k, 0.0)) for k, v in now.items()}
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
        if self._watch is not None and self._watch.sleep is not None:
            self._watch.sleep.deadline = min(self._watch.sleep.deadline, self._interrupt_deadline)
        with trio.move_on_after(self.provider.interrupt_grace):
            try:
                await client.interrupt()
            except Exception as exc:  # noqa: BLE001 - the SDK raises bare Exception for control errors
                self._log.warning("claude_interrupt_failed", error=str(exc))
                transport.kill_now()

    async def _watchdog(self, watch: _Watch, wake: Any, turn_deadline: float) -> None:
        """Wake the turn's wait (`WAKE` into the SDK's message stream) when the idle or turn
        deadline, or the interrupt's grace, passes; then sleep until the turn or `interrupt`
        moves ``watch.sleep``'s deadline (a stale wake-up: a message came first) or the turn
        ends (``watch.scope``). A system task: nothing may escape it."""
        try:
            with watch.scope:
                while True:
                    deadline = min(self._idle_deadline, turn_deadline, self._interrupt_deadline)
                    if trio.current_time() >= deadline:
                        # a full buffer (messages to read) or a closed stream ends the wait anyway
                        with contextlib.suppress(
                            anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError
                        ):
                            wake.send_nowait(WAKE)
                        deadline = float("inf")
                    with trio.CancelScope(deadline=deadline) as watch.sleep:
                        await trio.sleep_forever()
        except Exception as exc:  # noqa: BLE001 (a system task must not raise; the turn's own deadline check remains)
            self._log.warning("claude_watchdog_failed", error=repr(exc))
        finally:
            watch.sleep = None

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
            recovered_from, self._recovered_from = self._recovered_from, None
            seed, self._seed = self._seed or recovered_from is not None, False
            prompt = self._seeded(request.prompt, request.messages) if seed else request.prompt
            try:
                await client.query(prompt)
            except CLIConnectionError:
                await self.stop(kill=True)
                client = await self._ensure(request.options)
                await client.query(prompt)
            mapper = TurnMapper(self)
            messages = receive_messages(client)
            now = trio.current_time()
            turn_deadline = now + self.provider.turn_timeout if self.provider.turn_timeout is not None else float("inf")
            # The waits are bounded by a watchdog (`_watchdog`), not by a cancel scope per
            # message: each message only moves `_idle_deadline`.
            watch = self._watch = _Watch(trio.CancelScope())
            trio.lowlevel.spawn_system_task(
                self._watchdog, watch, wake_stream(client), turn_deadline, name=f"claude watchdog {self.ctx.session_id}"
            )
            try:
                while True:
                    now = trio.current_time()
                    self._idle_deadline = (
                        now + self.provider.idle_timeout
                        if self.provider.idle_timeout is not None and not mapper.tools_running
                        else float("inf")  # a tool may run quietly for long: only turn_timeout bounds it
                    )
                    if (sleep := watch.sleep) is not None and self._idle_deadline < sleep.deadline:
                        sleep.deadline = self._idle_deadline  # sooner than the watchdog thought (a tool ended)
                    message: Any = None
                    timed_out = now >= min(turn_deadline, self._interrupt_deadline)
                    if not timed_out:
                        try:
                            message = await messages.__anext__()
                        except StopAsyncIteration:
                            message = None
                        except ClaudeSDKError as exc:
                            if self._transport is not None:
                                if isinstance(exc, CLIJSONDecodeError):
                                    with trio.CancelScope(shield=True):
                                        await self._charge_of_a_broken_turn(self._transport)
                                self._transport.kill_now()  # the SDK's reader is gone: nothing will end this turn
                            raise self._broken(exc) from exc
                        if message is WAKE:  # the watchdog's: a deadline passed, or a stale wake-up
                            now = trio.current_time()
                            timed_out = now >= min(self._idle_deadline, turn_deadline, self._interrupt_deadline)
                            if not timed_out:
                                if watch.sleep is not None:
                                    watch.sleep.cancel()  # let the watchdog read the deadlines again
                                continue
                    if timed_out:
                        now = trio.current_time()
                        if now >= self._interrupt_deadline or self._interrupt_requested:
                            completed = True
                            await self.stop(kill=True)
                            for event in mapper.unfinished_call():
                                yield event
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
                            for event in mapper.unfinished_call():
                                yield event
                            yield mapper.interrupted(f"{exit_text(returncode)} after the interrupt")
                            return
                        raise ProviderError(
                            provider=self.provider.name,
                            message=f"{exit_text(returncode)} mid-turn{tail}",
                            kind="process_exited",
                            retryable=True,
                        )
                    for event in mapper.feed(message):
                        yield event
                    if isinstance(message, ResultMessage):
                        completed = True
                        final = mapper.finish(message)
                        if recovered_from is not None:
                            final = attrs.evolve(final, extra={**final.extra, "recovered_from": recovered_from})
                        carried = final.extra.get("carried_cost_usd")
                        if carried and self.mirror is not None:
                            with trio.CancelScope(shield=True):
                                await self.mirror.add_unreported_cost(-carried)
                        yield final
                        return
            finally:
                watch.scope.cancel()
                if self._watch is watch:
                    self._watch = None
                with trio.CancelScope(shield=True):
                    await messages.aclose()
        finally:
            self._turn_active = False
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
        if hasattr(exc, "data"):  # the SDK's MessageParseError, which it does not export
            return ProviderProtocolError(
                provider=self.provider.name,
                message=str(exc),
                kind="frame",
                detail=json.dumps(getattr(exc, "data", None), default=repr),
            )
        if isinstance(exc, ProcessError):
            message = f"{exit_text(exc.exit_code)} mid-turn"  # the SDK's text repeats the code: say it once
        else:
            message = f"the CLI failed mid-turn: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return ProviderError(
            provider=self.provider.name,
            message=message + self._stderr_tail(),
            kind="process_exited",
            retryable=True,
        )

    async def _reap(self) -> int | None:
        transport = self._transport
        await self.stop(kill=True)
        return transport.returncode if transport is not None else None

    async def _charge_of_a_broken_turn(self, transport: LauncherTransport) -> None:
        """After a frame the SDK could not take (over ``max_buffer_size``), read the CLI's output
        on to the turn's result, for its charge: carried to the next turn, never lost."""
        with trio.move_on_after(self.provider.interrupt_grace):
            result = await transport.result_after_a_broken_line(self.provider.max_buffer_size)
            if result is None:
                return
            total = result.get("total_cost_usd")
            unreported = self._cost(float(total) if isinstance(total, (int, float)) else None)[0]
            self._carried_cost = cost_sum(self._carried_cost, unreported)
            if self.mirror is not None:
                await self.mirror.add_unreported_cost(unreported)
            usage = result.get("modelUsage")
            self._model_usage(usage if isinstance(usage, Mapping) else None)
            self._log.info("claude_broken_turn_charged", cost_usd=unreported)

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
                    async with contextlib.aclosing(receive_messages(client)) as messages:
                        async for message in messages:
                            if isinstance(message, ResultMessage):
                                # the turn was already reported (failed or cancelled): its cost goes on the next one
                                unreported = self._cost(message.total_cost_usd)[0]
                                self._carried_cost = cost_sum(self._carried_cost, unreported)
                                if self.mirror is not None:
                                    await self.mirror.add_unreported_cost(unreported)
                                self._model_usage(message.model_usage)
                                self._log.info("claude_turn_settled", pid=transport.pid)
                                return
                except Exception as exc:  # noqa: BLE001 - the SDK raises bare Exception for control errors
                    self._log.info("claude_settle_failed", error=str(exc))
        await self.stop(kill=True)
