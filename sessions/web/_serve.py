"""Serving the app: Hypercorn on trio, on loopback unless told otherwise."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette

from .._errors import InvalidOption


async def serve(
    app: Starlette,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with Hypercorn in the current trio run, until cancelled.

    It binds ``host`` (127.0.0.1 unless you say otherwise) and ``port`` (0: a free one)
    and reports the base URL (``http://127.0.0.1:PORT``) through ``task_status`` once it
    listens, so ``await nursery.start(serve, app)`` returns it. Run it in the trio run of
    the tree the app watches.

    Raises:
        InvalidOption: ``port`` is not in 0..65535.

    Example::

        app = sessions.web.create_app("agents", token=token)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(sessions.web.serve, app))
            print(f"{url}/?token={token}")
    """
    checked: object = port
    if isinstance(checked, bool) or not isinstance(checked, int) or not 0 <= checked <= 65535:
        raise InvalidOption("port", port, "expected an int in 0..65535")
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("sessions.web.server")  # the application decides where it goes
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 30.0
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            functools.partial(hypercorn_serve, app, config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]
        )
        task_status.started(binds[0])
