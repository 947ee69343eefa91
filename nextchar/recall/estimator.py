"""p_mem(· | context): the memory's next-symbol distribution, interpolated over every context it holds.

The counts. For a context x_1 … x_t, the memory (one or more suffix-array indexes: the training
text's, and an online one of text read since) gives, for every suffix w_k = x_{t−k+1} … x_t of the
context found in it, the counts n_k(c) of each symbol c that follows w_k there (summed over the
indexes), their sum N_k and the number d_k of distinct symbols among them. Only the *distinct*
contexts count: when w_{k−1} occurs exactly as often as w_k, every occurrence of it is one of
w_k's and its counts are the same; it is skipped. The order has no bound but the match's
(nextchar.data.memory.MAX_ORDER, 64).

The estimator (`wb`, the default: interpolated Witten–Bell smoothing, Witten & Bell 1991, over
unbounded order). From uniform, the contexts from the shortest to the longest each interpolate:

    p_{−1}(c) = 1 / V
    p_k(c)    = (n_k(c) + d_k · p_{k′}(c)) / (N_k + d_k)        k′ the next shorter distinct context

and p_mem = p_K for the longest K. A context that was followed by many different symbols (d_k
large against N_k) hands much of its mass to the shorter ones; one always followed by the same
symbol keeps most of it. The sum is exactly 1 and every symbol of the vocabulary gets > 0.
`Memory.predict` gives p_{K′} beside p_K, the same from every distinct context but the longest
(DEPTHS = 2 rows): the mixer (mixer.py) weighs how much the longest context itself adds, which
this one escape rule judges worst.

Two others are kept for comparison (`ESTIMATORS`): `ppm`, PPM with method D escapes and
exclusion (p(c) = m·(2n′(c) − 1)/(2N′) over the symbols c not seen in longer contexts, escape
m ← m·d′/(2N′)), and `interpolated` absolute discounting (p_k(c) = max(n_k(c) − D, 0)/N_k +
D·d_k/N_k · p_{k′}(c), D = 0.75). Why Witten–Bell (measured, 2026-12-01, AMD EPYC Zen 4; the
first 40,000 validation characters, each half scored by a mixer fitted on the other half; the
10-minute Tiny Shakespeare model and the bundled model on the embedded corpus):

    estimator                   alone: Shakespeare  embedded    mixed with the RNN: Shakespeare  embedded
    RNN alone                                                                       1.982     1.648
    ppm (D, exclusion)                      2.487      2.128                        1.943     1.590
    interpolated (D = 0.75)                 2.587      2.387                        1.937     1.585
    wb                                      2.659      2.355                        1.935     1.579

PPM with exclusion is the best estimator alone and the worst partner: exclusion makes a long
context's few counts decide, which the RNN already knows better; Witten–Bell keeps every
order's evidence in the distribution and leaves the mixer (mixer.py) to weigh it.

Leave-one-out. Scoring the indexed text itself, the occurrence being predicted is one of the
counts at every order (the context matches itself). `own` names the symbol that follows the
context in the indexed text: one is taken off its count at every context, so p_mem is what the
memory would give had the text not held this occurrence (contexts found only there drop out:
Match.push with min_count=2).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nextchar.data.memory import MAX_ORDER, Interval, Match, MemoryIndex

if TYPE_CHECKING:
    from nextchar.recall.witten_bell import Remembered

ESTIMATORS = ("wb", "ppm", "interpolated")
ESTIMATOR = "wb"
DISCOUNT = 0.75  # the interpolated estimator's absolute discount
PREDICTED_BYTES = 32 << 20  # Memory.predict keeps this many bytes of answers (witten_bell.Remembered)
# What one remembered entry costs beyond its array's data (the array object, its key and stats
# tuples, the ints in them, the dict slot; sys.getsizeof, tests/service/test_cache_bytes.py)
PREDICTED_OVERHEAD = 700
KEY_BYTES_PER_INDEX = 160  # … and for each index of the memory, what its part of the keys adds (4 ints)
DEPTHS = 2  # distributions predict gives per context (Memory.distributions)
STATS = 6  # numbers match_stats gives per context


@dataclass(frozen=True)
class Level:
    """One distinct context: its length, and the symbols that followed it with their counts."""

    depth: int
    symbols: np.ndarray  # ascending
    counts: np.ndarray

    @property
    def total(self) -> int:
        return int(self.counts.sum())


@dataclass(frozen=True)
class Context:
    """A context's matches, one per index of a memory (the same order as Memory.indexes)."""

    matches: tuple[Match, ...]


