"""The HTTP protocol `serve` runs: uvicorn's h11 one, with a deadline for every request head.

uvicorn starts no timer when a connection opens, nor when the next request on a kept-alive
connection begins to arrive: a client that sends half a request head and then a byte now and
then holds its connection forever. Every open connection counts against `--limit-concurrency`,
so a thousand such clients make every other request a 503 (slowloris). Here a connection that
is waiting for a request head gets `head_timeout` seconds (`--head-timeout`) to send all of it;
past that it is answered 408 and closed. The head itself (up to its blank line) is capped at
HEAD_BYTES: longer is a 431 and a close, before it is parsed, whatever HTTP parser happens to
be installed, because `serve` always names this protocol.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_BYTES = 32 * 1024  # the longest request head (request line and headers) read
HEAD_TIMEOUT_S = 10.0


def _raw_response(status: bytes, body: bytes) -> bytes:
    """Written raw: h11 sends no response before it has read a request, and this one never came whole."""
    head = b"HTTP/1.1 %s\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n" % status
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


TIMED_OUT = _raw_response(b"408 Request Timeout", b"the request head did not arrive in time\n")
TOO_LARGE = _raw_response(b"431 Request Header Fields Too Large", b"the request head is longer than 32 KiB\n")


class HeadTimeoutProtocol(H11Protocol):
    """H11Protocol, closing connections whose request head is not whole within `head_timeout`."""

    head_timeout = HEAD_TIMEOUT_S  # set per process from the service's settings (app.py)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_head():
            self._arm()  # a kept-alive connection's next request has begun: its head has a deadline too
            pending = self.conn.trailing_data[0] + data  # the head so far (h11 keeps what it has not parsed)
            end = pending.find(b"\r\n\r\n")
            if (end < 0 and len(pending) > HEAD_BYTES) or end > HEAD_BYTES:
                if not self.transport.is_closing():
                    self.transport.write(TOO_LARGE)
                    self.transport.close()
                return
        super().data_received(data)
        if not self._waiting_for_head():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self._waiting_for_head() or self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a head came: say why (a request never begun: just close)
            self.transport.write(TIMED_OUT)
        self.transport.close()
