"""The bounds of the web app: every queue, buffer and count it keeps has one."""

from __future__ import annotations

from typing import Any

import attrs

from .._errors import InvalidOption


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidOption(attribute.name, value, "expected a number > 0")


@attrs.frozen
class WebLimits:
    """How much the web app keeps, per connection and per session; nothing it holds is unbounded.

    Attributes:
        max_body_bytes: the largest request body accepted (413 beyond it).
        max_subscribers_per_session: SSE streams on one session at once (503 beyond).
        max_streams: SSE streams on the whole app at once, dashboards included (503 beyond).
        client_buffer: events queued for one SSE stream; a client that falls this far
            behind is dropped (its connection closed), not buffered for: it reconnects
            with ``Last-Event-ID`` and gets what it missed.
        replay_events: events of the running turn kept per session for reconnecting
            clients; a client that missed more gets a snapshot instead.
        replay_bytes: the same replay's size bound, in bytes of encoded events.
        relay_buffer: the web app's own subscription buffer on each session.
        keepalive: seconds between SSE comments on a quiet stream (they also find
            clients that went away).
        max_page: the largest ``limit`` of a paged list.
        tick: seconds between two looks at the supervision tree.

    Example::

        app = sessions.web.create_app("agents", token=token, limits=sessions.web.WebLimits(max_streams=100))
    """

    max_body_bytes: int = attrs.field(default=64 * 1024, validator=_positive)
    max_subscribers_per_session: int = attrs.field(default=64, validator=_positive)
    max_streams: int = attrs.field(default=2048, validator=_positive)
    client_buffer: int = attrs.field(default=1024, validator=_positive)
    replay_events: int = attrs.field(default=4096, validator=_positive)
    replay_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    relay_buffer: int = attrs.field(default=4096, validator=_positive)
    keepalive: float = attrs.field(default=15.0, validator=_positive)
    max_page: int = attrs.field(default=500, validator=_positive)
    tick: float = attrs.field(default=0.25, validator=_positive)
