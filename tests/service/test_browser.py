"""The page at / in a real browser: Playwright driving Debian's headless Chromium against a real
server. Screenshots go to test-artifacts/ (search-dropdown.png, email-ghost.png). Also /docs,
and docs/embed.md's snippet served by a second origin (another live server).

`make test` installs Debian's chromium when it is missing; without it these tests are skipped.
Playwright's own browser download is never used (this machine has no internet).
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

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
EMBED_DOC = Path(__file__).parents[2] / "docs" / "embed.md"
PLACEHOLDER = "https://suggest.example.org"  # the server's address in the snippet, as embed.md says to replace it
PERCENT = re.compile(r"^\d+\.\d%$")
expect = sync_api.expect if hasattr(sync_api, "expect") else None


@pytest.fixture(scope="module")
def server(text_model_dir: Path) -> Iterator[str]:
    app = create_app(ckpt=load_checkpoint(text_model_dir), settings=ServiceSettings(cache_mb=4))
    with live_server(app) as url:
        yield url


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
    # The list of the last keystroke, not of an earlier one still showing (it would change under the mouse).
    expect(options.nth(1)).to_have_attribute("data-text", re.compile(r"^it w"))
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
    # The label promises what the box does: the next word or few (phrase mode, whatever the server's default).
    expect(page.locator("section[aria-labelledby=email-title] p.muted")).to_contain_text("next word or few")
    email.click()
    with page.expect_request(lambda r: "/api/complete?" in r.url and "mode=phrase" in r.url):
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


# ---------------------------------------------------------------------------------- the chart on load


def test_chart_is_drawn_on_load(page, server: str) -> None:  # type: ignore[no-untyped-def]
    # No key pressed: the chart shows what follows the empty text…
    expect(page.locator("#chart .pct").first).to_have_text(PERCENT)
    expect(page.locator("#chart-context")).to_have_text("")
    # …and what follows a text given in the address (as /suggest's URLs give it).
    page.goto(server + "/?q=" + urllib.parse.quote("it w"))
    expect(page.get_by_role("combobox")).to_have_value("it w")
    expect(page.locator("#chart-context")).to_have_text("it w")
    expect(page.locator("#chart .pct").first).to_have_text(PERCENT)


@contextmanager
def _fresh_page(browser) -> Iterator[tuple[object, list[str]]]:  # type: ignore[no-untyped-def]
    """A page in a context of its own, and the console errors it logs (for tests that expect some)."""
    context = browser.new_context(viewport={"width": 900, "height": 820})
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(f"script error: {exc}"))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        yield page, errors
    finally:
        context.close()


def test_chart_is_drawn_when_the_first_answer_fails(browser, server: str) -> None:  # type: ignore[no-untyped-def]
    failed: list[str] = []

    def refuse_the_first(route) -> None:  # type: ignore[no-untyped-def]
        if not failed:
            failed.append(route.request.url)
            route.fulfill(status=503, headers={"Retry-After": "1"}, json={"detail": "too many requests are queued"})
        else:
            route.continue_()

    with _fresh_page(browser) as (page, errors):
        page.route("**/api/complete?*", refuse_the_first)
        page.goto(server + "/")
        expect(page.locator("#chart .pct").first).to_have_text(PERCENT)  # asked again, no key pressed
        assert len(failed) == 1
        assert all("503" in e for e in errors), errors  # the refused request, and nothing else


# ---------------------------------------------------------------------------------- /docs


def test_docs_page_renders_markdown(page, server: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(server + "/docs")
    suggest = page.locator(".api-route", has=page.locator("h2", has_text="GET /suggest"))
    expect(suggest.locator(".api-description code")).to_have_text("[q, [completions…], [descriptions…], [urls…]]")
    assert "`" not in page.locator("#api").inner_text()  # no description shows its Markdown raw
    rendered = page.evaluate(
        """(text) => {
            const d = document.createElement("div");
            d.innerHTML = renderMarkdown(text);
            const all = (sel) => [...d.querySelectorAll(sel)].map((n) => n.textContent);
            return {tags: [...d.querySelectorAll("*")].map((n) => n.tagName.toLowerCase()),
                    code: all("code"), em: all("em"), strong: all("strong"), items: all("li"),
                    links: [...d.querySelectorAll("a")].map((a) => [a.textContent, a.getAttribute("href")]),
                    paragraphs: all("p")};
        }""",
        "Read `q`, **all** of it, *slowly*; snake_case_name stays.\nSame paragraph.\n\n"
        "- one <img src=x onerror=alert(1)>\n- two `<b>bold?</b>`\n\n1. [docs](/docs#x)\n"
        "2. [bad](javascript:alert(1)) [site](https://example.org/a_b_?x=1&y=2)",
    )
    assert rendered["code"] == ["q", "<b>bold?</b>"]  # code spans as text, HTML in them escaped
    assert rendered["strong"] == ["all"] and rendered["em"] == ["slowly"]
    assert rendered["paragraphs"] == ["Read q, all of it, slowly; snake_case_name stays. Same paragraph."]
    assert rendered["items"][:2] == ["one <img src=x onerror=alert(1)>", "two <b>bold?</b>"]
    assert rendered["links"] == [["docs", "/docs#x"], ["site", "https://example.org/a_b_?x=1&y=2"]]
    assert "javascript:alert(1)" in rendered["items"][3]  # not a link: shown as typed
    assert set(rendered["tags"]) == {"p", "code", "strong", "em", "ul", "ol", "li", "a"}  # no img, no b


# ---------------------------------------------------------------------------------- docs/embed.md's snippet


def embed_snippet() -> str:
    """The one ```html block of docs/embed.md: what a site puts on its page."""
    blocks = re.findall(r"^```html\n(.*?)^```", EMBED_DOC.read_text(encoding="utf-8"), flags=re.S | re.M)
    assert len(blocks) == 1, "docs/embed.md: expected exactly one ```html block, the snippet"
    assert blocks[0].count(PLACEHOLDER) == 1, f"docs/embed.md: the snippet names {PLACEHOLDER} once"
    return str(blocks[0])


