"""Interpolated Witten–Bell, compiled: one level's step, and a chain of levels read from the indexes.

The formula is estimator.py's (its module docstring): from the next shorter context's p_{k′},

    p_k(c) = (n_k(c) + d_k · p_{k′}(c)) / (N_k + d_k)

`chain` does it for several distinct contexts in one call, shortest first, reading each one's
followers in every index that holds it with nextchar.data.suffix_search and summing them: p_mem
after a keystroke needs the new longer contexts' steps (every interval of a match is a new string
after a push), and in Python each step cost more in numpy's set-up (~10 µs) than in arithmetic,
and a memory of several indexes (an online one, a corpus indexed in shards) a merge per context.
Compiled by numba when first called, kept in __pycache__.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from nextchar.data.suffix_search import followers


@njit(cache=True)
def step(lower: np.ndarray, symbols: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """p_k from p_{k′} = `lower` and level k's followers (a new array: `lower` may be remembered)."""
    distinct = symbols.shape[0]
    total = float(counts.sum() + distinct)
    p: np.ndarray = lower * (distinct / total)
    for j in range(distinct):
        p[symbols[j]] += counts[j] / total
    return p


@njit(cache=True)
def chain(
    suffixes: tuple[np.ndarray, ...],
    tokens: tuple[np.ndarray, ...],
    parts: np.ndarray,
    lower: np.ndarray,
    search_width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(p, stats) for each of n distinct contexts, shortest first: p_k over the vocabulary,
    interpolated from `lower` through the contexts before it, and the context's (depth, count,
    distinct followers) — (0, 0, 0) and p_k = the one below where nothing follows it (every
    occurrence ends its text). A context's occurrences lie in one or more indexes (`suffixes`,
    `tokens`: their arrays, all of one type; numba compiles once for each number of indexes): its
    parts are the rows of `parts`, (index, lo, hi, depth) each, of its depth (consecutive; the
    depths ascending), and its counts the sums over them."""
    vocab_size = lower.shape[0]
    n = 0
    for r in range(parts.shape[0]):
        if r == 0 or parts[r, 3] != parts[r - 1, 3]:
            n += 1
    p = lower
    out = np.empty((n, vocab_size))
    stats = np.zeros((n, 3), np.int64)
    summed = np.zeros(vocab_size, np.int64)
    r = 0
    for k in range(n):
        summed[:] = 0
        depth = parts[r, 3]
        while r < parts.shape[0] and parts[r, 3] == depth:
            i = parts[r, 0]
            symbols, counts = followers(suffixes[i], tokens[i], parts[r, 1], parts[r, 2], depth, search_width)
            for j in range(symbols.shape[0]):
                summed[symbols[j]] += counts[j]
            r += 1
        symbols = np.flatnonzero(summed)
        if symbols.shape[0]:
            counts = summed[symbols]
            p = step(p, symbols, counts)
            stats[k, 0], stats[k, 1], stats[k, 2] = depth, counts.sum(), symbols.shape[0]
        out[k] = p
    return out, stats
