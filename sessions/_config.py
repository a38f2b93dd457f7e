"""A SessionServer's options: checked once, where they are given (`child_spec`, ``init``)."""

from __future__ import annotations

import difflib
import importlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import attrs

from ._errors import InvalidOption
from ._events import JSON, Message
from ._providers._base import Provider
from ._stores._base import Store
from ._text import check_text


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_number(
    option: str, value: object, *, integer: bool = False, minimum: float = 0, unlimited: bool = True
) -> None:
    """Raise `InvalidOption` unless ``value`` is a number >= ``minimum`` of the right type.

    The policy for every numeric option (documented in ``docs/sessions.md``): a bool is
    not a number, NaN is refused everywhere, a count (``integer``) is an ``int``, and
    ``math.inf`` is accepted only where it means "no limit" (``unlimited``: budgets and
    timeouts, as trio takes ``math.inf`` for "forever"; None says the same).
    """
    if integer:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InvalidOption(option, value, f"expected an int >= {minimum:g}")
        return
    if not _is_number(value) or math.isnan(value) or value < minimum:  # type: ignore[arg-type,operator]
        limit = " (math.inf for no limit)" if unlimited else ""
        raise InvalidOption(option, value, f"expected a number >= {minimum:g}{limit}")
    if not unlimited and math.isinf(value):  # type: ignore[arg-type]
        raise InvalidOption(option, value, "expected a finite number")


def _number(option: str, *, integer: bool = False, minimum: float = 0) -> Any:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if value is not None:
            check_number(option, value, integer=integer, minimum=minimum)

    return check


TURN_OPTIONS: dict[str, dict[str, Any]] = {
    "max_iterations": {"integer": True, "minimum": 1},
    "max_turns": {"integer": True, "minimum": 1},
    "max_budget_usd": {"minimum": 0},
}
"""The turn options that sessions itself reads, and what each must be."""


def check_turn_options(where: str, options: Mapping[str, Any]) -> None:
    """Raise `InvalidOption` for a malformed turn option (``query_opts`` or an override of
    `send_message`): a known numeric option of the wrong type or range, a
    ``system_prompt`` or ``model`` that is not a str, text that cannot be encoded."""
    for key, value in options.items():
        if not isinstance(key, str):
            raise InvalidOption(where, key, "option names must be str")
        check_text(where, key)
        if value is None:
            continue
        if key in TURN_OPTIONS:
            check_number(key, value, **TURN_OPTIONS[key])
        elif key in ("system_prompt", "model") and not isinstance(value, str):
            raise InvalidOption(key, value, "expected a str")
        check_text(key, value)


def _check_provider(_instance: Any, _attribute: Any, value: Any) -> None:
    if not (callable(getattr(value, "connect", None)) or callable(getattr(value, "chat", None))):
        raise InvalidOption("provider", value, "expected a Provider (with connect) or a ModelProvider (with chat)")


def _check_store(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not None and not isinstance(value, Store):
        raise InvalidOption(
            "store", value, "expected a sessions.Store (append, load, list_sessions, delete, claim, aclose)"
        )


def _check_opts(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, dict):
        raise InvalidOption("query_opts", value, "expected a dict")
    check_turn_options("query_opts", value)


def _check_session_id(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidOption("session_id", value, "expected a non-empty str")
    check_text("session_id", value)


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _check_cwd(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value or "\0" in value:
        raise InvalidOption("cwd", value, "expected a directory path (a non-empty str or os.PathLike)")
    check_text("cwd", value)


def _as_messages(value: Any) -> Any:
    """``messages=``: `Message` values, or dicts in `Message.to_dict` form, as a tuple."""
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__iter__"):
        raise InvalidOption("messages", value, "expected a list of sessions.Message (or of dicts like Message.to_dict)")
    seed = []
    for index, item in enumerate(value):
        if isinstance(item, Mapping):
            try:
                item = Message.from_dict(dict(item))
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidOption(f"messages[{index}]", item, f"not a message: {exc}") from None
        if not isinstance(item, Message):
            raise InvalidOption(f"messages[{index}]", item, "expected a sessions.Message or a dict")
        check_text(f"messages[{index}]", item.to_dict())
        seed.append(item)
    return tuple(seed)


def _check_system_prompt(instance: Any, _attribute: Any, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidOption("system_prompt", value, "expected a str")
    check_text("system_prompt", value)
    if instance.query_opts.get("system_prompt") is not None:
        raise InvalidOption("system_prompt", value, "given twice: also in query_opts; keep one")


@attrs.frozen(kw_only=True)
class _Config:
    """A SessionServer's options, checked once (in `child_spec` and in ``init``)."""

    provider: Any = attrs.field(validator=_check_provider)
    store: Store | None = attrs.field(default=None, validator=_check_store)
    query_opts: dict[str, Any] = attrs.field(factory=dict, validator=_check_opts)
    session_id: str | None = attrs.field(default=None, validator=_check_session_id)
    cwd: str | None = attrs.field(default=None, converter=_fspath, validator=_check_cwd)
    max_cost_usd: float | None = attrs.field(default=None, validator=_number("max_cost_usd"))
    max_turns: int | None = attrs.field(default=None, validator=_number("max_turns", integer=True))
    max_queued_turns: int = attrs.field(default=8, validator=_number("max_queued_turns", integer=True))
    interrupt_grace: float = attrs.field(default=5.0, validator=_number("interrupt_grace"))
    turn_timeout: float | None = attrs.field(default=None, validator=_number("turn_timeout"))
    close_timeout: float = attrs.field(default=10.0, validator=_number("close_timeout"))
    subscriber_buffer: int = attrs.field(default=256, validator=_number("subscriber_buffer", integer=True))
    messages: tuple[Message, ...] = attrs.field(default=(), converter=_as_messages)
    system_prompt: str | None = attrs.field(default=None, validator=_check_system_prompt)


_REQUIRED = frozenset({"provider"})


def make_config(options: dict[str, Any]) -> _Config:
    """The checked options of a SessionServer; `InvalidOption` names the first bad one.

    An unknown option is named with the closest known one ("did you mean"), a missing
    required one is named, and the message never names a private class.
    """
    known = sorted(a.name for a in attrs.fields(_Config))
    for name in sorted(options):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the options are {', '.join(known)}"
            raise InvalidOption(name, options[name], f"not a SessionServer option; {hint}")
    for name in sorted(_REQUIRED - set(options)):
        raise InvalidOption(name, None, "is required and missing (a Provider, or a ModelProvider such as Ollama)")
    return _Config(**options)


def check_startable(config: _Config, provider: Provider) -> None:
    """Raise `InvalidOption` for a configuration that can never start: a ``cwd`` that is
    not a directory (the session's, or an ``AgentLoop``'s own). Run by ``init``, so a
    supervisor's start of this one child fails and its siblings are not touched."""
    places = [("the session's cwd", config.cwd)]
    loop_cwd = getattr(provider, "cwd", None) if getattr(provider, "runs_own_tools", True) is False else None
    if isinstance(loop_cwd, str):
        places = [("the AgentLoop's cwd", loop_cwd)]  # it wins over the session's
    for whose, cwd in places:
        if cwd is not None and not os.path.isdir(cwd):
            why = "does not exist" if not os.path.exists(cwd) else "is not a directory"
            raise InvalidOption("cwd", cwd, f"{whose} {why}: the session cannot work there")


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
