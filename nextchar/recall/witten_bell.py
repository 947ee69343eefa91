"""Interpolated Witten–Bell, compiled: one level's step, and a chain of levels read from an index.

The formula is estimator.py's (its module docstring): from the next shorter context's p_{k′},

    p_k(c) = (n_k(c) + d_k · p_{k′}(c)) / (N_k + d_k)

`chain` does it for several distinct contexts of one index in one call, shortest first, reading
each one's followers with nextchar.data.suffix_search: p_mem after a keystroke needs the new
longer contexts' steps (every interval of the match is a new string after a push), and in Python
each step cost more in numpy's set-up (~10 µs) than in arithmetic. Compiled by numba when first
called, kept in __pycache__.
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
    suffixes: np.ndarray, tokens: np.ndarray, rows: np.ndarray, lower: np.ndarray, search_width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(p, stats): for each interval of `rows` ((n, 3) lo, hi, depth; shortest first), p_k over the
    vocabulary, interpolated from `lower` through the rows before it, and its level's (depth, count,
    distinct followers) — (0, 0, 0) and p_k = the one below where nothing follows it (every
    occurrence ends the text)."""
    p = lower
    out = np.empty((rows.shape[0], lower.shape[0]))
    stats = np.zeros((rows.shape[0], 3), np.int64)
    for i in range(rows.shape[0]):
        symbols, counts = followers(suffixes, tokens, rows[i, 0], rows[i, 1], rows[i, 2], search_width)
        if symbols.shape[0]:
            p = step(p, symbols, counts)
            stats[i, 0], stats[i, 1], stats[i, 2] = rows[i, 2], counts.sum(), symbols.shape[0]
        out[i] = p
    return out, stats
