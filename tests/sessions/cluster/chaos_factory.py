"""The session factory of the chaos tests' and the cluster bench's nodes: a scripted
provider per session.

A prompt ``slow:<seconds>:<text>`` makes a turn that takes that long; every turn costs
0.01 USD and answers ``<session_id> turn <n>: <prompt>``, so a turn's text names the
session, the turn and the prompt it answered.
"""

from __future__ import annotations

from typing import Any

import sessions


def scripted(session_id: str) -> dict[str, Any]:
    """The `SessionServer` options of ``session_id``."""

    def reply(request: sessions.TurnRequest) -> sessions.ScriptedReply:
        delay = 0.0
        if request.prompt.startswith("slow:"):
            delay = float(request.prompt.split(":")[1])
        return sessions.ScriptedReply(f"{session_id} turn {request.turn}: {request.prompt}", cost_usd=0.01, delay=delay)

    return {"provider": sessions.ScriptedProvider(default=reply), "close_timeout": 2.0}
