"""examples/sessions_pool.py runs against the fake Ollama and OpenAI servers, as a user would run it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio
from sessions_fake_llm import Reply, Seen, ollama_text, ollama_tools, openai_text, openai_tools, serve

ROOT = Path(__file__).resolve().parents[3]


def answer(seen: Seen, *, openai: bool) -> Reply:
    messages = seen.body["messages"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    prompt = messages[last_user]["content"]
    if prompt.startswith("What did I ask"):
        first = next(m["content"] for m in messages if m["role"] == "user")
        return openai_text(f"You asked: {first}") if openai else ollama_text(f"You asked: {first}")
    if not any(m["role"] == "tool" for m in messages[last_user:]):
        return openai_tools(("c1", "list", {"path": "."})) if openai else ollama_tools(("list", {"path": "."}))
    listing = messages[-1]["content"].replace("\n", ", ")
    return openai_text(f"I see {listing}.") if openai else ollama_text(f"I see {listing}.")


async def run_example(env: dict[str, str]) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "OPENAI_", "SESSIONS_"))}
    result = await trio.run_process(
        [sys.executable, str(ROOT / "examples" / "sessions_pool.py")],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


@pytest.mark.parametrize("kind", ["ollama", "openai"])
async def test_the_pool_runs_against_an_endpoint_from_the_environment(kind: str, tmp_path: Path) -> None:
    openai = kind == "openai"
    async with serve(lambda seen: answer(seen, openai=openai)) as server:
        env = {"OLLAMA_HOST": server.url} if not openai else {"OPENAI_BASE_URL": server.url + "/v1"}
        env |= {"SESSIONS_POOL_SIZE": "3", "SESSIONS_MAX_CONCURRENCY": "2", "SESSIONS_DB": str(tmp_path / "s.db")}
        with trio.fail_after(60):
            lines = await run_example(env)
    assert lines[0].startswith("Ollama llama3.1 at" if not openai else "gpt-4o-mini at")
    assert "agent-0: Which files are in the working directory?" in lines
    assert any("I see README.md, app.py, notes.md." in line for line in lines)
    assert "agent-0 was killed and restarted by its supervisor; it remembers 4 messages" in lines, "\n".join(lines)
    assert any("You asked: Which files are in the working directory?" in line for line in lines)
    assert lines[-1].startswith("4 turns, 0 failed, ")
    assert server.max_in_flight <= 2
    assert len(server.requests) == 3 * 2 + 1
    system = server.requests[0].body["messages"][0]
    assert system["role"] == "system"


async def test_without_an_endpoint_it_says_how_to_configure_one() -> None:
    lines = await run_example({})
    assert lines == ["no endpoint configured: set OLLAMA_HOST or OPENAI_BASE_URL (see the docstring)"]


async def test_the_sessions_demo_uses_an_ollama_endpoint_when_configured() -> None:
    def reply(seen: Seen) -> Reply:
        messages = seen.body["messages"]
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        if not any(m["role"] == "tool" for m in messages[last_user:]):
            return ollama_tools(("list", {"path": "."}), text="Let me look.")
        return ollama_text("Here is ", "my answer.", delay=0.2)

    async with serve(reply) as server:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "OPENAI_", "ANTHROPIC_"))}
        with trio.fail_after(60):
            result = await trio.run_process(
                [sys.executable, str(ROOT / "examples" / "sessions_demo.py"), "--fast"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env={**clean, "PYTHONPATH": str(ROOT), "OLLAMA_HOST": server.url},
            )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert "Here is my answer." in out
    assert len(server.requests) >= 6  # each of three sessions ran the tool loop
    assert any(m["role"] == "tool" for m in server.requests[-1].body["messages"])
