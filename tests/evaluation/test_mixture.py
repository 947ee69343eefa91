"""The memory's distribution and its mixture with the RNN (nextchar/recall, evaluation/mixture.py).

What matters: p_mem and the mixture are distributions; an empty memory is the RNN exactly; the
memory never counts the occurrence it predicts (leave-one-out on its own text; online memory
learns only after scoring); and where the memory knows the text, the fitted mixture beats the RNN.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from nextchar.adapt import AdaptConfig
from nextchar.data.batches import IGNORE, encode_corpus
from nextchar.data.memory import MemoryIndex, memory_tokens
from nextchar.evaluation.dynamic import dynamic_evaluate
from nextchar.evaluation.mixture import OnlineScorer, evaluate_mixture, fit_mixer, scored_blocks
from nextchar.models import build_model
from nextchar.recall.estimator import ESTIMATORS, Memory
from nextchar.recall.mixer import Mixer
from nextchar.text import Vocabulary
from tests.helpers import PROSE, model_config


def memory_of(text: str, vocab: Vocabulary, corpus_format: str = "text") -> Memory:
    tokens = memory_tokens(encode_corpus(text, vocab, corpus_format), len(vocab))
    return Memory([MemoryIndex.build(tokens)], len(vocab))


def read(memory: Memory, vocab: Vocabulary, text: str):
    context = memory.start()
    for symbol in [0, *vocab.encode(text)]:
        context = memory.push(context, symbol)
    return context


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.from_text(PROSE + "zq")


def tiny(vocab: Vocabulary, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(model_config("lstm", vocab_size=len(vocab))).eval()


# ------------------------------------------------------------------------------ the estimator


def test_witten_bell_by_hand():
    """Corpus "abab", V = 3 (a, b, c): after "a" the contexts are "a" (b twice) and "" (a, b twice each)."""
    index = MemoryIndex.build(np.array([0, 1, 0, 1], dtype="u1"))
    memory = Memory([index], 3)
    context = memory.push(memory.start(), 0)
    levels = memory.levels(context)
    assert [(lv.depth, lv.symbols.tolist(), lv.counts.tolist()) for lv in levels] == [
        (1, [1], [2]),
        (0, [0, 1], [2, 2]),
    ]
    # p0 = (n + d·1/3)/(N + d) with N = 4, d = 2: a 4/9, b 4/9, c 1/9; p1 = (n + 1·p0)/(2 + 1)
    expected = [4 / 27, 22 / 27, 1 / 27]
    assert np.allclose(memory.distribution(levels, "wb"), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_is_a_distribution_with_no_zero(estimator, vocab):
    memory = memory_of(PROSE, vocab)
    for typed in ("", "It was the", "the zq", "qqqq", PROSE[:120]):
        p = memory.distribution(memory.levels(read(memory, vocab, typed)), estimator)
        assert p.shape == (len(vocab),) and math.isclose(p.sum(), 1.0, rel_tol=1e-9) and (p > 0).all()


def test_the_longest_context_decides(vocab):
    """A context seen once, always followed by one symbol, gives that symbol most of the mass."""
    memory = memory_of(PROSE, vocab)
    context = read(memory, vocab, "It was the best of ti")
    p = memory.distribution(memory.levels(context))
    assert vocab.symbol(int(p.argmax())) == "m" and p.max() > 0.5
    assert context.matches[0].longest.depth >= 20


# ------------------------------------------------------------------------------ the mixture


def test_the_mixture_is_a_distribution_and_an_empty_memory_is_the_rnn(vocab):
    model = tiny(vocab)
    encoded = encode_corpus(PROSE, vocab, "text")
    full = memory_of(PROSE[:200], vocab)
    mixer = fit_mixer(model, full, encode_corpus(PROSE[200:], vocab, "text"), encode_corpus(PROSE[:200], vocab, "text"))
    for block in scored_blocks(model, encoded, full):
        logq = mixer.mix(block.rnn, block.memory, block.stats)
        assert torch.allclose(logq.exp().sum(-1), torch.ones(len(logq)), atol=1e-5) and (logq > -math.inf).all()
    empty = Memory([MemoryIndex.build(np.zeros(0, dtype="u1"))], len(vocab))
    mixed = evaluate_mixture(model, encoded, empty, mixer)
    assert mixed.mixture == mixed.rnn  # exactly: where the memory holds nothing, q is p_rnn


def test_the_compiled_mixture_is_the_one_the_mixer_is_fitted_through(vocab):
    """Fitting minimises −log q through torch (mixer._mixed, gradients through the gate);
    `Mixer.mix`, what every reader of the mixture calls, is compiled (gating.py). With a gate far
    from its start (weights clipped at both ends), on the positions of a real memory and model,
    the two give the same log q."""
    from nextchar.recall.mixer import _clipped, _mixed, features

    model = tiny(vocab)
    blocks = list(scored_blocks(model, encode_corpus(PROSE, vocab, "text"), memory_of(PROSE[:300], vocab)))
    rnn, memory, stats = (torch.cat([getattr(b, name) for b in blocks]) for name in ("rnn", "memory", "stats"))
    mixer = Mixer.rnn_only()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        for parameter in mixer.gate.parameters():
            parameter.normal_(0.0, 2.0)
    mixer._freeze()
    inputs = torch.from_numpy(features(stats.numpy(), rnn.numpy(), memory.numpy()))
    with torch.no_grad():
        weights = _clipped(mixer.gate(inputs))
        fitted = _mixed(weights, rnn, memory, stats[:, 1] > 0)
    assert (weights == 0).any() and (weights == 3.0).any() and ((weights > 0) & (weights < 3.0)).any()
    assert torch.allclose(mixer.mix(rnn, memory, stats), fitted, atol=1e-4)


def test_leave_one_out_never_counts_the_occurrence_it_predicts():
    """Lines that each occur once: on its own text, a memory that counted a line's own occurrence
    would recall it (about zero bits); leave-one-out must score it like an unseen line."""
    rng = random.Random(0)
    letters = "abcdefgh"

    def lines(n):
        return "".join("".join(rng.choice(letters) for _ in range(12)) + "\n" for _ in range(n))

    train, unseen = lines(300), lines(100)
    vocab = Vocabulary.from_text(train + unseen)
    memory = memory_of(train, vocab, "lines")
    model = tiny(vocab)
    own = encode_corpus(train, vocab, "lines")

    def memory_bpc(encoded, loo):
        blocks = list(scored_blocks(model, encoded, memory, loo=loo))
        nats = -sum(float(b.memory[:, 0].gather(1, b.targets[:, None]).sum()) for b in blocks)
        return nats / sum(len(b.targets) for b in blocks) / math.log(2)

    honest, counted = memory_bpc(own, loo=True), memory_bpc(own, loo=False)
    fresh = memory_bpc(encode_corpus(unseen, vocab, "lines"), loo=False)
    assert honest >= 0.95 * fresh  # no better than the other lines allow
    assert counted < 0.5 * fresh  # the test has teeth: counting itself recalls the line


def test_the_fitted_mixture_beats_the_rnn_where_the_memory_knows_the_text(vocab):
    model = tiny(vocab)
    train = PROSE * 2
    memory = memory_of(train, vocab)
    held_out = encode_corpus(PROSE[100:], vocab, "text")  # text the memory holds, the RNN barely knows
    mixer = fit_mixer(model, memory, held_out, encode_corpus(train, vocab, "text"))
    again = fit_mixer(model, memory, held_out, encode_corpus(train, vocab, "text"))
    assert mixer.to_json() == again.to_json()  # fitting is deterministic
    result = evaluate_mixture(model, encode_corpus(PROSE[:300], vocab, "text"), memory, mixer)
    assert result.mixture.bpc < result.rnn.bpc - 1.0 and result.mixture.bpc <= result.memory.bpc + 0.05
    assert Mixer.from_json(mixer.to_json(), "here").to_json() == mixer.to_json()


# ------------------------------------------------------------------------------ online memory


class LeakyScorer(OnlineScorer):
    """WRONG on purpose: adds each window to the online memory before scoring it."""

    def score(self, x, y, carry, rnn_logits):
        if not carry or not self.contexts:
            self.start_rows(x)
        for row, targets in enumerate(y.tolist()):
            self.online.extend(self.pieces[row], [t for t in targets if t != IGNORE])
        self.online.rebuild()
        self.contexts = [self.online.rematch(c, h) for c, h in zip(self.contexts, self.histories, strict=True)]
        super().score(x, y, True, rnn_logits)


def product_mixer() -> Mixer:
    mixer = Mixer.rnn_only()
    with torch.no_grad():
        mixer.gate[2].bias.copy_(torch.tensor([1.0, 1.0, 0.0]))  # q ∝ p_rnn · p_mem, everywhere
    mixer._freeze()
    return mixer


@pytest.mark.parametrize("learn_mixer", [False, True], ids=["fixed mixer", "online mixer"])
def test_online_memory_learns_only_after_scoring(vocab, monkeypatch, learn_mixer):
    import nextchar.evaluation.dynamic as dynamic
    import nextchar.recall.mixer as mixers

    monkeypatch.setattr(mixers, "ONLINE_EVERY", 64)  # the gate learns several times in 600 symbols
    model = tiny(vocab)
    memory = memory_of(PROSE[:100], vocab)
    config = AdaptConfig(rule="sgd", lr=1e-3, window=16)
    text = PROSE[:300] + PROSE[:300]  # the second half repeats the first: the online memory's chance
    position = 200

    def scores(scorer, body):
        monkeypatch.setattr(dynamic, "OnlineScorer", scorer)
        result = dynamic_evaluate(
            model,
            encode_corpus(body, vocab, "text"),
            config,
            static=False,
            record=True,
            recall=(memory, product_mixer()),
            learn_mixer=learn_mixer,
        )
        return result

    changed = text[:position] + ("z" if text[position] != "z" else "q") + text[position + 1 :]
    honest = scores(OnlineScorer, text)
    assert honest.mixture is not None and honest.mixture_logprobs is not None
    # The scores before the changed character do not depend on it …
    window_start = position // config.window * config.window
    a, b = honest.mixture_logprobs, scores(OnlineScorer, changed).mixture_logprobs
    assert torch.allclose(a[:position], b[:position], rtol=0, atol=1e-6)
    # … while learning before scoring lets a window's own text in (the test has teeth).
    leaky_a, leaky_b = scores(LeakyScorer, text).mixture_logprobs, scores(LeakyScorer, changed).mixture_logprobs
    assert not torch.allclose(leaky_a[window_start:position], leaky_b[window_start:position], rtol=0, atol=1e-6)
    # And it learns: the repeated half is predicted far better than the first.
    first, second = -a[:300].mean(), -a[300:].mean()
    assert second < 0.5 * first


def test_the_online_index_holds_its_symbols_as_the_static_one_does(vocab, tmp_path):
    """The compiled searches take a memory's indexes together only when they are of one type: an
    index saved with two bytes a symbol (as older versions saved every index) gets an online index
    of two bytes a symbol, a new one of one byte; either way the memory takes them together (the
    compiled searches themselves are the same code for every type)."""
    from nextchar.recall.online import OnlineMemory

    tokens = memory_tokens(encode_corpus(PROSE, vocab, "text"), len(vocab))
    assert tokens.dtype == np.dtype("u1")
    for dtype in ("u1", "<u2"):
        static = Memory([MemoryIndex.build(tokens.astype(dtype))], len(vocab))
        online = OnlineMemory(static)
        online.extend(online.piece(), vocab.encode("the cat sat on the mat"))
        online.rebuild()
        assert [ix.tokens.dtype for ix in online.memory.indexes] == [np.dtype(dtype)] * 2
        assert online.memory._same_typed_arrays() is not None
    logp, _ = online.memory.predict(read(online.memory, vocab, "the cat sat"))  # the last: two-byte symbols
    assert np.isclose(np.exp(logp[0]).sum(), 1.0, atol=1e-5) and online.memory._remembered is not None


@pytest.mark.parametrize("table", ["default", "tiny", "none"])
@pytest.mark.parametrize("pieces", [1, 3])
def test_predict_from_remembered_contexts_equals_the_estimator_from_scratch(vocab, pieces, table):
    """Memory.predict interpolates from the longest shorter context its table remembers
    (compiled, summing the counts of every index): the same p_mem and match stats as computing
    every level again in numpy, for contexts that share suffixes, in a memory of one index or of
    several (the text cut in pieces, as a corpus indexed in shards is), whether the table holds
    everything, a few sets it keeps replacing, or nothing. A batch of contexts as rows, pushed and
    predicted in one call each (what a search does), gives the same as one at a time."""
    from nextchar.recall.estimator import match_stats
    from nextchar.recall.witten_bell import TABLE_OVERHEAD, WAYS, Remembered

    tokens = memory_tokens(encode_corpus(PROSE * 2, vocab, "text"), len(vocab))
    cuts = [len(tokens) * i // pieces for i in range(pieces + 1)]
    indexes = [MemoryIndex.build(tokens[lo:hi].copy()) for lo, hi in itertools.pairwise(cuts)]
    slot = Remembered.slot_bytes(len(vocab), pieces)
    cache_bytes = {"default": None, "tiny": 2 * WAYS * slot + TABLE_OVERHEAD, "none": slot + TABLE_OVERHEAD}[table]
    memory, fresh = Memory(indexes, len(vocab), cache_bytes=cache_bytes), Memory(indexes, len(vocab))
    rng = random.Random(0)
    symbols = encode_corpus(PROSE, vocab, "text").tolist()
    batch, answers = [], []
    for _ in range(60):
        start = rng.randrange(1, len(symbols) - 40)
        context = memory.start()
        for symbol in [*symbols[start : start + rng.randrange(1, 30)], rng.randrange(len(vocab))]:
            before, context = context, memory.push(context, symbol)
            logp, stats = memory.predict(context)
            levels = fresh.levels(context)
            assert np.allclose(logp, np.log(fresh.distributions(levels)), atol=1e-5)
            assert stats == match_stats(levels)
            batch.append((before, symbol, context))
            answers.append((logp, stats))
    assert memory._remembered is not None
    assert memory._remembered.slots == {"default": memory._remembered.slots, "tiny": 2 * WAYS, "none": 0}[table]
    assert memory._remembered.nbytes <= memory.cache_bytes  # all it will ever hold, allocated at once
    assert (memory._remembered.filled() > 0) == (table != "none")
    rows = memory.push_rows(memory.rows([b for b, _, _ in batch]), np.array([s for _, s, _ in batch]))
    assert np.array_equal(rows, memory.rows([c for _, _, c in batch]))
    logp, stats = memory.predict_rows(rows)
    assert np.array_equal(logp, np.stack([a for a, _ in answers]))
    assert stats.tolist() == [list(s) for _, s in answers]
