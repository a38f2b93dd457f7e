"""ClaudeTranscriptStore: claude-agent-sdk's own SessionStore conformance suite, on sessions stores."""

from __future__ import annotations

from pathlib import Path

from claude_agent_sdk.testing import run_session_store_conformance

import sessions


async def test_conformance_on_the_in_memory_store():
    await run_session_store_conformance(lambda: sessions.ClaudeTranscriptStore(sessions.InMemoryStore(), "s1"))


async def test_conformance_on_the_sqlite_store(tmp_path: Path):
    opened: list[sessions.SqliteStore] = []

    def make() -> sessions.ClaudeTranscriptStore:
        opened.append(sessions.SqliteStore(tmp_path / f"{len(opened)}.db"))
        return sessions.ClaudeTranscriptStore(opened[-1], "s1")

    try:
        await run_session_store_conformance(make)
    finally:
        for store in opened:  # no writer thread may outlive the test (later tests check)
            await store.aclose()


async def test_records_go_to_their_own_log_with_consecutive_seq():
    store = sessions.InMemoryStore()
    mirror = sessions.ClaudeTranscriptStore(store, "s1")
    key = {"project_key": "p", "session_id": "c1"}
    await mirror.append(key, [{"type": "user", "uuid": "u1"}])
    await mirror.append(key, [{"type": "assistant", "uuid": "a1"}, {"type": "user", "uuid": "u1"}])
    records = await store.load("s1.claude")
    assert [(r.seq, r.kind) for r in records] == [(1, "provider_data"), (2, "provider_data")]
    assert await store.load("s1") == []
    # a second mirror of the same session (a restarted server) carries on the numbering
    again = sessions.ClaudeTranscriptStore(store, "s1")
    await again.append(key, [{"type": "user", "uuid": "u2"}])
    assert [r.seq for r in await store.load("s1.claude")] == [1, 2, 3]
    # the retried uuid u1 is loaded once; another project's key finds the session
    assert [e["uuid"] for e in await again.load(key)] == ["u1", "a1", "u2"]
    assert [e["uuid"] for e in await again.load({"project_key": "elsewhere", "session_id": "c1"})] == ["u1", "a1", "u2"]
    assert await again.load({"project_key": "p", "session_id": "c2"}) is None
