"""The engine: one model thread answering batched requests, and the caches in front of it.

Why HTTP being stateless costs nothing: the Completer keeps an LRU cache of recurrent states
keyed by text, so a request for "wha" after one for "wh" costs one model step, whichever
connection or person sent them. Finished responses are cached too (a search box's traffic
repeats: everyone types "the" on the way to "the return statement"). Everything kept between
requests stays under `cache_mb`, counted in bytes (`plan_caches`): the responses get
1/RESPONSE_SHARE of it; the people of the personal routes, if any, their bound each
(completion.personal.person_bytes); the shared completer the rest, for its states, its search
trees, its answers and its memory's caches (Completer.cache_bytes). A test sums the bytes
reachable from every cache under load and holds them to the bound. Nothing else is kept
between requests, so several processes or machines behind any load balancer just work; each
has its own caches.

Why one model thread: the Completer serialises its calls (its caches are shared), and a
keystroke's small batches run fastest on one core; the event loop stays free to parse
requests, answer cached ones, serve /healthz and deal with slow clients meanwhile (the two
threads share the GIL: it is handed over every SWITCH_INTERVAL_S, and the memory's compiled
searches release it).
Requests that queue up while the model thread is busy are taken together: their beam
searches run in lockstep and share one model call per step, and the rest of each round's
tensor work (beam.drive_together), which on a CPU costs less than one call per request
(python -m bench.step, python -m bench.search). Past `max_pending` queued jobs a request is refused
(Overloaded, a 503) rather than left to wait behind everyone else; past
`max_pending_per_client` of one client's, that client's request is (ClientOverloaded, a 429),
and the model thread takes the clients' jobs in turn (nextchar.service.fairness).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import sys
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nextchar.checkpoint import BUNDLED_DIR, Checkpoint, load_checkpoint
from nextchar.completion.completer import Completer
from nextchar.completion.lexicon import Lexicon
from nextchar.completion.personal import person_bytes
from nextchar.completion.states import Node, node_bytes, str_bytes
from nextchar.errors import UserError
from nextchar.models import CharModel
from nextchar.service.fairness import FairQueue, Job
from nextchar.service.schemas import complete_json
from nextchar.service.settings import ServiceSettings

PER_ENTRY_OVERHEAD = 400  # bytes a response-cache entry costs beyond its key and body (dict slot, link, tuple)
# The event loop and the model thread share the GIL, which CPython hands from a running thread
# to a waiting one every 5 ms by default: a cached answer, ready at once, waited behind a
# search's Python for each of the few times its request needs the loop. Measured under replayed
# queries (`python -m bench.load --replay ../shared/data/names.txt --workers 2 --clients 10`,
# 2026-12-02, AMD EPYC Zen 4): p99 68–132 ms at 5 ms, 41–50 ms at 0.5 ms (0.2 ms no better).
SWITCH_INTERVAL_S = 0.0005
RESPONSE_SHARE = 8  # finished responses get 1/8 of --cache-mb, recurrent states the rest …
MIN_SHARED = 8  # … at least 1/8 of it, whatever the personal routes' people take

CacheKey = tuple[object, ...]  # what a response is cached under: the route and its parameters
Answer = tuple[bytes, str]  # a response body and how its text's state was found (its cache outcome)


class ResponseCache:
    """An LRU of finished response bodies, bounded by bytes (keys and bodies counted)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self.bytes = 0
        self._items: OrderedDict[CacheKey, bytes] = OrderedDict()

    def get(self, key: CacheKey) -> bytes | None:
        body = self._items.get(key)
        if body is not None:
            self._items.move_to_end(key)
        return body

    def put(self, key: CacheKey, body: bytes) -> None:
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
    def _size(key: CacheKey, body: bytes) -> int:
        return sys.getsizeof(body) + sum(sys.getsizeof(part) for part in key) + PER_ENTRY_OVERHEAD


def state_entry_bytes(completer: Completer, max_key_chars: int) -> int:
    """What one state-cache entry is charged at most (states.node_bytes and its key, as the
    cache charges it): the key counted as the longest a query may produce, in 4-byte
    characters (CPython's widest string layout), so the bound holds whatever people type."""
    state, logprobs = completer.state_after("")
    key_chars = min(max_key_chars, completer.max_context)
    return node_bytes(Node(state, logprobs)) + str_bytes("\U00010000" * key_chars)


@dataclass(frozen=True)
class CachePlan:
    """How one process's --cache-mb is shared out, in bytes."""

    responses: int  # finished response bodies (1/RESPONSE_SHARE)
    personal: int  # every person's own weights, memory and caches, at their bound
    shared: int  # the shared completer's states, search trees, answers and memory caches: the rest


