#!/usr/bin/env python3
"""A fake `claude` for what the real CLI cannot be made to do.

It speaks just enough of the stream-json control protocol for claude-agent-sdk
(initialize, interrupt, user messages). Behaviour comes from the environment
(FAKE_CLAUDE_VERSION, FAKE_CLAUDE_IGNORE_TERM=1, FAKE_CLAUDE_NO_INIT=1: never answer
initialize, FAKE_CLAUDE_SPAWN_AT_START=1: start the grandchild at once, FAKE_CLAUDE_PIDFILE) and from the prompt:

- ``big:N``: an assistant message whose text is N MiB, on one line;
- ``garbage``: a line that starts like JSON and is not;
- ``grandchild``: start ``sleep 600`` (writing its pid to FAKE_CLAUDE_PIDFILE), then hang;
- ``hang``: never answer;
- ``deaf``: never answer, and ignore the interrupt;
- ``die``: exit 3 mid-turn;
- ``quiet-tool:S``: a tool call that runs S seconds with no output, then its result;
- ``quiet-tool-then-hang:S``: the same, then never an answer;
- anything else: answer ``fake: <prompt>`` at a cost of $1 (cumulative per process).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

SESSION = str(uuid.uuid4())
lock = threading.Lock()
total_cost = 0.0
current_turn: dict = {}


def emit(obj: dict) -> None:
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def result(text: str, *, subtype: str = "success", is_error: bool = False, cost: float = 1.0) -> None:
    global total_cost
    total_cost += cost
    emit(
        {
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "duration_ms": 1,
            "duration_api_ms": 1,
            "num_turns": 1,
            "session_id": SESSION,
            "total_cost_usd": total_cost,
            "usage": {"input_tokens": 1, "output_tokens": 1},
            "result": text,
            "terminal_reason": "aborted_streaming" if subtype == "error_during_execution" else "completed",
        }
    )


def assistant(text: str) -> None:
    emit(
        {
            "type": "assistant",
            "message": {
                "id": "msg_" + uuid.uuid4().hex,
                "model": "fake",
                "role": "assistant",
                "content": [{"type": "text", "text": text}],
            },
            "session_id": SESSION,
            "parent_tool_use_id": None,
            "uuid": str(uuid.uuid4()),
        }
    )


def turn(prompt: str, interrupted: threading.Event) -> None:
    version = os.environ.get("FAKE_CLAUDE_VERSION", "2.1.337")
    emit(
        {
            "type": "system",
            "subtype": "init",
            "session_id": SESSION,
            "uuid": str(uuid.uuid4()),
            "claude_code_version": version,
        }
    )
    if prompt.startswith("big:"):
        assistant("x" * (int(prompt[4:]) << 20))
        result("big done")
    elif prompt == "garbage":
        with lock:
            sys.stdout.write('{"type": "assistant", this is not json\n')
            sys.stdout.flush()
    elif prompt == "deaf":
        while True:  # never answers, and ignores the interrupt
            time.sleep(1)
    elif prompt in ("grandchild", "hang"):
        if prompt == "grandchild":
            child = subprocess.Popen(["sleep", "600"])
            with open(os.environ["FAKE_CLAUDE_PIDFILE"], "w") as fh:
                fh.write(str(child.pid))
        while not interrupted.wait(0.05):
            pass
        result("", subtype="error_during_execution", is_error=True, cost=0.0)
    elif prompt.startswith(("quiet-tool:", "quiet-tool-then-hang:")):
        emit(
            {
                "type": "assistant",
                "message": {
                    "id": "msg_tool",
                    "model": "fake",
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "sleep"}}],
                },
                "session_id": SESSION,
                "parent_tool_use_id": None,
            }
        )
        time.sleep(float(prompt.split(":")[1]))  # a tool that runs without a word
        emit(
            {
                "type": "user",
                "message": {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}],
                },
                "session_id": SESSION,
                "parent_tool_use_id": None,
            }
        )
        if prompt.startswith("quiet-tool-then-hang:"):
            return  # the tool answered; the model never does
        assistant("the tool is done")
        result("the tool is done")
    elif prompt == "die":
        sys.stderr.write("fake claude: dying on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    else:
        assistant(f"fake: {prompt}")
        result(f"fake: {prompt}")


def main() -> None:
    if os.environ.get("FAKE_CLAUDE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("FAKE_CLAUDE_SPAWN_AT_START"):
        child = subprocess.Popen(["sleep", "600"])
        with open(os.environ["FAKE_CLAUDE_PIDFILE"], "w") as fh:
            fh.write(str(child.pid))
    interrupted = threading.Event()
    worker: threading.Thread | None = None
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        if message.get("type") == "control_request":
            request = message["request"]
            response: dict = {}
            if request.get("subtype") == "initialize" and os.environ.get("FAKE_CLAUDE_NO_INIT"):
                continue
            if request.get("subtype") == "initialize":
                response = {"claude_code_version": os.environ.get("FAKE_CLAUDE_VERSION", "2.1.337"), "pid": os.getpid()}
            elif request.get("subtype") == "interrupt":
                interrupted.set()
            emit(
                {
                    "type": "control_response",
                    "response": {"subtype": "success", "request_id": message["request_id"], "response": response},
                }
            )
        elif message.get("type") == "user":
            if worker is not None:
                worker.join()
            interrupted.clear()
            content = message["message"]["content"]
            worker = threading.Thread(target=turn, args=(content, interrupted), daemon=True)
            worker.start()
    # stdin closed: like the CLI, finish the turn in flight, then exit
    if worker is not None:
        while worker.is_alive():
            time.sleep(0.05)
            if os.environ.get("FAKE_CLAUDE_IGNORE_TERM"):
                continue
            break


if __name__ == "__main__":
    main()
