"""The suggestion service: nextchar behind a search box and an email editor, over HTTP.

    app = create_app(settings=ServiceSettings(model="model"))   # or create_app(Completer(ckpt))
    uvicorn.run(app)                                              # `nextchar serve` does this

Routes (docs/service.md has examples):

    GET /                  the page: a search box with a drop-down, a next-character bar chart,
                           an email editor with ghost-text completion (nextchar/service/static)
    GET /suggest?q=&k=     OpenSearch suggestions: [q, [texts], [descriptions], [urls]]
    GET /api/complete      suggestions with scores and correction flags + the next-character
                           distribution
    GET /lecture, /api/lecture/…   the lecture you can watch: the state machine, s_t, p_t and
                           BPTT as you type (nextchar.service.lecture)
    GET /opensearch.xml    lets a browser add nextchar as a search engine with suggestions
    GET /healthz, /metrics (Prometheus text), /openapi.json, /docs (an offline API page)
    /api/personal/…        per-user adapted suggestions, when settings.personal_users > 0
                           (nextchar.service.personal)

Pages of other origins may call /suggest and /api/complete from the browser when
settings.cors_origins names them (`--cors-origin`; SuggestionCORS, docs/embed.md).

Here the routes are put together; what answers them lives beside: the model thread and the
caches in `engine` (why a stateless HTTP service costs one model step per keystroke),
the limits in `guard`, the metrics in `metrics`, the bodies in `schemas`. --precision (default
auto: int8 for LSTM/GRU models on x86) is that of the search's matrix products (nextchar.stepper).
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run time, and
# their parameter types are local to the router functions.
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any
from xml.sax.saxutils import escape, quoteattr

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from nextchar import __version__
from nextchar.checkpoint import Checkpoint
from nextchar.collector import tune_for_latency
from nextchar.completion.completer import Completer
from nextchar.completion.config import K_MAX, Mode
from nextchar.errors import UserError
from nextchar.service.engine import CacheKey, LazyEngine, build_engine
from nextchar.service.fairness import ClientOverloaded, Job, Overloaded
from nextchar.service.guard import GuardMiddleware
from nextchar.service.identity import Identities
from nextchar.service.lecture import EngineSource, lecture_router
from nextchar.service.metrics import Metrics, MetricsMiddleware
from nextchar.service.personal import People, personal_router
from nextchar.service.schemas import (
    OPENSEARCH_SCHEMA,
    OPENSEARCH_TYPE,
    PAGE_HEADERS,
    PROMETHEUS_TYPE,
    STATIC_DIR,
    SUGGESTIONS_TYPE,
    CompleteBody,
    HealthBody,
    PrometheusResponse,
    SuggestionsResponse,
    error_responses,
    overloaded_response,
)
from nextchar.service.settings import ENV_SETTINGS, ServiceSettings, check_cors_origins

CORS_PATHS = frozenset({"/suggest", "/api/complete"})  # what other origins' pages may read, given --cors-origin

log = logging.getLogger("nextchar.service.app")


def create_app(
    completer: Completer | None = None, *, ckpt: Checkpoint | None = None, settings: ServiceSettings | None = None
) -> FastAPI:
    """The ASGI application. Give a Completer or a Checkpoint to serve it; otherwise the model
    (and lexicon) that `settings` names are loaded once, at startup (in the lifespan)."""
    chosen = settings or ServiceSettings()
    # Built at startup by the lifespan; also on the first request, for servers that skip lifespans.
    engine = LazyEngine(lambda: build_engine(chosen, completer, ckpt))
    metrics = Metrics(engine.built)
    app = FastAPI(
        title="nextchar",
        version=__version__,
        lifespan=_lifespan(engine, metrics),
        docs_url=None,
        redoc_url=None,
        description="Character-level autocomplete: OpenSearch suggestions, completions with scores, "
        "next-character probabilities.",
    )
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.include_router(suggestion_router(engine, chosen, metrics))
    app.include_router(info_router(engine, chosen, metrics))
    app.include_router(page_router())
    app.include_router(lecture_router(EngineSource(engine)))  # /lecture: the lecture you can watch
    if chosen.personal_users > 0:  # per-user adapted suggestions; off by default: no per-user state
        identities = Identities(chosen.personal_users, issuer_sha256=chosen.personal_issuer_sha256)
        people = People(engine, chosen.personal_users, identities)
        app.include_router(personal_router(people, engine, chosen))
        app.state.personal = people
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(GuardMiddleware, max_query_bytes=chosen.max_query_bytes, max_body_bytes=chosen.max_body_bytes)
    if chosen.personal_users > 0:  # a page of another site reached through DNS rebinding is refused (400)
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=chosen.allowed_hosts)
    origins = check_cors_origins(chosen.cors_origins)
    if origins:  # outside the guard: its refusals carry the headers too, so a page can read why
        app.add_middleware(SuggestionCORS, origins=origins)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.metrics = metrics
    app.state.engine = engine
    return app


class SuggestionCORS:
    """CORS on the suggestion routes (CORS_PATHS) only: GET, and its preflight, from `origins`.

    Nothing else is shared: the page, /metrics and the personal routes stay same-origin. The
    answers vary by Origin (the header says so, for caches in between); a browser reads an answer
    only if it names the page's origin, or `*`. Listed origins may also reach a server on a
    private network (Chrome's Private Network Access preflight); `*` may not, so that with `*`
    any page a visitor opens still cannot read a server inside the visitor's network.
    """

    def __init__(self, app: ASGIApp, origins: list[str]):
        self.app = app
        self.cors = CORSMiddleware(
            app, allow_origins=origins, allow_methods=("GET",), allow_private_network="*" not in origins
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # behind a proxy's prefix, the route's own path
            path = path[len(root) :]
        if scope["type"] == "http" and path in CORS_PATHS:
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _lifespan(engine: LazyEngine, metrics: Metrics) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Startup builds the engine (loads the model); shutdown closes it and leaves the workers' metrics."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine()  # the model loads before the first request, not during it
        yield
        engine.close()  # a later request (a server without lifespans) builds a fresh one
        metrics.close()

    return lifespan


def _base_url(request: Request, settings: ServiceSettings) -> str:
    return (settings.public_url or str(request.base_url)).rstrip("/") + "/"


def client_of(request: Request) -> str:
    """Whom the model queue's fairness counts a request against (nextchar.service.fairness)."""
    return request.client.host if request.client is not None else ""


async def _answer(
    request: Request, engine: LazyEngine, metrics: Metrics, key: CacheKey, job: Job, *args: Any, media_type: str
) -> Response:
    """The engine's answer to a suggestion request as a response; its failures as JSON errors."""
    try:
        body, outcome = await engine().answer(key, job, *args, client=client_of(request))
    except Overloaded as exc:
        metrics.count_shed()
        return overloaded_response(client=isinstance(exc, ClientOverloaded))
    except UserError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=400)
    except Exception:  # never let one request take the server down; say so in the log
        log.exception("suggestion job failed for %r", args[:1])
        return JSONResponse({"detail": "internal error"}, status_code=500)
    metrics.count_cache(outcome)
    return Response(body, media_type=media_type, headers={"X-Nextchar-Cache": outcome})


