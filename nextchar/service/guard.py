"""Request limits: a query string too long or not valid percent-encoded UTF-8 is refused first,
and so is a body longer than `max_body_bytes`, before it is read.

Why by hand: Starlette decodes query strings leniently (a broken %-escape stays as it is,
invalid UTF-8 becomes U+FFFD), so a request would be answered for text nobody typed. And
a query string past `max_query_bytes` is refused (413) before anything decodes it, so a huge
one costs nothing. A body is read here, up to its limit, before the route sees it: one whose
Content-Length says it is too long is refused (413) unread, and one sent in chunks is refused
as soon as it passes the limit, so no route ever buffers more than `max_body_bytes`. The other
limits are the routes' own: q at most `max_query` characters and k at most K_MAX (FastAPI's
422), and the model queue at most `max_pending` jobs (the engine's 503).
"""

from __future__ import annotations

import re
import urllib.parse

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    """Refuses malformed query strings and bodies past their limit with a JSON error, before
    anything else reads them."""

    def __init__(self, app: ASGIApp, max_query_bytes: int, max_body_bytes: int = 1 << 18):
        self.app = app
        self.max_query_bytes = max_query_bytes
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = query_problem(scope.get("query_string", b""), self.max_query_bytes)
            if problem is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                problem, receive = await self._read_body(scope, receive)
            if problem is not None:
                status, message = problem
                await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[tuple[int, str] | None, Receive]:
        """The body read whole up to the limit (a problem past it), and a receive that replays it."""
        too_long = 413, f"the request body is longer than {self.max_body_bytes} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_body_bytes):
                return too_long if value.isdigit() else (400, "the Content-Length header is not a number"), receive
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None, _replay([message])  # the client went away: the route is told as it was
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return too_long, receive
            more = message.get("more_body", False)
        return None, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}])


def _replay(messages: list[Message]) -> Receive:
    """A receive that gives `messages`, then waits as a finished request's would (disconnect)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        return {"type": "http.disconnect"}

    return receive