class Memory:
    """The indexes a context is matched in, and p_mem from their summed counts. One thread at a
    time: its remembered answers are written without a lock (a completer's lock guards it)."""

    def __init__(
        self,
        indexes: Sequence[MemoryIndex],
        vocab_size: int,
        max_order: int = MAX_ORDER,
        cache_bytes: int | None = None,
    ):
        """`cache_bytes`: what `predict` may keep (default PREDICTED_BYTES)."""
        self.indexes = tuple(indexes)
        self.vocab_size = vocab_size
        self.max_order = max_order
        # predict's answers by the longest suffix found in each index: that one string decides
        # every shorter suffix's interval, so it decides p_mem (bounded in bytes, least recent
        # out); for the estimators other than Witten–Bell's compiled one, which has its own table
        self._predicted: OrderedDict[tuple[object, ...], tuple[np.ndarray, tuple[int, ...]]] = OrderedDict()
        self.cache_bytes = PREDICTED_BYTES if cache_bytes is None else cache_bytes
        from nextchar.data import suffix_search  # compiled (numba): imported with the first memory
        from nextchar.recall import witten_bell

        self._search, self._compiled = suffix_search, witten_bell
        # every index's arrays, for witten_bell.predict_rows: None when their types differ (it
        # indexes them by number, so they must be of one type), and p_mem is then `levels`' in numpy
        self._arrays = self._same_typed_arrays()

    @property
    def cache_bytes(self) -> int:
        """What `predict` may keep, in bytes; settable (the oldest answers go at the next one)."""
        return self._cache_bytes

    @cache_bytes.setter
    def cache_bytes(self, cache_bytes: int) -> None:
        # an answer is DEPTHS × V float32 with its key, its stats and their objects
        # (PREDICTED_OVERHEAD, keys longer by a part per index). Witten–Bell's compiled p_mem has
        # a table of its own in the same bound (witten_bell.Remembered), made at its first use: a
        # memory is asked with one estimator, its mixer's, and only one of the two fills
        self._cache_bytes = cache_bytes
        entry = 4 * DEPTHS * max(self.vocab_size, 1) + PREDICTED_OVERHEAD + KEY_BYTES_PER_INDEX * len(self.indexes)
        self._predicted_limit = max(0, cache_bytes // entry)
        while len(self._predicted) > self._predicted_limit:
            self._predicted.popitem(last=False)
        self._remembered: Remembered | None = None

    def _same_typed_arrays(self) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]] | None:
        if not self.indexes or len({(ix.tokens.dtype, ix.suffixes.dtype) for ix in self.indexes}) > 1:
            return None
        indexes = self.indexes
        return (
            tuple(ix.suffixes for ix in indexes),
            tuple(ix.tokens for ix in indexes),
            tuple(ix.wide for ix in indexes),
        )

    def __len__(self) -> int:
        """Symbols remembered, over every index."""
        return sum(len(index) for index in self.indexes)

    def start(self) -> Context:
        """The empty context."""
        return Context(tuple(Match.start(index) for index in self.indexes))

    def push(self, context: Context, symbol: int, loo: bool = False) -> Context:
        """The context one symbol longer. `loo`: the context is the first index's own text
        (leave-one-out; see the module docstring)."""
        if len(self.indexes) == 1:  # the common case, without the loop's cost (a keystroke's third)
            return Context((context.matches[0].push(self.indexes[0], symbol, self.max_order, 2 if loo else 1),))
        return Context(
            tuple(
                match.push(index, symbol, self.max_order, min_count=2 if loo and i == 0 else 1)
                for i, (index, match) in enumerate(zip(self.indexes, context.matches, strict=True))
            )
        )

    def levels(self, context: Context, own: int | None = None) -> list[Level]:
        """The distinct contexts of `context`, longest first, with their counts summed over the
        indexes; `own`: take one occurrence of that symbol off the first index's counts
        (leave-one-out). A context that occurs as often as the longer one before it holds the
        same occurrences, so it is skipped before its followers are read."""
        levels: list[Level] = []
        found, starts = self._compiled.distinct_contexts(self.rows([context])[0])
        parts = found.tolist()  # (index, lo, hi, depth) of each index holding a context
        for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
            symbols, counts = self._followers([(i, Interval(a, b, d)) for i, a, b, d in parts[lo:hi]], own)
            if len(symbols):
                levels.append(Level(parts[lo][3], symbols, counts))
        return levels

    def _followers(self, parts: list[tuple[int, Interval]], own: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The symbols that follow one context in the indexes (i, its interval there), with
        their summed counts (`own` taken off the first index's), those with none left out."""
        found = []
        for i, interval in parts:
            symbols, counts = self.indexes[i].followers(interval)
            found.append((symbols, counts - (symbols == own) if own is not None and i == 0 else counts))
        if len(found) == 1:
            symbols, counts = found[0]
        else:
            dense = np.zeros(self.vocab_size, dtype=np.int64)
            for s, c in found:
                dense[s] += c
            symbols = np.flatnonzero(dense)
            counts = dense[symbols]
        keep = counts > 0
        return (symbols, counts) if keep.all() else (symbols[keep], counts[keep])

    def rows(self, contexts: Sequence[Context]) -> np.ndarray:
        """The contexts as one (B, I, K, 3) int64 array: for each of the I indexes, the rows of
        its match (lo, hi, depth; longest first), padded with depth −1 to K = max_order + 1."""
        out = np.full((len(contexts), len(self.indexes), self.max_order + 1, 3), -1, dtype=np.int64)
        for b, context in enumerate(contexts):
            for i, match in enumerate(context.matches):
                out[b, i, : len(match.rows)] = match.rows
        return out

    def context(self, rows: np.ndarray) -> Context:
        """One context of `rows`' array, (I, K, 3), back into its matches."""
        return Context(tuple(Match(match[match[:, 2] >= 0].copy()) for match in rows))

    def push_rows(self, rows: np.ndarray, symbols: np.ndarray) -> np.ndarray:
        """`rows` (B, I, K, 3) of B contexts, each one symbol longer (symbols (B,)): `push` for a batch."""
        if self._arrays is None:
            return self.rows([self.push(self.context(r), int(s)) for r, s in zip(rows, symbols.tolist(), strict=True)])
        suffixes, tokens, wides = self._arrays
        pushed: np.ndarray = self._search.push_rows(suffixes, tokens, wides, rows, symbols, self.max_order)
        return pushed

    def predict(self, context: Context, estimator: str = ESTIMATOR) -> tuple[np.ndarray, tuple[int, ...]]:
        """(log p_mem as float32 (DEPTHS, V), match_stats) after `context`: row 0 from every
        distinct context, row 1 from all but the longest (`distributions`). Remembered:
        Witten–Bell's in its table (`predict_rows`), the others' by the longest suffix (__init__)."""
        if estimator == "wb" and self._arrays is not None:
            logp, stats = self.predict_rows(self.rows([context]), estimator)
            return logp[0], tuple(stats[0].tolist())
        key = (estimator, *(tuple(m.rows[0].tolist()) for m in context.matches))
        found = self._predicted.get(key)
        if found is not None:
            self._predicted.move_to_end(key)
            return found
        levels = self.levels(context)
        found = np.log(self.distributions(levels, estimator)).astype(np.float32), match_stats(levels)
        self._predicted[key] = found
        while len(self._predicted) > self._predicted_limit:
            self._predicted.popitem(last=False)
        return found

    def predict_rows(self, rows: np.ndarray, estimator: str = ESTIMATOR) -> tuple[np.ndarray, np.ndarray]:
        """`predict` for a batch of contexts given as `rows` (B, I, K, 3): log p_mem (B, DEPTHS, V)
        float32 and match stats (B, STATS) int64. Witten–Bell's is compiled
        (witten_bell.predict_rows), remembered by distinct context in a table of cache_bytes."""
        if estimator != "wb" or self._arrays is None:
            answers = [self.predict(self.context(r), estimator) for r in rows]
            logp = np.stack([a[0] for a in answers]) if answers else np.zeros((0, DEPTHS, self.vocab_size), np.float32)
            return logp, np.array([a[1] for a in answers], dtype=np.int64).reshape(len(rows), STATS)
        if self._remembered is None:
            self._remembered = self._compiled.Remembered(self.cache_bytes, self.vocab_size, len(self.indexes))
        table, (suffixes, tokens, wides) = self._remembered, self._arrays
        answer: tuple[np.ndarray, np.ndarray] = self._compiled.predict_rows(
            suffixes,
            tokens,
            wides,
            rows,
            *(table.hashes, table.stamps, table.keys, table.p, table.stats, table.clock),
        )
        return answer

    def distributions(self, levels: Sequence[Level], estimator: str = ESTIMATOR) -> np.ndarray:
        """(DEPTHS, V): p_mem from every level, and from all but the longest (the same when there
        is only one). The mixer weighs the two: how much the longest context adds is what the
        estimator's one escape rule judges worst."""
        top = self.distribution(levels, estimator)
        return np.stack([top, self.distribution(levels[1:], estimator) if len(levels) > 1 else top])

    def distribution(self, levels: Sequence[Level], estimator: str = ESTIMATOR) -> np.ndarray:
        """p_mem over the vocabulary (float64, sums to 1, every entry > 0)."""
        if estimator == "wb":
            return witten_bell(levels, self.vocab_size)
        if estimator == "ppm":
            return ppm(levels, self.vocab_size)
        if estimator == "interpolated":
            return interpolated(levels, self.vocab_size)
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, not {estimator!r}")


def match_stats(levels: Sequence[Level]) -> tuple[int, ...]:
    """What the mixer reads of a position's match: the longest distinct context's depth, its
    count and its number of distinct followers, then the same of the next shorter one (STATS
    numbers; 0s where the memory holds no such level)."""
    out: list[int] = []
    for level in levels[:2]:
        out += [level.depth, level.total, len(level.symbols)]
    return (*out, *[0] * (STATS - len(out)))


def witten_bell(levels: Sequence[Level], vocab_size: int) -> np.ndarray:
    """Interpolated Witten–Bell over the distinct contexts (the module docstring's formula)."""
    p = np.full(vocab_size, 1.0 / vocab_size)
    for level in reversed(levels):
        p = _witten_bell_step(p, level)
    return p


def _witten_bell_step(lower: np.ndarray, level: Level) -> np.ndarray:
    """p_k from p_{k′} (a new array: the one given may be remembered elsewhere)."""
    from nextchar.recall import witten_bell

    p: np.ndarray = witten_bell.step(lower, level.symbols, level.counts)
    return p


def ppm(levels: Sequence[Level], vocab_size: int) -> np.ndarray:
    """PPM with method D escapes and exclusion (the module docstring's formula)."""
    p = np.zeros(vocab_size)
    seen = np.zeros(vocab_size, dtype=bool)
    mass = 1.0
    for level in levels:
        fresh = ~seen[level.symbols]
        symbols, counts = level.symbols[fresh], level.counts[fresh]
        if len(symbols) == 0:
            continue
        total = 2.0 * counts.sum()
        p[symbols] = mass * (2.0 * counts - 1.0) / total
        mass *= len(symbols) / total
        seen[symbols] = True
    unseen = vocab_size - int(seen.sum())
    if unseen:
        p[~seen] = mass / unseen
    else:  # every symbol seen: the last escape has no one to go to
        p /= p.sum()
    return p


def interpolated(levels: Sequence[Level], vocab_size: int) -> np.ndarray:
    """Interpolated absolute discounting over the distinct contexts, shortest first from uniform."""
    p = np.full(vocab_size, 1.0 / vocab_size)
    for level in reversed(levels):
        total = float(level.counts.sum())
        lower = p * (DISCOUNT * len(level.symbols) / total)
        lower[level.symbols] += np.maximum(level.counts - DISCOUNT, 0.0) / total
        p = lower
    out: np.ndarray = p / p.sum()
    return out
