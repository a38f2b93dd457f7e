"""Small helpers for the public namespace."""

from __future__ import annotations

from typing import Any


def fixup_module_metadata(module_name: str, namespace: dict[str, Any]) -> None:
    """Make every public object claim ``module_name`` as its module (``sessions.Result``,
    not ``sessions._events.Result``). sessions keeps its own copy: it never imports
    otpy's private modules."""
    for name, obj in namespace.items():
        if name.startswith("_"):
            continue
        if getattr(obj, "__module__", "").startswith(f"{module_name}._"):
            try:
                obj.__module__ = module_name
            except (AttributeError, TypeError):
                continue
