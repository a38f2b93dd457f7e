"""A supervised pool of agent sessions against any Ollama or OpenAI-compatible endpoint.

    OLLAMA_HOST=http://127.0.0.1:11434 OLLAMA_MODEL=llama3.1 python examples/sessions_pool.py
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_MODEL=qwen3 python examples/sessions_pool.py
    OPENAI_BASE_URL=https://api.openai.com/v1 OPENAI_API_KEY=sk-... python examples/sessions_pool.py

Environment:

- ``OLLAMA_HOST`` (and ``OLLAMA_MODEL``, default ``llama3.1``; ``OLLAMA_API_KEY`` if
  the server wants one): use `sessions.Ollama`;
- else ``OPENAI_BASE_URL`` (and ``OPENAI_MODEL``, default ``gpt-4o-mini``;
  ``OPENAI_API_KEY``): use `sessions.OpenAICompatible`;
- ``SESSIONS_POOL_SIZE`` (3): how many sessions; ``SESSIONS_MAX_CONCURRENCY`` (2):
  model requests in flight at once, for the whole pool;
- ``SESSIONS_CWD``: the folder the agents may read (default: a temporary folder with
  three small files); ``SESSIONS_DB``: a SQLite file for the sessions' logs (default:
  in memory).

Each session is a `sessions.SessionServer` under one otpy supervisor, running the agent
loop with read-only tools (``plan`` mode). All ask their question at once; the shared
model provider lets ``SESSIONS_MAX_CONCURRENCY`` requests through at a time. Then one
session is killed: its supervisor restarts it, and it still has its conversation.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import trio

import otpy
import sessions
from sessions import SessionServer

QUESTIONS = [
    "Which files are in the working directory?",
    "What does notes.md say to buy?",
    "Which Python function is defined in app.py?",
    "How many lines has notes.md?",
]


def model_from_env() -> tuple[sessions.ModelProvider | None, str]:
    """The model provider the environment asks for, and a line saying which."""
    concurrency = int(os.environ.get("SESSIONS_MAX_CONCURRENCY", "2"))
    if os.environ.get("OLLAMA_HOST"):
        name = os.environ.get("OLLAMA_MODEL", "llama3.1")
        return sessions.Ollama(name, max_concurrency=concurrency), f"Ollama {name} at {os.environ['OLLAMA_HOST']}"
    if os.environ.get("OPENAI_BASE_URL"):
        name = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
        model = sessions.OpenAICompatible(name, max_concurrency=concurrency)
        return model, f"{name} at {os.environ['OPENAI_BASE_URL']}"
    return None, "no endpoint configured: set OLLAMA_HOST or OPENAI_BASE_URL (see the docstring)"


def working_directory() -> Path:
    if os.environ.get("SESSIONS_CWD"):
        return Path(os.environ["SESSIONS_CWD"])
    folder = Path(tempfile.mkdtemp(prefix="sessions-pool-"))
    (folder / "notes.md").write_text("# Notes\nbuy milk\nbuy bread\n")
    (folder / "app.py").write_text("def greet(name):\n    return f'hello {name}'\n")
    (folder / "README.md").write_text("A tiny project for the pool example.\n")
    return folder


async def ask(name: str, question: str) -> sessions.Result:
    result = await SessionServer.send_message(name, question)
    outcome = (
        result.text.strip().replace("\n", " ") if not result.is_error else f"[{result.finish_reason}] {result.error}"
    )
    print(f"{name}: {question}\n  -> {outcome[:200]}")
    print(f"     ({result.num_turns} model calls, {len(result.tool_calls)} tool calls, {result.usage.total} tokens)")
    return result


async def main() -> int:
    model, label = model_from_env()
    print(label)
    if model is None:
        return 0
    cwd = working_directory()
    size = int(os.environ.get("SESSIONS_POOL_SIZE", "3"))
    db = os.environ.get("SESSIONS_DB")
    store: sessions.Store = sessions.SqliteStore(db) if db else sessions.InMemoryStore()
    loop = sessions.AgentLoop(
        model,
        tools=sessions.builtin_tools(["read", "list", "glob", "grep"]),
        permission_mode="plan",
        max_iterations=8,
        cwd=cwd,
        system_prompt="You answer questions about the files in your working directory. Use the tools. Be brief.",
    )
    names = [f"agent-{n}" for n in range(size)]
    try:
        async with trio.open_nursery() as nursery:
            children = [SessionServer.child_spec(name=name, provider=loop, store=store) for name in names]
            pool = await otpy.Supervisor.start_link(children, strategy="one_for_one", nursery=nursery)

            results: list[sessions.Result] = []

            async def one(name: str, question: str) -> None:
                results.append(await ask(name, question))

            async with trio.open_nursery() as turns:
                for index, name in enumerate(names):
                    turns.start_soon(one, name, QUESTIONS[index % len(QUESTIONS)])

            old = otpy.whereis(names[0])
            assert old is not None
            otpy.exit(old, "kill")
            await old.wait_exited()
            while otpy.whereis(names[0]) in (None, old):  # noqa: ASYNC110 (wait for the supervisor's restart)
                await trio.sleep(0.01)
            remembered = len(await SessionServer.messages(names[0]))
            print(f"{names[0]} was killed and restarted by its supervisor; it remembers {remembered} messages")
            results.append(await ask(names[0], "What did I ask you before? Answer in one sentence."))

            tokens = sum(r.usage.total for r in results)
            cost = sum(r.cost_usd for r in results)
            failed = sum(r.is_error for r in results)
            print(f"{len(results)} turns, {failed} failed, {tokens} tokens, ${cost:.6f}")
            await otpy.stop(pool)
    finally:
        await model.aclose()
        await store.aclose()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
