"""A fake Anthropic Messages API on 127.0.0.1, for running the real Claude Code CLI offline.

It serves ``POST /v1/messages`` as an SSE stream (and ``HEAD /``, the CLI's warm-up).
What it answers is driven by directives in the last prompt the user typed, so one
server serves every test, and several CLI processes, without shared script state:

- (no directive): echo the prompt as ``echo: <prompt>``;
- ``[[error:STATUS]]``: answer HTTP STATUS with an Anthropic error body;
- ``[[stall]]``: send ``message_start`` and one delta, then nothing until released;
- ``[[tool:NAME:JSON]]``: ask for tool NAME with input JSON once, then report its result;
- ``[[loop:NAME:JSON]]``: ask for the tool again after every result (for max turns);
- ``[[slow:SECONDS]]``: wait between deltas (for interrupt tests);
- ``[[big:BYTES]]``: answer a text of BYTES characters;
- ``[[bigonce:BYTES]]``: the same, the first time only (then echo): a later prompt merged with
  this one by the CLI is answered normally.

Every response reports ``usage`` of ``input_tokens`` / ``output_tokens`` set by
`FakeAnthropic.usage` (default 1M + 1M: with a haiku model a call costs exactly $6), or
by the next pair of `FakeAnthropic.usages` while that list has any (one per streamed call).
Every request is recorded (`FakeAnthropic.requests`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_DIRECTIVE = re.compile(r"\[\[(\w+)(?::(.*?))?\]\]", re.S)

ERROR_BODIES = {
    400: ("invalid_request_error", "bad request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "forbidden"),
    429: ("rate_limit_error", "slow down"),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def _user_texts(message: dict[str, Any]) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    texts = []
    for block in content or ():
        if block.get("type") == "text" and not block.get("text", "").startswith("<system-reminder>"):
            texts.append(block["text"])
    return texts


def prompt_of(body: dict[str, Any]) -> str:
    """The last text the user typed (skipping tool results and system reminders)."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            texts = _user_texts(message)
            if texts:
                return texts[-1]
    return ""


def tool_results_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of the last message, if it is a user message with them."""
    messages = body.get("messages", [])
    if not messages or messages[-1].get("role") != "user" or isinstance(messages[-1].get("content"), str):
        return []
    return [b for b in messages[-1]["content"] if b.get("type") == "tool_result"]


def all_user_texts(body: dict[str, Any]) -> list[str]:
    """Every user text of the request's history, in order (what the model was shown)."""
    texts = []
    for message in body.get("messages", []):
        if message.get("role") == "user":
            texts.extend(_user_texts(message))
    return texts


