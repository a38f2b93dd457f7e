"""The node-to-node HTTP API (Starlette on Hypercorn), behind the cluster's shared token.

- ``POST /v1/call/{name}``: a client function's request (see ``_wire``); 200 with the
  reply or the typed error, 409 when this node does not hold the session and will not
  take it (the caller routes again), 401 without the token.
- ``GET /v1/subscribe/{name}?buffer=N``: subscribe to the session here (it must live
  here, or nowhere: then it is activated here) and stream its events as NDJSON: a first
  line ``{"subscribed": capacity}``, then one `encode_event` line per event, and a
  ``{"ping": true}`` line every ``_PING`` seconds without one. The stream ends when the
  session's subscription ends (its server exits); a caller that disconnects ends it
  here. 409 / 401 as above; an error a local subscribe raises: 422 with its JSON form.
- ``GET /v1/node``: this node's id, state and sessions.
- ``GET /v1/tree``: ``otpy.tree`` of this node's sessions, as text.
- ``GET /healthz``: no token.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import otpy

from .._errors import SessionError
from .._server import _Subscribe
from .._subscribers import Subscription
from ..web._serve import serve
from ._wire import NotHere, decode_request, encode_error, encode_event, encode_reply

if TYPE_CHECKING:
    from ._node import ClusterNode

_MAX_BODY = 16 * 1024 * 1024
_PING = 1.0  # seconds between keep-alive lines of an idle subscribe stream (the caller's read timeout is 10 s)
_log = otpy.get_logger("sessions.cluster")


def create_node_app(node: ClusterNode) -> Starlette:
    """The node's HTTP API as an ASGI app."""
    expected = f"Bearer {node.token}".encode()

    def authorised(request: Request) -> bool:
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)

    async def call(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"detail": "wrong or missing bearer token"}, status_code=401)
        raw = await request.body()
        if len(raw) > _MAX_BODY:
            return JSONResponse({"detail": "body too large"}, status_code=413)
        name = request.path_params["name"]
        try:
            data = json.loads(raw)
            forwarded_request = decode_request(data["request"])
            timeout = data.get("timeout")
            timeout = math.inf if timeout is None else float(timeout)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"detail": f"malformed request: {exc}"}, status_code=400)
        node._serving += 1
        try:
            value = await node.call(name, forwarded_request, timeout, forwarded=bool(data.get("forwarded")))
        except NotHere as exc:
            return JSONResponse({"detail": str(exc) or "not here"}, status_code=409)
        except (SessionError, otpy.CallError) as exc:
            return JSONResponse(encode_error(exc))
        except Exception as exc:  # noqa: BLE001 (the caller gets its name and message, not a bare 500)
            _log.warning("cluster_call_failed", session_id=name, error=repr(exc))
            return JSONResponse(encode_error(exc))
        finally:
            node._serving -= 1
        return JSONResponse(encode_reply(value))

    async def subscribe(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"detail": "wrong or missing bearer token"}, status_code=401)
        name = request.path_params["name"]
        try:
            raw = request.query_params.get("buffer")
            buffer = None if raw is None else int(raw)
        except ValueError as exc:
            return JSONResponse({"detail": f"malformed request: {exc}"}, status_code=400)
        try:
            subscription = await node.call(name, _Subscribe(buffer), math.inf, forwarded=True)
        except NotHere as exc:
            return JSONResponse({"detail": str(exc) or "not here"}, status_code=409)
        except Exception as exc:  # noqa: BLE001 (the caller gets its name and message, not a bare 500)
            return JSONResponse(encode_error(exc), status_code=422)
        if not isinstance(subscription, Subscription):  # an application's own server under that name
            return JSONResponse(encode_error(TypeError(f"{name!r} gave no subscription")), status_code=422)
        return StreamingResponse(_stream(name, subscription), media_type="application/x-ndjson")

    async def info(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"detail": "wrong or missing bearer token"}, status_code=401)
        sessions: list[str] = sorted(node._local())
        body: dict[str, Any] = {"node_id": node.node_id, "state": node._state, "sessions": sessions}
        return JSONResponse(body)

    async def tree(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"detail": "wrong or missing bearer token"}, status_code=401)
        sup = node.supervisor
        text = str(otpy.tree(sup)) if sup is not None and sup.alive else "(no sessions)"
        return PlainTextResponse(text + "\n")

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    routes = [
        Route("/v1/call/{name:path}", call, methods=["POST"]),
        Route("/v1/subscribe/{name:path}", subscribe, methods=["GET"]),
        Route("/v1/node", info, methods=["GET"]),
        Route("/v1/tree", tree, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
    ]
    return Starlette(routes=routes)


async def _stream(name: str, subscription: Subscription) -> AsyncIterator[bytes]:
    """The lines of a subscribe stream; the subscription is closed however it ends (the
    caller gone: Starlette cancels this generator)."""
    _log.debug("cluster_subscription_served", session_id=name)
    try:
        yield _line({"subscribed": subscription._inner.capacity})
        while True:
            line = _line({"ping": True})
            with trio.move_on_after(_PING):  # receive loses no event to the timeout
                try:
                    event = await subscription.receive()
                except trio.EndOfChannel:
                    return
                line = _line(encode_event(event))
            yield line  # outside the cancel scope: a generator must not yield inside one
    finally:
        subscription.close()
        _log.debug("cluster_subscription_ended", session_id=name)


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


async def serve_node_app(
    app: Starlette, *, host: str, port: int, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the node's app (Hypercorn on trio, as `sessions.web.serve`); report its base URL."""
    await serve(app, host=host, port=port, task_status=task_status)