def suggestion_router(engine: LazyEngine, settings: ServiceSettings, metrics: Metrics) -> APIRouter:
    """/suggest and /api/complete: what the model answers."""
    router = APIRouter()
    max_q = settings.max_query
    Q = Annotated[str, Query(max_length=max_q, description=f"the text typed so far (at most {max_q} characters)")]
    K = Annotated[int | None, Query(ge=1, le=K_MAX, description=f"number of suggestions, 1 … {K_MAX}")]
    ModeQuery = Annotated[
        Mode | None,
        Query(
            description="word: the rest of the word; line: to the end of the line; phrase: a few "
            "words (default: line for line-list models, phrase for prose)"
        ),
    ]
    Typos = Annotated[bool, Query(description="also complete texts one edit away (typo tolerance)")]
    Chars = Annotated[int, Query(ge=1, le=K_MAX, description="next characters to list")]
    Infix = Annotated[
        bool,
        Query(
            description="also list entries that hold q at the start of a word inside them "
            "(line-list models with a memory)"
        ),
    ]

    @router.get(
        "/suggest",
        response_model=None,
        response_class=SuggestionsResponse,
        responses={
            200: {
                "description": "[q, [texts…], [descriptions…], [urls…]]",
                "content": {SUGGESTIONS_TYPE: {"schema": OPENSEARCH_SCHEMA}},
            },
            **error_responses(400, 413, 429, 500, 503),
        },
        summary="OpenSearch suggestions (what browsers and Wikipedia's search box use)",
    )
    async def suggest(request: Request, q: Q, k: K = None) -> Response:
        """`[q, [completions…], [descriptions…], [urls…]]`: whole suggested texts, best first."""
        k = k or settings.default_k
        url = _base_url(request, settings)
        key = ("suggest", q, k, url)
        job = engine().suggest_job
        return await _answer(request, engine, metrics, key, job, q, k, url, media_type=SUGGESTIONS_TYPE)

    @router.get(
        "/api/complete",
        response_model=CompleteBody,
        responses=error_responses(400, 413, 429, 500, 503),
        summary="Completions with scores and correction flags, and the next-character distribution",
    )
    async def complete(
        request: Request,
        q: Q,
        k: K = None,
        mode: ModeQuery = None,
        typos: Typos = False,
        chars: Chars = 10,
        infix: Infix = False,
    ) -> Response:
        eng = engine()
        k = k or settings.default_k
        chosen_mode = mode or eng.default_mode
        key = ("complete", q, k, chosen_mode, typos, chars, infix)
        args = (q, k, chosen_mode, typos, chars, infix)
        return await _answer(request, engine, metrics, key, eng.complete_job, *args, media_type="application/json")

    return router


