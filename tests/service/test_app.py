"""The suggestion service (nextchar.service, `nextchar serve`): every route in-process, bad
input, caches and their bounds, metrics, slow clients on a real server, and the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from nextchar.checkpoint import BUNDLED_DIR, load_checkpoint
from nextchar.cli.main import main
from nextchar.completion.completer import Completer
from nextchar.service.app import app_from_env, create_app
from nextchar.service.engine import ResponseCache
from nextchar.service.guard import query_problem
from nextchar.service.schemas import SUGGESTIONS_TYPE
from nextchar.service.settings import ServiceSettings
from tests.live_server import live_server

SMALL = ServiceSettings(cache_mb=2, precision="fp32")  # exact: answers are compared with an fp32 Completer


@pytest.fixture(scope="module", params=["text", "lines"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, Completer]]:
    """A client for the app serving a tiny model of each corpus format, and a Completer of the same model."""
    directory = request.getfixturevalue("text_model_dir" if request.param == "text" else "lines_model_dir")
    ckpt = load_checkpoint(directory)
    with TestClient(create_app(ckpt=ckpt, settings=SMALL)) as client:
        yield client, Completer(load_checkpoint(directory))


@pytest.fixture(scope="module")
def client(text_model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(ckpt=load_checkpoint(text_model_dir), settings=SMALL)) as c:
        yield c


# ---------------------------------------------------------------------------------- routes


@pytest.mark.parametrize("q", ["", "t", "it was the ", "émigré", "日本語", "🙂 hi", "a\tb"])
def test_suggest_is_opensearch_json(served: tuple[TestClient, Completer], q: str) -> None:
    client, _ = served
    r = client.get("/suggest", params={"q": q, "k": 4})
    assert r.status_code == 200
    assert r.headers["content-type"] == SUGGESTIONS_TYPE
    body = r.json()
    assert isinstance(body, list) and len(body) == 4
    query, texts, descriptions, urls = body
    assert query == q
    assert 1 <= len(texts) <= 4
    assert len(texts) == len(descriptions) == len(urls) == len(set(texts))
    assert all(isinstance(x, str) for x in (*texts, *descriptions, *urls))
    for text, url in zip(texts, urls, strict=True):
        assert text.startswith(q)
        assert url == "http://testserver/?q=" + urllib.parse.quote(text, safe="")


def test_suggest_matches_the_completer(served: tuple[TestClient, Completer]) -> None:
    client, completer = served
    mode = client.get("/healthz").json()["default_mode"]
    texts = client.get("/suggest", params={"q": "it w", "k": 5}).json()[1]
    expected = []
    for s in completer.suggest("it w", k=5, mode=mode):
        if s.text.rstrip("\n") not in expected:
            expected.append(s.text.rstrip("\n"))
    assert texts == expected


@pytest.mark.parametrize("mode", ["word", "line", "phrase"])
def test_complete_scores_and_next_chars(served: tuple[TestClient, Completer], mode: str) -> None:
    client, completer = served
    r = client.get("/api/complete", params={"q": "it was", "k": 3, "mode": mode, "chars": 7})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert (body["q"], body["mode"], body["k"], body["typos"]) == ("it was", mode, 3, False)
    suggestions = body["suggestions"]
    assert 1 <= len(suggestions) <= 3
    assert [s["score"] for s in suggestions] == sorted((s["score"] for s in suggestions), reverse=True)
    for s in suggestions:
        assert set(s) == {"text", "completion", "logprob", "score", "corrected"}
        assert s["text"] == "it was" + s["completion"] and s["corrected"] is False
        assert s["logprob"] <= 0
    expected = completer.suggest("it was", k=3, mode=mode)
    assert [s["text"] for s in suggestions] == [s.text for s in expected]
    assert [s["logprob"] for s in suggestions] == pytest.approx([s.logprob for s in expected], abs=1e-4)
    chars = body["next_chars"]
    assert len(chars) == 7
    probs = [c["probability"] for c in chars]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert [(c["char"], pytest.approx(c["probability"])) for c in chars] == completer.next_chars("it was", 7)


def test_complete_with_typos_flags_corrections(client: TestClient) -> None:
    body = client.get("/api/complete", params={"q": "it wsa the", "k": 6, "typos": "1", "mode": "word"}).json()
    assert body["typos"] is True
    assert all(isinstance(s["corrected"], bool) for s in body["suggestions"])
    for s in body["suggestions"]:
        if not s["corrected"]:
            assert s["text"].startswith("it wsa the")


def test_lexicon_restricts_suggestions(lines_model_dir: Path, write_file) -> None:  # type: ignore[no-untyped-def]
    lexicon = write_file("names.txt", "emma\t10\nemily\t5\nolivia\n")
    settings = ServiceSettings(model=str(lines_model_dir), lexicon=str(lexicon), cache_mb=1)
    with TestClient(create_app(settings=settings)) as c:
        texts = c.get("/suggest", params={"q": "em"}).json()[1]
        assert texts and set(texts) <= {"emma", "emily"}
        assert c.get("/suggest", params={"q": "zz"}).json()[1] == []


def test_k_defaults_and_bounds(client: TestClient) -> None:
    assert len(client.get("/suggest", params={"q": "it"}).json()[1]) <= SMALL.default_k
    assert client.get("/api/complete", params={"q": "it", "k": 50}).status_code == 200
    assert client.get("/api/complete", params={"q": "it", "k": 1}).json()["k"] == 1


def test_opensearch_description(client: TestClient) -> None:
    r = client.get("/opensearch.xml")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/opensearchdescription+xml")
    root = ET.fromstring(r.content)
    ns = {"os": "http://a9.com/-/spec/opensearch/1.1/"}
    assert root.find("os:ShortName", ns).text == "nextchar"
    urls = {u.get("type"): u.get("template") for u in root.findall("os:Url", ns)}
    assert urls == {
        "text/html": "http://testserver/?q={searchTerms}",
        SUGGESTIONS_TYPE: "http://testserver/suggest?q={searchTerms}",
    }


def test_opensearch_public_url_is_escaped(text_model_dir: Path) -> None:
    settings = ServiceSettings(cache_mb=1, public_url='http://example.org/a?x=1&y="2"<')
    with TestClient(create_app(ckpt=load_checkpoint(text_model_dir), settings=settings)) as c:
        root = ET.fromstring(c.get("/opensearch.xml").content)  # well-formed despite & " <
        templates = [u.get("template") for u in root.iter("{http://a9.com/-/spec/opensearch/1.1/}Url")]
        assert 'http://example.org/a?x=1&y="2"</suggest?q={searchTerms}' in templates
        assert c.get("/suggest", params={"q": "i"}).json()[3][0].startswith('http://example.org/a?x=1&y="2"</?q=')


def test_healthz(client: TestClient, text_model_dir: Path) -> None:
    body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["model"] == str(text_model_dir)
    assert (body["kind"], body["format"], body["default_mode"]) == ("gru", "text", "phrase")
    assert body["precision"] == "fp32"  # SMALL asks for exact steps
    assert body["pid"] == os.getpid()
    assert body["state_cache_capacity"] > 0


def test_healthz_tells_a_stuck_model_thread_and_the_weights_served(text_model_dir: Path) -> None:
    """A job that holds the model thread (as a stuck model would) and one queued behind it: /healthz
    turns 503 "degraded" once either passes its bound, and "ok" again when the thread is free."""
    import threading

    settings = ServiceSettings(cache_mb=1, queue_wait_limit_s=0.2, batch_time_limit_s=0.3)
    ckpt = load_checkpoint(text_model_dir)
    app = create_app(ckpt=ckpt, settings=settings)
    with TestClient(app) as c:
        ok = c.get("/healthz")
        assert ok.status_code == 200 and ok.json()["status"] == "ok" and ok.json()["problems"] == []
        assert ok.json()["weights_sha256"] == ckpt.meta["weights"]["sha256"]
        engine, release = app.state.engine(), threading.Event()
        assert c.portal is not None
        held = c.portal.start_task_soon(engine.run, release.wait)
        queued = c.portal.start_task_soon(engine.run, time.sleep, 0)
        time.sleep(0.5)
        r = c.get("/healthz")
        body = r.json()
        assert r.status_code == 503 and body["status"] == "degraded" and len(body["problems"]) == 2
        assert body["queue_oldest_wait_s"] > 0.2 and body["model_batch_running_s"] > 0.3
        release.set()
        held.result(timeout=5), queued.result(timeout=5)
        assert c.get("/healthz").json()["status"] == "ok"


def test_page_and_static_files(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert 'role="combobox"' in html and 'role="listbox"' in html and 'aria-controls="suggestions"' in html
    for name in ("app.js", "style.css", "docs.js"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/static/../service.py").status_code == 404


def test_static_files_load_nothing_from_elsewhere() -> None:
    static = Path(__file__).parents[2] / "nextchar" / "service" / "static"
    for path in static.iterdir():
        text = path.read_text(encoding="utf-8")
        # Any absolute or protocol-relative URL in src/href/url()/fetch/import would leave the machine.
        assert not re.search(r"""(src|href|url|fetch|import)\s*[=(]\s*["']?\s*(https?:)?//""", text), path.name
        assert "@import" not in text, path.name


def test_openapi_lists_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/suggest", "/api/complete", "/opensearch.xml", "/healthz", "/metrics"}
    suggest = spec["paths"]["/suggest"]["get"]
    assert SUGGESTIONS_TYPE in suggest["responses"]["200"]["content"]
    params = {p["name"]: p["schema"] for p in suggest["parameters"]}
    assert params["q"]["maxLength"] == 1000
    assert {"400", "413", "422"} <= set(suggest["responses"])


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("q=%ff", 400),  # invalid UTF-8
        ("q=%C3%28", 400),  # invalid UTF-8 sequence
        ("q=%ED%A0%80", 400),  # an encoded surrogate
        ("q=%zz", 400),  # broken percent-encoding
        ("q=abc%", 400),
        ("q=abc%4", 400),
        ("q=" + "a" * 1001, 422),  # longer than max_query characters
        ("q=" + "%F0%9F%99%82" * 1001, 422),  # 1001 emoji: characters counted, not bytes
        ("q=" + "a" * 17000, 413),  # a query string past max_query_bytes
        ("q=a&k=0", 422),
        ("q=a&k=51", 422),
        ("q=a&k=-3", 422),
        ("q=a&k=abc", 422),
        ("q=a&k=1.5", 422),
        ("k=3", 422),  # no q
    ],
)
@pytest.mark.parametrize("route", ["/suggest", "/api/complete"])
def test_bad_input_is_a_json_4xx(client: TestClient, route: str, query: str, status: int) -> None:
    r = client.get(f"{route}?{query}")
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert "detail" in r.json()


