"""Start options versus ``init`` arguments: the clash is caught when the class is defined.

``start_link``, ``start`` and ``open`` pass their positional and keyword arguments to
``init``, except the start options they take themselves; ``child_spec`` adds its own.
An ``init`` parameter with one of those names could only be passed positionally: written
as a keyword (``User.start_link(name="alice")``) it would silently become the option
(here the registered name) and never reach ``init``. So a server class whose ``init`` has
such a parameter is rejected at class definition, with the ways out in the message.
"""

from __future__ import annotations

import inspect
from typing import Final

# option -> what it is taken as
START_OPTIONS: Final = {
    "name": "the registered name (start_link, start, open, child_spec)",
    "nursery": "the nursery the process lives in (start_link, start)",
    "id": "the child id (child_spec)",
    "restart": "the restart type (child_spec)",
    "shutdown": "the shutdown spec (child_spec, open)",
    "significant": "the significant flag (child_spec)",
}

_BY_KEYWORD: Final = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def check_init_options(cls: type) -> None:
    """Raise `TypeError` if ``cls`` defines an ``init`` with a parameter named like a start option.

    A positional-only parameter (before ``/``) cannot be written as a keyword, so it is
    allowed: ``async def init(self, name, /)``.
    """
    init = cls.__dict__.get("init")
    if init is None or not callable(init):
        return
    try:
        parameters = inspect.signature(init).parameters.values()
    except (TypeError, ValueError):
        return
    for parameter in parameters:
        if parameter.kind in _BY_KEYWORD and parameter.name in START_OPTIONS:
            name = parameter.name
            raise TypeError(
                f"{cls.__qualname__}.init has a parameter {name!r}, which is a start option: "
                f"{cls.__qualname__}.start_link({name}=...) would take it as {START_OPTIONS[name]} "
                f"and never pass it to init. Rename the parameter (for example {f'{name}_'!r} or a more "
                f"specific word), make it positional-only (async def init(self, {name}, /)) and pass it "
                f"by position, or pass it inside a config object."
            )
