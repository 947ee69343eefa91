"""The suggestion service: nextchar behind a search box and an email editor, over HTTP.

    app = create_app(settings=ServiceSettings(model="model"))   # or create_app(Completer(ckpt))
    uvicorn.run(app)                                              # `nextchar serve` does this

Routes (docs/service.md has examples):

    GET /                  the page: a search box with a drop-down, a next-character bar chart,
                           an email editor with ghost-text completion (nextchar/static)
    GET /suggest?q=&k=     OpenSearch suggestions: [q, [texts], [descriptions], [urls]]
    GET /api/complete      suggestions with scores and correction flags + the next-character
                           distribution
    GET /opensearch.xml    lets a browser add nextchar as a search engine with suggestions
    GET /healthz, /metrics (Prometheus text), /openapi.json, /docs (an offline API page)

Why HTTP being stateless costs nothing: the Completer keeps an LRU cache of recurrent states
keyed by text, so a request for "wha" after one for "wh" costs one model step, whichever
connection or person sent them. Finished responses are cached too (a search box's traffic
repeats: everyone types "the" on the way to "the return statement"). Both caches together
stay under `cache_mb`. Nothing else is kept between requests, so several processes or
machines behind any load balancer just work; each has its own caches.

Why one model thread: the Completer serialises its calls (its caches are shared), and a
keystroke's small batches run fastest on one core; the event loop stays free to parse
requests, answer cached ones, serve /healthz and deal with slow clients meanwhile.
Requests that queue up while the model thread is busy are taken together: their beam
searches run in lockstep and share one model call per step, and the rest of each round's
tensor work (beam.drive_together), which on a CPU costs less than one call per request
(bench/step.py, bench/search.py). --precision (default auto: int8
for LSTM/GRU models on x86) is that of the search's matrix products (nextchar.stepper).
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run
# time, and their parameter types are local to create_app.
import asyncio
import gc
import inspect
import json
import logging
import math
import os
import re
import sys
import threading
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal
from xml.sax.saxutils import escape, quoteattr

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from nextchar import __version__
from nextchar.checkpoint import BUNDLED_DIR, Checkpoint, load_checkpoint
from nextchar.completion.completer import K_MAX, Completer
from nextchar.completion.lexicon import Lexicon
from nextchar.errors import UserError

STATIC_DIR = Path(__file__).parent / "static"
ENV_SETTINGS = "NEXTCHAR_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process
SUGGESTIONS_TYPE = "application/x-suggestions+json"
OPENSEARCH_TYPE = "application/opensearchdescription+xml"
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Nothing on the page comes from elsewhere; the browser enforces it too.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PER_TENSOR_OVERHEAD = 512  # bytes a cached tensor costs beyond its data (TensorImpl, storage, Python object)
PER_ENTRY_OVERHEAD = 400  # bytes an LRU entry costs beyond its key and tensors (dict slot, Node, tuple)
RESPONSE_SHARE = 8  # finished responses get 1/8 of --cache-mb, recurrent states the rest

log = logging.getLogger("nextchar.service.app")


@dataclass
class ServiceSettings:
    """What `nextchar serve` configures; JSON-able, so that worker processes get the same."""

    model: str | None = None  # checkpoint directory; None: the bundled model
    lexicon: str | None = None  # suggest only entries of this file (see nextchar.completion.lexicon)
    cache_mb: float = 256.0  # memory bound of both caches (states and responses), per process
    max_query: int = 1000  # longest q in characters (longer: 422)
    max_query_bytes: int = 16384  # longest raw query string in bytes (longer: 413), before any decoding
    max_pending: int = 64  # model jobs queued at once; more are refused with 503 (load shedding)
    default_k: int = 8  # suggestions when k is not given
    default_mode: str | None = None  # None: "line" for `lines` models (whole entries), "phrase" for `text`
    beam_width: int = 8  # Completer settings (see nextchar.completion.completer)
    max_chars: int = 48
    max_words: int = 3
    typo_penalty: float = 4.0
    public_url: str | None = None  # base URL in /opensearch.xml and /suggest's links (default: from the request)
    threads: int | None = None  # torch threads, set by app_from_env in each worker process (None: leave as is)
    personal_users: int = 0  # >0: per-user adapted weights for this many people (nextchar.service.personal)
    max_batch: int = 16  # searches run together on the model thread at most (1: one at a time)
    precision: str = "auto"  # of the search's matrix products: auto | fp32 | bf16 | int8 (nextchar.stepper)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> "ServiceSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


# ---------------------------------------------------------------------------------- caches, metrics


class ResponseCache:
    """An LRU of finished response bodies, bounded by bytes (keys and bodies counted)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self.bytes = 0
        self._items: OrderedDict[tuple, bytes] = OrderedDict()

    def get(self, key: tuple) -> bytes | None:
        body = self._items.get(key)
        if body is not None:
            self._items.move_to_end(key)
        return body

    def put(self, key: tuple, body: bytes) -> None:
        size = self._size(key, body)
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = body
        self.bytes += size
        while self.bytes > self.max_bytes:
            old_key, old_body = self._items.popitem(last=False)
            self.bytes -= self._size(old_key, old_body)

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def _size(key: tuple, body: bytes) -> int:
        return sys.getsizeof(body) + sum(sys.getsizeof(part) for part in key) + PER_ENTRY_OVERHEAD


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters and a latency histogram, rendered in the Prometheus text format (0.0.4).

    Only the event loop thread touches them, so no lock.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}  # (route, method, status) → count
        self.errors: dict[tuple[str, int], int] = {}  # (route, status ≥ 400) → count
        self.latency: dict[str, list[int]] = {}  # route → cumulative-free bucket counts (+Inf last)
        self.latency_sum: dict[str, float] = {}
        self.cache: dict[str, int] = {"response": 0, "hit": 0, "step": 0, "read": 0}
        self.shed = 0  # requests refused because the model queue was full

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        if status >= 400:
            self.errors[(route, status)] = self.errors.get((route, status), 0) + 1
        counts = self.latency.setdefault(route, [0] * (len(LATENCY_BUCKETS) + 1))
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.latency_sum[route] = self.latency_sum.get(route, 0.0) + seconds

    def hit_ratio(self) -> float:
        """Requests that did not read their text from scratch (see the cache counter's help)."""
        total = sum(self.cache.values())
        return (total - self.cache["read"]) / total if total else 0.0

    def render(self, engine: "Engine | None") -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("nextchar_http_requests_total", "counter", "HTTP requests answered, by route, method and status.")
        for (route, method, status), n in sorted(self.requests.items()):
            labels = f'route="{_label(route)}",method="{method}",status="{status}"'
            out.append(f"nextchar_http_requests_total{{{labels}}} {n}")
        family("nextchar_http_errors_total", "counter", "HTTP responses with status >= 400, by route and status.")
        for (route, status), n in sorted(self.errors.items()):
            out.append(f'nextchar_http_errors_total{{route="{_label(route)}",status="{status}"}} {n}')
        family("nextchar_http_request_duration_seconds", "histogram",
               "Time from the request's arrival to its last response byte.")
        for route, counts in sorted(self.latency.items()):
            running = 0
            for bound, n in zip((*LATENCY_BUCKETS, math.inf), counts, strict=True):
                running += n
                le = "+Inf" if bound == math.inf else repr(bound)
                labels = f'route="{_label(route)}",le="{le}"'
                out.append(f"nextchar_http_request_duration_seconds_bucket{{{labels}}} {running}")
            out.append(f'nextchar_http_request_duration_seconds_sum{{route="{_label(route)}"}} '
                       f"{self.latency_sum[route]:.6f}")
            out.append(f'nextchar_http_request_duration_seconds_count{{route="{_label(route)}"}} {running}')
        family("nextchar_cache_requests_total", "counter",
               "Suggestion requests by how their text's state was found: response (the whole answer was "
               "cached, or shared with an identical request in flight), hit (state cached), step (one "
               "model step from a cached prefix), read (read from scratch).")
        for result, n in self.cache.items():
            out.append(f'nextchar_cache_requests_total{{result="{result}"}} {n}')
        family("nextchar_cache_hit_ratio", "gauge", "Share of suggestion requests that did not read their text "
                                                    "from scratch: 1 - read/total.")
        out.append(f"nextchar_cache_hit_ratio {self.hit_ratio():.6f}")
        family("nextchar_load_shed_total", "counter", "Requests refused with 503 because the model queue was full.")
        out.append(f"nextchar_load_shed_total {self.shed}")
        if engine is not None:
            family("nextchar_state_cache_entries", "gauge", "Recurrent states in the LRU cache.")
            out.append(f"nextchar_state_cache_entries {engine.state_entries()}")
            family("nextchar_state_cache_capacity_entries", "gauge", "Most recurrent states the cache keeps.")
            out.append(f"nextchar_state_cache_capacity_entries {engine.completer.cache_size}")
            family("nextchar_response_cache_bytes", "gauge", "Bytes held by the response cache.")
            out.append(f"nextchar_response_cache_bytes {engine.responses.bytes}")
            family("nextchar_model_queue", "gauge", "Model jobs queued or running.")
            out.append(f"nextchar_model_queue {engine.pending}")
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------- the engine