@pytest.mark.parametrize("query", ["q=a&mode=sentence", "q=a&typos=maybe", "q=a&chars=0", "q=a&chars=99"])
def test_bad_complete_options(client: TestClient, query: str) -> None:
    r = client.get(f"/api/complete?{query}")
    assert r.status_code == 422 and "detail" in r.json()


def test_edge_queries_are_answered(client: TestClient) -> None:
    for q in ["a" * 1000, "\x00", "%", "&", "+", " ", "\n\n", "\u0301", "\U0010ffff"]:
        r = client.get("/api/complete", params={"q": q, "k": 2})
        assert r.status_code == 200, q
        assert r.json()["q"] == q
    assert client.get("/suggest?q=a+b").json()[0] == "a b"  # + is a space in a query string
    assert client.get("/suggest?q=%F0%9F%99%82").json()[0] == "🙂"


def test_unknown_routes_and_methods(client: TestClient) -> None:
    r = client.get("/no/such/route")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    assert client.post("/suggest", params={"q": "a"}).status_code == 405
    assert client.get("/static/missing.js").status_code == 404


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"", None),
        (b"q=abc&k=3", None),
        (b"q=%C3%A9", None),
        (b"q=\xc3\xa9", None),
        (b"q=%E9", 400),
        (b"q=\xe9", 400),
        (b"q=%", 400),
        (b"q=%G0", 400),
        (b"a" * 101, 413),
    ],
)
def test_query_problem(raw: bytes, status: int | None) -> None:
    problem = query_problem(raw, max_bytes=100)
    assert (problem[0] if problem else None) == status


