"""The mixer's gate and mixture, compiled: `features` (its inputs) and `mixed` (log q).

mixer.py's docstring has the formulas and why: the gate g(f) = W2 tanh(W1 f + b1) + b2, its
weights clipped to [0, WEIGHT_MAX], and log q(c) = a · log p_rnn(c) + Σ_m β_m · log p_mem^(m)(c)
− log Z, or log p_rnn itself where the memory holds nothing. A search asks for a few rows at a
time, at every step; in NumPy, each of the forty-odd array operations cost more in its set-up
than in arithmetic (a third of a mixed search's time). Compiled by numba when first called, kept
in __pycache__, the GIL released; numba is imported with the first memory (mixer.py imports this
module then).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _summary(logp: np.ndarray) -> tuple[float, float, int]:
    """(entropy in nats, top probability, its symbol, the first of equals) of one distribution."""
    entropy, top, first = 0.0, -1.0, 0
    for v in range(logp.shape[0]):
        p = np.exp(logp[v])
        if p > 0:
            entropy -= p * logp[v]
        if p > top:
            top, first = p, v
    return entropy, top, first


@njit(cache=True, nogil=True)
def features(stats: np.ndarray, rnn_logp: np.ndarray, memory_logp: np.ndarray) -> np.ndarray:
    """The gate's inputs (N, F) float32 (mixer.features says what they are)."""
    n_rows, vocab_size = rnn_logp.shape
    levels, inputs = stats.shape[1] // 3, memory_logp.shape[1]
    out = np.empty((n_rows, 4 * levels + 2 + 3 * inputs), np.float32)
    log_v = np.log(vocab_size)
    for n in range(n_rows):
        c = 0
        for j in range(levels):
            depth, count, distinct = stats[n, 3 * j], stats[n, 3 * j + 1], stats[n, 3 * j + 2]
            out[n, c] = 1.0 if distinct == 1 else 0.0
            out[n, c + 1] = np.log2(1 + count) / 8
            out[n, c + 2] = np.log2(1 + depth) / 6
            out[n, c + 3] = np.log2(1 + distinct) / 6
            c += 4
        entropy, top, first = _summary(rnn_logp[n])
        out[n, c], out[n, c + 1] = entropy / log_v, top
        c += 2
        for m in range(inputs):
            entropy, top, choice = _summary(memory_logp[n, m])
            out[n, c], out[n, c + 1], out[n, c + 2] = entropy / log_v, top, 1.0 if choice == first else 0.0
            c += 3
    return out


@njit(cache=True, inline="always")
def _affine(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x @ w + b for one row x (numba's @ would need SciPy's BLAS; these are a few hundred products)."""
    out = b.copy()
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            out[j] += x[i] * w[i, j]
    return out


@njit(cache=True, nogil=True)
def mixed(
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    weight_max: float,
    stats: np.ndarray,
    rnn_logp: np.ndarray,
    memory_logp: np.ndarray,
) -> np.ndarray:
    """log q (N, V) float32: the gate (W1ᵀ `w1` (F, H), `b1`, W2ᵀ `w2` (H, 1 + M), `b2`) on each
    row's features, its weights clipped to [0, weight_max], mixing log p_rnn (N, V) and log p_mem
    (N, M, V); log p_rnn itself where the memory holds nothing (stats[:, 1], the count, is 0)."""
    f = features(stats, rnn_logp, memory_logp)
    n_rows, vocab_size = rnn_logp.shape
    out = np.empty((n_rows, vocab_size), np.float32)
    z = np.empty(vocab_size, np.float32)
    for n in range(n_rows):
        if stats[n, 1] <= 0:
            out[n] = rnn_logp[n]
            continue
        weights = _affine(np.tanh(_affine(f[n], w1, b1)), w2, b2)  # the gate: a few hundred products
        for m in range(weights.shape[0]):
            weights[m] = min(max(weights[m], 0.0), weight_max)
        z[:] = weights[0] * rnn_logp[n]
        for m in range(memory_logp.shape[1]):
            z += weights[m + 1] * memory_logp[n, m]
        z -= z.max()
        out[n] = z - np.log(np.exp(z).sum())
    return out
