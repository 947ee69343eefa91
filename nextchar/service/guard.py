"""Request limits: a query string too long or not valid percent-encoded UTF-8 is refused first.

Why by hand: Starlette decodes query strings leniently (a broken %-escape stays as it is,
invalid UTF-8 becomes U+FFFD), so a request would be answered for text nobody typed. And
a query string past `max_query_bytes` is refused (413) before anything decodes it, so a huge
one costs nothing. The other limits are the routes' own: q at most `max_query` characters and
k at most K_MAX (FastAPI's 422), and the model queue at most `max_pending` jobs (the engine's 503).
"""

from __future__ import annotations

import re
import urllib.parse

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def query_problem(raw: bytes, max_bytes: int) -> tuple[int, str] | None:
    """(status, message) when a raw query string is too long or not valid percent-encoded UTF-8."""
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

    def __init__(self, app: ASGIApp, max_query_bytes: int):
        self.app = app
        self.max_query_bytes = max_query_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = query_problem(scope.get("query_string", b""), self.max_query_bytes)
            if problem is not None:
                status, message = problem
                await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)
