"""Interpolated Witten–Bell, compiled: one level's step, and p_mem of many contexts at once, remembered.

The formula is estimator.py's (its module docstring): from the next shorter context's p_{k′},

    p_k(c) = (n_k(c) + d_k · p_{k′}(c)) / (N_k + d_k)

`predict_rows` gives p_mem for a batch of contexts (each as its matches' rows, one (K, 3) block
per index: what a search's state holds, nextchar.completion.recall) in one call. For each context
it walks the distinct contexts (its suffixes found in the memory, skipping those as common as the
longer one before) from the longest, until one whose p_k is remembered (`Remembered`), then steps
up from there through the ones that are not, reading each one's followers in every index that
holds it (nextchar.data.suffix_search) and summing them, and remembers them. p_k is decided by
context k's own string (its intervals), so contexts that share a suffix share the interpolation
below it, and a new one costs the followers of a context or two, not of all of them.

Why compiled, and the table in arrays: in Python, a keystroke's p_mem cost more in numpy's set-up
(~10 µs a step) and in the dict of remembered levels than in arithmetic, and a search asks for
several contexts at every step. The table is set-associative, as a CPU's caches are: a context's
hash picks a set of WAYS slots, the least recently used of them is replaced, and a slot holds the
context's parts too, so a hit is exact. Its size is fixed when made (the bytes it may use), and it
never allocates after.

Compiled by numba when first called, kept in __pycache__; the GIL released (`nogil`). A table is
written without a lock: a memory is used by one thread at a time (its completer's lock).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from nextchar.data.suffix_search import FNV_OFFSET, FNV_PRIME, Wide, followers

WAYS = 4  # slots per set of the Remembered table
TABLE_OVERHEAD = 1024  # bytes of a Remembered table beyond its slots: its clock, six array objects


class Remembered:
    """p_mem's answers (p_k and p_{k′}, both levels' stats) by distinct context, in a fixed
    set-associative table (the module docstring): numpy arrays the compiled code reads and writes."""

    def __init__(self, max_bytes: int, vocab_size: int, indexes: int):
        slot = self.slot_bytes(vocab_size, indexes)
        slots = max(0, max_bytes - TABLE_OVERHEAD) // (slot * WAYS) * WAYS
        # np.zeros: the pages are the system's until a slot is first written
        self.hashes = np.zeros(slots, np.uint64)
        self.stamps = np.zeros(slots, np.int64)  # when each slot was last used (0: never)
        self.keys = np.zeros((slots, 1 + 4 * indexes), np.int64)  # parts, then (index, lo, hi, depth) each
        self.p = np.zeros((slots, 2, vocab_size))
        self.stats = np.zeros((slots, 6), np.int64)
        self.clock = np.zeros(1, np.int64)

    @staticmethod
    def slot_bytes(vocab_size: int, indexes: int) -> int:
        return 8 * (1 + 1 + 1 + 4 * indexes + 2 * vocab_size + 6)

    @property
    def slots(self) -> int:
        return len(self.hashes)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.hashes, self.stamps, self.keys, self.p, self.stats, self.clock))

    def filled(self) -> int:
        """Slots holding an answer."""
        return int(np.count_nonzero(self.stamps))


@njit(cache=True, nogil=True)
def step(lower: np.ndarray, symbols: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """p_k from p_{k′} = `lower` and level k's followers (a new array: `lower` may be remembered)."""
    distinct = symbols.shape[0]
    total = float(counts.sum() + distinct)
    p: np.ndarray = lower * (distinct / total)
    for j in range(distinct):
        p[symbols[j]] += counts[j] / total
    return p


