"""--cache-mb bounds every byte the service keeps between requests (nextchar.service.engine.plan_caches).

Not the caches' own counts: the test walks the object graph from every cache (responses,
states, search trees, answers, the memory's predictions and intervals, every person's weights,
memory and caches, their identities) and sums what is actually reachable — each object's
sys.getsizeof, each tensor storage once — leaving out only what is shared and fixed (the
model's weights, the memory-mapped index, the vocabulary), after concurrent load from many
typists and many people on a real server.
"""

from __future__ import annotations

import gc
import random
import sys
import types
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from nextchar.checkpoint import load_checkpoint
from nextchar.completion.personal import person_bytes
from nextchar.service.app import create_app
from nextchar.service.settings import ServiceSettings
from tests.completion.test_recall import remembering_checkpoint
from tests.helpers import PROSE
from tests.live_server import live_server

NOT_DATA = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType, types.FrameType)


class Reachable:
    """Sums the bytes reachable from roots, each object and each tensor storage counted once."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.storages: set[int] = set()
        self.bytes = 0

    def walk(self, roots: Iterable[object], count: bool = True, avoid: Iterable[object] = ()) -> int:
        """Visit everything reachable from `roots` not visited yet, not entering `avoid`; with
        `count`, add its bytes (and return what this walk added). Walk the shared objects first
        with count=False, avoiding the caches."""
        before = self.bytes
        stack = list(roots)
        avoided = {id(obj) for obj in avoid}
        while stack:
            obj = stack.pop()
            if id(obj) in self.seen or id(obj) in avoided or isinstance(obj, NOT_DATA):
                continue
            self.seen.add(id(obj))
            size = sys.getsizeof(obj)
            if isinstance(obj, torch.Tensor):
                storage = obj.untyped_storage()
                if storage.data_ptr() not in self.storages:
                    self.storages.add(storage.data_ptr())
                    size += storage.nbytes()
                if obj._base is not None:
                    stack.append(obj._base)
            elif isinstance(obj, np.ndarray) and obj.base is not None:
                stack.append(obj.base)
            if count:
                self.bytes += size
            stack.extend(gc.get_referents(obj))
        return self.bytes - before


def cached_bytes(app: object) -> tuple[int, int]:
    """(bytes reachable from every cache of the app's engine and its people, those of the
    shared completer's states alone)."""
    engine = app.state.engine()  # type: ignore[attr-defined]
    completer = engine.completer
    memory = completer.forward.memory
    people = app.state.personal  # type: ignore[attr-defined]
    caches = [engine.responses, memory._predicted, memory._remembered, people()._people, people.identities]
    caches += [index._followers for index in memory.indexes]
    walker = Reachable()
    shared = [completer, engine.settings]  # fixed and shared (the model, the index, …): never counted below
    walker.walk(shared, count=False, avoid=[completer.states, *caches])
    states = walker.walk([completer.states])
    return states + walker.walk(caches), states


def test_every_cached_byte_counts_against_cache_mb_under_load_with_many_people(tmp_path):
    ckpt = remembering_checkpoint(tmp_path)
    users = 6
    each = person_bytes(ckpt.model, memory=True)
    cache_mb = users * each / 0.7 / 2**20  # the people at their bound take 70%, the shared caches 17.5%
    settings = ServiceSettings(cache_mb=cache_mb, personal_users=users, precision="fp32", max_chars=12, beam_width=4)
    app = create_app(ckpt=ckpt, settings=settings)
    words = PROSE.split()
    rng = random.Random(0)
    queries = [" ".join(rng.sample(words, 3))[: rng.randint(1, 30)] + rng.choice("abcdefgh") for _ in range(480)]

    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            tokens = [client.post("/api/personal/people").json()["token"] for _ in range(users)]

        def typist(n: int) -> list[int]:
            statuses = []
            with httpx.Client(base_url=url, timeout=60) as client:
                auth = {"Authorization": f"Bearer {tokens[n % users]}"}
                for i, q in enumerate(queries[n::8]):
                    mode = ("line", "word", "phrase")[i % 3]
                    statuses.append(client.get("/api/complete", params={"q": q, "mode": mode}).status_code)
                    if i % 4 == 0:
                        r = client.get("/api/personal/complete", params={"q": q, "mode": mode}, headers=auth)
                        statuses.append(r.status_code)
                    if i % 10 == 0:  # each person teaches what they typed
                        body = {"text": (q + " " + PROSE[i % 300 :])[:4000] + "\n"}
                        statuses.append(client.post("/api/personal/learn", json=body, headers=auth).status_code)
            return statuses

        with ThreadPoolExecutor(8) as pool:
            statuses = [s for got in pool.map(typist, range(8)) for s in got]
        assert set(statuses) == {200}, sorted(set(statuses))
        total, states = cached_bytes(app)
        engine = app.state.engine()  # this server's (another is built after its lifespan ends)

    bound = int(cache_mb * 2**20)
    assert total <= bound, f"{total:,} bytes reachable from the caches, bound {bound:,}"
    # The load reached the byte bound of the costliest share (search trees were dropped to keep
    # within it), not merely never approached it.
    cache = engine.completer.states
    assert cache._trees.evicted > 0 and states > 0 and cache.bytes <= cache.max_bytes


@pytest.mark.parametrize("model", ["bundled", "remembering"])
def test_a_person_holds_at_most_person_bytes_however_much_they_type_and_teach(tmp_path, model):
    """The bundled model's search trees are ~1 MB each; the remembering model's person fills
    their memory to its limit."""
    from nextchar.completion.completer import Completer
    from nextchar.completion.personal import MAX_LEARN_CHARS, MEMORY_CHARS, PersonalCompleters

    ckpt = load_checkpoint(None) if model == "bundled" else remembering_checkpoint(tmp_path)
    base = Completer(ckpt, precision="fp32", max_chars=24)
    people = PersonalCompleters(base, max_users=2)
    person = people.get("alice")
    rng = random.Random(1)
    words = PROSE.split()
    for _ in range(40):  # distinct searches: each leaves a tree, nodes and an answer behind
        person.completer.suggest(" ".join(rng.sample(words, 4)), 5, "phrase")
    taught = 0
    while person.memory is not None and taught < 1.2 * MEMORY_CHARS:  # past the memory's limit
        text = "".join(rng.choice(words) + " " for _ in range(MAX_LEARN_CHARS // 6))[:MAX_LEARN_CHARS] + "\n"
        taught += person.learn(text).chars
        person.completer.suggest(text[:20], 5, "phrase")
    walker = Reachable()
    walker.walk([base], count=False, avoid=[people._people])
    held = walker.walk([people._people])
    bound = person_bytes(base.model, memory=person.memory is not None)
    assert held <= bound, f"one person holds {held:,} bytes, bound {bound:,}"
    if person.memory is not None:
        assert person.memory.online_symbols > 0.9 * MEMORY_CHARS  # the memory's bound was reached
