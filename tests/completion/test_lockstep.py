"""Concurrent searches sharing model calls (lockstep.drive_together, Completer.suggest_many), bf16
serving weights, and the service batching the requests that queue up together."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest
import torch

from nextchar import stepper
from nextchar.checkpoint import Checkpoint, load_checkpoint
from nextchar.completion import config
from nextchar.completion.completer import Completer
from nextchar.errors import UserError
from nextchar.service.app import create_app
from nextchar.service.engine import build_engine
from nextchar.service.settings import ServiceSettings
from nextchar.stepper import auto_precision
from tests.helpers import CallCounter, train_on_prose

QUERIES = [
    ("", 3, "line", False),
    ("it", 5, "phrase", False),
    ("it was the", 4, "word", False),
    ("the sea", 2, "line", True),
    ("wors", 5, "phrase", True),
    ("It was", 1, "phrase", False),
]


@pytest.fixture(scope="module", params=["lstm", "gru", "rnn"])
def prose_ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    return load_checkpoint(train_on_prose(tmp_path_factory.mktemp(f"prose-{request.param}"), request.param, 30))


def same(a: list, b: list) -> None:
    assert [s.text for s in a] == [s.text for s in b]
    assert [s.corrected for s in a] == [s.corrected for s in b]
    for x, y in zip(a, b, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4)


def test_suggest_many_equals_suggest_one_by_one_with_fewer_model_calls(prose_ckpt: Checkpoint) -> None:
    alone, together = Completer(prose_ckpt, reuse=False), Completer(prose_ckpt, reuse=False)
    for text, *_ in QUERIES:  # the same states cached in both: only the searches differ
        alone.state_after(text)
        together.state_after(text)
    counter = CallCounter(alone, together)
    expected, calls_alone = [], []
    for query in QUERIES:
        counter.calls = 0
        expected.append(alone.suggest(*query))
        calls_alone.append(counter.calls)
    counter.calls = 0
    results = together.suggest_many(QUERIES)
    for got, want in zip(results, expected, strict=True):
        same(got, want)
    assert counter.calls < sum(calls_alone)
    # Without typo variants (whose own reads are not batched) a round is exactly one call:
    # as many calls as the longest search has steps, not the sum over the searches.
    exact = [q for q in QUERIES if not q[3]]
    counter.calls = 0
    together.suggest_many(exact)
    assert counter.calls == max(n for q, n in zip(QUERIES, calls_alone, strict=True) if not q[3])


def test_one_bad_query_fails_alone(prose_ckpt: Checkpoint) -> None:
    completer = Completer(prose_ckpt)
    good, bad = ("it w", 3, "phrase", False), ("it w", 0, "phrase", False)
    results = completer.suggest_many([good, bad, ("x", 2, "sideways", False), good])
    assert isinstance(results[1], UserError) and "k must be" in str(results[1])
    assert isinstance(results[2], UserError)
    same(results[0], completer.suggest(*good))
    same(results[3], results[0])


def test_a_search_that_yields_no_request_fails_alone(prose_ckpt: Checkpoint) -> None:
    completer = Completer(prose_ckpt)

    def confused():  # type: ignore[no-untyped-def]
        yield "not a request"

    results = completer.drive_together([confused(), completer.suggest_steps("it w", 3, "phrase")])
    assert isinstance(results[0], TypeError) and "str" in str(results[0])
    same(results[1], completer.suggest("it w", 3, "phrase"))


def test_typists_batched_while_reusing_their_trees_get_what_a_fresh_search_gets(prose_ckpt: Checkpoint) -> None:
    # Each keystroke's search reuses the nodes of the previous one's tree (skipping the model
    # for them) inside batches that mix them with other typists' new rows.
    batched, fresh = Completer(prose_ckpt), Completer(prose_ckpt, reuse=False)
    counter = CallCounter(batched)
    fresh_counter = CallCounter(fresh)
    texts = ["it was the", "the sea was", "worst of it"]
    for n in range(1, max(map(len, texts)) + 1):
        typed = [(text[:n], 4, mode, False) for text in texts for mode in ("phrase", "line") if n <= len(text)]
        for query, got in zip(typed, batched.suggest_many(typed), strict=True):
            same(got, fresh.suggest(*query))
    assert counter.calls < fresh_counter.calls


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_steps_serve_nearly_the_same_suggestions(prose_ckpt: Checkpoint, precision: str) -> None:
    gated = prose_ckpt.model.config.kind != "rnn"
    low, full = Completer(prose_ckpt, precision=precision), Completer(prose_ckpt)
    assert full.precision == "fp32" and low.precision == (precision if gated else "fp32")  # lstm/gru only
    assert Completer(prose_ckpt, precision="auto").precision == auto_precision(prose_ckpt.model)
    assert low.model is prose_ckpt.model  # the low-precision copies are the stepper's own
    assert next(prose_ckpt.model.parameters()).dtype == torch.float32
    for text in ("it was the ", "wor", ""):
        a, b = low.next_chars(text, 3), full.next_chars(text, 3)
        assert a[0][0] == b[0][0] and a[0][1] == pytest.approx(b[0][1], abs=0.03)
        best_low, best_full = low.suggest(text, 1, "word")[0], full.suggest(text, 1, "word")[0]
        # Near ties may swap: the low-precision choice is at most a little less likely in fp32.
        ranked = {s.text: s.logprob for s in full.suggest(text, 8, "word")}
        assert best_low.text in ranked and ranked[best_low.text] >= best_full.logprob - 0.1
        assert best_low.logprob == pytest.approx(ranked[best_low.text], abs=0.1)
    # A copy for other weights (per-person adaptation) keeps the precision.
    assert low.with_model(prose_ckpt.model).precision == low.precision
    with pytest.raises(UserError, match="precision must be auto, fp32, bf16, int8"):
        Completer(prose_ckpt, precision="fp16")


def test_the_commands_offer_the_steppers_precisions() -> None:
    import argparse

    from nextchar.cli.main import build_parser

    assert config.PRECISIONS == stepper.PRECISIONS
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("complete", "type", "eval-complete", "serve"):
        precision = next(a for a in commands[name]._actions if "--precision" in a.option_strings)
        assert tuple(precision.choices or ()) == stepper.PRECISIONS
        assert precision.default == config.SERVING_PRECISION


@pytest.fixture(scope="module")
def prose_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LSTM of PROSE: /suggest completes phrases of it, searches of several steps."""
    return train_on_prose(tmp_path_factory.mktemp("prose-lstm"), "lstm", steps=30)


