"""The service's Prometheus metrics (prometheus-client), and the middleware that counts requests.

The series /metrics sends (text format 0.0.4; docs/service.md shows a scrape):

    nextchar_http_requests_total{route,method,status}   counter: HTTP requests answered
    nextchar_http_errors_total{route,status}            counter: those with status >= 400
    nextchar_http_request_duration_seconds{route}       histogram (LATENCY_BUCKETS): arrival to last byte
    nextchar_cache_requests_total{result}               counter: suggestion requests by how their
                                                        text's state was found (CACHE_RESULTS)
    nextchar_cache_hit_ratio                            gauge: 1 - read/total of the counter above
    nextchar_load_shed_total                            counter: 503s of a full model queue
    nextchar_state_cache_entries, nextchar_state_cache_capacity_entries, nextchar_response_cache_bytes,
    nextchar_model_queue                                gauges of the engine (once there is one)

`route` is the route's template ("/suggest"; "unmatched" for a request no route took). Each
application has a CollectorRegistry of its own, so that several in one process (the tests)
count apart. prometheus-client's `_created` series (when each counter was made) are left out:
they would be new names, and multiprocess mode has none.

Several worker processes (`nextchar serve --workers N`). Each process counting alone, a scrape
would get the numbers of whichever worker accepted its connection, jumping between workers
from scrape to scrape. So the workers use prometheus-client's multiprocess mode: `serve`
points PROMETHEUS_MULTIPROC_DIR at a fresh temporary directory before they start
(`shared_metrics_dir`), each process then keeps its values in memory-mapped files there, and
whichever worker answers /metrics renders all the files together (MultiProcessCollector):

* the counters and the histogram are summed over every worker that ran, those since exited or
  restarted included (a counter must not go down because a worker was replaced);
* the engine gauges (`livesum`) are summed over the workers alive now: the states cached by all,
  their total capacity, and so on. Another process's memory cannot be read at scrape time, so
  each worker writes its own after every request it answers, and drops them when it exits
  (mark_process_dead, at the lifespan's end); a worker that died without that is dropped by the
  next scrape that finds its process gone;
* the hit ratio is computed from the summed counters: the whole server's.

The directory is fresh for each `serve` (an old one would carry old counts), and removed when it
stops. A single process, the default, keeps its values in memory as usual.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from nextchar.service.engine import Engine

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus-client chooses where its values live (memory or files) once, when it is imported,
# from this variable: it is read once here too, so that rendering agrees with that choice.
MULTIPROCESS_DIR = os.environ.get(MULTIPROCESS_ENV) or None
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CACHE_RESULTS = ("response", "hit", "step", "read")  # the cache outcomes (nextchar.service.engine)
CACHE_FAMILY = "nextchar_cache_requests"  # the cache counter's family (prometheus-client drops `_total`)
HIT_RATIO = "nextchar_cache_hit_ratio"


class EngineGauges:
    """The engine's gauges: what its caches and queue hold now (per process; summed when several)."""

    def __init__(self, registry: CollectorRegistry):
        def gauge(name: str, help_text: str) -> Gauge:
            return Gauge(name, help_text, registry=registry, multiprocess_mode="livesum")

        self.states = gauge("nextchar_state_cache_entries", "Recurrent states in the LRU cache.")
        self.capacity = gauge("nextchar_state_cache_capacity_entries", "Most recurrent states the cache keeps.")
        self.response_bytes = gauge("nextchar_response_cache_bytes", "Bytes held by the response cache.")
        self.queue = gauge("nextchar_model_queue", "Model jobs queued or running.")
        self.searches = gauge("nextchar_searches", "Searches run since the process started.")
        self.expired = gauge(
            "nextchar_searches_at_deadline", "Searches since the process started that returned at the deadline."
        )

    def set(self, engine: Engine) -> None:
        self.states.set(engine.state_entries())
        self.capacity.set(engine.completer.cache_size)
        self.response_bytes.set(engine.responses.bytes)
        self.queue.set(engine.pending)
        stats = getattr(engine.completer, "search_stats", None)
        if stats is not None:
            self.searches.set(stats["searches"])
            self.expired.set(stats["expired"])


