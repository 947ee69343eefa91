"""The service's JSON bodies (pydantic, for the OpenAPI schema), media types and response classes.

The bodies describe what the routes send; the routes themselves send bytes built by the engine
(`complete_json`, below, is that shape), so that a cached answer is sent without re-encoding.
"""

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from nextchar.completion.completer import Suggestion
from nextchar.completion.config import Mode
from nextchar.completion.recall import InfixMatch

STATIC_DIR = Path(__file__).parent / "static"  # the pages (/, /docs, /lecture) and their scripts
# Nothing on a page comes from elsewhere; the browser enforces it too.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SUGGESTIONS_TYPE = "application/x-suggestions+json"
OPENSEARCH_TYPE = "application/opensearchdescription+xml"
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OVERLOADED = "too many requests are queued; retry shortly"
CLIENT_OVERLOADED = "this client has its share of the queue waiting already; retry once those are answered"
ERROR_MEANINGS = {
    400: "the query string is not valid percent-encoded UTF-8 (or the request is otherwise bad)",
    413: "the query string is too long",
    429: CLIENT_OVERLOADED,
    503: OVERLOADED,
    500: "an unexpected error (never for bad input)",
}


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


class InfixBody(BaseModel):
    text: str = Field(description="an entry of the training text holding q at the start of a word inside it")
    at: int = Field(description="where q starts in it (characters)")
    count: int = Field(description="how often the training text holds it there")


class CompleteBody(BaseModel):
    q: str
    mode: Mode
    k: int
    typos: bool
    suggestions: list[SuggestionBody] = Field(description="best first")
    next_chars: list[NextCharBody] = Field(description="the likeliest next characters, likeliest first")
    infix: list[InfixBody] | None = Field(
        default=None,
        description="with infix=true: entries holding q inside them, most often first (line-list models with a "
        "memory; otherwise empty); not completions of q",
    )


class HealthBody(BaseModel):
    status: Literal["ok", "degraded"]  # degraded (HTTP 503): `problems` says why
    problems: list[str]
    queue_oldest_wait_s: float  # how long the oldest job queued for the model thread has waited
    model_batch_running_s: float  # how long the model thread's current batch has run (0: idle)
    weights_sha256: str  # of the weights served: workers that differ serve different models
    version: str
    model: str
    kind: str
    format: str
    vocab_size: int
    default_mode: str
    precision: str  # of the search's steps (nextchar.stepper): fp32, bf16 or int8
    memory: str  # "none", or what the model is mixed with (the checkpoint's memory; --no-memory: none)
    pid: int
    uptime_s: float
    state_cache_entries: int
    state_cache_capacity: int


# The OpenSearch suggestions array. Written out without `prefixItems` (the exact tuple form)
# because schemathesis 4.32 mangles prefixItems when it validates responses; the tests check the
# exact shape.
OPENSEARCH_SCHEMA = {
    "type": "array",
    "minItems": 4,
    "maxItems": 4,
    "items": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "example": [
        "wha",
        ["what", "whale"],
        ["31% likely", "4% likely"],
        ["http://127.0.0.1:8000/?q=what", "http://127.0.0.1:8000/?q=whale"],
    ],
}


class SuggestionsResponse(JSONResponse):  # a JSONResponse, so that the docs show the model's schema
    media_type = SUGGESTIONS_TYPE


class PrometheusResponse(Response):
    media_type = PROMETHEUS_TYPE


def error_responses(*codes: int, meanings: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that can answer these error codes (ERROR_MEANINGS unless given)."""
    meanings = meanings or ERROR_MEANINGS
    # Spelled out (not "model": ErrorBody): FastAPI would list a model under the route's own media
    # type, and these answers are always application/json.
    schema = ErrorBody.model_json_schema()
    return {
        code: {"description": meanings[code], "content": {"application/json": {"schema": schema}}} for code in codes
    }


def overloaded_response(client: bool = False) -> JSONResponse:
    """The 503 of a full model queue, or (`client`) the 429 of a client with its share of it
    queued already: try again in a second."""
    if client:
        return JSONResponse({"detail": CLIENT_OVERLOADED}, status_code=429, headers={"Retry-After": "1"})
    return JSONResponse({"detail": OVERLOADED}, status_code=503, headers={"Retry-After": "1"})


def finite(x: float) -> float:
    """JSON has no infinities; a log-probability of -inf (impossible) is sent as the float minimum."""
    return x if math.isfinite(x) else (-sys.float_info.max if x < 0 else sys.float_info.max)


def complete_json(
    q: str,
    mode: str,
    k: int,
    typos: bool,
    suggestions: Sequence[Suggestion],
    next_chars: Sequence[tuple[str, float]],
    infix: Sequence[InfixMatch] | None = None,
) -> dict[str, Any]:
    """A CompleteBody as plain JSON data (what /api/complete and /api/personal/complete send)."""
    body = {
        "q": q,
        "mode": mode,
        "k": k,
        "typos": typos,
        "suggestions": [{**s.to_json(), "logprob": finite(s.logprob), "score": finite(s.score)} for s in suggestions],
        "next_chars": [{"char": ch, "probability": p} for ch, p in next_chars],
    }
    if infix is not None:
        body["infix"] = [match.to_json() for match in infix]
    return body
