"""A SessionServer's options: checked once, where they are given (`child_spec`, ``init``)."""

from __future__ import annotations

import importlib
import json
from typing import Any

import attrs

from ._errors import InvalidOption
from ._events import JSON
from ._providers._base import Provider
from ._stores._base import Store


def _non_negative(option: str) -> Any:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise InvalidOption(option, value, "expected a number >= 0")

    return check


def _check_provider(_instance: Any, _attribute: Any, value: Any) -> None:
    if not (callable(getattr(value, "connect", None)) or callable(getattr(value, "chat", None))):
        raise InvalidOption("provider", value, "expected a Provider (with connect) or a ModelProvider (with chat)")


def _check_store(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not None and not isinstance(value, Store):
        raise InvalidOption("store", value, "expected a sessions.Store (append, load, list_sessions, delete, aclose)")


def _check_opts(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, dict):
        raise InvalidOption("query_opts", value, "expected a dict")


def _check_session_id(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidOption("session_id", value, "expected a non-empty str")


@attrs.frozen(kw_only=True)
class _Config:
    """A SessionServer's options, checked once (in `child_spec` and in ``init``)."""

    provider: Any = attrs.field(validator=_check_provider)
    store: Store | None = attrs.field(default=None, validator=_check_store)
    query_opts: dict[str, Any] = attrs.field(factory=dict, validator=_check_opts)
    session_id: str | None = attrs.field(default=None, validator=_check_session_id)
    cwd: str | None = None
    max_cost_usd: float | None = attrs.field(default=None, validator=_non_negative("max_cost_usd"))
    max_turns: int | None = attrs.field(default=None, validator=_non_negative("max_turns"))
    max_queued_turns: int = attrs.field(default=8, validator=_non_negative("max_queued_turns"))
    interrupt_grace: float = attrs.field(default=5.0, validator=_non_negative("interrupt_grace"))
    turn_timeout: float | None = attrs.field(default=None, validator=_non_negative("turn_timeout"))
    close_timeout: float = attrs.field(default=10.0, validator=_non_negative("close_timeout"))
    subscriber_buffer: int = attrs.field(default=256, validator=_non_negative("subscriber_buffer"))


def _as_provider(provider: Any) -> Provider:
    """``provider`` itself, or a `ModelProvider` wrapped in the agent loop (``sessions.AgentLoop``)."""
    if callable(getattr(provider, "connect", None)):
        return provider  # type: ignore[no-any-return]
    try:
        loop = importlib.import_module("sessions._loop")
        agent_loop = loop.AgentLoop
    except (ImportError, AttributeError) as exc:
        raise InvalidOption(
            "provider",
            provider,
            "is a ModelProvider (it has chat, no connect): it needs sessions.AgentLoop, which is not available",
        ) from exc
    return agent_loop(provider)  # type: ignore[no-any-return]


def _jsonable(options: dict[str, Any]) -> dict[str, JSON]:
    """The entries of ``options`` that JSON can hold (callbacks and permissions are not stored)."""
    kept: dict[str, JSON] = {}
    for key, value in options.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        kept[str(key)] = value
    return kept