class Metrics:
    """One application's metrics. `engine()` is its engine, or None while there is none."""

    def __init__(self, engine: Callable[[], Engine | None] = lambda: None):
        self.registry = CollectorRegistry()
        self._engine = engine
        self._engine_gauges: EngineGauges | None = None  # made with the first engine seen
        r = self.registry
        self.requests = Counter(
            "nextchar_http_requests_total",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.errors = Counter(
            "nextchar_http_errors_total",
            "HTTP responses with status >= 400, by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "nextchar_http_request_duration_seconds",
            "Time from the request's arrival to its last response byte.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            CACHE_FAMILY + "_total",
            "Suggestion requests by how their text's state was found: response (the whole answer was "
            "cached, or shared with an identical request in flight), hit (state cached), step (one "
            "model step from a cached prefix), read (read from scratch).",
            ["result"],
            registry=r,
        )
        for result in CACHE_RESULTS:  # every outcome is listed, 0 until it happens
            self.cache.labels(result)
        self.shed = Counter(
            "nextchar_load_shed_total", "Requests refused with 503 because the model queue was full.", registry=r
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request."""
        self.requests.labels(route, method, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if MULTIPROCESS_DIR:  # the other workers' scrapes read this one's gauges from its file
            self.sample_engine()

    def count_cache(self, outcome: str) -> None:
        """Count a suggestion request by its cache outcome (one of CACHE_RESULTS)."""
        self.cache.labels(outcome).inc()

    def count_shed(self) -> None:
        """Count a request refused because the model queue was full."""
        self.shed.inc()

    def sample_engine(self) -> None:
        """Set the engine gauges to what the engine holds now (nothing while there is no engine)."""
        engine = self._engine()
        if engine is None:
            return
        if self._engine_gauges is None:
            self._engine_gauges = EngineGauges(self.registry)
        self._engine_gauges.set(engine)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format: this process's, or every worker's together.

        (prometheus_client.multiprocess has no annotations, hence its calls' ignore[no-untyped-call].)
        """
        self.sample_engine()
        if MULTIPROCESS_DIR:
            _forget_dead_workers(MULTIPROCESS_DIR)
            collector = MultiProcessCollector(None, path=MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
            families = list(collector.collect())  # type: ignore[no-untyped-call]
        else:
            families = list(self.registry.collect())
        return generate_latest(_Exposition(families))

    def close(self) -> None:
        """This process serves no more: drop its gauges from the workers' sums."""
        if MULTIPROCESS_DIR:
            mark_process_dead(os.getpid(), MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]


class _Exposition:
    """Collected families as /metrics sends them: no `_created` series, and the hit ratio added
    after the counter it is computed from."""

    def __init__(self, families: Iterable[Metric]):
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family
            if family.name == CACHE_FAMILY:
                yield _hit_ratio(family)


def _hit_ratio(cache: Metric) -> GaugeMetricFamily:
    counts = {s.labels.get("result"): s.value for s in cache.samples if s.name == CACHE_FAMILY + "_total"}
    total = sum(counts.values())
    ratio = (total - counts.get("read", 0.0)) / total if total else 0.0
    help_text = "Share of suggestion requests that did not read their text from scratch: 1 - read/total."
    return GaugeMetricFamily(HIT_RATIO, help_text, value=round(ratio, 6))  # 6 digits, as it always had


def _forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that died without saying so (a crash; uvicorn restarts them)."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists is checked
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as someone else's
        return True
    return True


@contextmanager
def shared_metrics_dir() -> Iterator[str]:
    """A fresh directory for the workers' metrics, named in the environment they will inherit
    (PROMETHEUS_MULTIPROC_DIR); removed, and the variable restored, afterwards."""
    directory = tempfile.mkdtemp(prefix="nextchar-metrics-")
    previous = os.environ.get(MULTIPROCESS_ENV)
    os.environ[MULTIPROCESS_ENV] = directory
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROCESS_ENV, None)
        else:
            os.environ[MULTIPROCESS_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)


class MetricsMiddleware:
    """Counts every HTTP request and times it to its last byte (labels: the route template)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def send_and_watch(message: Message) -> None:
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
