"""The OpenAPI 3.1 description of the web API (served at ``/openapi.json``).

Written out by hand: Starlette has no schema generator of its own for plain routes, and
the description is the contract that schemathesis checks the running app against.
"""

from __future__ import annotations

from typing import Any

from .._events import FinishReason

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_NULLABLE_NUMBER = {"type": ["number", "null"]}


def _problems(*codes: int) -> dict[str, Any]:
    return {str(code): _PROBLEM for code in (401, *codes)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "the session's registered name",
    "schema": {"type": "string", "minLength": 1},
}
_PAGE = [
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
]
_SSE = {
    "description": "Server-Sent Events (see docs/web.md for the event types and ids)",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


def _page_of(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["total", "offset", "limit", "items"],
        "properties": {
            "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "limit": {"type": "integer"},
            "items": {"type": "array", "items": _ref(item)},
        },
    }


_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
    },
    "SessionSummary": {
        "type": "object",
        "required": ["name", "session_id", "status", "turns", "cost_usd", "restarts", "last_activity"],
        "properties": {
            "name": {"type": "string"},
            "session_id": {"type": ["string", "null"]},
            "status": {"enum": ["idle", "running", "interrupting", "down"]},
            "turn": {"type": ["integer", "null"]},
            "turns": {"type": ["integer", "null"]},
            "cost_usd": _NULLABLE_NUMBER,
            "tokens": {"type": ["integer", "null"]},
            "queued": {"type": "integer"},
            "restarts": {"type": "integer"},
            "last_activity": {"type": ["number", "null"], "description": "Unix time of the last event seen"},
        },
    },
    "Usage": {
        "type": "object",
        "properties": {
            key: {"type": "integer"}
            for key in ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens")
        },
    },
    "ToolCall": {
        "type": "object",
        "required": ["id", "name", "arguments"],
        "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "arguments": {"type": "object"}},
    },
    "Result": {
        "type": "object",
        "required": ["text", "session_id", "turn", "finish_reason", "is_error", "cost_usd", "usage"],
        "properties": {
            "text": {"type": "string"},
            "session_id": {"type": "string"},
            "turn": {"type": "integer"},
            "finish_reason": {"enum": [reason.value for reason in FinishReason]},
            "is_error": {"type": "boolean"},
            "provider_session_id": {"type": ["string", "null"]},
            "cost_usd": {"type": "number"},
            "usage": _ref("Usage"),
            "duration_s": {"type": "number"},
            "num_turns": {"type": "integer"},
            "tool_calls": {"type": "array", "items": _ref("ToolCall")},
            "error": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"]},
            "provider": {"type": ["string", "null"]},
        },
    },
    "Message": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"enum": ["system", "user", "assistant", "tool"]},
            "content": {"type": "string"},
            "tool_calls": {"type": "array", "items": _ref("ToolCall")},
            "tool_result": {"type": "object"},
        },
    },
    "TreeNode": {
        "type": "object",
        "required": ["key", "label", "kind", "status", "restarts", "children"],
        "properties": {
            "key": {"type": "string"},
            "id": {"type": ["string", "null"]},
            "name": {"type": ["string", "null"]},
            "label": {"type": "string"},
            "kind": {"enum": ["supervisor", "worker", "dynamic"]},
            "status": {"enum": ["running", "restarting", "not running"]},
            "restarts": {"type": "integer"},
            "mailbox": {"type": "integer"},
            "pid": {"type": ["integer", "null"], "description": "the number to kill it by"},
            "info": {"type": ["string", "null"]},
            "session": {"type": ["string", "null"]},
            "children": {"type": "array", "items": {"$ref": "#/components/schemas/TreeNode"}},
        },
    },
}


