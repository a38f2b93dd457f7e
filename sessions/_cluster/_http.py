"""The node-to-node HTTP API (Starlette on Hypercorn), behind the cluster's shared token.

- ``POST /v1/call/{name}``: a client function's request (see ``_wire``); 200 with the
  reply or the typed error, 409 when this node does not hold the session and will not
  take it (the caller routes again), 401 without the token.
- ``GET /v1/node``: this node's id, state and sessions.
- ``GET /v1/tree``: ``otpy.tree`` of this node's sessions, as text.
- ``GET /healthz``: no token.
"""

from __future__ import annotations

import hmac
import json
import math
from typing import TYPE_CHECKING, Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import otpy

from .._errors import SessionError
from ..web._serve import serve
from ._wire import NotHere, decode_request, encode_error, encode_reply

if TYPE_CHECKING:
    from ._node import ClusterNode

_MAX_BODY = 16 * 1024 * 1024
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
        Route("/v1/node", info, methods=["GET"]),
        Route("/v1/tree", tree, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
    ]
    return Starlette(routes=routes)


async def serve_node_app(
    app: Starlette, *, host: str, port: int, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the node's app (Hypercorn on trio, as `sessions.web.serve`); report its base URL."""
    await serve(app, host=host, port=port, task_status=task_status)
