"""What the HTTP model providers share: the error boundary, retries, the concurrency
limit, per-run clients and the price table.

The official clients (``ollama.AsyncClient``, ``openai.AsyncOpenAI``) do the HTTP, the
framing and the parsing. What they do not do is written here: map their many exception
types onto the one `sessions` error tree (`to_provider_error`, the single boundary),
retry with a bounded backoff only before anything was streamed (theirs would retry
behind our back, so they run with retries off), cap the requests in flight per provider
(ExAthena's ``RequestQueue``), and price the tokens.
"""

from __future__ import annotations

import email.utils
import importlib
import json
import math
import random
import sys
import time
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import attrs
import trio

import otpy

from .._config import check_number
from .._errors import (
    InvalidOption,
    ProviderAuthError,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from .._events import Usage

log = otpy.get_logger("sessions.providers")

T = TypeVar("T")

# --- prices ------------------------------------------------------------------------------


@attrs.frozen
class Price:
    """What a model costs, in USD per million tokens.

    Example::

        price = sessions.Price(input_per_mtok=0.15, output_per_mtok=0.60)
        assert price.cost(sessions.Usage(input_tokens=1_000_000)) == 0.15
    """

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    cache_read_per_mtok: float = 0.0
    cache_write_per_mtok: float = 0.0

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(Price):
            check_number(field.name, getattr(self, field.name), unlimited=False)

    def cost(self, usage: Usage) -> float:
        """The USD cost of ``usage`` at this price (negative token counts count as 0)."""
        usage = checked_usage("price", usage)
        return (
            usage.input_tokens * self.input_per_mtok
            + usage.output_tokens * self.output_per_mtok
            + usage.cache_read_tokens * self.cache_read_per_mtok
            + usage.cache_creation_tokens * self.cache_write_per_mtok
        ) / 1_000_000


MAX_TOKENS = 2**53
"""The most tokens one count may say (a larger one is clamped): far beyond any model's,
and still exact as a float, so a cost computed from it stays a finite number."""


def checked_usage(provider: str, usage: Usage) -> Usage:
    """``usage`` with every token count made an int in ``0..MAX_TOKENS``.

    Token counts come from a server, so they are data: a negative count (which would
    give a negative cost, and let the budget stop binding) is counted as 0, a huge one
    as `MAX_TOKENS`, and either is logged at WARNING. Counts that are not integers at
    all (NaN, text) never get here: the response fails validation and the model call
    ends with a `ProviderProtocolError`.
    """
    fixed: dict[str, int] = {}
    for field in attrs.fields(Usage):
        value = getattr(usage, field.name)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
            continue
        if (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and not math.isnan(value)
        ):
            fixed[field.name] = 0 if value < 0 else MAX_TOKENS
        else:
            fixed[field.name] = 0
        log.warning("token_count_out_of_range", provider=provider, field=field.name, value=repr(value))
    return attrs.evolve(usage, **fixed) if fixed else usage


@attrs.frozen
class PriceTable:
    """Prices by model name. A model is looked up exactly, then by the longest name that
    prefixes it (``"gpt-4o"`` prices ``"gpt-4o-2024-08-06"``); an unknown model costs 0.

    sessions ships no prices of its own: they change, and a local model costs nothing.
    Token usage is reported whatever the table says.

    Example::

        prices = sessions.PriceTable({"gpt-4o-mini": sessions.Price(0.15, 0.60)})
        provider = sessions.OpenAICompatible("gpt-4o-mini", prices=prices)
    """

    prices: Mapping[str, Price] = attrs.field(factory=dict)

    def price(self, model: str) -> Price | None:
        """The price of ``model``, or None if the table does not know it."""
        if model in self.prices:
            return self.prices[model]
        best = max((name for name in self.prices if model.startswith(name)), key=len, default=None)
        return self.prices[best] if best is not None else None

    def cost(self, model: str, usage: Usage) -> float:
        """The USD cost of ``usage`` on ``model`` (0.0 for an unknown model)."""
        price = self.price(model)
        return price.cost(usage) if price is not None else 0.0


# --- retries -----------------------------------------------------------------------------


@attrs.frozen
class RetryPolicy:
    """Bounded exponential backoff with full jitter, for requests that failed before
    anything was streamed.

    ``max_attempts`` counts the first try (1 disables retries). The delay before retry
    *n* (from 0) is a random value up to ``min(max_delay, base_delay * 2**n)``; a
    ``Retry-After`` header, when the server sends one, is used instead (capped at
    ``max_delay``). Only errors whose ``kind`` is in ``retry_on`` are retried: by
    default rate limits (429, 529), server errors (5xx) and refused connections.

    Example::

        sessions.Ollama("llama3.1", retry=sessions.RetryPolicy(max_attempts=5, max_delay=30))
    """

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    retry_on: frozenset[str] = attrs.field(
        default=frozenset({"rate_limited", "server_error", "connect"}), converter=frozenset
    )

    def __attrs_post_init__(self) -> None:
        check_number("max_attempts", self.max_attempts, integer=True, minimum=1)
        check_number("base_delay", self.base_delay, unlimited=False)
        check_number("max_delay", self.max_delay, unlimited=False)

    def should_retry(self, error: ProviderError, attempt: int) -> bool:
        """Whether to try again after ``attempt`` (0 for the first try) failed with ``error``."""
        return error.retryable and error.kind in self.retry_on and attempt + 1 < self.max_attempts

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the next try: ``retry_after`` when it is a number of
        seconds >= 0 (NaN, inf and negative values are ignored), capped at ``max_delay``."""
        if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
            return min(retry_after, self.max_delay)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** min(attempt, 64)))


# --- the error boundary ------------------------------------------------------------------


def status_error(provider: str, status: int, message: str) -> ProviderError:
    """The typed error for an HTTP error ``status`` (SESSIONS.md §6.6's list)."""
    if status in (401, 403):
        return ProviderAuthError(provider, message, kind="auth", status=status)
    if status in (429, 529):
        return ProviderRateLimited(provider, message, kind="rate_limited", retryable=True, status=status)
    if status == 408:
        return ProviderTimeout(provider, message, kind="timeout", retryable=True, status=status, phase="turn")
    if status == 404:
        return ProviderError(provider, message, kind="not_found", status=status)
    if status == 413 or (status == 400 and "context" in message.lower()):
        return ProviderError(provider, message, kind="context_length", status=status)
    if 500 <= status < 600:
        return ProviderError(provider, message, kind="server_error", retryable=True, status=status)
    return ProviderError(provider, message, kind="bad_request", status=status)


def _module_error(name: str, attr: str) -> type[BaseException] | None:
    # Only modules already imported can have raised; never import a client here.
    module = sys.modules.get(name)
    found = getattr(module, attr, None) if module is not None else None
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _is(exc: Exception, *names: tuple[str, str]) -> bool:
    return any((cls := _module_error(mod, attr)) is not None and isinstance(exc, cls) for mod, attr in names)


_HTTPX = ("httpx", "httpx2")


def _httpx(attr: str) -> tuple[tuple[str, str], ...]:
    return tuple((mod, attr) for mod in _HTTPX)


def _openai_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return str(getattr(exc, "message", None) or exc)


def _body_message(response: Any, exc: Exception) -> str:
    """The ``error`` of a JSON error body (Ollama's str, OpenAI's object), else the text."""
    try:
        text = str(response.text)
    except Exception:  # noqa: BLE001 (an unread or undecodable body: fall back to the exception)
        return str(exc)
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500] or str(exc)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else text[:500]


def to_provider_error(provider: str, exc: Exception) -> ProviderError:
    """Map any exception from a client, its transport or our parsing onto the error tree.

    This is the one place where the clients' exception types are known. A
    `ProviderError` passes through unchanged.

    Example::

        try:
            ...
        except Exception as exc:
            raise to_provider_error("ollama", exc) from exc
    """
    if isinstance(exc, ProviderError):
        return exc
    # openai: HTTP statuses, then its wrappers of transport errors
    if _is(exc, ("openai", "APIStatusError")):
        return status_error(provider, int(getattr(exc, "status_code", 0)), _openai_message(exc))
    if _is(exc, ("openai", "APITimeoutError")):
        return ProviderTimeout(provider, "request timed out", kind="timeout", retryable=True, phase="idle")
    if _is(exc, ("openai", "APIConnectionError")):
        cause = exc.__cause__
        if isinstance(cause, Exception) and not isinstance(cause, ProviderError):
            mapped = to_provider_error(provider, cause)
            if mapped.kind != "unknown":
                return mapped
        return ProviderUnavailable(provider, f"cannot connect: {exc}", kind="connect", retryable=True)
    if _is(exc, ("openai", "APIResponseValidationError")):
        return ProviderProtocolError(provider, "response does not match the API", kind="protocol", detail=str(exc))
    if _is(exc, ("openai", "APIError")):
        # an error event inside the stream (no HTTP status)
        return ProviderError(provider, _openai_message(exc), kind="api_error")
    # ollama: HTTP statuses and in-stream {"error": ...} lines
    if _is(exc, ("ollama", "ResponseError")):
        status = int(getattr(exc, "status_code", -1))
        message = str(getattr(exc, "error", exc))
        if status > 0:
            return status_error(provider, status, message)
        return ProviderError(provider, message, kind="api_error")
    # httpx (ollama) and httpx2 (openai) transport errors
    if _is(exc, *_httpx("ConnectTimeout"), *_httpx("PoolTimeout")):
        return ProviderTimeout(provider, "timed out connecting", kind="timeout", retryable=True, phase="startup")
    if _is(exc, *_httpx("TimeoutException")):
        return ProviderTimeout(provider, "timed out waiting for data", kind="timeout", retryable=True, phase="idle")
    if _is(exc, *_httpx("ConnectError")) or isinstance(exc, ConnectionRefusedError | ConnectionError):
        return ProviderUnavailable(provider, f"cannot connect: {exc}", kind="connect", retryable=True)
    if _is(exc, *_httpx("HTTPStatusError")):
        response = getattr(exc, "response", None)
        return status_error(provider, int(getattr(response, "status_code", 0)), _body_message(response, exc))
    if _is(exc, *_httpx("TransportError")):
        return ProviderError(provider, f"transport failed: {exc}", kind="transport", retryable=True)
    if _is(exc, *_httpx("DecodingError")):
        return ProviderProtocolError(provider, "undecodable response body", kind="protocol", detail=str(exc))
    # garbage on the wire: undecodable JSON, objects of the wrong shape
    if isinstance(exc, json.JSONDecodeError) or _is(exc, ("pydantic", "ValidationError")):
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return ProviderProtocolError(provider, f"malformed chunk: {detail}", kind="protocol", detail=str(exc))
    return ProviderError(provider, f"{type(exc).__name__}: {exc}", kind="unknown")


def retry_after_of(exc: BaseException) -> float | None:
    """The ``Retry-After`` of an HTTP error response, in seconds, if it has a usable one.

    The header is data from the server. It is used when it is a number of seconds >= 0
    (``"2"``, ``"1.5"``) or an HTTP date (a date in the past is 0); anything else
    (``"nan"``, ``"inf"``, ``"-5"``, ``"soon"``) is ignored, and the policy's own
    backoff applies. `RetryPolicy.delay` caps the result at ``max_delay`` either way.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        headers = getattr(response, "headers", None)
        value = headers.get("retry-after") if headers is not None else None
        if isinstance(value, str):
            try:
                seconds = float(value)
            except ValueError:
                pass
            else:
                return seconds if math.isfinite(seconds) and seconds >= 0 else None
            try:  # an HTTP date
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError, IndexError):
                return None
        current = current.__cause__
    return None


# --- reading a stream's plain pieces without building the client's model --------------------

FieldRules = tuple[tuple[str, "type | frozenset[Any] | None"], ...]
"""The optional fields of a client's pydantic model, each with what it may hold besides
null: a value of exactly one type (`str`, `int`, `bool`), one of a ``Literal``'s values,
or (None) nothing else."""


def field_rules(model: Any, skip: frozenset[str]) -> FieldRules:
    """The `FieldRules` of a pydantic ``model``'s fields but ``skip``, read from the model's
    own annotations (so that a new client release's fields are checked too).

    A provider reads the common piece of a stream (a text delta) straight from the JSON
    when it `fits` these rules and its required fields have their types: the client's
    model would then take it as it is. Anything else is validated by the model in full.
    """
    rules: list[tuple[str, type | frozenset[Any] | None]] = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        inner = [arg for arg in typing.get_args(field.annotation) if arg is not type(None)]
        rule: type | frozenset[Any] | None = None
        if len(inner) == 1 and inner[0] in (str, int, bool):
            rule = inner[0]
        elif len(inner) == 1 and typing.get_origin(inner[0]) is typing.Literal:
            rule = frozenset(typing.get_args(inner[0]))
        rules.append((field.alias or name, rule))
    return tuple(rules)


def fits(obj: dict[str, Any], rules: FieldRules) -> bool:
    """Whether each field of ``rules`` is absent or null in ``obj``, or holds what its rule
    allows (strictly: ``True`` is no int, ``"1"`` no int, and a Literal's value is a str)."""
    for key, rule in rules:
        value = obj.get(key)
        if (
            value is None
            or type(value) is rule
            or (type(value) is str and isinstance(rule, frozenset) and value in rule)
        ):
            continue
        return False
    return True


# --- one value per trio run --------------------------------------------------------------


@attrs.define
class _Held(Generic[T]):
    value: T
    scope: trio.CancelScope


class PerRun(Generic[T]):
    """One value per trio run, made on first use and closed when the run ends.

    A provider is configuration and may be shared by several ``trio.run`` calls (tests
    do that), but an HTTP connection pool and a `trio.CapacityLimiter` belong to the run
    that made them. Each run gets its own, kept in a `trio.lowlevel.RunVar`; a system
    task closes it when the run ends, so that no socket outlives the run even when
    nobody calls ``aclose``.
    """

    def __init__(self, name: str, make: Callable[[], T], close: Callable[[T], Awaitable[None]] | None = None):
        self.name = name
        self._var: trio.lowlevel.RunVar[_Held[T] | None] = trio.lowlevel.RunVar(name, default=None)
        self._make = make
        self._close = close

    def get(self) -> T:
        """This run's value, made now if it has none."""
        held = self._var.get()
        if held is None:
            held = _Held(self._make(), trio.CancelScope())
            self._var.set(held)
            if self._close is not None:
                trio.lowlevel.spawn_system_task(self._close_at_exit, held, name=f"close {self.name}")
        return held.value

    async def _close_at_exit(self, held: _Held[T]) -> None:
        try:
            with held.scope:
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self._close_quietly(held.value)

    async def _close_quietly(self, value: T) -> None:
        if self._close is None:
            return
        try:
            await self._close(value)
        except Exception as exc:  # noqa: BLE001 (closing at the run's end must not crash the run)
            log.warning("client_close_failed", name=self.name, error=repr(exc))

    async def aclose(self) -> None:
        """Close this run's value now (a later `get` makes a new one)."""
        try:
            held = self._var.get()
        except RuntimeError:  # not inside a trio run: nothing of ours is open
            return
        if held is not None:
            self._var.set(None)
            held.scope.cancel()
            await self._close_quietly(held.value)


MAX_LINE_SIZE = 4 * 1024 * 1024
"""The default ``max_line_size`` of the HTTP providers: characters of one streamed line
(Ollama) or server-sent event (OpenAI-compatible), 4 MiB."""


def check_line_size(value: object) -> None:
    """Raise `InvalidOption` unless ``value`` is a usable ``max_line_size`` (an int >= 1)."""
    check_number("max_line_size", value, integer=True, minimum=1)


def line_too_long(provider: str, what: str, limit: int) -> ProviderProtocolError:
    """The error for a streamed line (or event) longer than ``max_line_size``: what a
    server sends is data, and one without an end would otherwise be buffered whole."""
    return ProviderProtocolError(
        provider,
        f"{what} of the response is longer than max_line_size={limit} characters",
        kind="protocol",
        detail=f"{what} over {limit} characters",
    )


def check_positive(option: str, value: float | None, *, allow_none: bool = True) -> None:
    """Raise `InvalidOption` unless ``value`` is a positive number of seconds (or None
    when allowed); ``math.inf`` is accepted and means "no limit", as None does."""
    if value is None and allow_none:
        return
    check_number(option, value)
    if value == 0:
        raise InvalidOption(option, value, "must be a positive number")


def seconds_or_none(value: float | None) -> float | None:
    """A timeout for the HTTP clients, which take None (not ``math.inf``) for no limit."""
    return None if value is None or math.isinf(value) else value


def require_package(provider: str, package: str, extra: str) -> None:
    """Raise `ProviderUnavailable` with the install hint unless ``package`` imports.

    Run when a provider is constructed, so that a missing extra fails there, once,
    and not as an error `Result` of every turn.
    """
    try:
        importlib.import_module(package)
    except ImportError:
        raise unavailable(provider, package, extra) from None


def unavailable(provider: str, package: str, extra: str) -> ProviderUnavailable:
    """The error for a missing optional client package."""
    return ProviderUnavailable(
        provider,
        f"the {package!r} package is not installed: pip install 'otpy-sessions[{extra}]'",
        kind="missing_package",
    )


E = TypeVar("E")


async def guarded_stream(
    provider: str,
    retry: RetryPolicy,
    limiter: trio.CapacityLimiter,
    once: Callable[[], AsyncGenerator[E, None]],
) -> AsyncIterator[E]:
    """Run ``once()`` under the concurrency limit, map its errors, and retry it.

    A failed attempt is retried (per ``retry``) only if it had not yielded anything yet:
    once text reached the caller, a retry would repeat it. The slot in ``limiter`` is
    held while the response streams and given back between retries.
    """
    attempt = 0
    while True:
        started = False
        slot = object()  # released on behalf of this token, whichever task closes us
        try:
            await limiter.acquire_on_behalf_of(slot)
            try:
                stream = once()
                try:
                    async for event in stream:
                        started = True
                        yield event
                finally:
                    await stream.aclose()
            finally:
                limiter.release_on_behalf_of(slot)
            return
        except Exception as exc:
            error = to_provider_error(provider, exc)
            if started or not retry.should_retry(error, attempt):
                if error is exc:
                    raise
                raise error from exc
            delay = retry.delay(attempt, retry_after_of(exc))
            log.info("provider_retry", provider=provider, attempt=attempt + 1, kind=error.kind, delay=round(delay, 3))
        await trio.sleep(delay)
        attempt += 1
