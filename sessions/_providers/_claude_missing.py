"""Stand-in for `ClaudeCode` when claude-agent-sdk (the ``claude`` extra) is not installed."""

from __future__ import annotations

from typing import Any, NoReturn

from .._errors import ProviderUnavailable


class ClaudeCode:
    """The Claude Code provider needs the ``claude`` extra: ``pip install 'otpy-sessions[claude]'``.

    Example::

        provider = sessions.ClaudeCode()  # ProviderUnavailable without claude-agent-sdk
    """

    name = "claude"
    runs_own_tools = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._missing()

    def _missing(self) -> NoReturn:
        raise ProviderUnavailable(
            provider="claude",
            message="claude-agent-sdk is not installed: pip install 'otpy-sessions[claude]'",
            kind="not_installed",
        )
