"""Other sites' pages using the service (docs/embed.md): CORS headers only for the origins
`--cors-origin` names and only on the suggestion routes, the origins' validation, and the
proxy headers the nginx recipe sends. The browser's side is in test_browser.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from nextchar.checkpoint import load_checkpoint
from nextchar.cli.main import main
from nextchar.errors import UserError
from nextchar.service.app import app_from_env, create_app
from nextchar.service.settings import ServiceSettings, check_cors_origins
from tests.live_server import live_server

ALLOWED = "https://www.example.org"
ALLOW_ORIGIN = "access-control-allow-origin"


@pytest.fixture(scope="module")
def cors_client(text_model_dir: Path) -> Iterator[TestClient]:
    settings = ServiceSettings(cache_mb=2, cors_origins=[ALLOWED, "http://127.0.0.1:8080"])
    with TestClient(create_app(ckpt=load_checkpoint(text_model_dir), settings=settings)) as c:
        yield c


@pytest.mark.parametrize("route", ["/suggest", "/api/complete"])
def test_cors_headers_only_for_the_allowed_origins(cors_client: TestClient, route: str) -> None:
    allowed = cors_client.get(route, params={"q": "it w"}, headers={"Origin": ALLOWED})
    assert allowed.status_code == 200
    assert allowed.headers[ALLOW_ORIGIN] == ALLOWED
    assert "Origin" in allowed.headers["vary"]  # caches in between keep the answers per origin apart
    assert "access-control-allow-credentials" not in allowed.headers
    for origin in ["https://evil.example", "https://www.example.org.evil.example", "http://www.example.org", "null"]:
        other = cors_client.get(route, params={"q": "it w"}, headers={"Origin": origin})
        assert other.status_code == 200  # answered: it is the browser that withholds it from the page
        assert ALLOW_ORIGIN not in other.headers, origin
        assert "Origin" in other.headers["vary"]
    assert ALLOW_ORIGIN not in cors_client.get(route, params={"q": "it w"}).headers  # no Origin: not a page


def test_refusals_carry_the_headers_too(cors_client: TestClient) -> None:
    """A page can read why it was refused, instead of seeing a blocked request."""
    for params, status in [({"q": "a", "k": "0"}, 422), ({"q": "x" * 1001}, 422)]:
        r = cors_client.get("/suggest", params=params, headers={"Origin": ALLOWED})
        assert r.status_code == status and r.headers[ALLOW_ORIGIN] == ALLOWED
    r = cors_client.get("/suggest?q=%ff", headers={"Origin": ALLOWED})  # refused by the guard
    assert r.status_code == 400 and r.headers[ALLOW_ORIGIN] == ALLOWED


def test_only_the_suggestion_routes_are_shared(cors_client: TestClient) -> None:
    for route in ["/", "/healthz", "/metrics", "/opensearch.xml", "/openapi.json", "/docs"]:
        r = cors_client.get(route, headers={"Origin": ALLOWED})
        assert r.status_code == 200 and ALLOW_ORIGIN not in r.headers, route
    preflight = {"Origin": ALLOWED, "Access-Control-Request-Method": "GET"}
    assert cors_client.options("/healthz", headers=preflight).status_code == 405


def test_preflight_allows_get_only(cors_client: TestClient) -> None:
    ok = cors_client.options("/suggest", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "GET"})
    assert ok.status_code == 200
    assert ok.headers[ALLOW_ORIGIN] == ALLOWED
    assert ok.headers["access-control-allow-methods"] == "GET"
    post = cors_client.options("/suggest", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"})
    assert post.status_code == 400
    other = cors_client.options(
        "/api/complete", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert other.status_code == 400 and ALLOW_ORIGIN not in other.headers
    # A listed origin may reach a server on a private network (Chrome's Private Network Access).
    private = cors_client.options(
        "/suggest",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Private-Network": "true",
        },
    )
    assert private.status_code == 200 and private.headers["access-control-allow-private-network"] == "true"


def test_no_cors_by_default(text_model_dir: Path) -> None:
    with TestClient(create_app(ckpt=load_checkpoint(text_model_dir), settings=ServiceSettings(cache_mb=2))) as c:
        r = c.get("/suggest", params={"q": "it"}, headers={"Origin": ALLOWED})
        assert r.status_code == 200 and ALLOW_ORIGIN not in r.headers
        preflight = {"Origin": ALLOWED, "Access-Control-Request-Method": "GET"}
        assert c.options("/suggest", headers=preflight).status_code == 405


def test_any_origin_with_star(text_model_dir: Path) -> None:
    settings = ServiceSettings(cache_mb=2, cors_origins=["*"])
    with TestClient(create_app(ckpt=load_checkpoint(text_model_dir), settings=settings)) as c:
        r = c.get("/suggest", params={"q": "it"}, headers={"Origin": "https://anywhere.example"})
        assert r.headers[ALLOW_ORIGIN] == "*"
        assert ALLOW_ORIGIN not in c.get("/healthz", headers={"Origin": "https://anywhere.example"}).headers
        # …but not into a private network: a page anyone's browser opens must not read an intranet server.
        private = c.options(
            "/suggest",
            headers={
                "Origin": "https://anywhere.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Private-Network": "true",
            },
        )
        assert private.status_code == 400


def test_workers_get_the_origins(text_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ServiceSettings(model=str(text_model_dir), cache_mb=1, cors_origins=[ALLOWED])
    assert ServiceSettings.from_env(settings.to_env()) == settings
    monkeypatch.setenv("NEXTCHAR_SERVE_SETTINGS", settings.to_env())
    with TestClient(app_from_env()) as c:
        assert c.get("/suggest", params={"q": "it"}, headers={"Origin": ALLOWED}).headers[ALLOW_ORIGIN] == ALLOWED


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["https://www.example.org"], ["https://www.example.org"]),
        (["HTTPS://WWW.Example.ORG:443"], ["https://www.example.org"]),  # as browsers write Origin
        (["http://example.org:80", "http://example.org"], ["http://example.org"]),
        (["http://127.0.0.1:8080"], ["http://127.0.0.1:8080"]),
        (["http://[::1]:3000"], ["http://[::1]:3000"]),
        (["*"], ["*"]),
        ([], []),
    ],
)
def test_origins_are_normalised(given: list[str], expected: list[str]) -> None:
    assert check_cors_origins(given) == expected


@pytest.mark.parametrize(
    ("origin", "message"),
    [
        ("https://www.example.org/", "try 'https://www.example.org'"),
        ("https://www.example.org/search", "no path"),
        ("www.example.org", "must start with http:// or https://"),
        ("localhost:3000", "must start with http:// or https://"),
        ("ftp://example.org", "must start with http:// or https://"),
        ("https://*.example.org", "list each origin"),
        ("https://example.org:99999", "port"),
        ("https://user@example.org", "user name"),
        ("https://", "no host"),
        ("https://bücher.example", "punycode"),
        ("http://[::1", "not a host name"),
        ("null", "must start with http"),
    ],
)
def test_bad_origins_are_one_line(origin: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        check_cors_origins([origin])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert err.value.parameters == ("cors_origins",)


def test_bad_origins_in_create_app(text_model_dir: Path) -> None:
    with pytest.raises(UserError, match="cors_origins"):
        create_app(ckpt=load_checkpoint(text_model_dir), settings=ServiceSettings(cors_origins=["example.org"]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cors-origin", "https://example.org/"], "--cors-origin: 'https://example.org/' is not an origin"),
        (["--cors-origin", "*", "--cors-origin", "https://example.org"], "give it alone"),
    ],
)
def test_serve_refuses_bad_origins_in_one_line(
    args: list[str], message: str, text_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "-m", str(text_model_dir), "--port", "0", *args]) == 2  # before anything listens
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_the_proxy_recipe_headers_name_the_site(text_model_dir: Path) -> None:
    """What embed.md's nginx recipe sends (Host, X-Forwarded-Proto from 127.0.0.1) makes the answers'
    URLs the site's, as uvicorn's proxy_headers (on in `nextchar serve`) reads them."""
    app = create_app(ckpt=load_checkpoint(text_model_dir), settings=ServiceSettings(cache_mb=2))
    with live_server(app, proxy_headers=True) as url:
        proxied = {"Host": "www.example.org", "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
        urls = httpx.get(url + "/suggest", params={"q": "it w"}, headers=proxied).json()[3]
        assert urls and all(u.startswith("https://www.example.org/?q=it%20w") for u in urls)
        plain = httpx.get(url + "/suggest", params={"q": "it w"}).json()[3]
        assert all(u.startswith(url + "/?q=") for u in plain)  # nginx's defaults: the internal address
