"""What crosses the wire between nodes: the client functions' requests, their replies and
their errors, as JSON.

Each request of `SessionServer`'s client API has one JSON form (``{"op": ...}``); each
reply is tagged with its type, so the calling node rebuilds the same value (a `Result`,
a `Session`, a `SessionStatus`) and raises the same typed error the local call would
have raised (`SessionBusy`, `BudgetExceeded`, `InvalidOption`, ``otpy.ServerExited``,
``otpy.NoProcess``, ``otpy.CallTimeout``). A subscription's events have one JSON form
each too (``{"event": ...}``, `encode_event`), one per line of the subscribe stream.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs

import otpy

from .._errors import BudgetExceeded, ClusterUnavailable, InvalidOption, SessionBusy, SessionError
from .._events import (
    EventsDropped,
    FinishReason,
    Message,
    MessageAdded,
    ModelCallFinished,
    ProviderSessionId,
    Result,
    SessionEvent,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallFinished,
    ToolCallRequested,
    ToolResult,
    TurnCompleted,
    TurnFinished,
    TurnSnapshot,
    TurnStarted,
    Usage,
)
from .._server import SessionStatus, _Get, _Interrupt, _Put, _Refused, _Rewind, _Send
from .._session import Session


class NotHere(Exception):
    """The node asked does not hold the session and will not take it (the caller routes again)."""


def encode_request(request: object) -> dict[str, Any]:
    """The JSON form of a client request.

    Raises:
        InvalidOption: a turn override that JSON cannot carry (a callback), which a
            local call would have taken.
    """
    match request:
        case _Send(prompt=prompt, overrides=overrides, key=key):
            try:
                json.dumps(overrides)
            except (TypeError, ValueError) as exc:
                raise InvalidOption("overrides", overrides, f"cannot be sent to another node as JSON: {exc}") from None
            return {"op": "send", "prompt": prompt, "overrides": overrides, "key": key}
        case _Get(what=what):
            return {"op": "get", "what": what}
        case _Interrupt():
            return {"op": "interrupt"}
        case _Put(session=session):
            return {"op": "put", "session": session.to_dict()}
        case _Rewind(to_turn=to_turn):
            return {"op": "rewind", "to_turn": to_turn}
        case _Stop(reason=reason):
            return {"op": "stop", "reason": _jsonable(reason)}
    raise TypeError(f"not a request a node forwards: {request!r}")


@attrs.frozen
class _Stop:
    """`SessionServer.stop` by name, as the router carries it."""

    reason: object = "normal"


def decode_request(data: dict[str, Any]) -> object:
    """The request that `encode_request` encoded (`ValueError` for anything else)."""
    match data:
        case {"op": "send", "prompt": str(prompt), "overrides": dict(overrides), "key": key} if (
            key is None or isinstance(key, str)
        ):
            return _Send(prompt, overrides, key)
        case {"op": "get", "what": "session" | "session_id" | "status" as what}:
            return _Get(what)
        case {"op": "interrupt"}:
            return _Interrupt()
        case {"op": "put", "session": dict(session)}:
            return _Put(Session.from_dict(session))
        case {"op": "rewind", "to_turn": int(to_turn)}:
            return _Rewind(to_turn)
        case {"op": "stop", "reason": reason}:
            return _Stop(reason)
    raise ValueError(f"not a forwarded request: {data!r}")


def encode_reply(value: object) -> dict[str, Any]:
    """The JSON form of a reply (a `_Refused` becomes its error)."""
    match value:
        case _Refused(error=error):
            return encode_error(error)
        case None | bool() | str():
            return {"type": "value", "value": value}
        case Result():
            return {"type": "result", "value": value.to_dict()}
        case Session():
            return {"type": "session", "value": value.to_dict()}
        case SessionStatus():
            return {"type": "status", "value": attrs.asdict(value)}
    raise TypeError(f"a reply a node cannot forward: {value!r}")


def decode_reply(data: dict[str, Any], name: str) -> object:
    """The reply that `encode_reply` encoded; raises the error an error reply carries."""
    kind, value = data.get("type"), data.get("value")
    match kind:
        case "value":
            return value
        case "result":
            return Result.from_dict(value)  # type: ignore[arg-type]
        case "session":
            return Session.from_dict(value)  # type: ignore[arg-type]
        case "status":
            return SessionStatus(**value)  # type: ignore[arg-type]
        case "error":
            raise decode_error(data, name)
    raise ValueError(f"not a forwarded reply: {data!r}")


def encode_error(exc: BaseException) -> dict[str, Any]:
    """The JSON form of an error a client function raises."""
    body: dict[str, Any] = {"type": "error", "error": type(exc).__name__, "message": str(exc)}
    match exc:
        case SessionBusy(session_id=sid, queued=queued):
            body.update(session_id=sid, queued=queued)
        case BudgetExceeded(session_id=sid, kind=kind, limit=limit, spent=spent):
            body.update(session_id=sid, kind=kind, limit=limit, spent=spent)
        case InvalidOption(option=option, value=value, problem=problem):
            body.update(option=option, value=_jsonable(value), problem=problem)
        case otpy.ServerExited(reason=reason):
            body.update(reason=_jsonable(reason))
        case otpy.CallTimeout(timeout=timeout):
            body.update(timeout=timeout if math.isfinite(timeout) else None)
        case ClusterUnavailable(detail=detail):
            body.update(detail=detail)
    return body


def decode_error(data: dict[str, Any], name: str) -> Exception:
    """The typed error that `encode_error` encoded (a `ClusterUnavailable` for one it does not know)."""
    match data.get("error"):
        case "SessionBusy":
            return SessionBusy(data["session_id"], data["queued"])
        case "BudgetExceeded":
            return BudgetExceeded(data["session_id"], data["kind"], data["limit"], data["spent"])
        case "InvalidOption":
            return InvalidOption(data["option"], data["value"], data["problem"])
        case "ServerExited":
            return otpy.ServerExited(name, data.get("reason"))
        case "NoProcess":
            return otpy.NoProcess(name)
        case "CallTimeout":
            timeout = data.get("timeout")
            return otpy.CallTimeout(name, None, timeout if timeout is not None else math.inf)
        case "ClusterUnavailable":
            return ClusterUnavailable(name, str(data.get("detail", "")))
    return _RemoteError(f"{data.get('error')}: {data.get('message')}")


class _RemoteError(SessionError):
    """An error of another node that has no typed form here (its type name and message)."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def __str__(self) -> str:
        return self.message