class FakeAnthropic:
    """The server: ``url`` for ANTHROPIC_BASE_URL, ``requests`` what it received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.usage = (1_000_000, 1_000_000)
        self.usages: list[tuple[int, int]] = []
        self.release = threading.Event()
        self.stalled = threading.Event()
        self._stop = threading.Event()
        self._counter = 0
        self._big_once_done = False
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                self.do_HEAD()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                with fake._lock:
                    fake._counter += 1
                    n = fake._counter
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if not self.path.startswith("/v1/messages") or "count_tokens" in self.path:
                    self._json(200, {"input_tokens": 10})
                    return
                fake._answer(self, body, n)

            def _json(self, status: int, data: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.send_header("request-id", "req_fake_err")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-anthropic", daemon=True)
        self._thread.start()

    # --- control -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget what was received; release any stall; default usage."""
        self.release.set()
        with self._lock:
            self.requests = []
        self.usage = (1_000_000, 1_000_000)
        self.usages = []
        self.release = threading.Event()
        self.stalled = threading.Event()
        self._big_once_done = False

    def close(self) -> None:
        self._stop.set()
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def message_requests(self) -> list[dict[str, Any]]:
        """The bodies of the POST /v1/messages requests received so far."""
        with self._lock:
            return [r["body"] for r in self.requests if r["path"].startswith("/v1/messages")]

    # --- answers -------------------------------------------------------------------------

    def _answer(self, handler: Any, body: dict[str, Any], n: int) -> None:
        prompt = prompt_of(body)
        directives = {m.group(1): (m.group(2) or "") for m in _DIRECTIVE.finditer(prompt)}
        model = body.get("model", "fake-model")
        if "error" in directives:
            status = int(directives["error"])
            kind, message = ERROR_BODIES.get(status, ("api_error", "error"))
            handler._json(
                status, {"type": "error", "error": {"type": kind, "message": message}}, {"x-should-retry": "false"}
            )
            return
        results = tool_results_of(body)
        blocks: list[dict[str, Any]]
        for name in ("tool", "loop"):
            if name in directives and (name == "loop" or not results):
                tool, _, args = directives[name].partition(":")
                blocks = [
                    {"type": "tool_use", "id": f"toolu_fake_{n}", "name": tool, "input": json.loads(args or "{}")}
                ]
                stop_reason = "tool_use"
                break
        else:
            if results:
                content = results[0].get("content")
                if isinstance(content, list):
                    content = "".join(c.get("text", "") for c in content)
                text = f"tool said: {content}"
            elif "big" in directives:
                text = "x" * int(directives["big"])
            elif "bigonce" in directives and not self._big_once_done:
                self._big_once_done = True
                directives["big"] = directives["bigonce"]
                text = "x" * int(directives["bigonce"])
            else:
                text = f"echo: {prompt}"
            blocks = [{"type": "text", "text": text, "big": "big" in directives}]
            stop_reason = "end_turn"
        if not body.get("stream"):
            # a non-streaming call (the CLI's model check on set_model, its fallback after a
            # broken stream): one JSON message, with a token's worth of usage
            text = "".join(b.get("text", "") for b in blocks if b["type"] == "text")
            handler._json(
                200,
                {
                    "id": f"msg_fake_{n}",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 1, "output_tokens": 1},
                },
            )
            return
        slow = float(directives.get("slow") or 0)
        self._stream(handler, model, n, blocks, stop_reason, stall="stall" in directives, slow=slow)

    def _stream(
        self,
        handler: Any,
        model: str,
        n: int,
        blocks: list[dict[str, Any]],
        stop_reason: str,
        *,
        stall: bool,
        slow: float,
    ) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("cache-control", "no-cache")
        handler.send_header("request-id", f"req_fake_{n}")
        handler.send_header("connection", "close")
        handler.end_headers()
        with self._lock:
            input_tokens, output_tokens = self.usages.pop(0) if self.usages else self.usage

        def send(event: str, data: dict[str, Any]) -> None:
            handler.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            handler.wfile.flush()

        try:
            send(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": f"msg_fake_{n}",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": input_tokens,
                            "output_tokens": 0,
                            "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 0,
                        },
                    },
                },
            )
            for index, block in enumerate(blocks):
                if block["type"] == "text":
                    send(
                        "content_block_start",
                        {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                    )
                    for piece in _pieces(block["text"], big=bool(block.get("big"))):
                        send(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "text_delta", "text": piece},
                            },
                        )
                        if stall:
                            self.stalled.set()
                            while not self.release.wait(0.1):
                                if self._stop.is_set():
                                    return
                            return
                        if slow and self.release.wait(slow):
                            pass
                else:
                    send(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {
                                "type": "tool_use",
                                "id": block["id"],
                                "name": block["name"],
                                "input": {},
                            },
                        },
                    )
                    send(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])},
                        },
                    )
                send("content_block_stop", {"type": "content_block_stop", "index": index})
            send(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            )
            send("message_stop", {"type": "message_stop"})
        except (BrokenPipeError, ConnectionResetError):
            return


def _pieces(text: str, *, big: bool) -> Iterator[str]:
    """Split a text into deltas: one per word, or 1 MiB pieces for a big text."""
    if big:
        step = 1 << 20
        for i in range(0, len(text), step):
            yield text[i : i + step]
        return
    words = text.split(" ")
    for i, word in enumerate(words):
        yield word if i == len(words) - 1 else word + " "


def make_env(home: Path, url: str) -> dict[str, str]:
    """The CLI's environment for a temporary ``home``."""
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    return {
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "TMPDIR": str(home / "tmp"),
        "CLAUDE_CODE_TMPDIR": str(home / "tmp"),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "test-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
