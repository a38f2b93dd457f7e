"""The web dashboard and API over the demo's three sessions, offline.

    python examples/web.py [--port 8000] [--seconds N]      (or: python3 dev.py web)

It starts the demo's sessions (``researcher``, ``writer``, ``reviewer``: the scripted
provider of examples/sessions_demo.py, one SQLite file in a temporary directory) under
a supervisor, a DynamicSupervisor for sessions started over HTTP, and the web app,
served by Hypercorn on 127.0.0.1. It prints the dashboard's address (with the one-time
token that sets the browser's cookie) and a curl line for the API. A little traffic
keeps the sessions busy: every few seconds one of them gets the next prompt of the demo.

Open the address, watch the replies stream, kill a session with its button and watch
its supervisor start it again. ``--seconds N`` stops after N seconds (the tests use it);
otherwise Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog
import trio

import otpy
import sessions
import sessions.web
from sessions import SessionServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sessions_demo import NAMES, PROMPTS, scripted


async def traffic(every: float) -> None:
    """Send the demo's prompts, one session at a time, so that there is something to watch."""
    prompts = itertools.cycle([(name, prompt) for name in NAMES for prompt in PROMPTS[name]])
    while True:
        await trio.sleep(every)
        name, prompt = next(prompts)
        try:
            await SessionServer.send_message(name, prompt)
        except (sessions.SessionError, otpy.CallError) as exc:
            print(f"traffic: {name}: {exc}", flush=True)  # killed from the dashboard, say


async def main(host: str, port: int, seconds: float | None, token: str) -> None:
    provider = scripted(speed=1.0)
    with tempfile.TemporaryDirectory(prefix="otpy-web-") as folder:
        store = sessions.SqliteStore(Path(folder) / "agents.db")

        def session_spec(name: str, options: dict[str, Any]) -> otpy.ChildSpec:
            return SessionServer.child_spec(name=name, provider=provider, store=store, restart="transient", **options)

        agents = [SessionServer.child_spec(name=name, provider=provider, store=store, cwd=folder) for name in NAMES]
        children = [
            otpy.Supervisor.child_spec(agents, strategy="one_for_one", name="agents", max_restarts=50),
            otpy.DynamicSupervisor.child_spec(name="more_agents"),
        ]
        async with trio.open_nursery() as nursery:
            await otpy.Supervisor.start_link(children, name="app", max_restarts=50, nursery=nursery)
            app = sessions.web.create_app("app", token=token, dynamic="more_agents", session_spec=session_spec)
            url = await nursery.start(functools.partial(sessions.web.serve, app, host=host, port=port))
            print(f"dashboard: {url}/?token={token}", flush=True)
            print(f"token: {token}", flush=True)
            print(f"api: curl -H 'Authorization: Bearer {token}' {url}/api/sessions", flush=True)
            nursery.start_soon(traffic, 2.0)
            if seconds is not None:
                await trio.sleep(seconds)
                nursery.cancel_scope.cancel()
        await store.aclose()
    print("stopped", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--token", default=None, help="the bearer token (default: a new random one)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        trio.run(main, args.host, args.port, args.seconds, args.token or sessions.web.new_token())
    except KeyboardInterrupt:
        print("stopped", flush=True)
