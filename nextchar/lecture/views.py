"""The lecture you can watch, views 1–3: what the page at /lecture draws, computed here (NumPy).

1. The state machine (sections 2–3). The "last m characters" machine on "^" + text,

       s_0 = ^…^ (m of them),   s_t = f(s_{t-1}, x_t) = (s_{t-1} + x_t)[-m:],   output g(s_t) = s_t

   its table (t, x_t, s_t, output) from `StateMachine.transduce`, and the same machine as the
   fixed-weight RNN s_t = W^sx x_t + W^ss s_{t-1}: W^sx = [I; 0; …; 0], W^ss with I_ℓ on the
   block sub-diagonal, s_t as m one-hot blocks of ℓ (`statemachine.window_rnn`), whose states
   are checked against the table's at every step.

2. The RNN's state (section 4). For a model that read x_1 … x_{n+1} = ^, c_1, …, c_n, the
   states s_1 … s_{n+1} as a heatmap (units × characters), and the Pearson correlation of
   each unit with simple features of the text (inside quotes, position in the line, inside a
   word, position in the word), over the characters c_i with the state after reading c_i:

       r(u, f) = Σ_i (s_i[u] − mean s[u]) (f_i − mean f) / (n σ_s[u] σ_f)

3. p_t (section 5). At every position the next-character distribution p_t, the probability
   of the true next character p_t[y_t] (y_t = c_t), and the loss in bits as the text grows:

       ℓ_t = −log2 p_t[y_t],   L_seq = Σ_{t=1..n} ℓ_t  (bits; × ln 2 for the lecture's nats),
       BPC = L_seq / n

`Trace` is one model run, from any model: `numpy_trace` runs the lecture's engine here; the
service runs nextchar's PyTorch models into the same Trace (nextchar.service.lecture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nextchar.lecture.errors import LectureInputError
from nextchar.lecture.rnn import FloatArray, Params
from nextchar.lecture.sgd import run_states
from nextchar.lecture.statemachine import window_machine, window_rnn
from nextchar.text import START, Vocabulary

MAX_TEXT = 200  # characters a view reads at most (the page's text box holds as many)
MAX_CONTEXT = 6  # m of the window machine at most: W^ss is (m·ℓ)², ℓ up to MAX_TEXT + 1
MAX_FULL_WEIGHTS = 96  # W^sx, W^ss are sent entry by entry up to this state size (else as blocks only)
MAX_UNITS = 1024  # units of s_t shown at most (the bundled model has 512)
DIGITS = 5  # decimals of the states sent to the page (a heatmap needs no more)


@dataclass
class Trace:
    """One model run over x_1 … x_{n+1} = ^, c_1, …, c_n (the text as the model reads it)."""

    text: str  # c_1 … c_n, prepared as the model's vocabulary reads text
    inputs: list[str]  # the display of x_1 … x_{n+1}: "^", then the characters
    targets: list[int]  # y_1 … y_n: the vocabulary index of c_t, the character after x_t (UNK if unknown)
    S: FloatArray  # (n+1) × m: S[t-1] = s_t, the state after reading x_t
    P: FloatArray  # (n+1) × v: P[t-1] = p_t, the distribution of the character after x_t
    symbols: list[str]  # the display of every vocabulary index
    unknown: list[bool]  # c_t is not in the vocabulary (read as <unk>)

    @property
    def n(self) -> int:
        return len(self.text)


def check_text(text: str) -> str:
    """Refuse text longer than MAX_TEXT characters (every view is bounded by it)."""
    if len(text) > MAX_TEXT:
        raise LectureInputError(f"the text has {len(text)} characters; the lecture's views read at most {MAX_TEXT}")
    return text


def encode_text(vocab: Vocabulary, text: str) -> tuple[str, list[int], list[bool]]:
    """(prepared text, its indices with UNK for characters outside the vocabulary, which are unknown)."""
    prepared = vocab.prepare(check_text(text))
    known = set(vocab.chars)
    indices = vocab.encode(prepared)
    return prepared, indices, [ch not in known for ch in prepared]


def symbol_names(vocab: Vocabulary) -> list[str]:
    return [vocab.symbol(i) for i in range(len(vocab))]


def numpy_trace(params: Params, f1: str, vocab: Vocabulary, text: str, s0: FloatArray | None = None) -> Trace:
    """The lecture engine's run over "^" + text: s_t = f1(W^sx x_t + W^ss s_{t-1} + W0^ss),
    p_t = softmax(W^o s_t + W0^o) (`sgd.run_states`, the engine's own transition and output)."""
    prepared, indices, unknown = encode_text(vocab, text)
    states, probs = run_states(params, f1, [START, *indices], s0)
    return Trace(prepared, ["^", *prepared], indices, states[1:], probs, symbol_names(vocab), unknown)


# ------------------------------------------------------------------------------ 1. the state machine


def _block_names(W: FloatArray, ell: int) -> list[list[str]]:
    """Each ℓ×ℓ block of W named "I" (the identity), "0" (zeros), or by its largest entry."""
    rows, cols = W.shape[0] // ell, W.shape[1] // ell
    eye = np.eye(ell)
    names = []
    for r in range(rows):
        row = []
        for c in range(cols):
            block = W[r * ell : (r + 1) * ell, c * ell : (c + 1) * ell]
            row.append("I" if np.array_equal(block, eye) else "0" if not block.any() else f"{block.max():g}")
        names.append(row)
    return names


def machine_view(text: str, context: int = 3, start: str = "^") -> dict[str, Any]:
    """View 1: the window machine's table on start + text, and the same machine as the fixed RNN.

    rows: (t, x_t, s_t, output) from `window_machine(context).transduce`; `hot[t][k]`: which of
    the ℓ characters is lit in block k of the RNN's s_t (newest first), from `WindowRNN.states`,
    the engine's transition; `states_equal_table`: every s_t decodes to the table's.
    """
    check_text(text)
    if not 1 <= context <= MAX_CONTEXT:
        raise LectureInputError(f"m (characters of context) must be 1 … {MAX_CONTEXT}, not {context}")
    inputs = start + text
    table = window_machine(context, start).transduce(inputs)
    alphabet = sorted(set(inputs))
    rnn = window_rnn(alphabet, context, start)
    states = rnn.states(inputs)  # (n+2) × m, s_0 … s_{n+1}
    blocks = states.reshape(len(states), context, rnn.ell)
    one_hot = bool(np.all(blocks.sum(axis=2) == 1) and np.all((blocks == 0) | (blocks == 1)))
    same = all(np.array_equal(s, rnn.encode_state(row.s)) for s, row in zip(states, table, strict=True))
    small = rnn.m <= MAX_FULL_WEIGHTS
    return {
        "text": text,
        "context": context,
        "start": start,
        "alphabet": alphabet,
        "ell": rnn.ell,
        "m": rnn.m,
        "rows": [{"t": r.t, "x": r.x, "s": r.s, "output": r.output} for r in table],
        "W_sx_blocks": _block_names(rnn.W_sx, rnn.ell),
        "W_ss_blocks": _block_names(rnn.W_ss, rnn.ell),
        "W_sx": rnn.W_sx.astype(int).tolist() if small else None,
        "W_ss": rnn.W_ss.astype(int).tolist() if small else None,
        "hot": blocks.argmax(axis=2).tolist(),
        "one_hot": one_hot,
        "states_equal_table": same,
    }


# ------------------------------------------------------------------------------ 2. the RNN's state


def text_features(text: str) -> dict[str, FloatArray]:
    """Features of each character c_i, read after it: the things units are known to track.

    inside quotes: an odd number of " up to and including c_i;  line position: characters since
    the last newline;  inside a word: c_i is a letter, a digit or an apostrophe;  word position:
    characters since the word began (0 outside words).
    """
    quote = column = word = 0
    rows: list[tuple[float, float, float, float]] = []
    for ch in text:
        quote ^= int(ch == '"')
        column = 0 if ch == "\n" else column + 1
        in_word = ch.isalnum() or ch == "'"
        word = word + 1 if in_word else 0
        rows.append((float(quote), float(column), float(in_word), float(word)))
    a = np.array(rows, float).reshape(len(text), 4)
    names = ("inside quotes", "line position", "inside a word", "word position")
    return {name: a[:, k] for k, name in enumerate(names)}


def correlations(activations: FloatArray, feature: FloatArray) -> FloatArray:
    """Pearson r of every unit's activations (n × m) with one feature (n); NaN where either is constant."""
    a = activations - activations.mean(axis=0)
    f = feature - feature.mean()
    denominator = np.sqrt((a * a).sum(axis=0) * float(f @ f))
    with np.errstate(invalid="ignore", divide="ignore"):
        r: FloatArray = np.where(denominator > 1e-12, (f @ a) / np.maximum(denominator, 1e-300), np.nan)
    return r


def state_view(trace: Trace, top: int = 5) -> dict[str, Any]:
    """View 2: s_1 … s_{n+1} (rounded to DIGITS decimals, at most MAX_UNITS units) and, per
    feature of the text, the `top` units whose activation after each c_i correlates most (|r|)."""
    m = int(trace.S.shape[1])
    shown = trace.S[:, :MAX_UNITS]
    activations = trace.S[1:, :MAX_UNITS]  # after reading c_1 … c_n
    features = []
    for name, values in text_features(trace.text).items():
        entry: dict[str, Any] = {"name": name, "values": values.tolist(), "units": []}
        if trace.n >= 3 and np.ptp(values) > 0:
            r = correlations(activations, values)
            order = [int(u) for u in np.argsort(-np.nan_to_num(np.abs(r), nan=-1.0)) if not math.isnan(r[u])]
            entry["units"] = [{"unit": u, "r": float(r[u])} for u in order[:top]]
        features.append(entry)
    return {
        "text": trace.text,
        "inputs": trace.inputs,
        "m": m,
        "units_shown": int(shown.shape[1]),
        "states": np.round(shown, DIGITS).tolist(),  # states[t-1][u] = s_t[u]
        "limit": float(np.abs(shown).max()) if shown.size else 0.0,
        "features": features,
    }


# ------------------------------------------------------------------------------ 3. p_t


def top_symbols(p: FloatArray, symbols: list[str], k: int) -> list[list[Any]]:
    """The k likeliest symbols of a distribution as [symbol, probability], likeliest first."""
    order = np.argsort(-p, kind="stable")[:k]
    return [[symbols[int(i)], float(p[i])] for i in order]


def distribution_view(trace: Trace, k: int = 5) -> dict[str, Any]:
    """View 3: for t = 1..n, p_t's top k, p_t[y_t] and ℓ_t = −log2 p_t[y_t]; L_seq = Σ ℓ_t; BPC = L_seq / n;
    and p_{n+1}, the distribution of what comes next."""
    if not 1 <= k <= 20:
        raise LectureInputError(f"k must be 1 … 20, not {k}")
    rows = []
    total = 0.0
    for t in range(1, trace.n + 1):
        p = trace.P[t - 1]
        y = trace.targets[t - 1]
        bits = -math.log2(max(float(p[y]), 1e-300))
        total += bits
        rows.append(
            {
                "t": t,
                "x": trace.inputs[t - 1],
                "y": trace.text[t - 1],
                "unknown": trace.unknown[t - 1],
                "p": float(p[y]),
                "bits": bits,
                "L_seq": total,
                "top": top_symbols(p, trace.symbols, k),
            }
        )
    return {
        "text": trace.text,
        "rows": rows,
        "next": top_symbols(trace.P[trace.n], trace.symbols, k),
        "L_seq_bits": total,
        "L_seq_nats": total * math.log(2),
        "BPC": total / trace.n if trace.n else None,
    }
