"""The ASGI app: the JSON and SSE API, the dashboard, authorisation and the error mapping."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import attrs
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import otpy

from .._errors import BudgetExceeded, InvalidOption, SessionBusy, SessionError
from .._events import Result
from .._server import ServerRef, SessionServer
from ._hub import Hub, Outbox, sse_frame
from ._limits import WebLimits
from ._openapi import openapi

COOKIE = "otpy_web_token"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_BATCH_BYTES = 64 * 1024  # one write's worth of waiting frames: what a stream holds beyond its outbox
SessionSpecFactory = Callable[[str, dict[str, Any]], otpy.ChildSpec]


def new_token() -> str:
    """A fresh bearer token for `sessions.web.create_app`: 32 random bytes, URL-safe.

    Example::

        token = sessions.web.new_token()
        app = sessions.web.create_app("agents", token=token)
    """
    return secrets.token_urlsafe(32)


# --- errors as problem+json ----------------------------------------------------------------------


@attrs.define(eq=False)
class Problem(Exception):
    """An HTTP error, answered as ``application/problem+json`` (RFC 9457)."""

    status: int
    title: str
    detail: str = ""
    extra: dict[str, Any] = attrs.field(factory=dict)
    headers: dict[str, str] = attrs.field(factory=dict)

    def response(self) -> Response:
        body = {"type": "about:blank", "title": self.title, "status": self.status, "detail": self.detail, **self.extra}
        return Response(
            json.dumps(body),
            status_code=self.status,
            media_type="application/problem+json",
            headers=self.headers,
        )


def problem_of(exc: Exception, name: str) -> Problem:
    """The HTTP meaning of a sessions or otpy error (the same typed meaning as in Python)."""
    match exc:
        case SessionBusy(session_id=sid, queued=queued):
            return Problem(429, "Session busy", str(exc), {"session_id": sid, "queued": queued}, {"Retry-After": "1"})
        case BudgetExceeded(session_id=sid, kind=kind, limit=limit, spent=spent):
            extra = {"session_id": sid, "kind": kind, "limit": limit, "spent": spent}
            return Problem(409, "Budget exceeded", str(exc), extra)
        case InvalidOption(option=option, problem=what):
            return Problem(422, "Invalid option", str(exc), {"option": option, "problem": what})
        case otpy.NoProcess():
            return Problem(404, "No such session", f"no session named {name!r} is running")
        case otpy.ServerExited(reason=reason):
            return Problem(503, "Session exited", f"the session's server exited: {reason!r}", {}, {"Retry-After": "1"})
        case otpy.CallTimeout():
            return Problem(503, "Session not answering", str(exc), {}, {"Retry-After": "1"})
        case _:
            return Problem(500, "Internal error", type(exc).__name__)


# --- the ASGI layer: security headers, body size ---------------------------------------------------


class _Guard:
    """Sets the security headers on every response, and refuses bodies over the limit
    (by Content-Length at once, and by counting the bytes of a body without one)."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and (not value.isdigit() or int(value) > self.max_body):
                await Problem(413, "Body too large", f"the limit is {self.max_body} bytes").response()(
                    scope, receive, self._secure(send)
                )
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise Problem(413, "Body too large", f"the limit is {self.max_body} bytes")
            return message

        await self.app(scope, counted, self._secure(send))

    @staticmethod
    def _secure(send: Send) -> Send:
        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        return secured


class SseResponse(Response):
    """An endless ``text/event-stream`` fed by an `Outbox`; it ends when the client goes
    away, when the outbox is closed, or at once when the client is dropped for falling behind."""

    def __init__(
        self,
        outbox: Outbox,
        on_close: Callable[[], None],
        keepalive: float,
        next_frame: Callable[[], Awaitable[bytes | None]] | None = None,
    ) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self.next_frame = next_frame if next_frame is not None else outbox.get
        self.batch = next_frame is None
        del self.headers["content-length"]  # a stream has none
        self.headers["cache-control"] = "no-store"
        self.headers["x-accel-buffering"] = "no"
        self.outbox = outbox
        self.on_close = on_close
        self.keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outbox = self.outbox
        try:
            async with trio.open_nursery() as nursery:
                outbox.scope = nursery.cancel_scope
                if outbox.closed and outbox.dropped:
                    return
                nursery.start_soon(self._until_disconnect, receive, nursery.cancel_scope)
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
                while True:
                    frame = None
                    with trio.move_on_after(self.keepalive) as quiet:
                        frame = await self.next_frame()
                    if quiet.cancelled_caught:
                        frame = b": keepalive\n\n"
                    elif frame is None:
                        break
                    elif outbox.frames and self.batch:
                        # what else is waiting goes out in the same write (a client that
                        # fell behind catches up in fewer, larger sends)
                        frames, size = [frame], len(frame)
                        while outbox.frames and size + len(outbox.frames[0]) <= _BATCH_BYTES:
                            size += len(outbox.frames[0])
                            frames.append(outbox.frames.popleft())
                        frame = b"".join(frames)
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                nursery.cancel_scope.cancel()
        finally:
            outbox.close()
            self.on_close()

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