def state_entry_bytes(completer: Completer, max_key_chars: int) -> int:
    """An upper bound on what one state-cache entry costs: its tensors, its key, its slot.

    The key is counted as the longest a query may produce, in 4-byte characters (CPython's
    widest string layout), so the bound holds whatever people type.
    """
    state, logprobs = completer.state_after("")
    tensors = [*state, logprobs]
    data = sum(t.untyped_storage().nbytes() for t in tensors)
    key_chars = min(max_key_chars, completer.max_context)
    return data + PER_TENSOR_OVERHEAD * len(tensors) + sys.getsizeof("\U00010000" * key_chars) + PER_ENTRY_OVERHEAD


class Overloaded(Exception):
    """The model queue is full."""


class Engine:
    """The model, its thread, and both caches: everything a request needs beyond its parameters."""

    def __init__(self, completer: Completer, settings: ServiceSettings, name: str):
        self.completer = completer
        self.settings = settings
        self.name = name  # what /healthz calls the model
        self.default_mode = settings.default_mode or ("line" if completer.format == "lines" else "phrase")
        budget = int(settings.cache_mb * 2**20)
        self.responses = ResponseCache(budget // RESPONSE_SHARE)
        per_entry = state_entry_bytes(completer, settings.max_query)
        completer.cache_size = max(1, (budget - self.responses.max_bytes) // per_entry)
        self.state_budget = completer.cache_size * per_entry
        # cache_stats: the Completer's own counts of how _node found each state (hook in completion.py)
        self._stats: dict[str, int] | None = getattr(completer, "cache_stats", None)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nextchar-model")
        self._queue: deque[tuple[Any, tuple, Future]] = deque()  # jobs for the model thread
        self.pending = 0
        self._inflight: dict[tuple, asyncio.Future] = {}
        self.started = time.time()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def state_entries(self) -> int:
        return len(self.completer._nodes)

    def _outcome(self, before: dict[str, int] | None) -> str:
        if self._stats is None or before is None:
            return "hit"
        for result in ("read", "step", "hit"):
            if self._stats.get(result, 0) > before.get(result, 0):
                return result
        return "hit"

    async def answer(self, key: tuple, job: Any, *args: Any) -> tuple[bytes, str]:
        """(body, cache outcome) for `key`: from the response cache, shared with an identical
        request already in flight (popular prefixes arrive together), or computed by job(*args)."""
        body = self.responses.get(key)
        if body is not None:
            return body, "response"
        shared = self._inflight.get(key)
        if shared is not None:
            body, _ = await asyncio.shield(shared)
            return body, "response"
        shared = asyncio.get_running_loop().create_future()
        shared.add_done_callback(_retrieve)
        self._inflight[key] = shared
        try:
            body, outcome = await self.run(job, *args)
        except asyncio.CancelledError:
            shared.cancel()
            raise
        except Exception as exc:
            shared.set_exception(exc)
            raise
        finally:
            del self._inflight[key]
        shared.set_result((body, outcome))
        self.responses.put(key, body)
        return body, outcome

    async def run(self, job: Any, *args: Any) -> Any:
        """job(*args) on the model thread; refuse when too many are queued (Overloaded).

        A job is a function, or a generator function built on Completer.suggest_steps: the
        generators that are queued together run together (their model calls batched).
        """
        if self.pending >= self.settings.max_pending:
            raise Overloaded
        self.pending += 1
        try:
            ticket: Future = Future()
            self._queue.append((job, args, ticket))
            self._pool.submit(self._drain)
            return await asyncio.wrap_future(ticket)
        finally:
            self.pending -= 1

    def _drain(self) -> None:
        """On the model thread: the jobs queued by now, oldest first, as one batch of at most
        max_batch searches (often none: an earlier drain took them; the rest wait for the next,
        as every queued job submitted a drain of its own)."""
        batch = []
        while self._queue and len(batch) < self.settings.max_batch:
            job, args, ticket = self._queue.popleft()
            if ticket.set_running_or_notify_cancel():  # False: its client went away while it waited
                batch.append((job, args, ticket))
        searches = []
        for job, args, ticket in batch:
            if inspect.isgeneratorfunction(job):
                searches.append((job(*args), ticket))  # nothing runs until it is driven
                continue
            try:
                ticket.set_result(job(*args))
            except Exception as exc:
                ticket.set_exception(exc)
        if not searches:
            return
        try:
            results = self.completer.drive_together([search for search, _ in searches])
        except Exception as exc:  # not from one search (those come back as results): fail them all
            results = [exc] * len(searches)
        for (_, ticket), result in zip(searches, results, strict=True):
            if isinstance(result, Exception):
                ticket.set_exception(result)
            else:
                ticket.set_result(result)

    # The jobs (generators, run on the model thread): each returns (body, cache outcome).

    def complete_job(self, q: str, k: int, mode: str, typos: bool,
                     chars: int) -> Generator[Any, Any, tuple[bytes, str]]:
        before = dict(self._stats) if self._stats is not None else None
        next_chars = self.completer.next_chars(q, chars)  # the first lookup of q's state: it tells the outcome
        outcome = self._outcome(before)
        suggestions = yield from self.completer.suggest_steps(q, k, mode, typos)
        body = {
            "q": q, "mode": mode, "k": k, "typos": typos,
            "suggestions": [{**s.to_json(), "logprob": _finite(s.logprob), "score": _finite(s.score)}
                            for s in suggestions],
            "next_chars": [{"char": ch, "probability": p} for ch, p in next_chars],
        }
        return _dumps(body), outcome

    def suggest_job(self, q: str, k: int, base_url: str) -> Generator[Any, Any, tuple[bytes, str]]:
        before = dict(self._stats) if self._stats is not None else None
        self.completer.state_after(q)
        outcome = self._outcome(before)
        suggestions = yield from self.completer.suggest_steps(q, k, self.default_mode)
        texts, descriptions, urls = [], [], []
        for s in suggestions:
            text = s.text.rstrip("\n")
            if text in texts:  # "abc" and "abc\n" (the line ends) read the same in a drop-down
                continue
            texts.append(text)
            chance = math.exp(s.logprob) if s.logprob > -700 else 0.0
            descriptions.append(("did you mean this? " if s.corrected else "") + f"{100 * chance:.2g}% likely")
            urls.append(f"{base_url}?q={urllib.parse.quote(text, safe='')}")
        return _dumps([q, texts, descriptions, urls]), outcome


def _retrieve(future: asyncio.Future) -> None:
    """Mark a shared answer's exception as seen (its owner reports it; waiters may be none)."""
    if not future.cancelled():
        future.exception()


def _finite(x: float) -> float:
    """JSON has no infinities; a log-probability of -inf (impossible) is sent as the float minimum."""
    return x if math.isfinite(x) else (-sys.float_info.max if x < 0 else sys.float_info.max)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def build_engine(settings: ServiceSettings, completer: Completer | None = None,
                 ckpt: Checkpoint | None = None) -> Engine:
    """Load what `settings` names (unless given) and wrap it in an Engine."""
    if completer is None:
        ckpt = ckpt if ckpt is not None else load_checkpoint(settings.model)
        lexicon = Lexicon.load(settings.lexicon) if settings.lexicon else None
        completer = Completer(ckpt, lexicon=lexicon, beam_width=settings.beam_width, max_chars=settings.max_chars,
                              max_words=settings.max_words, typo_penalty=settings.typo_penalty,
                              precision=settings.precision)
    path = completer.ckpt.path
    if path is None:
        name = "<memory>"
    elif Path(path).resolve() == BUNDLED_DIR.resolve():
        name = "bundled"
    else:
        name = str(path)
    return Engine(completer, settings, name)


# ---------------------------------------------------------------------------------- middleware

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def query_problem(raw: bytes, max_bytes: int) -> tuple[int, str] | None:
    """(status, message) when a raw query string is too long or not valid percent-encoded UTF-8.

    Why by hand: Starlette decodes query strings leniently (a broken %-escape stays as it is,
    invalid UTF-8 becomes U+FFFD), so a request would be answered for text nobody typed.
    """
    if len(raw) > max_bytes:
        return 413, f"the query string is longer than {max_bytes} bytes"
    if _BAD_PERCENT.search(raw):
        return 400, "the query string has a broken percent-encoding (% must be followed by two hex digits)"
    for part in raw.split(b"&"):
        try:
            urllib.parse.unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            return 400, "the query string is not valid UTF-8 once percent-decoded"
    return None


class GuardMiddleware:
    """Refuses malformed query strings with a JSON error before anything else reads them."""

    def __init__(self, app: Any, max_query_bytes: int):
        self.app = app
        self.max_query_bytes = max_query_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            problem = query_problem(scope.get("query_string", b""), self.max_query_bytes)
            if problem is not None:
                status, message = problem
                await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class MetricsMiddleware:
    """Counts every HTTP request and times it to its last byte (labels: the route template)."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def send_and_watch(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(label, scope.get("method", "GET"), status, time.perf_counter() - start)


# ---------------------------------------------------------------------------------- the application


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong with the request")


class SuggestionBody(BaseModel):
    text: str = Field(description="the whole suggested text: what was typed (or its correction) + completion")
    completion: str = Field(description="only the added part")
    logprob: float = Field(description="natural-log probability of the completion given the text")
    score: float = Field(description="the ranking score (length-normalised; typo penalty applied)")
    corrected: bool = Field(description="true when it completes a correction of the typed text")


class NextCharBody(BaseModel):
    char: str = Field(description='a next character ("\\n": the line ends)')
    probability: float = Field(ge=0, le=1)


class CompleteBody(BaseModel):
    q: str
    mode: Literal["word", "line", "phrase"]
    k: int
    typos: bool
    suggestions: list[SuggestionBody] = Field(description="best first")
    next_chars: list[NextCharBody] = Field(description="the likeliest next characters, likeliest first")


class HealthBody(BaseModel):
    status: Literal["ok"]
    version: str
    model: str
    kind: str
    format: str
    vocab_size: int
    default_mode: str
    precision: str  # of the search's steps (nextchar.stepper): fp32, bf16 or int8
    pid: int
    uptime_s: float
    state_cache_entries: int
    state_cache_capacity: int


# The OpenSearch suggestions array. Written out without `prefixItems` (the exact tuple form)
# because schemathesis 4.32 mangles prefixItems when it validates responses; the tests check the
# exact shape.
OPENSEARCH_SCHEMA = {
    "type": "array", "minItems": 4, "maxItems": 4,
    "items": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "example": ["wha", ["what", "whale"], ["31% likely", "4% likely"],
                ["http://127.0.0.1:8000/?q=what", "http://127.0.0.1:8000/?q=whale"]],
}


class SuggestionsResponse(JSONResponse):  # a JSONResponse, so that the docs show the model's schema
    media_type = SUGGESTIONS_TYPE


class PrometheusResponse(Response):
    media_type = PROMETHEUS_TYPE


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    meaning = {400: "the query string is not valid percent-encoded UTF-8 (or the request is otherwise bad)",
               413: "the query string is too long", 503: "too many requests are queued; retry shortly",
               500: "an unexpected error (never for bad input)"}
    # Spelled out (not "model": ErrorBody): FastAPI would list a model under the route's own media
    # type, and these answers are always application/json.
    schema = ErrorBody.model_json_schema()
    return {code: {"description": meaning[code], "content": {"application/json": {"schema": schema}}}
            for code in codes}


def create_app(completer: Completer | None = None, *, ckpt: Checkpoint | None = None,
               settings: ServiceSettings | None = None) -> FastAPI:
    """The ASGI application. Give a Completer or a Checkpoint to serve it; otherwise the model
    (and lexicon) that `settings` names are loaded once, at startup (in the lifespan)."""
    settings = settings or ServiceSettings()
    metrics = Metrics()
    box: dict[str, Engine] = {}
    box_lock = threading.Lock()

    def engine() -> Engine:
        # Built at startup by the lifespan; also here, for servers that skip lifespans.
        if "engine" not in box:
            with box_lock:
                if "engine" not in box:
                    box["engine"] = build_engine(settings, completer, ckpt)
        return box["engine"]

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        engine()
        yield
        with box_lock:  # a later request (a server without lifespans) builds a fresh one
            old = box.pop("engine", None)
        if old is not None:
            old.close()

    app = FastAPI(title="nextchar", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Character-level autocomplete: OpenSearch suggestions, completions with scores, "
                              "next-character probabilities.")
    max_q = settings.max_query
    Q = Annotated[str, Query(max_length=max_q, description=f"the text typed so far (at most {max_q} characters)")]
    K = Annotated[int | None, Query(ge=1, le=K_MAX, description=f"number of suggestions, 1 … {K_MAX}")]

    def base_url(request: Request) -> str:
        return (settings.public_url or str(request.base_url)).rstrip("/") + "/"

    async def answer(key: tuple, job: Any, *args: Any, media_type: str) -> Response:
        try:
            body, outcome = await engine().answer(key, job, *args)
        except Overloaded:
            metrics.shed += 1
            return JSONResponse({"detail": "too many requests are queued; retry shortly"}, status_code=503,
                                headers={"Retry-After": "1"})
        except UserError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        except Exception:  # never let one request take the server down; say so in the log
            log.exception("suggestion job failed for %r", args[:1])
            return JSONResponse({"detail": "internal error"}, status_code=500)
        metrics.cache[outcome] += 1
        return Response(body, media_type=media_type, headers={"X-Nextchar-Cache": outcome})

    @app.get("/suggest", response_model=None, response_class=SuggestionsResponse,
             responses={200: {"description": "[q, [texts…], [descriptions…], [urls…]]",
                              "content": {SUGGESTIONS_TYPE: {"schema": OPENSEARCH_SCHEMA}}},
                        **_errors(400, 413, 500, 503)},
             summary="OpenSearch suggestions (what browsers and Wikipedia's search box use)")
    async def suggest(request: Request, q: Q, k: K = None) -> Response:
        """`[q, [completions…], [descriptions…], [urls…]]`: whole suggested texts, best first."""
        k = k or settings.default_k
        url = base_url(request)
        return await answer(("suggest", q, k, url), engine().suggest_job, q, k, url, media_type=SUGGESTIONS_TYPE)

    @app.get("/api/complete", response_model=CompleteBody, responses=_errors(400, 413, 500, 503),
             summary="Completions with scores and correction flags, and the next-character distribution")
    async def complete(
        q: Q,
        k: K = None,
        mode: Annotated[Literal["word", "line", "phrase"] | None,
                        Query(description="word: the rest of the word; line: to the end of the line; phrase: a few "
                                          "words (default: line for line-list models, phrase for prose)")] = None,
        typos: Annotated[bool, Query(description="also complete texts one edit away (typo tolerance)")] = False,
        chars: Annotated[int, Query(ge=1, le=K_MAX, description="next characters to list")] = 10,
    ) -> Response:
        eng = engine()
        k = k or settings.default_k
        mode = mode or eng.default_mode
        return await answer(("complete", q, k, mode, typos, chars), eng.complete_job, q, k, mode, typos, chars,
                            media_type="application/json")

    @app.get("/opensearch.xml", response_class=Response, summary="OpenSearch description (add as search engine)",
             responses={200: {"content": {OPENSEARCH_TYPE: {"schema": {"type": "string"}}}}})
    async def opensearch(request: Request) -> Response:
        base = base_url(request)
        xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<OpenSearchDescription xmlns="http://a9.com/-/spec/opensearch/1.1/" xmlns:moz="http://www.mozilla.org/2006/browser/search/">
  <ShortName>nextchar</ShortName>
  <Description>Character-level autocomplete ({escape(engine().name)})</Description>
  <InputEncoding>UTF-8</InputEncoding>
  <Url type="text/html" method="get" template={quoteattr(base + "?q={searchTerms}")}/>
  <Url type="{SUGGESTIONS_TYPE}" method="get" template={quoteattr(base + "suggest?q={searchTerms}")}/>
  <moz:SearchForm>{escape(base)}</moz:SearchForm>
</OpenSearchDescription>
"""
        return Response(xml, media_type=OPENSEARCH_TYPE)

    @app.get("/healthz", response_model=HealthBody, summary="Liveness and what is being served")
    async def healthz() -> HealthBody:
        eng = engine()
        c = eng.completer
        return HealthBody(status="ok", version=__version__, model=eng.name, kind=c.model.config.kind,
                          format=c.format, vocab_size=len(c.vocab), default_mode=eng.default_mode,
                          precision=c.precision, pid=os.getpid(),
                          uptime_s=round(time.time() - eng.started, 3), state_cache_entries=eng.state_entries(),
                          state_cache_capacity=c.cache_size)

    @app.get("/metrics", response_class=PrometheusResponse, summary="Prometheus metrics (text format 0.0.4)",
             responses={200: {"content": {PROMETHEUS_TYPE: {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        return PrometheusResponse(metrics.render(box.get("engine")))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", headers=PAGE_HEADERS)

    if settings.personal_users > 0:  # per-user adapted suggestions (issue 7); off by default: no per-user state
        from nextchar.service.personal import add_personal_routes

        add_personal_routes(app, engine, settings)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(GuardMiddleware, max_query_bytes=settings.max_query_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.metrics = metrics
    app.state.engine = engine
    return app


def tune_gc_for_serving() -> None:
    """Run Python's cyclic garbage collector less often in a serving process.

    Why: the caches hold hundreds of thousands of small objects (states, search trees,
    answers), and with the default thresholds a collection that scans them pauses a request
    for 80–130 ms now and then (measured: the pauses vanish with the collector off). The
    objects are freed by reference counting anyway; cycles are rare, so collecting them
    every 20,000 allocations instead of 700 loses nothing.
    """
    gc.set_threshold(20_000, 10, 10)


def app_from_env() -> FastAPI:
    """The application for a worker process (`nextchar serve --workers N`): settings from the environment."""
    text = os.environ.get(ENV_SETTINGS)
    settings = ServiceSettings.from_env(text) if text else ServiceSettings()
    if settings.threads:  # a spawned worker starts with torch's default (every core): oversubscribed
        import torch

        torch.set_num_threads(settings.threads)
    tune_gc_for_serving()
    return create_app(settings=settings)