PREFIXES = ["i", "it", "it w", "the", "of", "a", "was", "th", "wi", "e", "ag", "it wa"]


def opensearch_texts(completer: Completer, q: str) -> list[str]:
    """What /suggest lists for q (phrase mode, k 3): texts without a final newline, once each."""
    return list(dict.fromkeys(s.text.rstrip("\n") for s in completer.suggest(q, 3, "phrase")))


@pytest.mark.parametrize("max_batch", [16, 5, 1])
def test_jobs_queued_together_run_in_batches_of_at_most_max_batch(prose_dir: Path, max_batch: int) -> None:
    ckpt = load_checkpoint(prose_dir)
    engine = build_engine(ServiceSettings(cache_mb=2, precision="fp32", max_batch=max_batch), ckpt=ckpt)
    reference = Completer(load_checkpoint(prose_dir))
    calls = CallCounter(engine.completer)

    async def queue_all() -> list:
        gate, holding = threading.Event(), threading.Event()

        def hold() -> None:
            holding.set()
            gate.wait()

        # The model thread is busy (in a job of its own, alone in its batch) while every request queues.
        blocker = asyncio.ensure_future(engine.run(hold))
        await asyncio.to_thread(holding.wait)
        jobs = [asyncio.ensure_future(engine.run(engine.suggest_job, q, 3, "http://t/suggest")) for q in PREFIXES]
        while engine.pending < 1 + len(PREFIXES):  # every request queued behind it
            await asyncio.sleep(0)
        gate.set()
        await blocker
        return await asyncio.gather(*jobs)

    answers = asyncio.run(queue_all())
    engine.close()
    for q, (body, _) in zip(PREFIXES, answers, strict=True):
        assert json.loads(body)[:2] == [q, opensearch_texts(reference, q)]
    # Each search's own model calls: its text read (one call) + one per step of its beam.
    fresh = Completer(load_checkpoint(prose_dir), reuse=False)
    alone = CallCounter(fresh)
    steps = []
    for q in PREFIXES:
        fresh.state_after(q)
        before = alone.calls
        fresh.suggest(q, 3, "phrase")
        steps.append(alone.calls - before)
    reads = len(PREFIXES)  # at most one call each (one step from a cached prefix, or a read)
    if max_batch >= len(PREFIXES):  # one batch: one call per step of its longest search
        assert calls.calls <= reads + max(steps) and calls.calls < sum(steps) / 2
    elif max_batch > 1:  # three batches (5 + 5 + 2), each as long as its longest search
        assert calls.calls <= reads + 3 * max(steps) and calls.calls < reads + sum(steps)
    else:  # one at a time (each reusing the search before it where it can)
        assert calls.calls > reads + 3 * max(steps)


def test_concurrent_http_requests_each_get_their_own_answer(prose_dir: Path) -> None:
    app = create_app(ckpt=load_checkpoint(prose_dir), settings=ServiceSettings(cache_mb=2, precision="fp32"))
    reference = Completer(load_checkpoint(prose_dir))

    async def fire() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        ):
            return await asyncio.gather(*(client.get("/suggest", params={"q": q, "k": 3}) for q in PREFIXES))

    for q, response in zip(PREFIXES, asyncio.run(fire()), strict=True):
        assert response.status_code == 200
        assert response.json()[:2] == [q, opensearch_texts(reference, q)]
