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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from nextchar.data.memory import MAX_ORDER, Interval, Match, MemoryIndex

ESTIMATORS = ("wb", "ppm", "interpolated")
ESTIMATOR = "wb"
DISCOUNT = 0.75  # the interpolated estimator's absolute discount
PREDICTED_BYTES = 32 << 20  # Memory.predict keeps this many bytes of answers and of p_k
# What one remembered entry costs beyond its array's data (the array object, its key and stats
# tuples, the ints in them, the dict slot; sys.getsizeof, tests/service/test_cache_bytes.py)
PREDICTED_OVERHEAD = 700
KEY_BYTES_PER_INDEX = 160  # … and for each index of the memory, what its part of the keys adds (4 ints)
DEPTHS = 2  # distributions predict gives per context (Memory.distributions)
STATS = 6  # numbers match_stats gives per context

Chained = tuple[np.ndarray, tuple[int, ...]]  # p_k and the stats of level k (depth, count, distinct)


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
    """The indexes a context is matched in, and p_mem from their summed counts."""

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
        # every shorter suffix's interval, so it decides p_mem (bounded in bytes, least recent out)
        self._predicted: OrderedDict[tuple[object, ...], tuple[np.ndarray, tuple[int, ...]]] = OrderedDict()
        # p_k and the stats of its top level, and the same of the level below, by context k's
        # intervals (Memory._witten_bell_chain)
        self._chain: OrderedDict[tuple[int, ...], tuple[Chained, Chained | None]] = OrderedDict()
        self.cache_bytes = PREDICTED_BYTES if cache_bytes is None else cache_bytes
        from nextchar.recall import witten_bell  # compiled (numba): imported with the first memory

        self._compiled = witten_bell
        # every index's arrays, for witten_bell.chain: None when their types differ (it indexes
        # them by number, so they must be of one type), and p_mem is then `levels`' in numpy
        self._arrays = self._same_typed_arrays()
        # the chain's start, below every level: uniform (stats (0, 0, 0)), never changed
        self._uniform: tuple[Chained, Chained | None] = ((np.full(vocab_size, 1.0 / vocab_size), (0, 0, 0)), None)

    @property
    def cache_bytes(self) -> int:
        """What `predict` may keep, in bytes; settable (the oldest answers go at the next one)."""
        return self._cache_bytes

    @cache_bytes.setter
    def cache_bytes(self, cache_bytes: int) -> None:
        # entries of each: an answer is DEPTHS × V float32, a chain entry two p_k of V float64
        # (the second shared with the entry below, counted anyway), each with its key, its stats
        # and their objects (PREDICTED_OVERHEAD, keys longer by a part per index); both together
        # stay in cache_bytes
        self._cache_bytes = cache_bytes
        overhead = PREDICTED_OVERHEAD + KEY_BYTES_PER_INDEX * len(self.indexes)
        entry = (4 * DEPTHS + 16) * max(self.vocab_size, 1) + 2 * overhead
        self._predicted_limit = max(0, cache_bytes // entry)
        for cache in (self._predicted, self._chain):
            while len(cache) > self._predicted_limit:
                cache.popitem(last=False)

    def _same_typed_arrays(self) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]] | None:
        if not self.indexes or len({(ix.tokens.dtype, ix.suffixes.dtype) for ix in self.indexes}) > 1:
            return None
        return tuple(ix.suffixes for ix in self.indexes), tuple(ix.tokens for ix in self.indexes)

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
        for key in _distinct_contexts(context):  # (index, lo, hi, depth) of each index holding it
            parts = [(key[j], Interval(key[j + 1], key[j + 2], key[j + 3])) for j in range(0, len(key), 4)]
            symbols, counts = self._followers(parts, own)
            if len(symbols):
                levels.append(Level(key[3], symbols, counts))
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

    def predict(self, context: Context, estimator: str = ESTIMATOR) -> tuple[np.ndarray, tuple[int, ...]]:
        """(log p_mem as float32 (DEPTHS, V), match_stats) after `context`, remembered (see
        __init__): row 0 from every distinct context, row 1 from all but the longest
        (`distributions`)."""
        key = (estimator, *(tuple(m.rows[0].tolist()) for m in context.matches))
        found = self._predicted.get(key)
        if found is not None:
            self._predicted.move_to_end(key)
            return found
        if estimator == "wb" and self._arrays is not None:
            top, below = self._witten_bell_chain(context)
            p = np.stack([top[0], below[0] if below is not None else top[0]])
            stats = (*top[1], *(below[1] if below is not None else (0, 0, 0)))
        else:
            levels = self.levels(context)
            p, stats = self.distributions(levels, estimator), match_stats(levels)
        found = np.log(p).astype(np.float32), stats
        self._predicted[key] = found
        while len(self._predicted) > self._predicted_limit:
            self._predicted.popitem(last=False)
        return found

    def _witten_bell_chain(self, context: Context) -> tuple[Chained, Chained | None]:
        """witten_bell over the distinct contexts, from the longest shorter context whose p_k is
        remembered: (p_K, the top level's stats) and the same for the level below it (None when
        there is none). p_k is decided by context k's own string (its intervals), so contexts
        that share a suffix share the interpolation below it, and a new one costs the followers
        of a context or two, not of all of them."""
        todo: list[tuple[int, ...]] = []  # the distinct contexts not remembered, longest first
        entry = self._uniform
        for key in _distinct_contexts(context):
            found = self._chain.get(key)
            if found is not None:
                entry = found
                break
            todo.append(key)
        if not todo:
            return entry
        todo.reverse()  # shortest first
        rows = np.array([part for key in todo for part in key], dtype=np.int64).reshape(-1, 4)
        assert self._arrays is not None  # predict's test
        suffixes, tokens = self._arrays
        ps, stats = self._compiled.chain(suffixes, tokens, rows, entry[0][0], self.indexes[0].search_width)
        for key, p, level in zip(todo, ps, stats.tolist(), strict=True):
            if level[2]:  # (0, 0, 0): nothing follows this context; it keeps the entry below
                below = None if entry[0][1] == (0, 0, 0) else entry[0]  # (0, 0, 0): the uniform start
                entry = ((p.copy(), tuple(level)), below)  # a copy: each entry its own bytes, as counted
            self._chain[key] = entry
            while len(self._chain) > self._predicted_limit:
                self._chain.popitem(last=False)
        return entry

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


def _distinct_contexts(context: Context) -> Iterator[tuple[int, ...]]:
    """The distinct contexts of `context`, longest first (`Memory.levels`): each as the
    (index, lo, hi, depth) of every index that holds it, flat (a key of Memory._chain too). A
    context as common as the longer one before it is skipped."""
    if len(context.matches) == 1:  # the common case, cheaper: the rows are in order already
        previous = -1
        for lo, hi, depth in context.matches[0].rows.tolist():
            if hi - lo != previous:
                previous = hi - lo
                yield (0, lo, hi, depth)
        return
    by_depth: dict[int, list[int]] = {}
    for i, match in enumerate(context.matches):
        for lo, hi, depth in match.rows.tolist():
            by_depth.setdefault(depth, []).extend((i, lo, hi, depth))
    previous = -1
    for depth in sorted(by_depth, reverse=True):
        parts = by_depth[depth]
        count = sum(parts[2::4]) - sum(parts[1::4])
        if count != previous:
            previous = count
            yield tuple(parts)


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
