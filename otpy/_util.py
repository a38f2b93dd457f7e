"""Small helpers for the public namespace."""

from __future__ import annotations

from typing import Any


def fixup_module_metadata(module_name: str, namespace: dict[str, Any]) -> None:
    """Make every public object claim ``module_name`` as its module, so reprs and
    tracebacks say ``otpy.Supervisor``, not ``otpy._supervisor.Supervisor``."""
    for name, obj in namespace.items():
        if name.startswith("_"):
            continue
        if getattr(obj, "__module__", "").startswith(f"{module_name}._"):
            try:
                obj.__module__ = module_name
            except (AttributeError, TypeError):
                continue


def check_timeout(value: object, argument: str, *, allow_none: bool = False) -> None:
    """Raise a `ValueError` naming ``argument`` unless ``value`` is seconds: a number >= 0
    (``math.inf`` included), never NaN, a negative number or a bool.

    Every public entry point that takes a timeout checks it before sending anything, so a
    bad timeout never leaves a request half delivered (OTP's ``gen_server:call(P, R, -1)``
    fails before sending too).
    """
    if value is None and allow_none:
        return
    value_type = type(value)
    if (value_type is float or value_type is int) and value >= 0:  # type: ignore[operator]  # NaN fails >=
        return
    raise ValueError(f"{argument} must be a number of seconds >= 0 (math.inf for no limit), not {value!r}")
