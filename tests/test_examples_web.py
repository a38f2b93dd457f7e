"""examples/web.py serves the dashboard and the API over the demo's sessions, offline, and stops on its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def test_the_web_example_serves_the_demo_sessions() -> None:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "web.py"), "--port", "0", "--seconds", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("dashboard: http://127.0.0.1:"), first + (
            process.stderr.read() if process.stderr else ""
        )
        url, _, token = first.split()[1].partition("/?token=")
        assert process.stdout.readline() == f"token: {token}\n"
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"ok": True}
        assert httpx.get(f"{url}/api/sessions", timeout=10).status_code == 401
        listing = httpx.get(f"{url}/api/sessions", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
        assert [s["name"] for s in listing["sessions"]] == ["researcher", "reviewer", "writer"]
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.splitlines()[-1] == "stopped"
