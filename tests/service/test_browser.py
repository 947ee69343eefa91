"""The page at / in a real browser: Playwright driving Debian's headless Chromium against a real
server. Screenshots go to test-artifacts/ (search-dropdown.png, email-ghost.png).

`make test` installs Debian's chromium when it is missing; without it these tests are skipped.
Playwright's own browser download is never used (this machine has no internet).
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from nextchar.checkpoint import load_checkpoint
from nextchar.service.app import create_app
from nextchar.service.settings import ServiceSettings
from tests.live_server import live_server

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
CHROMIUM = os.environ.get("NEXTCHAR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,  # a real browser against a real server
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (`make test` installs it: apt-get install chromium)",
    ),
]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
expect = sync_api.expect if hasattr(sync_api, "expect") else None


@pytest.fixture(scope="module")
def server(text_model_dir: Path) -> Iterator[str]:
    app = create_app(ckpt=load_checkpoint(text_model_dir), settings=ServiceSettings(cache_mb=4))
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, server: str) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A fresh page at the server's /; fails the test on any script error or off-server request."""
    context = browser.new_context(viewport={"width": 900, "height": 820})
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
        page.on(
            "console",
            lambda msg: problems.append(f"console: {msg.text} {msg.location}") if msg.type == "error" else None,
        )
        page.on("request", lambda req: None if req.url.startswith(server) else problems.append(req.url))
        page.goto(server + "/")
        yield page
        assert problems == []
    finally:
        context.close()


def test_search_box_drop_down_keyboard(page) -> None:  # type: ignore[no-untyped-def]
    box = page.get_by_role("combobox")
    listbox = page.get_by_role("listbox")
    expect(box).to_have_attribute("aria-expanded", "false")
    box.click()
    box.press_sequentially("wha", delay=40)
    expect(listbox).to_be_visible()
    expect(box).to_have_attribute("aria-expanded", "true")
    options = page.get_by_role("option")
    # Until the answer for "wha" arrives the drop-down may still show the one for "wh".
    expect(options.first).to_have_attribute("data-text", re.compile("^wha"))
    texts = [o.get_attribute("data-text") for o in options.all()]
    assert texts and all(t.startswith("wha") for t in texts)
    # The typed part plain, the completion bold.
    assert options.first.locator(".typed").text_content() == "wha"
    assert options.first.locator("b").text_content() == texts[0][3:]

    box.press("ArrowDown")
    expect(options.first).to_have_attribute("aria-selected", "true")
    expect(box).to_have_attribute("aria-activedescendant", "suggestion-0")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "search-dropdown.png"))
    box.press("Enter")
    expect(box).to_have_value(texts[0])
    expect(listbox).to_be_hidden()
    expect(box).to_have_attribute("aria-expanded", "false")

    # Esc closes; typing opens again; the chart shows the next-character distribution.
    box.press_sequentially(" i", delay=40)
    expect(listbox).to_be_visible()
    box.press("Escape")
    expect(listbox).to_be_hidden()
    expect(page.locator("#chart li").first).to_be_visible()
    expect(page.locator("#chart-context")).to_have_text(texts[0] + " i")
    assert re.fullmatch(r"\d+\.\d%", page.locator("#chart .pct").first.text_content())


def test_search_box_mouse(page) -> None:  # type: ignore[no-untyped-def]
    box = page.get_by_role("combobox")
    box.click()
    box.press_sequentially("it w", delay=40)
    options = page.get_by_role("option")
    expect(options.nth(1)).to_be_visible()
    second = options.nth(1).get_attribute("data-text")
    options.nth(1).hover()
    expect(options.nth(1)).to_have_attribute("aria-selected", "true")
    options.nth(1).click()
    expect(box).to_have_value(second)
    expect(page.get_by_role("listbox")).to_be_hidden()
    expect(box).to_be_focused()


def test_answers_out_of_order_are_ignored(page, server: str) -> None:  # type: ignore[no-untyped-def]
    held = []

    def hold_the_first(route) -> None:  # type: ignore[no-untyped-def]
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(route.request.url).query).get("q", [""])[0]
        if q == "w" and not held:
            held.append(route)  # answered after the answer for "wh"
        else:
            route.continue_()

    page.route("**/api/complete?*", hold_the_first)
    box = page.get_by_role("combobox")
    box.click()
    box.press_sequentially("wh", delay=40)
    options = page.get_by_role("option")
    expect(options.first).to_be_visible()
    assert held, "the answer for 'w' was not held back"
    before = [o.get_attribute("data-text") for o in options.all()]
    assert all(t.startswith("wh") for t in before)
    held[0].continue_()
    page.wait_for_timeout(500)
    assert [o.get_attribute("data-text") for o in options.all()] == before


def test_email_ghost_text_and_tab(page) -> None:  # type: ignore[no-untyped-def]
    email = page.locator("#email")
    email.click()
    email.press_sequentially("It was the ", delay=30)
    page.wait_for_function("document.getElementById('ghost-text').textContent.length > 0")
    ghost = page.locator("#ghost-text").text_content()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "email-ghost.png"))
    email.press("Tab")
    expect(email).to_have_value("It was the " + ghost)
    expect(email).to_be_focused()
    # Away from the end of the text there is no ghost, and Tab is Tab: focus moves on (no keyboard trap).
    email.press("Home")
    expect(page.locator("#ghost-text")).to_have_text("")
    email.press("Tab")
    expect(email).not_to_be_focused()
