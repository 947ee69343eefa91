"""The lecture you can watch, view 4: backpropagation through time on the text being typed.

For the lecture's RNN (rnn.py) on x_1 … x_n = ^, c_1, …, c_{n-1} with labels y_t = c_t, and
W^ss rescaled by a factor α (to watch gradients vanish, α < 1, or explode, α > 1):

    s_t = f1(W^sx x_t + α W^ss s_{t-1} + W0^ss),   p_t = softmax(W^o s_t + W0^o),   L_seq = Σ_t −log p_t[y_t]

`rnn.backward` gives dL_seq/ds_t (its step 3) for t = n … 0; shown are their norms, and
dJ/dW^ss built up as BPTT builds it, one step at a time from t = n down to 1:

    dJ/dW^ss = Σ_{t=1..n} (dJ/dz_t^1) s_{t-1}ᵀ        partial sums G_k = Σ_{t=k..n} (dJ/dz_t^1) s_{t-1}ᵀ

so G_1 must equal `backward`'s dJ/dW^ss (checked), and each step's term has norm
‖dJ/dz_t^1‖·‖s_{t-1}‖ (an outer product). The gradient is checked twice: against PyTorch
autograd by the caller (convert.autograd_check, which imports torch), and here against a
central finite difference along one random direction D of all five arrays:

    (J(W + εD) − J(W − εD)) / 2ε  ≈  Σ_arrays ⟨dJ/dW, D⟩          (2 forward passes, error O(ε²))

`LectureModels` holds the lecture's own RNN for the page: the worked example (sgd.py) trained
on the lecture's three lines, once per f1, when first asked for.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from nextchar.lecture.errors import LectureInputError
from nextchar.lecture.rnn import F1_CHOICES, Backward, Batch, FloatArray, Forward, Params, backward, forward, make_batch
from nextchar.lecture.sgd import THREE_LINES, SGDConfig, worked_example
from nextchar.lecture.views import encode_text
from nextchar.text import START, Vocabulary

MAX_BPTT_UNITS = 256  # the largest state m of a lecture RNN the page runs BPTT on (its m×m matrix is sent)
SCALE_RANGE = (0.05, 8.0)  # α, the factor on W^ss


@dataclass
class LectureRNN:
    """A lecture RNN the BPTT view runs: its weights, the f1 it was trained with, its alphabet."""

    params: Params  # float64
    f1: str
    vocab: Vocabulary
    description: str  # where the weights come from, for the page


class LectureModels:
    """The worked example of sgd.py (the lecture's three lines), trained once per f1 when asked for."""

    def __init__(self, hidden: int = 64, config: SGDConfig | None = None) -> None:
        self.hidden = hidden
        self.config = config or SGDConfig(steps=2000, check_every=10)  # m = 64 solves in 180 (tanh), 520 (relu)
        self._models: dict[str, LectureRNN] = {}
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"the lecture's RNN (m = {self.hidden}) trained by SGD on the lecture's three lines"

    def get(self, f1: str) -> LectureRNN:
        check_f1(f1)
        with self._lock:  # two first requests train it once
            if f1 not in self._models:
                result = worked_example(THREE_LINES, self.hidden, self.config, f1)
                updates = f"{result.steps} updates" + (", every line reproduced" if result.solved else "")
                self._models[f1] = LectureRNN(result.params, f1, result.vocab, f"{self.description} ({updates})")
            return self._models[f1]


def check_f1(f1: str) -> str:
    if f1 not in F1_CHOICES:
        raise LectureInputError(f"f1 must be one of {', '.join(F1_CHOICES)}, not {f1!r}")
    return f1


def problem(model: LectureRNN, text: str, scale: float = 1.0) -> tuple[Params, Batch, str]:
    """(the weights with W^ss ← α W^ss, the one-sequence batch of the text, the text as read).

    x = ^, c_1 … c_{n-1};  y = c_1 … c_n (characters outside the alphabet read as <unk>).
    """
    lo, hi = SCALE_RANGE
    if not (math.isfinite(scale) and lo <= scale <= hi):
        raise LectureInputError(f"the scale α of W^ss must be {lo:g} … {hi:g}, not {scale}")
    if model.params.m > MAX_BPTT_UNITS:
        raise LectureInputError(f"the RNN has m = {model.params.m} units; BPTT is shown up to m = {MAX_BPTT_UNITS}")
    prepared, indices, _ = encode_text(model.vocab, text)
    params = model.params.copy()
    params.W_ss *= scale
    if not prepared:
        dropped = f" ({text!r} has none of its alphabet, {''.join(model.vocab.chars)!r})" if text else ""
        raise LectureInputError(f"no characters to backpropagate through{dropped}: type at least one")
    batch = make_batch([[START, *indices[:-1]]], [indices], params.ell, params.v)
    return params, batch, prepared


def directional_check(params: Params, batch: Batch, f1: str, grads: Params, eps: float = 1e-6, seed: int = 0) -> float:
    """|(J(W + εD) − J(W − εD))/2ε − Σ⟨dJ/dW, D⟩| / (|…| + |…|) for a random unit direction D."""
    rng = np.random.default_rng(seed)
    D = Params(**{name: rng.standard_normal(a.shape) for name, a in params.items()})
    norm = math.sqrt(sum(float((d * d).sum()) for _, d in D.items()))
    for _, d in D.items():
        d /= norm
    shifted = [Params(**{name: a + sign * eps * getattr(D, name) for name, a in params.items()}) for sign in (1, -1)]
    plus, minus = (forward(p, batch, f1).J for p in shifted)
    numeric = (plus - minus) / (2 * eps)
    analytic = sum(float((getattr(grads, name) * d).sum()) for name, d in D.items())
    return abs(numeric - analytic) / max(abs(numeric) + abs(analytic), 1e-300)


def _finite(x: float) -> float | None:
    """JSON has no infinities or NaN: an overflowed number is sent as null."""
    return float(x) if math.isfinite(x) else None


def _finite_list(a: FloatArray) -> list[Any]:
    return [_finite(float(v)) if np.ndim(v) == 0 else _finite_list(v) for v in a]


def accumulate(fwd: Forward, bwd: Backward, upto: int) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """BPTT's dJ/dW^ss term by term, t = n down to 1: (‖term_t‖ and ‖G_t‖ for t = 1..n, G_upto, G_1)."""
    dz, s_prev = bwd.dJ_dz1[0], fwd.S[0, :-1]  # dJ/dz_t^1 and s_{t-1}, row t-1
    n, m = dz.shape
    term_norms = np.linalg.norm(dz, axis=1) * np.linalg.norm(s_prev, axis=1)  # ‖u vᵀ‖ = ‖u‖ ‖v‖
    G = np.zeros((m, m))
    partial = np.zeros(n)
    at_upto = G.copy()
    for t in range(n, 0, -1):
        G += np.outer(dz[t - 1], s_prev[t - 1])
        partial[t - 1] = np.linalg.norm(G)
        if t == upto:
            at_upto = G.copy()
    return term_norms, partial, at_upto, G


def bptt_view(model: LectureRNN, text: str, f1: str, scale: float = 1.0, upto: int | None = None) -> dict[str, Any]:
    """View 4: ‖dL_seq/ds_t‖ (t = 0..n), dJ/dW^ss accumulated from t = n down to `upto` (default 1),
    the check that the accumulation equals `backward`'s, and the directional finite-difference check."""
    check_f1(f1)
    params, batch, prepared = problem(model, text, scale)
    n = len(prepared)
    upto = 1 if upto is None else upto
    if not 1 <= upto <= n:
        raise LectureInputError(f"upto must be a step 1 … n = {n}, not {upto}")
    with np.errstate(all="ignore"):  # a large α overflows: the view shows it, as nulls
        fwd = forward(params, batch, f1)
        bwd = backward(params, batch, fwd)
        term_norms, partial_norms, G_upto, G_1 = accumulate(fwd, bwd, upto)
        finite = bool(np.isfinite(fwd.J) and all(np.isfinite(g).all() for _, g in bwd.grads.items()))
        accumulated_error = float(np.linalg.norm(G_1 - bwd.grads.W_ss)) / max(
            float(np.linalg.norm(bwd.grads.W_ss)), 1e-300
        )
        fd_error = directional_check(params, batch, f1, bwd.grads) if finite else math.nan
        spectral = float(np.linalg.norm(params.W_ss, 2))
    return {
        "text": prepared,
        "n": n,
        "f1": f1,
        "trained_f1": model.f1,
        "scale": scale,
        "m": params.m,
        "source": model.description,
        "inputs": ["^", *prepared[:-1]],
        "targets": list(prepared),
        "L_seq": _finite(fwd.J),
        "dL_ds_norms": _finite_list(np.linalg.norm(bwd.dJ_ds[0], axis=1)),  # t = 0..n
        "term_norms": _finite_list(term_norms),  # t = 1..n
        "accumulated_norms": _finite_list(partial_norms),  # ‖G_t‖, t = 1..n
        "upto": upto,
        "dJ_dW_ss": _finite_list(G_upto),
        "accumulated_error": _finite(accumulated_error),
        "fd_error": _finite(fd_error),
        "W_ss_norm": _finite(spectral),
        "finite": finite,
    }