def info_router(engine: LazyEngine, settings: ServiceSettings, metrics: Metrics) -> APIRouter:
    """/opensearch.xml, /healthz and /metrics: what is served, and how it goes."""
    router = APIRouter()

    @router.get(
        "/opensearch.xml",
        response_class=Response,
        summary="OpenSearch description (add as search engine)",
        responses={200: {"content": {OPENSEARCH_TYPE: {"schema": {"type": "string"}}}}},
    )
    async def opensearch(request: Request) -> Response:
        base = _base_url(request, settings)
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

    @router.get(
        "/healthz",
        response_model=HealthBody,
        summary="Liveness and what is being served (503 when degraded)",
        responses={503: {"model": HealthBody, "description": "degraded: the model thread is stuck or far behind"}},
    )
    async def healthz(response: Response) -> HealthBody:
        eng = engine()
        c = eng.completer
        problems, waited, running = eng.health()
        if problems:
            response.status_code = 503
        return HealthBody(
            status="degraded" if problems else "ok",
            problems=problems,
            queue_oldest_wait_s=round(waited, 3),
            model_batch_running_s=round(running, 3),
            weights_sha256=eng.weights_sha256,
            version=__version__,
            model=eng.name,
            kind=c.model.config.kind,
            format=c.format,
            vocab_size=len(c.vocab),
            default_mode=eng.default_mode,
            precision=c.precision,
            memory=c.memory,
            pid=os.getpid(),
            uptime_s=round(time.time() - eng.started, 3),
            state_cache_entries=eng.state_entries(),
            state_cache_capacity=c.cache_size,
        )

    @router.get(
        "/metrics",
        response_class=PrometheusResponse,
        summary="Prometheus metrics (text format 0.0.4)",
        responses={200: {"content": {PROMETHEUS_TYPE: {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        return PrometheusResponse(metrics.render())

    return router


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """FastAPI's 422, written as ASCII JSON: the input it echoes may hold a lone surrogate (a JSON
    body's "\\ud800"), which no UTF-8 can carry, and the default answer fails on it with a 500."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    body = json.dumps({"detail": jsonable_encoder(errors)}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")


def page_router() -> APIRouter:
    """/ (the page) and /docs (the API's page): static files, outside the OpenAPI schema."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @router.get("/docs")
    async def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", headers=PAGE_HEADERS)

    return router


def app_from_env() -> FastAPI:
    """The application for a worker process (`nextchar serve --workers N`): settings from the environment."""
    text = os.environ.get(ENV_SETTINGS)
    settings = ServiceSettings.from_env(text) if text else ServiceSettings()
    if settings.threads:  # a spawned worker starts with torch's default (every core): oversubscribed
        import torch

        torch.set_num_threads(settings.threads)
    tune_for_latency()
    serve_heads_within(settings.head_timeout_s)
    return create_app(settings=settings)


def serve_heads_within(seconds: float) -> None:
    """This process's deadline for request heads (nextchar.service.protocol, which `serve` runs)."""
    from nextchar.service.protocol import HeadTimeoutProtocol

    HeadTimeoutProtocol.head_timeout = seconds