def test_a_failing_model_is_a_500_and_the_server_goes_on(
    text_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    completer = Completer(load_checkpoint(text_model_dir))
    with TestClient(create_app(completer, settings=SMALL)) as c:
        monkeypatch.setattr(completer, "suggest_steps", lambda *a, **k: 1 / 0)  # the search fails
        r = c.get("/api/complete", params={"q": "boom"})
        assert r.status_code == 500 and r.json() == {"detail": "internal error"}
        assert "ZeroDivisionError" in caplog.text
        monkeypatch.undo()
        monkeypatch.setattr(completer, "forward", lambda *a, **k: [][0])  # the model call itself fails
        r = c.get("/suggest", params={"q": "boom!"})
        assert r.status_code == 500 and "IndexError" in caplog.text
        monkeypatch.undo()
        assert c.get("/api/complete", params={"q": "boom"}).status_code == 200
        assert c.get("/suggest", params={"q": "boom!"}).status_code == 200


def test_overload_is_a_503(text_model_dir: Path) -> None:
    settings = ServiceSettings(cache_mb=1, max_pending=2)
    app = create_app(ckpt=load_checkpoint(text_model_dir), settings=settings)
    with TestClient(app) as c:
        engine = app.state.engine()
        engine._queue.pending = 2  # as if two model jobs were queued
        r = c.get("/suggest", params={"q": "x"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "detail" in r.json()
        assert c.get("/healthz").status_code == 200  # the rest still answers
        engine._queue.pending = 0
        assert c.get("/suggest", params={"q": "x"}).status_code == 200
        assert "nextchar_load_shed_total 1" in c.get("/metrics").text


# ---------------------------------------------------------------------------------- caches, metrics


def test_typing_costs_one_step_per_character(text_model_dir: Path) -> None:
    with TestClient(create_app(ckpt=load_checkpoint(text_model_dir), settings=SMALL)) as c:
        seen = [
            c.get("/api/complete", params={"q": "it was the"[:n]}).headers["x-nextchar-cache"] for n in range(1, 11)
        ]
        assert seen == ["step"] * 10  # "" is read at start-up, then one step per keystroke
        assert c.get("/api/complete", params={"q": "it was"}).headers["x-nextchar-cache"] == "response"
        assert c.get("/api/complete", params={"q": "it was", "k": 2}).headers["x-nextchar-cache"] == "hit"
        assert c.get("/api/complete", params={"q": "zebra"}).headers["x-nextchar-cache"] == "read"
        text = c.get("/metrics").text
        assert 'nextchar_cache_requests_total{result="step"} 10' in text
        assert 'nextchar_cache_requests_total{result="read"} 1' in text
        assert "nextchar_cache_hit_ratio 0.923077" in text  # 13 requests, 1 read from scratch


def test_caches_stay_within_the_memory_bound(text_model_dir: Path) -> None:
    settings = ServiceSettings(cache_mb=0.05)  # 52 kB
    app = create_app(ckpt=load_checkpoint(text_model_dir), settings=settings)
    with TestClient(app) as c:
        engine = app.state.engine()
        capacity = engine.completer.cache_size
        assert engine.state_budget + engine.responses.max_bytes <= 0.05 * 2**20
        for i in range(40):
            assert c.get("/suggest", params={"q": f"query {i} " * 3}).status_code == 200
        assert engine.state_entries() <= capacity
        assert engine.responses.bytes <= engine.responses.max_bytes
        assert c.get("/healthz").json()["state_cache_capacity"] == capacity


def test_identical_requests_in_flight_are_computed_once(text_model_dir: Path) -> None:
    import asyncio
    import threading

    engine = create_app(ckpt=load_checkpoint(text_model_dir), settings=SMALL).state.engine()
    calls = []
    release = threading.Event()

    def slow_job(q: str) -> tuple[bytes, str]:
        calls.append(q)
        release.wait(5)
        return q.encode(), "step"

    async def together() -> list[tuple[bytes, str]]:
        first = asyncio.ensure_future(engine.answer(("t", "same"), slow_job, "same"))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(engine.answer(("t", "same"), slow_job, "same"))
        await asyncio.sleep(0.05)
        release.set()
        return list(await asyncio.gather(first, second))

    assert asyncio.run(together()) == [(b"same", "step"), (b"same", "response")]
    assert calls == ["same"]
    engine.close()


def test_response_cache_is_an_lru_bounded_by_bytes() -> None:
    cache = ResponseCache(max_bytes=2000)
    for i in range(50):
        cache.put(("k", i), b"x" * 100)
        assert cache.bytes <= 2000
    assert cache.get(("k", 49)) == b"x" * 100 and cache.get(("k", 0)) is None
    cache.put(("big",), b"y" * 5000)  # larger than the whole cache: not kept
    assert cache.get(("big",)) is None


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_are_prometheus_text(text_model_dir: Path) -> None:
    with TestClient(create_app(ckpt=load_checkpoint(text_model_dir), settings=SMALL)) as c:
        for q in ["a", "ab", "abc"]:
            c.get("/suggest", params={"q": q})
        c.get("/suggest?q=%ff")
        c.get("/nowhere")
        r = c.get("/metrics")
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        for line in r.text.splitlines():  # every line is a comment or `name{labels} value`
            assert re.fullmatch(r'# (HELP|TYPE) \w+ .+|\w+(\{(\w+="[^"]*",?)+\})? -?[\d.e+-]+', line), line
        s = _samples(r.text)
        assert s['nextchar_http_requests_total{method="GET",route="/suggest",status="200"}'] == 3
        assert s['nextchar_http_errors_total{route="unmatched",status="400"}'] == 1
        assert s['nextchar_http_errors_total{route="unmatched",status="404"}'] == 1
        prefix, route = "nextchar_http_request_duration_seconds_bucket{", ',route="/suggest"}'  # labels: le, route
        buckets = [v for k, v in s.items() if k.startswith(prefix) and k.endswith(route)]
        assert buckets == sorted(buckets) and buckets[-1] == 3
        assert s['nextchar_http_request_duration_seconds_count{route="/suggest"}'] == 3
        assert s["nextchar_cache_hit_ratio"] == 1.0


# ---------------------------------------------------------------------------------- lifespan, workers


def test_model_is_loaded_once_in_the_lifespan(text_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nextchar.service.engine as service

    calls = []

    def counting_load(directory: object = None) -> object:
        calls.append(directory)
        return load_checkpoint(directory)

    monkeypatch.setattr(service, "load_checkpoint", counting_load)
    app = create_app(settings=ServiceSettings(model=str(text_model_dir), cache_mb=1))
    assert calls == []  # nothing loads until the server starts
    with TestClient(app) as c:
        assert calls == [str(text_model_dir)]
        for q in ["a", "b", "c"]:
            assert c.get("/suggest", params={"q": q}).status_code == 200
    assert calls == [str(text_model_dir)]


def test_workers_get_their_settings_from_the_environment(text_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ServiceSettings(model=str(text_model_dir), cache_mb=1, default_k=3, max_query=20)
    assert ServiceSettings.from_env(settings.to_env()) == settings
    monkeypatch.setenv("NEXTCHAR_SERVE_SETTINGS", settings.to_env())
    with TestClient(app_from_env()) as c:
        assert c.get("/healthz").json()["model"] == str(text_model_dir)
        assert len(c.get("/suggest", params={"q": "it"}).json()[1]) <= 3
        assert c.get("/suggest", params={"q": "x" * 21}).status_code == 422


# ---------------------------------------------------------------------------------- a real server


def _responses_on(sock: socket.socket, count: int) -> list[int]:
    """The status codes of the next `count` HTTP responses on `sock` (reads until it has them)."""
    received = b""
    sock.settimeout(60)  # a bound on the wait for a server that has stopped answering
    while len(codes := re.findall(rb"HTTP/1\.1 (\d{3}) ", received)) < count:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {len(codes)} responses"
        received += chunk
    return [int(code) for code in codes]


@pytest.mark.slow
def test_slow_clients_do_not_block_others(text_model_dir: Path) -> None:
    """Served before the slow clients that came first, which are served in their turn: by order, not by seconds."""
    app = create_app(ckpt=load_checkpoint(text_model_dir), settings=SMALL)
    with live_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        trickle = socket.create_connection(("127.0.0.1", port))  # sends half a request, then nothing
        trickle.sendall(b"GET /suggest?q=it HTTP/1.1\r\nHo")
        hoarder = socket.create_connection(("127.0.0.1", port))  # asks for a lot and never reads
        hoarder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hoarder.sendall(
            b"".join(
                b"GET /suggest?q=it%20w%20" + str(i).encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n" for i in range(200)
            )
        )
        try:
            with httpx.Client(base_url=url, timeout=10) as other:
                for q in ["i", "it", "it ", "it w"]:
                    r = other.get("/suggest", params={"q": q})
                    assert r.status_code == 200
            # Every other request was answered while the trickle's was still half sent, unanswered…
            trickle.setblocking(False)
            with pytest.raises(BlockingIOError):
                trickle.recv(1)
            # … and both slow clients are still being served: the trickle once it finishes, the
            # hoarder all 200 of its requests once it reads.
            trickle.setblocking(True)
            trickle.sendall(b"st: x\r\n\r\n")
            assert _responses_on(trickle, 1) == [200]
            assert _responses_on(hoarder, 200) == [200] * 200
        finally:
            trickle.close()
            hoarder.close()


def _serve(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Start `nextchar serve --port 0 ARGS`; returns the process and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nextchar", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not match:
        proc.kill()
        raise AssertionError(f"no address in {line!r}")
    return proc, f"http://127.0.0.1:{match.group(1)}"


def _wait_ready(url: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url + "/healthz", timeout=5).json()
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> int:
    """Stop the server (and its workers: the session it leads) and return its exit status."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()


@pytest.mark.slow
def test_trickling_and_huge_request_heads_are_cut_off(text_model_dir: Path) -> None:
    """Twelve clients that send half a request head and nothing more, against a server that holds
    at most eight connections: before, they held every slot (each other request a 503) for as long
    as they liked. Now each gets a 408 and is closed after --head-timeout, and a head past 32 KiB
    is a 431."""
    proc, url = _serve(["-m", str(text_model_dir), "--head-timeout", "1", "--limit-concurrency", "8"])
    try:
        _wait_ready(url)
        address = urllib.parse.urlsplit(url)
        trickling = [socket.create_connection((address.hostname, address.port), timeout=10) for _ in range(12)]
        for client in trickling:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        for client in trickling:
            assert client.recv(4096).startswith(b"HTTP/1.1 408 "), "a slow client was not cut off"
            assert client.recv(4096) == b""  # … and closed
            client.close()
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200
        with socket.create_connection((address.hostname, address.port), timeout=10) as huge:
            huge.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n")
            assert huge.recv(4096).startswith(b"HTTP/1.1 431 ")
    finally:
        assert _stop(proc) == 0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_serve_command_with_two_workers(text_model_dir: Path) -> None:
    proc, url = _serve(["-m", str(text_model_dir), "--workers", "2", "--cache-mb", "4"])
    try:
        health = _wait_ready(url)
        assert health["model"] == str(text_model_dir) and health["pid"] != proc.pid
        body = httpx.get(url + "/suggest", params={"q": "it was"}).json()
        assert body[0] == "it was" and body[1]
        for i in range(11):  # a connection each: the workers share them out
            assert httpx.get(url + "/suggest", params={"q": f"it was {i}"}).status_code == 200
        for _ in range(4):  # whichever worker answers, /metrics counts every worker's requests
            s = _samples(httpx.get(url + "/metrics").text)
            assert s['nextchar_http_requests_total{method="GET",route="/suggest",status="200"}'] == 12
            assert s["nextchar_state_cache_capacity_entries"] > 0
    finally:
        assert _stop(proc, signal.SIGTERM) == 0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_serve_defaults_to_the_bundled_model() -> None:
    if not (BUNDLED_DIR / "config.json").is_file():
        pytest.skip("the bundled model (nextchar/bundled/default) is not there yet")
    proc, url = _serve([])
    try:
        assert _wait_ready(url)["model"] == "bundled"
        assert httpx.get(url + "/suggest", params={"q": "The return "}).status_code == 200
    finally:
        assert _stop(proc) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "/no/such/model"], "no such checkpoint directory"),
        (["--lexicon", "/no/such/lexicon.txt"], "no such lexicon file"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--cache-mb", "0"], "--cache-mb must be positive"),
        (["--host", "no.such.host.invalid"], "not an address"),
        (["--host", "0.0.0.0", "--personal-users", "2"], "anyone who can reach the port could create people"),
        (["--personal-users", "2", "--personal-issuer-secret", "/no/such/secret"], "cannot be read"),
        (["--personal-users", "100", "--cache-mb", "64"], "each person may hold"),  # every byte is budgeted
    ],
)
def test_serve_mistakes_are_one_line(
    args: list[str], message: str, text_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "-m" not in args:
        args = ["-m", str(text_model_dir), *args]
    assert main(["serve", "--port", "0", *args]) == 2  # before anything listens
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_serve_refuses_a_taken_port(text_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "-m", str(text_model_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1


def test_json_is_finite_and_utf8(client: TestClient) -> None:
    r = client.get("/api/complete", params={"q": "日本"})
    assert r.content.decode("utf-8")
    body = json.loads(r.content)
    assert all(math.isfinite(s["logprob"]) and math.isfinite(s["score"]) for s in body["suggestions"])
