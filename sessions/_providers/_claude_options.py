"""The Claude provider's options: ``query_opts`` names onto `ClaudeAgentOptions`, checked when the provider is built."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args

from claude_agent_sdk import (
    ClaudeAgentOptions,
    PermissionMode,
)

import otpy

from .._errors import (
    InvalidOption,
)

log = otpy.get_logger("sessions.claude")

DEFAULT_MAX_BUFFER_SIZE: Final = 32 * 1024 * 1024
"""The largest single stdout line (JSON message) accepted: 32 MiB (the SDK's is 1 MiB)."""

Transport = Literal["duplex", "per_turn"]

_OPTION_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(ClaudeAgentOptions))
_ALIASES: Final = {"mcp_config": "mcp_servers", "add_dir": "add_dirs", "fallback": "fallback_model"}
_NOT_FROM_QUERY_OPTS: Final = frozenset({"resume", "session_store", "continue_conversation", "fork_session"})
BRANCH_OPTIONS: Final = ("resume_session_at", "resume_drops_turn")
"""The CLI's options to fork a conversation at an earlier point: the provider sets them itself
after a `SessionServer.rewind` and in a `SessionServer.fork`."""
UUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
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
        "resume-session-at",
        "resume-drops-turn",
        "session-mirror",
        "permission-prompt-tool",
        "no-session-persistence",
    }
)
"""CLI flags the provider relies on: ``extra_args`` may not set them."""


def version_tuple(text: object) -> tuple[int, int, int] | None:
    match = re.match(r"\s*(\d+)\.(\d+)\.(\d+)", str(text))
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def projects_dir(env: Mapping[str, str]) -> Path:
    """Where the CLI keeps its transcripts: ``$CLAUDE_CONFIG_DIR/projects``, else ``~/.claude/projects``."""
    config = env.get("CLAUDE_CONFIG_DIR") or os.environ.get("CLAUDE_CONFIG_DIR")
    return (Path(config) if config else Path.home() / ".claude") / "projects"


def with_permission_prompts(options: ClaudeAgentOptions) -> ClaudeAgentOptions:
    """With ``can_use_tool``, the CLI asks for permissions over the control protocol (what
    ``ClaudeSDKClient`` does when it builds its own transport)."""
    if options.can_use_tool is None:
        return options
    if options.permission_prompt_tool_name:
        raise ValueError("can_use_tool cannot be used with permission_prompt_tool_name")
    return dataclasses.replace(options, permission_prompt_tool_name="stdio")


def options_signature(query_opts: Mapping[str, Any]) -> str:
    return json.dumps(dict(query_opts), sort_keys=True, default=repr)


PERMISSION_MODES: Final = get_args(PermissionMode)
"""The CLI's permission modes: default, acceptEdits, plan, bypassPermissions..."""


def permission_mode(value: object) -> PermissionMode:
    """The CLI's spelling of a permission mode: its own (``acceptEdits``) or snake_case
    (``accept_edits``, ``bypass_permissions``, ``plan``, ``default``).

    Raises:
        InvalidOption: any other value, with the allowed ones.

    Example::

        assert permission_mode("accept_edits") == "acceptEdits"
    """
    if isinstance(value, str):
        head, *rest = value.strip().split("_")
        camel = head + "".join(part[:1].upper() + part[1:] for part in rest)
        for mode in PERMISSION_MODES:
            if value == mode or camel == mode:
                return cast("PermissionMode", mode)
    allowed = ", ".join(PERMISSION_MODES)
    snake = ", ".join(re.sub(r"([A-Z])", lambda m: "_" + m[1].lower(), mode) for mode in PERMISSION_MODES)
    raise InvalidOption("permission_mode", value, f"must be one of {allowed} (or {snake})")


def apply_query_opts(base: ClaudeAgentOptions, query_opts: Mapping[str, Any]) -> ClaudeAgentOptions:
    """``base`` with ClaudeWrapper's ``query_opts`` names (or any `ClaudeAgentOptions` field) applied.

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
            raise InvalidOption(
                raw_name,
                value,
                "not per session or per turn: resume a CLI session with ClaudeCode(resume=...) "
                "or ClaudeCode(ClaudeAgentOptions(resume=...)), a new session that resumes it "
                "and mirrors it into its store",
            )
        elif name in BRANCH_OPTIONS:
            raise InvalidOption(
                raw_name,
                value,
                "the provider sets it itself: go back with SessionServer.rewind, or branch with SessionServer.fork",
            )
        elif name == "permission_mode":
            changes[name] = permission_mode(value)
        elif name in _OPTION_FIELDS:
            changes[name] = value
        else:
            raise InvalidOption(raw_name, value, "not a Claude Code option (see docs/providers/claude.md)")
    options = dataclasses.replace(base, **changes)
    if options.permission_mode is not None:
        options = dataclasses.replace(options, permission_mode=permission_mode(options.permission_mode))
    reserved = sorted(_RESERVED_FLAGS.intersection(flag.lstrip("-") for flag in options.extra_args))
    if reserved:
        raise InvalidOption("extra_args", reserved, "the provider sets these CLI flags itself")
    env = dict(options.env)
    if "HOME" in env and "CLAUDE_CONFIG_DIR" not in env:
        env["CLAUDE_CONFIG_DIR"] = str(Path(env["HOME"]) / ".claude")
        options = dataclasses.replace(options, env=env)
    return options