@pytest.fixture(scope="module")
def embedding(text_model_dir: Path, server: str) -> Iterator[dict[str, str]]:
    """Another site (another origin) with the snippet: /cors points it at a nextchar server whose
    --cors-origin is that site, /plain at one without (the module's server). Yields their URLs."""
    snippet = embed_snippet()
    targets: dict[str, str] = {}

    async def site_page(request: Request) -> HTMLResponse:
        target = targets[request.path_params["name"]]
        return HTMLResponse(
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Another site</title>"
            "<link rel=icon href='data:,'></head><body>" + snippet.replace(PLACEHOLDER, target) + "</body></html>"
        )

    with live_server(Starlette(routes=[Route("/{name}", site_page)])) as site:
        settings = ServiceSettings(cache_mb=4, cors_origins=[site])
        with live_server(create_app(ckpt=load_checkpoint(text_model_dir), settings=settings)) as cors_server:
            targets.update(cors=cors_server, plain=server)
            yield {"site": site, **targets}


def test_embed_snippet_with_cors(browser, embedding: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    with _fresh_page(browser) as (page, errors):
        asked: list[str] = []
        page.on("request", lambda req: asked.append(req.url) if "/suggest?" in req.url else None)
        page.goto(embedding["site"] + "/cors")
        box = page.locator("#search")
        box.click()
        with page.expect_response(lambda r: "/suggest?q=it%20w" in r.url) as answer:
            box.press_sequentially("it w", delay=20)
        assert answer.value.all_headers()["access-control-allow-origin"] == embedding["site"]
        options = page.locator("#search-suggestions option")
        expect(options.first).to_have_text(re.compile("^it w"))
        values = options.evaluate_all("(os) => os.map((o) => o.value)")  # what the datalist offers
        assert values and all(v.startswith("it w") for v in values)
        assert all(u.startswith(embedding["cors"] + "/suggest?q=") for u in asked)  # another origin: CORS
        assert len(asked) < 4, asked  # debounced: keys 20 ms apart are not asked about one by one
        assert errors == []


def test_embed_snippet_blocked_without_cors(browser, embedding: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    with _fresh_page(browser) as (page, errors):
        page.goto(embedding["site"] + "/plain")
        box = page.locator("#search")
        box.click()
        with page.expect_console_message(lambda m: m.type == "error" and "CORS policy" in m.text):
            box.press_sequentially("it w", delay=20)
        page.wait_for_timeout(300)
        assert page.locator("#search-suggestions option").count() == 0
        assert not [e for e in errors if "script error" in e], errors  # blocked, and the snippet coped


def test_embed_snippet_drops_stale_answers(browser, embedding: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    held = []

    def hold_the_first(route) -> None:  # type: ignore[no-untyped-def]
        if not held:
            held.append(route)  # released after the answer for the longer text is shown
        else:
            route.continue_()

    with _fresh_page(browser) as (page, errors):
        page.route("**/suggest?*", hold_the_first)
        page.goto(embedding["site"] + "/cors")
        box = page.locator("#search")
        box.click()
        box.press_sequentially("it", delay=20)
        for _ in range(100):
            if held:
                break
            page.wait_for_timeout(20)
        assert held, "the request for 'it' was not made"
        box.press_sequentially(" w", delay=20)
        options = page.locator("#search-suggestions option")
        expect(options.first).to_have_text(re.compile("^it w"))
        before = options.all_text_contents()
        with suppress(sync_api.Error):  # raised when the snippet has aborted the request: nothing to release
            held[0].continue_()  # the old answer arrives now, if its request is still open
        page.wait_for_timeout(500)
        assert options.all_text_contents() == before
        assert not [e for e in errors if "script error" in e], errors
