"""Every private claude-agent-sdk name the Claude provider uses, and why: `PRIVATE_USES` is the
table, the one place to look when an SDK release moves one; `check` names what moved, and a
test runs it, so an upgrade that breaks one is a one-line report.

Public names are used everywhere else; three former private uses were replaced by a few
lines of our own (the projects folder, ``--permission-prompt-tool stdio`` for
``can_use_tool``, the SDK's ``MessageParseError`` recognised by its ``data`` attribute).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Final

import attrs

_TRANSPORT: Final = "claude_agent_sdk._internal.transport.subprocess_cli"
_RESUME: Final = "claude_agent_sdk._internal.session_resume"
_WHY_TRANSPORT: Final = (
    "the CLI must start under the launcher (`_claude_process`); the public Transport is abstract, and rew"
    "riting the SDK's flags, environment and framing would copy 1,200 lines"
)
_WHY_RESUME: Final = (
    "ClaudeSDKClient loads a session_store transcript for --resume only when it builds its own transport:"
    " with ours the provider takes the same steps"
)
_WHY_WAKE: Final = (
    "the turn waits for the CLI's next message with no cancel scope per message (one costs more than the SDK's whol"
    "e parse): a watchdog ends a wait whose deadline passed by putting a marker into the SDK's message stream"
)
_WHY_PARSE: Final = (
    "ClaudeSDKClient.receive_messages leaves its inner generator to the garbage collector when closed ear"
    "ly (a ResourceWarning per turn): the provider reads the raw stream and parses it with the SDK's parser"
)


@attrs.frozen
class PrivateUse:
    """One private SDK name: ``module``, then ``path`` (attributes, dotted); ``instance``:
    the last part is an attribute of an instance of ``ClaudeSDKClient``, not of the class;
    ``assigned``: the last part is an attribute the class's ``__init__`` assigns (read in
    its source)."""

    module: str
    path: str
    why: str
    instance: bool = False
    assigned: bool = False

    def problem(self) -> str | None:
        """None when the name is where it was; else what moved, by name."""
        try:
            target: object = importlib.import_module(self.module)
        except ImportError as exc:
            return f"{self.module} cannot be imported ({exc})"
        parts = self.path.split(".")
        if self.instance:
            from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient

            target = ClaudeSDKClient(ClaudeAgentOptions())
            parts = parts[1:]
        attribute = parts.pop() if self.assigned else None
        for part in parts:
            if not hasattr(target, part):
                return f"{self.module}.{self.path} is gone"
            target = getattr(target, part)
        if attribute is not None:
            try:
                source = inspect.getsource(getattr(target, "__init__"))  # noqa: B009
            except (OSError, TypeError):
                return f"{self.module}.{self.path}: the source of __init__ cannot be read"
            if f"self.{attribute}" not in source:
                return f"{self.module}.{self.path} is gone"
        return None


PRIVATE_USES: Final = (
    PrivateUse(_TRANSPORT, "SubprocessCLITransport", _WHY_TRANSPORT),
    PrivateUse(
        _TRANSPORT, "SubprocessCLITransport._build_command", "overridden: the launcher goes in front of the CLI"
    ),
    PrivateUse(_TRANSPORT, "SubprocessCLITransport.read_messages", "overridden: the reader is closed on close"),
    PrivateUse(_TRANSPORT, "SubprocessCLITransport.end_input", "called: stdin EOF, the first step of a close"),
    PrivateUse(_RESUME, "materialize_resume_session", _WHY_RESUME),
    PrivateUse(_RESUME, "apply_materialized_options", _WHY_RESUME),
    PrivateUse(_RESUME, "MaterializedResume", _WHY_RESUME),
    PrivateUse("claude_agent_sdk._internal.message_parser", "parse_message", _WHY_PARSE),
    PrivateUse("claude_agent_sdk._internal.query", "Query.receive_messages", _WHY_PARSE),
    PrivateUse("claude_agent_sdk", "ClaudeSDKClient._query", _WHY_PARSE, instance=True),
    PrivateUse("claude_agent_sdk._internal.query", "Query._message_send", _WHY_WAKE, assigned=True),
)
"""The private names used, each with its reason."""


def check() -> list[str]:
    """What moved in the installed claude-agent-sdk, one line per private name ([] if nothing)."""
    return [problem for use in PRIVATE_USES if (problem := use.problem()) is not None]


try:
    from claude_agent_sdk._internal.message_parser import parse_message
    from claude_agent_sdk._internal.session_resume import (
        MaterializedResume,
        apply_materialized_options,
        materialize_resume_session,
    )
    from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport
except ImportError as exc:  # pragma: no cover - only with an SDK that moved them
    from claude_agent_sdk import __version__

    raise ImportError(
        f"claude-agent-sdk {__version__} moved what the Claude provider uses: {'; '.join(check()) or exc}"
    ) from exc

__all__ = [
    "PRIVATE_USES",
    "MaterializedResume",
    "PrivateUse",
    "SubprocessCLITransport",
    "apply_materialized_options",
    "check",
    "materialize_resume_session",
    "parse_message",
]
