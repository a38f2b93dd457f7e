"""Child specifications: what a supervisor needs to know to start, restart and stop a child."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._exceptions import InvalidChildSpec

if TYPE_CHECKING:
    from ._process import Pid

Restart = Literal["permanent", "transient", "temporary"]
ChildType = Literal["worker", "supervisor"]
ShutdownSpec = float | Literal["brutal_kill", "infinity"]
StartFn = Callable[[], Awaitable["Pid | None"]]

_RESTARTS = ("permanent", "transient", "temporary")
_TYPES = ("worker", "supervisor")
_KEYS = frozenset({"id", "start", "restart", "shutdown", "type", "significant"})


def _check_fields(
    child_id: object,
    start: object,
    restart: object,
    shutdown: object,
    child_type: object,
    significant: object,
    auto_shutdown: str | None,
) -> None:
    # The order is OTP's (supervisor.erl do_check_childspec), so the first problem
    # reported is the one OTP reports.
    try:
        hash(child_id)
    except TypeError:
        raise InvalidChildSpec(child_id, "id", child_id, "must be hashable (a str, a tuple, ...)") from None
    if not callable(start):
        raise InvalidChildSpec(child_id, "start", start, "must be an async callable that starts the child")
    if restart not in _RESTARTS:
        raise InvalidChildSpec(child_id, "restart", restart, "must be 'permanent', 'transient' or 'temporary'")
    if significant is True and auto_shutdown == "never":
        raise InvalidChildSpec(
            child_id,
            "significant",
            True,
            "a significant child needs auto_shutdown='any_significant' or 'all_significant'",
            conflict=("auto_shutdown", "never"),
        )
    if significant is True and restart == "permanent":
        raise InvalidChildSpec(
            child_id,
            "significant",
            True,
            "a permanent child cannot be significant",
            conflict=("restart", "permanent"),
        )
    if type(significant) is not bool:
        raise InvalidChildSpec(child_id, "significant", significant, "must be True or False")
    if child_type not in _TYPES:
        raise InvalidChildSpec(child_id, "type", child_type, "must be 'worker' or 'supervisor'")
    if shutdown is None or shutdown in ("brutal_kill", "infinity"):
        return
    if type(shutdown) not in (int, float) or not shutdown >= 0:  # type: ignore[operator]
        raise InvalidChildSpec(
            child_id, "shutdown", shutdown, "must be seconds >= 0, math.inf, 'infinity' or 'brutal_kill'"
        )


@attrs.frozen
class ChildSpec:
    """How a supervisor starts, restarts and stops one child (Elixir's child spec map).

    Every GenServer class builds one with ``child_spec(...)``; write one by hand for
    anything else that starts a process.

    Attributes:
        id: identifies the child inside its supervisor (required).
        start: a zero-argument async callable that starts the child linked to the
            caller and returns its `Pid` (or ``None`` for "ignore").
        restart: ``"permanent"`` (always restarted), ``"transient"`` (restarted only
            after an abnormal exit) or ``"temporary"`` (never restarted; its spec is
            dropped when it exits).
        shutdown: how long the child gets to stop, in seconds, after the exit signal
            ``"shutdown"``; then it is killed. ``math.inf`` (or ``"infinity"``) waits
            forever; ``"brutal_kill"`` kills at once. Default: 5 s for a worker,
            infinity for a supervisor.
        type: ``"worker"`` or ``"supervisor"``.
        significant: whether this child's own exit may stop its supervisor when the
            supervisor has ``auto_shutdown`` set.

    Raises:
        InvalidChildSpec: a field is malformed; the error names the child and the field.

    Example::

        spec = otpy.ChildSpec(
            id="cache",
            start=functools.partial(Cache.start_link, name="cache"),
            restart="transient",
            shutdown=10.0,
        )
    """

    id: Hashable
    start: StartFn
    restart: Restart = "permanent"
    shutdown: ShutdownSpec | None = None
    type: ChildType = "worker"
    significant: bool = False

    def __attrs_post_init__(self) -> None:
        _check_fields(self.id, self.start, self.restart, self.shutdown, self.type, self.significant, None)

    @property
    def shutdown_seconds(self) -> float | Literal["brutal_kill"]:
        """The shutdown spec with defaults applied: seconds (``math.inf`` for infinity) or ``"brutal_kill"``."""
        shutdown = self.shutdown
        if shutdown is None:
            return 5.0 if self.type == "worker" else math.inf
        if shutdown == "infinity":
            return math.inf
        if shutdown == "brutal_kill":
            return "brutal_kill"
        return float(shutdown)


ChildSpecLike = ChildSpec | Mapping[str, Any] | type | tuple[type, Any]


def to_child_spec(spec: object, auto_shutdown: str | None = None) -> ChildSpec:
    """Normalise and validate a child spec for a supervisor with ``auto_shutdown``.

    Accepts a `ChildSpec`, a mapping with the same keys (as Elixir accepts a map), a
    server class (``cls.child_spec()``), or a ``(cls, arg)`` pair (``cls.child_spec(arg)``).
    """
    if isinstance(spec, ChildSpec):
        # Its fields were checked when it was built; only significant depends on the supervisor.
        if spec.significant and auto_shutdown is not None:
            _check_fields(spec.id, spec.start, spec.restart, spec.shutdown, spec.type, spec.significant, auto_shutdown)
        return spec
    if isinstance(spec, Mapping):
        if "id" not in spec:
            raise InvalidChildSpec(None, "id", None, "is missing")
        child_id = spec["id"]
        if "start" not in spec:
            raise InvalidChildSpec(child_id, "start", None, "is missing")
        unknown = set(spec) - _KEYS
        if unknown:
            key = sorted(map(str, unknown))[0]
            raise InvalidChildSpec(child_id, key, spec[key], "is not a child spec key")
        fields = {"restart": "permanent", "shutdown": None, "type": "worker", "significant": False, **spec}
        _check_fields(
            child_id,
            fields["start"],
            fields["restart"],
            fields["shutdown"],
            fields["type"],
            fields["significant"],
            auto_shutdown,
        )
        return ChildSpec(**fields)
    child_spec_fn = getattr(spec, "child_spec", None)
    if isinstance(spec, type) and child_spec_fn is not None:
        return to_child_spec(child_spec_fn(), auto_shutdown)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], type) and hasattr(spec[0], "child_spec"):
        return to_child_spec(spec[0].child_spec(spec[1]), auto_shutdown)
    raise InvalidChildSpec(None, "spec", spec, "expected a ChildSpec, a mapping, a server class or (class, arg)")
