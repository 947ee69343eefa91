"""The model thread's queue, fair between clients: one greedy client cannot starve the rest.

One model thread answers every process's searches (nextchar.service.engine), so whoever fills
its queue decides everyone's latency. Two rules keep one client from doing that:

- each client may have at most `per_client` jobs queued or running; past that, *its* next
  request is refused (429, Retry-After), while the others' still get in (the whole queue's
  bound, `max_pending`, answers 503 only when many clients together fill it);
- the model thread takes jobs round-robin: the oldest job of each client in turn (clients in
  the order they last had a turn), so a request waits behind at most one job per other
  client, not behind every job a greedy client queued first.

A client is what the server sees: on the personal routes the person (their token), elsewhere
the connection's address (uvicorn takes it from X-Forwarded-For only when the connection
comes from an address it trusts, 127.0.0.1 by default: a reverse proxy on this machine; so
behind a proxy elsewhere every request is that proxy's, and per-client fairness belongs in
the proxy). Thread-safe: the event loop puts, the model thread takes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

Job = Callable[..., Any]  # a function, or a generator function built on Completer.suggest_steps
Queued = tuple[Job, tuple[Any, ...], Future[Any], float]  # a job, its arguments, where its result goes, when queued


class Overloaded(Exception):
    """The model queue is full (503)."""


class ClientOverloaded(Overloaded):
    """This client has as many jobs queued as it may (429)."""


class FairQueue:
    """Jobs by client, taken round-robin; bounded in all and per client (see the module docstring)."""

    def __init__(self, max_pending: int, per_client: int) -> None:
        self.max_pending, self.per_client = max_pending, per_client
        self.pending = 0  # jobs queued or running, of every client
        self._pending_by: dict[str, int] = {}
        self._queues: OrderedDict[str, deque[Queued]] = OrderedDict()  # the next to have a turn first
        self._lock = threading.Lock()

    def admit(self, client: str) -> None:
        """Count a job of `client` as pending, or raise ClientOverloaded / Overloaded."""
        with self._lock:
            mine = self._pending_by.get(client, 0)
            if mine >= self.per_client:
                raise ClientOverloaded
            if self.pending >= self.max_pending:
                raise Overloaded
            self._pending_by[client] = mine + 1
            self.pending += 1

    def release(self, client: str) -> None:
        """The job `admit` counted is done (answered, failed or abandoned)."""
        with self._lock:
            self.pending -= 1
            left = self._pending_by[client] - 1
            if left:
                self._pending_by[client] = left
            else:
                del self._pending_by[client]

    def put(self, client: str, job: Job, args: tuple[Any, ...], ticket: Future[Any]) -> None:
        with self._lock:
            queue = self._queues.get(client)
            if queue is None:
                queue = self._queues[client] = deque()
            queue.append((job, args, ticket, time.monotonic()))

    def take(self) -> Queued | None:
        """The next job round-robin (None: none queued)."""
        with self._lock:
            if not self._queues:
                return None
            client, queue = next(iter(self._queues.items()))
            queued = queue.popleft()
            if queue:
                self._queues.move_to_end(client)  # its next job waits for the other clients' turns
            else:
                del self._queues[client]
            return queued

    def oldest_wait(self) -> float:
        """How long the oldest queued job has waited, in seconds (0: none queued)."""
        with self._lock:
            if not self._queues:
                return 0.0
            return time.monotonic() - min(queue[0][3] for queue in self._queues.values())

    def clients(self) -> int:
        """Clients with a job queued or running."""
        return len(self._pending_by)