def plan_caches(settings: ServiceSettings, model: CharModel, memory: bool) -> CachePlan:
    """Share out settings.cache_mb (see CachePlan), or a UserError when the people it must hold
    leave the shared caches less than 1/MIN_SHARED of it."""
    budget = int(settings.cache_mb * 2**20)
    responses = budget // RESPONSE_SHARE
    each = person_bytes(model, memory and settings.memory) if settings.personal_users else 0
    personal = settings.personal_users * each
    shared = budget - responses - personal
    if shared < budget // MIN_SHARED:
        needed = (personal + responses) / 2**20 / (1 - 1 / MIN_SHARED)
        raise UserError(
            f"--personal-users {settings.personal_users}: each person may hold {each / 2**20:.1f} MB, all of them "
            f"{personal / 2**20:.0f} MB of the {settings.cache_mb:g} MB of --cache-mb; give --cache-mb "
            f"{math.ceil(needed)} or more, or fewer --personal-users"
        )
    return CachePlan(responses, personal, shared)


class Engine:
    """The model, its thread, and both caches: everything a request needs beyond its parameters."""

    def __init__(self, completer: Completer, settings: ServiceSettings, name: str):
        self.completer = completer
        self.settings = settings
        self.name = name  # what /healthz calls the model
        self.default_mode = settings.default_mode or ("line" if completer.format == "lines" else "phrase")
        plan = plan_caches(settings, completer.model, completer.recall is not None)
        self.responses = ResponseCache(plan.responses)
        self.personal_budget = plan.personal
        completer.cache_bytes = plan.shared  # its nodes, search trees and answers, and the memory's caches
        self.state_budget = plan.shared
        # The node count its share would hold at most (what /healthz shows); the bytes bound them first.
        nodes = completer.states.budgets["nodes"] or plan.shared
        completer.cache_size = max(1, nodes // state_entry_bytes(completer, settings.max_query))
        # The Completer's own counts of how it found each state (hit, step, read): they tell a
        # job's cache outcome. Absent on a stand-in completer: every outcome is then "hit".
        self._stats: dict[str, int] | None = getattr(completer, "cache_stats", None)
        sys.setswitchinterval(SWITCH_INTERVAL_S)  # the process's: it serves (see SWITCH_INTERVAL_S)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nextchar-model")
        # jobs for the model thread, fair between clients (nextchar.service.fairness)
        self._queue = FairQueue(settings.max_pending, settings.max_pending_per_client)
        self._inflight: dict[CacheKey, asyncio.Future[Answer]] = {}
        self.started = time.time()
        self.batch_started: float | None = None  # monotonic time the model thread's batch began
        self.weights_sha256 = str(completer.ckpt.meta.get("weights", {}).get("sha256", ""))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def state_entries(self) -> int:
        """Recurrent states in the completer's LRU cache now."""
        return len(self.completer.states)

    def health(self) -> tuple[list[str], float, float]:
        """(what is wrong, or nothing; the oldest queued job's wait in s; the running batch's time in s)."""
        now = time.monotonic()
        waited = self._queue.oldest_wait()
        running = now - self.batch_started if self.batch_started is not None else 0.0
        wait_limit, batch_limit = self.settings.queue_wait_limit_s, self.settings.batch_time_limit_s
        problems = []
        if waited > wait_limit:
            problems.append(f"the oldest queued job has waited {waited:.1f} s (limit {wait_limit:g})")
        if running > batch_limit:
            problems.append(f"the model thread has run one batch for {running:.1f} s (limit {batch_limit:g})")
        return problems, waited, running

    def _outcome(self, before: dict[str, int] | None) -> str:
        if self._stats is None or before is None:
            return "hit"
        for result in ("read", "step", "hit"):
            if self._stats.get(result, 0) > before.get(result, 0):
                return result
        return "hit"

    @property
    def pending(self) -> int:
        """Model jobs queued or running, of every client."""
        return self._queue.pending

    async def answer(self, key: CacheKey, job: Job, *args: Any, client: str = "") -> Answer:
        """(body, cache outcome) for `key`: from the response cache, shared with an identical
        request already in flight (popular prefixes arrive together), or computed by job(*args)
        as `client`'s job (see `run`)."""
        cached = self.responses.get(key)
        if cached is not None:
            return cached, "response"
        shared = self._inflight.get(key)
        if shared is not None:
            body, _ = await asyncio.shield(shared)
            return body, "response"
        shared = asyncio.get_running_loop().create_future()
        shared.add_done_callback(_retrieve)
        self._inflight[key] = shared
        try:
            body, outcome = await self.run(job, *args, client=client)
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

    async def run(self, job: Job, *args: Any, client: str = "") -> Any:
        """job(*args) on the model thread, as `client`'s job: refused when that client has
        max_pending_per_client jobs pending (ClientOverloaded) or everyone together max_pending
        (Overloaded); taken round-robin between clients (nextchar.service.fairness).

        A job is a function, or a generator function built on Completer.suggest_steps: the
        generators that are queued together run together (their model calls batched).
        """
        self._queue.admit(client)
        try:
            ticket: Future[Any] = Future()
            self._queue.put(client, job, args, ticket)
            self._pool.submit(self._drain)
            return await asyncio.wrap_future(ticket)
        finally:
            self._queue.release(client)

    def _drain(self) -> None:
        """On the model thread: the jobs queued by now, round-robin by client, as one batch of at most
        max_batch searches (often none: an earlier drain took them; the rest wait for the next,
        as every queued job submitted a drain of its own)."""
        self.batch_started = time.monotonic()
        try:
            self._run_batch()
        finally:
            self.batch_started = None

    def _run_batch(self) -> None:
        batch: list[tuple[Job, tuple[Any, ...], Future[Any]]] = []
        while len(batch) < self.settings.max_batch:
            queued = self._queue.take()
            if queued is None:
                break
            job, args, ticket, _ = queued
            if ticket.set_running_or_notify_cancel():  # False: its client went away while it waited
                batch.append((job, args, ticket))
        searches: list[tuple[Generator[Any, Any, Any], Future[Any]]] = []
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

    def complete_job(
        self, q: str, k: int, mode: str, typos: bool, chars: int, infix: bool = False
    ) -> Generator[Any, Any, Answer]:
        before = dict(self._stats) if self._stats is not None else None
        next_chars = self.completer.next_chars(q, chars)  # the first lookup of q's state: it tells the outcome
        outcome = self._outcome(before)
        suggestions = yield from self.completer.suggest_steps(q, k, mode, typos)
        inside = self.completer.infix(q, k) if infix else None
        return _dumps(complete_json(q, mode, k, typos, suggestions, next_chars, inside)), outcome

    def suggest_job(self, q: str, k: int, base_url: str) -> Generator[Any, Any, Answer]:
        before = dict(self._stats) if self._stats is not None else None
        self.completer.state_after(q)
        outcome = self._outcome(before)
        suggestions = yield from self.completer.suggest_steps(q, k, self.default_mode)
        texts: list[str] = []
        descriptions: list[str] = []
        urls: list[str] = []
        for s in suggestions:
            text = s.text.rstrip("\n")
            if text in texts:  # "abc" and "abc\n" (the line ends) read the same in a drop-down
                continue
            texts.append(text)
            chance = math.exp(s.logprob) if s.logprob > -700 else 0.0
            descriptions.append(("did you mean this? " if s.corrected else "") + f"{100 * chance:.2g}% likely")
            urls.append(f"{base_url}?q={urllib.parse.quote(text, safe='')}")
        return _dumps([q, texts, descriptions, urls]), outcome


def _retrieve(future: asyncio.Future[Answer]) -> None:
    """Mark a shared answer's exception as seen (its owner reports it; waiters may be none)."""
    if not future.cancelled():
        future.exception()


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def build_engine(
    settings: ServiceSettings, completer: Completer | None = None, ckpt: Checkpoint | None = None
) -> Engine:
    """Load what `settings` names (unless given) and wrap it in an Engine."""
    if completer is None:
        ckpt = ckpt if ckpt is not None else load_checkpoint(settings.model)
        lexicon = Lexicon.load(settings.lexicon) if settings.lexicon else None
        completer = Completer(
            ckpt,
            lexicon=lexicon,
            beam_width=settings.beam_width,
            max_chars=settings.max_chars,
            max_words=settings.max_words,
            typo_penalty=settings.typo_penalty,
            precision=settings.precision,
            memory=settings.memory,
            deadline_ms=settings.deadline_ms,
        )
    path = completer.ckpt.path
    if path is None:
        name = "<memory>"
    elif Path(path).resolve() == BUNDLED_DIR.resolve():
        name = "bundled"
    else:
        name = str(path)
    return Engine(completer, settings, name)


class LazyEngine:
    """The application's engine, built once when first asked for (or by the lifespan, at startup).

    Calling it gives the engine. `close` (the lifespan's end) closes it and forgets it, so that a
    server that skips lifespans, or starts a second one, gets a fresh one on its next request.
    """

    def __init__(self, build: Callable[[], Engine]):
        self._build = build
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Engine:
        engine = self._engine
        if engine is None:
            with self._lock:  # two first requests on two threads build one engine
                if self._engine is None:
                    self._engine = self._build()
                engine = self._engine
        return engine

    def built(self) -> Engine | None:
        """The engine if there is one now; building nothing (for /metrics)."""
        return self._engine

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