@njit(cache=True, nogil=True)
def distinct_contexts(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(parts, starts): one context's distinct contexts, longest first, from its rows (I, K, 3)
    (each index's intervals, longest first, padded with depth −1). Context g is parts[starts[g] :
    starts[g + 1]], (index, lo, hi, depth) of every index that holds it; one as common (summed
    over the indexes) as the longer one before it is left out (estimator.Memory.levels)."""
    n_indexes, k = rows.shape[0], rows.shape[1]
    found = np.empty((n_indexes * k, 4), np.int64)
    n = 0
    for i in range(n_indexes):
        for r in range(k):
            if rows[i, r, 2] < 0:
                break
            found[n, 0], found[n, 1], found[n, 2], found[n, 3] = i, rows[i, r, 0], rows[i, r, 1], rows[i, r, 2]
            n += 1
    if n_indexes > 1:  # by depth, longest first; within one, the indexes in order (a stable sort)
        found = found[np.argsort(-found[:n, 3], kind="mergesort")]
    parts = np.empty((n, 4), np.int64)
    starts = np.empty(n + 1, np.int64)
    kept, groups, previous, r = 0, 0, -1, 0
    while r < n:
        end, count = r, 0
        while end < n and found[end, 3] == found[r, 3]:
            count += found[end, 2] - found[end, 1]
            end += 1
        if count != previous:
            previous = count
            starts[groups] = kept
            groups += 1
            for j in range(r, end):
                parts[kept] = found[j]
                kept += 1
        r = end
    starts[groups] = kept
    return parts[:kept], starts[: groups + 1]


@njit(cache=True, nogil=True)
def _hash(parts: np.ndarray, lo: int, hi: int) -> np.uint64:
    h = FNV_OFFSET
    for r in range(lo, hi):
        for j in range(4):
            h = (h ^ np.uint64(parts[r, j])) * FNV_PRIME
    return h


@njit(cache=True, nogil=True)
def _holds(keys: np.ndarray, slot: int, parts: np.ndarray, lo: int, hi: int) -> bool:
    if keys[slot, 0] != hi - lo:
        return False
    for r in range(lo, hi):
        for j in range(4):
            if keys[slot, 1 + 4 * (r - lo) + j] != parts[r, j]:
                return False
    return True


@njit(cache=True, nogil=True)
def _find(hashes, stamps, keys, clock, parts, lo, hi, h):  # type: ignore[no-untyped-def]
    """The slot remembering context parts[lo:hi] (hash h), or −1; a hit is marked used."""
    if hashes.shape[0] == 0:
        return -1
    first = int(h % np.uint64(hashes.shape[0] // WAYS)) * WAYS
    for slot in range(first, first + WAYS):
        if stamps[slot] and hashes[slot] == h and _holds(keys, slot, parts, lo, hi):
            clock[0] += 1
            stamps[slot] = clock[0]
            return slot
    return -1


@njit(cache=True, nogil=True)
def _slot_for(hashes, stamps, keys, clock, parts, lo, hi, h):  # type: ignore[no-untyped-def]
    """The slot to remember context parts[lo:hi] in (the least recently used of its set), its key
    written; −1 when the table has none."""
    if hashes.shape[0] == 0:
        return -1
    first = int(h % np.uint64(hashes.shape[0] // WAYS)) * WAYS
    slot = first
    for s in range(first, first + WAYS):
        if stamps[s] < stamps[slot]:
            slot = s
    clock[0] += 1
    hashes[slot], stamps[slot], keys[slot, 0] = h, clock[0], hi - lo
    for r in range(lo, hi):
        for j in range(4):
            keys[slot, 1 + 4 * (r - lo) + j] = parts[r, j]
    return slot


@njit(cache=True, nogil=True)
def _summed_followers(suffixes, tokens, wides, parts, lo, hi, summed):  # type: ignore[no-untyped-def]
    """(symbols, counts) after one context: its followers in every index that holds it, summed."""
    summed[:] = 0
    for r in range(lo, hi):
        i = parts[r, 0]
        symbols, counts = followers(suffixes[i], tokens[i], wides[i], parts[r, 1], parts[r, 2], parts[r, 3])
        for j in range(symbols.shape[0]):
            summed[symbols[j]] += counts[j]
    symbols = np.flatnonzero(summed)
    return symbols, summed[symbols]


@njit(cache=True, nogil=True)
def predict_rows(
    suffixes: tuple[np.ndarray, ...],
    tokens: tuple[np.ndarray, ...],
    wides: tuple[Wide, ...],
    rows: np.ndarray,
    hashes: np.ndarray,
    stamps: np.ndarray,
    keys: np.ndarray,
    remembered_p: np.ndarray,
    remembered_stats: np.ndarray,
    clock: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(log p (B, 2, V) float32, stats (B, 6)) after each of B contexts, `rows` (B, I, K, 3): row
    0 p_mem from every distinct context, row 1 from all but the longest (the same when there is
    one); stats the top level's (depth, count, distinct followers), then the one's below it (0s
    where there is none). The indexes' arrays are `suffixes`, `tokens` and `wides` (their lists of
    wide contexts), all of one type (numba compiles once for each number of indexes); the rest is
    a Remembered table's arrays."""
    n_rows, vocab_size = rows.shape[0], remembered_p.shape[2]
    logp = np.empty((n_rows, 2, vocab_size), np.float32)
    out_stats = np.empty((n_rows, 6), np.int64)
    summed = np.zeros(vocab_size, np.int64)
    uniform = np.full(vocab_size, 1.0 / vocab_size)
    for b in range(n_rows):
        parts, starts = distinct_contexts(rows[b])
        n = starts.shape[0] - 1
        hashes_of = np.empty(n, np.uint64)
        found, g = -1, 0
        while g < n:  # longest first, to the first remembered
            hashes_of[g] = _hash(parts, starts[g], starts[g + 1])
            found = _find(hashes, stamps, keys, clock, parts, starts[g], starts[g + 1], hashes_of[g])
            if found >= 0:
                break
            g += 1
        if found >= 0:  # copies: its slot may be taken below
            top, below, stats = (
                remembered_p[found, 0].copy(),
                remembered_p[found, 1].copy(),
                remembered_stats[found].copy(),
            )
        else:
            top, below, stats = uniform, uniform, np.zeros(6, np.int64)
        for j in range(g - 1, -1, -1):  # the rest, shortest first
            symbols, counts = _summed_followers(suffixes, tokens, wides, parts, starts[j], starts[j + 1], summed)
            if symbols.shape[0]:  # none: every occurrence ends its text, and it keeps the level below
                p = step(top, symbols, counts)
                if stats[2]:  # the old top is a level: it becomes the one below
                    below, stats[3], stats[4], stats[5] = top, stats[0], stats[1], stats[2]
                else:  # it was the uniform start: there is none below
                    below = p
                top, stats[0], stats[1], stats[2] = p, parts[starts[j], 3], counts.sum(), symbols.shape[0]
            slot = _slot_for(hashes, stamps, keys, clock, parts, starts[j], starts[j + 1], hashes_of[j])
            if slot >= 0:
                remembered_p[slot, 0], remembered_p[slot, 1], remembered_stats[slot] = top, below, stats
        logp[b, 0], logp[b, 1], out_stats[b] = np.log(top), np.log(below), stats
    return logp, out_stats
