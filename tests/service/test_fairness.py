"""One greedy client cannot starve the rest (nextchar.service.fairness): its share of the model
queue is bounded (429 for it, not 503 for everyone), and the model thread takes clients in turn.
The greedy and the polite client are real sockets from two loopback addresses."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from nextchar.checkpoint import load_checkpoint
from nextchar.service.app import create_app
from nextchar.service.settings import ServiceSettings
from tests.live_server import live_server


def test_the_model_thread_takes_clients_in_turn(text_model_dir: Path) -> None:
    settings = ServiceSettings(cache_mb=1, max_batch=1, max_pending=64, max_pending_per_client=64)
    engine = create_app(ckpt=load_checkpoint(text_model_dir), settings=settings).state.engine()
    order: list[str] = []
    release = threading.Event()

    def job(name: str) -> str:
        if name == "first":
            release.wait(10)  # the model thread is busy while everyone else queues
        order.append(name)
        return name

    async def queue_up() -> None:
        first = asyncio.ensure_future(engine.run(job, "first", client="greedy"))
        await asyncio.sleep(0.05)
        jobs = [asyncio.ensure_future(engine.run(job, f"greedy {i}", client="greedy")) for i in range(6)]
        await asyncio.sleep(0.05)
        jobs.append(asyncio.ensure_future(engine.run(job, "polite", client="polite")))
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(first, *jobs)

    asyncio.run(queue_up())
    engine.close()
    # Queued after six of the greedy client's jobs, the polite one runs after one of them.
    assert order == ["first", "greedy 0", "polite", "greedy 1", "greedy 2", "greedy 3", "greedy 4", "greedy 5"]


def test_a_greedy_client_gets_429_and_a_polite_one_is_still_served(text_model_dir: Path) -> None:
    ckpt = load_checkpoint(text_model_dir)
    settings = ServiceSettings(cache_mb=4, max_pending=8, max_pending_per_client=3, max_batch=1, precision="fp32")
    app = create_app(ckpt=ckpt, settings=settings)
    with live_server(app, limit_concurrency=200) as url:
        engine = app.state.engine()
        forward = engine.completer.forward

        def slow(idx, state):  # type: ignore[no-untyped-def]  # a slow machine: 5 ms a model call
            time.sleep(0.005)
            return forward(idx, state)

        engine.completer.forward = slow
        stop = threading.Event()
        greedy_statuses: list[int] = []

        def greedy(n: int) -> None:
            transport = httpx.HTTPTransport(local_address="127.0.0.2")
            with httpx.Client(base_url=url, transport=transport, timeout=60) as client:
                i = 0
                while not stop.is_set():
                    r = client.get("/api/complete", params={"q": f"greedy {n} {i}", "mode": "phrase"})
                    greedy_statuses.append(r.status_code)
                    if r.status_code != 200:
                        time.sleep(0.02)  # back off a little (all in this process: the server needs the GIL)
                    i += 1

        with ThreadPoolExecutor(24) as pool:
            for n in range(24):  # 24 connections from one address, each asking again at once
                pool.submit(greedy, n)
            deadline = time.monotonic() + 20
            while engine.pending < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            polite_statuses = []
            transport = httpx.HTTPTransport(local_address="127.0.0.3")
            with httpx.Client(base_url=url, transport=transport, timeout=60) as polite:
                for i in range(10):
                    r = polite.get("/api/complete", params={"q": f"polite {i}", "mode": "phrase"})
                    polite_statuses.append(r.status_code)
            stop.set()

    assert polite_statuses == [200] * 10, polite_statuses
    assert 429 in greedy_statuses and 200 in greedy_statuses and 503 not in greedy_statuses
