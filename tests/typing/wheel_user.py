"""A user's program, checked against the installed wheel (tests/typing/check_wheel.py).

The other files here are checked against the source tree; this one is also checked where
a user meets the packages: installed from the wheel into a fresh environment, with no
repository in sight, under mypy --strict and pyright's strict mode. If a package loses its
``py.typed`` marker, the checkers see it as untyped and this file fails.
"""

from __future__ import annotations

from typing import assert_type

import trio

import otpy
import sessions
from sessions import SessionServer


async def main() -> None:
    provider = sessions.ScriptedProvider(["Hello."])
    store = sessions.InMemoryStore()
    children = [SessionServer.child_spec(name="agent", provider=provider, store=store)]
    async with otpy.Supervisor.open(children, strategy="one_for_one") as sup:
        assert_type(sup, otpy.Pid)
        result = await SessionServer.send_message("agent", "Hi")
        assert_type(result, sessions.Result)
        assert_type(result.text, str)
        assert_type(result.cost_usd, float)
        assert_type(result.finish_reason, sessions.FinishReason)
        session = await SessionServer.get_session("agent")
        assert_type(session.turn_count, int)
        assert_type(otpy.whereis("agent"), otpy.Pid | None)
    assert_type(sessions.__version__, str)
    assert_type(otpy.__version__, str)


if __name__ == "__main__":
    trio.run(main)
