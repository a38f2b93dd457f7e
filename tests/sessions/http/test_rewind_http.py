"""SessionServer.rewind with HTTP model providers: after a rewind, the model is sent the rewound
transcript only (the requests the fake server received say so)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sessions_fake_llm import Reply, Seen, ollama_text, openai_text, serve

import sessions
from sessions import SessionServer

Start = Callable[..., Any]


def last_prompt(seen: Seen) -> str:
    return str([m for m in seen.body["messages"] if m["role"] == "user"][-1]["content"])


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_the_model_is_sent_only_the_rewound_prefix(kind: str, supervised: Start) -> None:
    """Three turns, rewind to 1, a fourth turn: its request holds turn 1's messages and the new
    prompt, nothing of turns 2 and 3; the turn is numbered 4 and the cost and tokens of all four count."""

    def script(seen: Seen) -> Reply:
        answer = f"answer {last_prompt(seen)}"
        return openai_text(answer) if kind == "openai" else ollama_text(answer)

    async with serve(script) as server:
        if kind == "openai":
            model: Any = sessions.OpenAICompatible("m", base_url=server.url + "/v1")
        else:
            model = sessions.Ollama("llama3.1", host=server.url)
        await supervised(name="agent", provider=model, system_prompt="Be brief.")
        for prompt in ("one", "two", "three"):
            await SessionServer.send_message("agent", prompt)
        assert [m["content"] for m in server.requests[-1].body["messages"]] == [
            "Be brief.",
            "one",
            "answer one",
            "two",
            "answer two",
            "three",
        ]
        await SessionServer.rewind("agent", 1)
        result = await SessionServer.send_message("agent", "four")
        sent = server.requests[-1].body["messages"]
        assert [(m["role"], m["content"]) for m in sent] == [
            ("system", "Be brief."),
            ("user", "one"),
            ("assistant", "answer one"),
            ("user", "four"),
        ]
        assert (result.turn, result.text) == (4, "answer four")
        assert await SessionServer.turn_count("agent") == 4
        assert (await SessionServer.usage("agent")).input_tokens == 40  # every turn's tokens still count