# --- the app ---------------------------------------------------------------------------------------


class _Web:
    """The handlers, with what they share: the hub, the token, the limits, the dynamic supervisor."""

    def __init__(
        self,
        root: ServerRef,
        token: str,
        dynamic: ServerRef | None,
        session_spec: SessionSpecFactory | None,
        limits: WebLimits,
    ) -> None:
        self.hub = Hub(root, limits)
        self.token = token
        self.csrf = hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()
        self.dynamic = dynamic
        self.session_spec = session_spec
        self.limits = limits

    # --- authorisation -------------------------------------------------------------------------

    def _bearer(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def authorise(self, request: Request) -> None:
        """A bearer token, or the dashboard's cookie; state changes by cookie also need
        the CSRF header and a same-origin ``Origin``."""
        bearer = self._bearer(request)
        if bearer is not None:
            if not hmac.compare_digest(bearer.encode(), self.token.encode()):
                raise Problem(401, "Unauthorised", "wrong bearer token", {}, {"WWW-Authenticate": "Bearer"})
            return
        cookie = request.cookies.get(COOKIE)
        if cookie is None or not hmac.compare_digest(cookie.encode(), self.token.encode()):
            raise Problem(401, "Unauthorised", "a bearer token is required", {}, {"WWW-Authenticate": "Bearer"})
        if request.method in ("GET", "HEAD"):
            return
        csrf = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(csrf.encode(), self.csrf.encode()):
            raise Problem(403, "Forbidden", "a state change by cookie needs the X-CSRF-Token header")
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            raise Problem(403, "Forbidden", f"cross-origin request from {origin!r}")

    def endpoint(self, handler: Callable[[Request], Awaitable[Response]], *, public: bool = False) -> Any:
        async def wrapped(request: Request) -> Response:
            try:
                if not public:
                    self.authorise(request)
                return await handler(request)
            except Problem as problem:
                return problem.response()

        return wrapped

    # --- helpers -----------------------------------------------------------------------------------

    def ref(self, request: Request) -> tuple[str, ServerRef]:
        name = request.path_params["name"]
        found = self.hub.sessions().get(name)
        if found is None:
            raise Problem(404, "No such session", f"no session named {name!r} under this tree")
        return name, found[0]

    async def body(self, request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise Problem(415, "Unsupported media type", "send application/json")
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Problem(400, "Malformed JSON", str(exc)) from None
        if not isinstance(data, dict):
            raise Problem(422, "Invalid body", "expected a JSON object")
        return data

    def page(self, request: Request) -> tuple[int, int]:
        values = []
        for key, default in (("offset", 0), ("limit", 100)):
            raw = request.query_params.get(key, str(default))
            if not raw.isdigit() or (key == "limit" and not 1 <= int(raw) <= self.limits.max_page):
                raise Problem(422, "Invalid option", f"{key} must be an integer (limit 1..{self.limits.max_page})")
            values.append(int(raw))
        return values[0], values[1]

    async def summary(self, name: str, ref: ServerRef) -> dict[str, Any]:
        relay = self.hub.relays.get(name)
        found = self.hub.sessions().get(name)
        restarts = found[1].restarts if found is not None else 0
        last = relay.summary["last_activity"] if relay is not None else None
        try:
            session = await SessionServer.get_session(ref)
            status = await SessionServer.status(ref)
        except otpy.CallError:
            return {
                "name": name,
                "session_id": relay.sid if relay is not None else None,
                "status": "down",
                "turn": None,
                "turns": None,
                "cost_usd": None,
                "tokens": None,
                "queued": 0,
                "restarts": restarts,
                "last_activity": last,
            }
        return {
            "name": name,
            "session_id": session.session_id,
            "status": status.state,
            "turn": status.turn,
            "turns": session.turn_count,
            "cost_usd": session.total_cost,
            "tokens": session.usage.total,
            "queued": status.queued,
            "restarts": restarts,
            "last_activity": last,
        }

    async def call(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await fn()
        except (SessionError, otpy.CallError) as exc:
            raise problem_of(exc, name) from None

    # --- handlers --------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def index(self, request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None:
            if not hmac.compare_digest(token.encode(), self.token.encode()):
                raise Problem(401, "Unauthorised", "wrong token")
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            return response
        self.authorise(request)
        html = _asset("dashboard.html").replace("{{csrf}}", self.csrf)
        return Response(html, media_type="text/html; charset=utf-8", headers={"cache-control": "no-store"})

    async def asset(self, request: Request) -> Response:
        name = request.path_params["file"]
        types = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
        if name not in types:
            raise Problem(404, "Not found", name)
        return Response(_asset(name), media_type=types[name], headers={"cache-control": "no-store"})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi())

    async def list_sessions(self, request: Request) -> Response:
        found = self.hub.sessions()
        return JSONResponse({"sessions": [await self.summary(name, ref) for name, (ref, _) in sorted(found.items())]})

    async def get_session(self, request: Request) -> Response:
        name, ref = self.ref(request)
        return JSONResponse(await self.summary(name, ref))

    async def history(self, request: Request) -> Response:
        name, ref = self.ref(request)
        offset, limit = self.page(request)
        results: list[Result] = await self.call(name, lambda: SessionServer.history(ref))
        items = [r.to_dict() for r in results[offset : offset + limit]]
        return JSONResponse({"total": len(results), "offset": offset, "limit": limit, "items": items})

    async def transcript(self, request: Request) -> Response:
        name, ref = self.ref(request)
        offset, limit = self.page(request)
        messages = await self.call(name, lambda: SessionServer.messages(ref))
        items = [m.to_dict() for m in messages[offset : offset + limit]]
        return JSONResponse({"total": len(messages), "offset": offset, "limit": limit, "items": items})

    async def send(self, request: Request) -> Response:
        name, ref = self.ref(request)
        data = await self.body(request)
        prompt, options = data.get("prompt"), data.get("options", {})
        if not isinstance(prompt, str):
            raise Problem(422, "Invalid option", "prompt must be a string", {"option": "prompt"})
        if not isinstance(options, dict):
            raise Problem(422, "Invalid option", "options must be an object", {"option": "options"})
        if "text/event-stream" in request.headers.get("accept", ""):
            return await self.send_streaming(name, ref, prompt, options)
        result: Result = await self.call(name, lambda: SessionServer.send_message(ref, prompt, **options))
        return JSONResponse(result.to_dict())

    async def send_streaming(self, name: str, ref: ServerRef, prompt: str, options: dict[str, Any]) -> Response:
        """The turn's events as SSE, then a ``result`` event; a refusal answers as a problem.

        The turn's number is the one the session will give it when no other client
        sends at the same moment: the stream passes on the events of that turn and later
        ones (each says its turn) until this call's `Result`, which ends it.
        """
        relay = self.hub.relay(name)
        if relay is None:
            raise Problem(404, "No such session", f"no session named {name!r} under this tree")
        status = await self.call(name, lambda: SessionServer.status(ref))
        first = status.turn_count + (1 if status.turn is not None else 0) + status.queued + 1
        outbox = self.open_stream(relay)
        relay.clients.add(outbox)
        outcome: list[Result | Exception] = []
        done = trio.Event()

        async def turn() -> None:
            try:
                outcome.append(await SessionServer.send_message(ref, prompt, **options))
            except (SessionError, otpy.CallError) as exc:
                outcome.append(exc)
            finally:
                done.set()
                outbox.put(b"")  # wakes next_frame, which then sees the outcome

        def closed() -> None:
            outbox.close()
            relay.clients.discard(outbox)
            self.close_stream(relay)

        assert self.hub._nursery is not None
        self.hub._nursery.start_soon(turn)

        async def until_started(cancel: trio.CancelScope) -> None:
            while relay.epoch < first:
                await relay.changed.wait()
            cancel.cancel()

        async def until_done(cancel: trio.CancelScope) -> None:
            await done.wait()
            cancel.cancel()

        async with trio.open_nursery() as racing:  # the turn starts, or the call ends (a refusal)
            racing.start_soon(until_started, racing.cancel_scope)
            racing.start_soon(until_done, racing.cancel_scope)
        if outcome and isinstance(outcome[0], Exception):
            closed()
            raise problem_of(outcome[0], name)
        finished: set[int] = set()
        ended = False
        deadline = 0.0

        async def next_frame() -> bytes | None:
            nonlocal ended, deadline
            while not ended:
                if done.is_set():
                    now = trio.current_time()
                    deadline = deadline or now + 1.0
                    result = outcome[0]
                    turn_seen = isinstance(result, Result) and result.turn in finished
                    if (turn_seen and not outbox.frames) or now > deadline or not isinstance(result, Result):
                        ended = True
                        if isinstance(result, Result):
                            return sse_frame("result", result.to_dict())
                        problem = problem_of(result, name)
                        return sse_frame("error", {"status": problem.status, "title": problem.title})
                with trio.move_on_after(max(deadline - trio.current_time(), 0.0) if deadline else math.inf):
                    frame = await outbox.get()
                    if frame is None:
                        return None
                    if not frame:
                        continue  # the wake-up from turn()
                    turn_number = _frame_turn(frame)
                    if turn_number >= first:
                        if b"event: turn_finished\n" in frame:
                            finished.add(turn_number)
                        return frame
            return None

        return SseResponse(outbox, closed, self.limits.keepalive, next_frame)

    def open_stream(self, relay: Any) -> Outbox:
        limits = self.limits
        if self.hub.streams >= limits.max_streams:
            raise Problem(
                503, "Too many streams", f"the app serves at most {limits.max_streams}", {}, {"Retry-After": "1"}
            )
        if relay is not None and len(relay.clients) >= limits.max_subscribers_per_session:
            raise Problem(
                503,
                "Too many subscribers",
                f"a session takes at most {limits.max_subscribers_per_session} streams",
                {},
                {"Retry-After": "1"},
            )
        self.hub.streams += 1
        return Outbox(limits.client_buffer)

    def close_stream(self, relay: Any) -> None:
        self.hub.streams -= 1

    async def events(self, request: Request) -> Response:
        name, _ = self.ref(request)
        relay = self.hub.relay(name)
        if relay is None:
            raise Problem(404, "No such session", f"no session named {name!r} under this tree")
        outbox = self.open_stream(relay)
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        relay.attach(outbox, last)

        def closed() -> None:
            relay.clients.discard(outbox)
            self.close_stream(relay)

        return SseResponse(outbox, closed, self.limits.keepalive)

    async def dashboard_events(self, request: Request) -> Response:
        outbox = self.open_stream(None)
        outbox.put(self.hub.dashboard_hello())
        self.hub.dashboards.add(outbox)

        def closed() -> None:
            self.hub.dashboards.discard(outbox)
            self.close_stream(None)

        return SseResponse(outbox, closed, self.limits.keepalive)

    async def interrupt(self, request: Request) -> Response:
        name, ref = self.ref(request)
        interrupted: bool = await self.call(name, lambda: SessionServer.interrupt(ref))
        return JSONResponse({"interrupted": interrupted})

    async def start_session(self, request: Request) -> Response:
        if self.dynamic is None or self.session_spec is None:
            raise Problem(405, "Not enabled", "this app was given no DynamicSupervisor to start sessions under")
        data = await self.body(request)
        name, options = data.get("name"), data.get("options", {})
        if not isinstance(name, str) or not name or len(name) > 200:
            raise Problem(422, "Invalid option", "name must be a non-empty string", {"option": "name"})
        if not isinstance(options, dict):
            raise Problem(422, "Invalid option", "options must be an object", {"option": "options"})
        if otpy.whereis(name) is not None:
            raise Problem(409, "Name taken", f"a process named {name!r} is running")
        try:
            spec = self.session_spec(name, options)
            await otpy.DynamicSupervisor.start_child(self.dynamic, spec)
        except SessionError as exc:
            raise problem_of(exc, name) from None
        except otpy.SupervisorError as exc:
            raise Problem(409, "Not started", str(exc)) from None
        self.hub.look()
        summary = await self.summary(name, name)
        return JSONResponse(summary, status_code=201)

    async def stop_session(self, request: Request) -> Response:
        name, ref = self.ref(request)
        if self.dynamic is None:
            raise Problem(405, "Not enabled", "this app was given no DynamicSupervisor")
        try:
            dynamic = otpy.tree(self.dynamic)
        except otpy.NoProcess:
            raise Problem(503, "Supervisor down", "the DynamicSupervisor is not running") from None
        for node in dynamic.children:
            if node.pid is not None and node.name is not None and node.name == ref:
                await otpy.DynamicSupervisor.terminate_child(self.dynamic, node.pid)
                return JSONResponse({"stopped": name})
        raise Problem(409, "Not stoppable", f"{name!r} is not a child of the app's DynamicSupervisor")

    async def tree(self, request: Request) -> Response:
        return JSONResponse({"tree": self.hub.tree_data()})

    async def metrics(self, request: Request) -> Response:
        return JSONResponse({"samples": list(self.hub.metrics)})

    async def kill(self, request: Request) -> Response:
        raw = request.path_params["pid"]
        pid = self.hub.pid_of(raw) if isinstance(raw, int) else None
        if pid is None or not pid.alive:
            raise Problem(404, "No such process", f"no live process #{raw}")
        otpy.exit(pid, "kill")
        return JSONResponse({"killed": raw})

    # --- routing ---------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        e = self.endpoint
        return [
            Route("/healthz", e(self.health, public=True), methods=["GET"]),
            Route("/", e(self.index, public=True), methods=["GET"]),
            Route("/static/{file}", e(self.asset), methods=["GET"]),
            Route("/openapi.json", e(self.openapi), methods=["GET"]),
            Route("/api/sessions", e(self.list_sessions), methods=["GET"]),
            Route("/api/sessions", e(self.start_session), methods=["POST"]),
            Route("/api/sessions/{name}", e(self.get_session), methods=["GET"]),
            Route("/api/sessions/{name}", e(self.stop_session), methods=["DELETE"]),
            Route("/api/sessions/{name}/history", e(self.history), methods=["GET"]),
            Route("/api/sessions/{name}/messages", e(self.transcript), methods=["GET"]),
            Route("/api/sessions/{name}/messages", e(self.send), methods=["POST"]),
            Route("/api/sessions/{name}/interrupt", e(self.interrupt), methods=["POST"]),
            Route("/api/sessions/{name}/events", e(self.events), methods=["GET"]),
            Route("/api/tree", e(self.tree), methods=["GET"]),
            Route("/api/metrics", e(self.metrics), methods=["GET"]),
            Route("/api/events", e(self.dashboard_events), methods=["GET"]),
            Route("/api/processes/{pid:int}/kill", e(self.kill), methods=["POST"]),
        ]


def _frame_turn(frame: bytes) -> int:
    """The turn number in a frame's id line (``id: <sid>:<turn>:<n>``), or -1."""
    if not frame.startswith(b"id: "):
        return -1
    line = frame[4 : frame.index(b"\n")].decode()
    try:
        return int(line.rsplit(":", 2)[1])
    except (IndexError, ValueError):
        return -1


def _asset(name: str) -> str:
    return resources.files("sessions.web").joinpath("static", name).read_text(encoding="utf-8")


def create_app(
    root: ServerRef,
    *,
    token: str,
    dynamic: ServerRef | None = None,
    session_spec: SessionSpecFactory | None = None,
    limits: WebLimits | None = None,
) -> Starlette:
    """The web API and dashboard over the supervision tree under ``root``, as an ASGI app.

    The sessions are the `sessions.SessionServer` processes under ``root`` that have a name; the
    app reaches each one through the client functions, by that name. ``dynamic`` (a
    ``DynamicSupervisor``) and ``session_spec`` (``(name, options) -> ChildSpec``) enable
    ``POST /api/sessions`` and ``DELETE /api/sessions/{name}``. Every route but
    ``/healthz`` needs ``token``: as ``Authorization: Bearer <token>``, or, for the
    dashboard in a browser, the cookie that ``/?token=<token>`` sets. Serve it with
    `sessions.web.serve` (Hypercorn on trio); it runs in the trio run of the tree it watches.

    Raises:
        InvalidOption: an empty or short token (fewer than 16 characters).

    Example::

        app = sessions.web.create_app("agents", token=sessions.web.new_token())
        async with trio.open_nursery() as nursery:
            url = await nursery.start(sessions.web.serve, app)
    """
    checked: object = token
    if not isinstance(checked, str) or len(checked) < 16:
        raise InvalidOption("token", "<hidden>", "expected a str of at least 16 characters (see new_token())")
    web = _Web(root, token, dynamic, session_spec, limits if limits is not None else WebLimits())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            await nursery.start(web.hub.run)
            yield
            nursery.cancel_scope.cancel()

    async def not_routed(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        title = "Method not allowed" if status == 405 else "Not found"
        return Problem(status, title, f"{request.method} {request.url.path}").response()

    app = Starlette(routes=web.routes(), lifespan=lifespan, exception_handlers={404: not_routed, 405: not_routed})
    app.add_middleware(_Guard, max_body=web.limits.max_body_bytes)
    app.state.web = web
    return app