def openapi() -> dict[str, Any]:
    """The description, as a JSON-ready dict."""
    session_ops = {
        "get": {
            "summary": "One session's state",
            "operationId": "getSession",
            "parameters": [_NAME],
            "responses": {"200": _json(_ref("SessionSummary"), "the session"), **_problems(404)},
        },
        "delete": {
            "summary": "Stop a session started under the app's DynamicSupervisor",
            "operationId": "stopSession",
            "parameters": [_NAME],
            "responses": {
                "200": _json({"type": "object", "required": ["stopped"]}, "stopped"),
                **_problems(404, 405, 409, 503),
            },
        },
    }
    send_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        "prompt": {"type": "string"},
                        "options": {"type": "object", "description": "per-turn overrides of query_opts"},
                    },
                }
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "otpy sessions web API",
            "version": "1",
            "description": "Supervised agent sessions over HTTP and Server-Sent Events. "
            "Every route but /healthz needs `Authorization: Bearer <token>`.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness (no token needed)",
                    "operationId": "health",
                    "security": [],
                    "responses": {"200": _json({"type": "object", "required": ["ok"]}, "alive")},
                }
            },
            "/api/sessions": {
                "get": {
                    "summary": "Every session under the tree",
                    "operationId": "listSessions",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["sessions"],
                                "properties": {"sessions": {"type": "array", "items": _ref("SessionSummary")}},
                            },
                            "the sessions",
                        ),
                        **_problems(),
                    },
                },
                "post": {
                    "summary": "Start a session under the app's DynamicSupervisor",
                    "operationId": "startSession",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {
                                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                                        "options": {"type": "object"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": _json(_ref("SessionSummary"), "started"),
                        **_problems(400, 405, 409, 413, 415, 422),
                    },
                },
            },
            "/api/sessions/{name}": session_ops,
            "/api/sessions/{name}/history": {
                "get": {
                    "summary": "The session's results, paged",
                    "operationId": "getHistory",
                    "parameters": [_NAME, *_PAGE],
                    "responses": {"200": _json(_page_of("Result"), "a page"), **_problems(404, 422, 503)},
                }
            },
            "/api/sessions/{name}/messages": {
                "get": {
                    "summary": "The session's transcript, paged",
                    "operationId": "getTranscript",
                    "parameters": [_NAME, *_PAGE],
                    "responses": {"200": _json(_page_of("Message"), "a page"), **_problems(404, 422, 503)},
                },
                "post": {
                    "summary": "Send a message: the Result as JSON, or (Accept: text/event-stream) the turn's events",
                    "operationId": "sendMessage",
                    "parameters": [_NAME],
                    "requestBody": send_body,
                    "responses": {
                        "200": {
                            "description": "the turn's Result, or its events",
                            "content": {
                                "application/json": {"schema": _ref("Result")},
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        **_problems(400, 404, 409, 413, 415, 422, 429, 503),
                    },
                },
            },
            "/api/sessions/{name}/interrupt": {
                "post": {
                    "summary": "Interrupt the running turn",
                    "operationId": "interrupt",
                    "parameters": [_NAME],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["interrupted"],
                                "properties": {"interrupted": {"type": "boolean"}},
                            },
                            "whether a turn was running",
                        ),
                        **_problems(404, 503),
                    },
                }
            },
            "/api/sessions/{name}/events": {
                "get": {
                    "summary": "The session's events, live; reconnect with Last-Event-ID",
                    "operationId": "sessionEvents",
                    "parameters": [
                        _NAME,
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _SSE, **_problems(404, 503)},
                }
            },
            "/api/tree": {
                "get": {
                    "summary": "The supervision tree",
                    "operationId": "getTree",
                    "responses": {
                        "200": _json(
                            {"type": "object", "required": ["tree"], "properties": {"tree": _ref("TreeNode")}},
                            "the tree",
                        ),
                        **_problems(),
                    },
                }
            },
            "/api/metrics": {
                "get": {
                    "summary": "Cost, turns and restarts over time (one sample a second, the last 720)",
                    "operationId": "getMetrics",
                    "responses": {
                        "200": _json(
                            {"type": "object", "required": ["samples"], "properties": {"samples": {"type": "array"}}},
                            "samples",
                        ),
                        **_problems(),
                    },
                }
            },
            "/api/events": {
                "get": {
                    "summary": "Everything the dashboard shows, live",
                    "operationId": "dashboardEvents",
                    "responses": {"200": _SSE, **_problems(503)},
                }
            },
            "/api/processes/{pid}/kill": {
                "post": {
                    "summary": "Kill a process (its supervisor restarts it)",
                    "operationId": "killProcess",
                    "parameters": [{"name": "pid", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "responses": {
                        "200": _json({"type": "object", "required": ["killed"]}, "killed"),
                        **_problems(404),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Problem": {
                    "description": "an error (RFC 9457 problem details)",
                    "content": {"application/problem+json": {"schema": _ref("Problem")}},
                }
            },
            "schemas": _SCHEMAS,
        },
    }
