"""The dashboard in a real headless Chromium (Debian's), driven by Playwright for Python.

They run whenever /usr/bin/chromium exists (CI installs it: .ci/run); Playwright's own
browser download is never used. Set OTPY_WEB_SCREENSHOTS to a folder to keep screenshots
of the dashboard (docs/images has the ones in docs/web.md).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ServerThread

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (CI installs it)")

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = (
    "say:<script>window.__xss=1</script> "
    '<img src=x onerror="window.__xss=2"> '
    '<a href="javascript:window.__xss=3">go</a>'
)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread() as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: ServerThread) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{server.url}/?token={server.token}")
    assert page.url == f"{server.url}/"  # the token left the address bar
    yield page
    context.close()
    assert errors == []  # no script error, and no CSP violation either


def send(server: ServerThread, name: str, prompt: str) -> threading.Thread:
    """POST a message from another thread (the call returns when the turn ends)."""

    def post() -> None:
        httpx.post(
            f"{server.url}/api/sessions/{name}/messages",
            headers={"Authorization": f"Bearer {server.token}"},
            json={"prompt": prompt},
            timeout=30,
        ).raise_for_status()

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def shoot(page: Any, name: str) -> None:
    folder = os.environ.get("OTPY_WEB_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def test_the_dashboard_shows_the_tree_and_the_sessions(page: Any) -> None:
    for key in ("/root", "/root/agents", "/root/agents/alpha", "/root/agents/beta", "/root/more"):
        page.wait_for_selector(f'.node[data-key="{key}"]')
    alpha = page.locator('.node[data-key="/root/agents/alpha"]')
    assert "SessionServer" in alpha.inner_text()
    assert "running" in alpha.inner_text()
    page.wait_for_selector('[data-session="alpha"]')
    page.wait_for_selector('[data-session="beta"]')


def test_a_streamed_reply_appears_as_it_streams(page: Any, server: ServerThread) -> None:
    page.wait_for_selector('[data-session="beta"]')
    text = page.locator('[data-session="beta"] .live-text')
    thread = send(server, "beta", "slow:150")
    page.wait_for_function(
        "() => { const t = document.querySelector('[data-session=\"beta\"] .live-text').textContent;"
        " return t.startsWith('w0 w1 w2') && !t.includes('w149'); }"
    )
    partial = text.text_content()
    shoot(page, "dashboard.png")
    thread.join(30)
    page.wait_for_function(
        "() => document.querySelector('[data-session=\"beta\"] .live-text').textContent.endsWith('w149')"
    )
    assert partial is not None
    assert len(partial) < len(text.text_content() or "")


def test_the_kill_button_makes_a_restart_visible(page: Any) -> None:
    node = page.locator('.node[data-key="/root/agents/alpha"]')
    node.locator(".restarts").wait_for()
    before = int((node.locator(".restarts").text_content() or "").split()[-1])
    node.locator("button.kill").click()
    page.wait_for_function(
        f"() => document.querySelector('.node[data-key=\"/root/agents/alpha\"] .restarts').textContent"
        f" === 'restarts {before + 1}'"
    )
    flashed = page.locator('.node[data-key="/root/agents/alpha"].flash')
    assert flashed.count() == 1
    page.wait_for_selector('.node[data-key="/root/agents/alpha"] .badge.status-running')


def test_model_output_with_markup_renders_as_text(page: Any, server: ServerThread) -> None:
    page.wait_for_selector('[data-session="alpha"]')
    send(server, "alpha", XSS).join(30)
    card = page.locator('[data-session="alpha"] .live-text')
    page.wait_for_function(
        "() => document.querySelector('[data-session=\"alpha\"] .live-text').textContent.includes('</a>')"
    )
    assert (card.text_content() or "") == XSS[4:]
    page.goto(f"{page.url.split('#')[0]}#session=alpha")
    page.wait_for_selector("#history li")
    page.wait_for_function("() => document.querySelector('#transcript').textContent.includes('onerror')")
    shoot(page, "session.png")
    assert XSS[4:] in (page.locator("#history").text_content() or "")
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img, main script, main a[href^='javascript']").count() == 0