def encode_event(event: SessionEvent) -> dict[str, Any]:
    """The JSON form of a session event (one line of a remote subscription's stream)."""
    match event:
        case TextDelta(text=text):
            return {"event": "text_delta", "text": text}
        case ThinkingDelta(text=text):
            return {"event": "thinking_delta", "text": text}
        case ToolCallRequested(call=call):
            return {"event": "tool_call_requested", "call": call.to_dict()}
        case ToolCallFinished(result=result):
            return {"event": "tool_call_finished", "result": result.to_dict()}
        case ModelCallFinished():
            body = attrs.asdict(event, recurse=False)
            body["usage"] = event.usage.to_dict()
            return {"event": "model_call_finished", **body}
        case MessageAdded(message=message):
            return {"event": "message_added", "message": message.to_dict()}
        case ProviderSessionId(id=provider_id):
            return {"event": "provider_session_id", "id": provider_id}
        case TurnCompleted():
            body = attrs.asdict(event, recurse=False)
            body.update(
                finish_reason=str(event.finish_reason),
                usage=event.usage.to_dict(),
                permission_denials=list(event.permission_denials),
                extra=_jsonable(event.extra),
            )
            return {"event": "turn_completed", **body}
        case TurnStarted(session_id=sid, turn=turn, prompt=prompt):
            return {"event": "turn_started", "session_id": sid, "turn": turn, "prompt": prompt}
        case TurnFinished(result=result):
            return {"event": "turn_finished", "result": result.to_dict()}
        case TurnSnapshot(session_id=sid, turn=turn, prompt=prompt, text=text, messages=messages):
            return {
                "event": "turn_snapshot",
                "session_id": sid,
                "turn": turn,
                "prompt": prompt,
                "text": text,
                "messages": [m.to_dict() for m in messages],
            }
        case EventsDropped(count=count):
            return {"event": "events_dropped", "count": count}
    raise TypeError(f"not a session event: {event!r}")


def decode_event(data: dict[str, Any]) -> SessionEvent:
    """The event that `encode_event` encoded (`ValueError`, `KeyError` or `TypeError` for anything else)."""
    body = {key: value for key, value in data.items() if key != "event"}
    match data.get("event"):
        case "text_delta":
            return TextDelta(str(data["text"]))
        case "thinking_delta":
            return ThinkingDelta(str(data["text"]))
        case "tool_call_requested":
            return ToolCallRequested(ToolCall.from_dict(data["call"]))
        case "tool_call_finished":
            return ToolCallFinished(ToolResult.from_dict(data["result"]))
        case "model_call_finished":
            body["usage"] = Usage.from_dict(body["usage"])
            return ModelCallFinished(**body)
        case "message_added":
            return MessageAdded(Message.from_dict(data["message"]))
        case "provider_session_id":
            return ProviderSessionId(str(data["id"]))
        case "turn_completed":
            body.update(
                finish_reason=FinishReason(body["finish_reason"]),
                usage=Usage.from_dict(body["usage"]),
                permission_denials=tuple(body["permission_denials"]),
            )
            return TurnCompleted(**body)
        case "turn_started":
            return TurnStarted(str(data["session_id"]), int(data["turn"]), str(data["prompt"]))
        case "turn_finished":
            return TurnFinished(Result.from_dict(data["result"]))
        case "turn_snapshot":
            messages = tuple(Message.from_dict(m) for m in data["messages"])
            return TurnSnapshot(
                str(data["session_id"]), int(data["turn"]), str(data["prompt"]), str(data["text"]), messages
            )
        case "events_dropped":
            return EventsDropped(int(data["count"]))
    raise ValueError(f"not a session event: {data!r}")


def _jsonable(value: object) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
