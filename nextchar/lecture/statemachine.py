"""State machines (lecture, sections 2–3): the "last m characters" machine, and the same
machine as an RNN whose weights are fixed rather than learned.

A state machine is (s_0, f, g):

    s_t = f(s_{t-1}, x_t)        the transition: read one input, update the state
    y_t = g(s_t)                 the output (for the lecture: p_t, a vector of probabilities)

The lecture's featurisation keeps the last m characters: s_0 is m start characters and f
shifts the new character in (for m = 3 and "^what": ^^^, ^^^, ^^w, ^wh, wha, hat, …).

Written with vectors that is a *linear* transition, which is an RNN with fixed weights:

    s_t = W^sx x_t + W^ss s_{t-1}

For the alphabet {0,1} with characters as scalars and m = 3 (the lecture's example):

    W^sx = [1,0,0]ᵀ,   W^ss = [[0,0,0],[1,0,0],[0,1,0]]

so s_t[0] = x_t and s_t[k] = s_{t-1}[k-1]: the newest character enters at the top and every
other one moves down a place, the oldest falling off the end. With an alphabet of ℓ
characters coded one-hot and c characters of context, the state is c one-hot blocks
(m = c·ℓ), newest first, and the same matrices appear in block form (I is ℓ×ℓ):

    W^sx = [I; 0; …; 0]  (m×ℓ),   W^ss = [[0, 0, …, 0], [I, 0, …, 0], [0, I, …, 0], …, [0, …, I, 0]]  (m×m)

The lecture's f is linear; the RNN engine's f1 = relu computes the same thing here because
every z_t^1 is 0 or 1 and relu(z) = z for z ≥ 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from nextchar.lecture.errors import LectureInputError
from nextchar.lecture.rnn import FloatArray, Params, transition

S = TypeVar("S")
X = TypeVar("X")
Y = TypeVar("Y")
ENCODINGS = ("one-hot", "scalar")


@dataclass(frozen=True)
class Step(Generic[S, X, Y]):
    """One row of a state machine's table."""

    t: int
    x: X | None  # x_t (None at t = 0: nothing read yet)
    s: S  # s_t
    output: Y | None  # g(s_t) (None at t = 0: outputs start with the first input)


class StateMachine(Generic[S, X, Y]):
    """A state machine (s_0, f, g): s_t = f(s_{t-1}, x_t), output g(s_t)."""

    def __init__(self, s0: S, f: Callable[[S, X], S], g: Callable[[S], Y]) -> None:
        self.s0 = s0
        self.f = f
        self.g = g

    def transduce(self, inputs: Iterable[X]) -> list[Step[S, X, Y]]:
        """The table of the run on `inputs`: (t, x_t, s_t, g(s_t)) for t = 0..n.

        s_0 given;  for t = 1..n:  s_t = f(s_{t-1}, x_t),  output_t = g(s_t)
        """
        s = self.s0
        table: list[Step[S, X, Y]] = [Step(0, None, s, None)]
        for t, x in enumerate(inputs, start=1):
            s = self.f(s, x)
            table.append(Step(t, x, s, self.g(s)))
        return table

    def states(self, inputs: Iterable[X]) -> list[S]:
        """s_0, s_1, …, s_n."""
        return [row.s for row in self.transduce(inputs)]


def check_characters(text: Iterable[str], alphabet: Sequence[str] | None, what: str = "the input") -> None:
    """Refuse a character outside the alphabet, naming it and its position."""
    if alphabet is None:
        return
    allowed = set(alphabet)
    for position, ch in enumerate(text):
        if ch not in allowed:
            raise LectureInputError(
                f"character {ch!r} (position {position} of {what}) is not in the alphabet {''.join(alphabet)!r}"
            )


def window_machine(m: int, start: str = "^", alphabet: Sequence[str] | None = None) -> StateMachine[str, str, str]:
    """The lecture's "last m characters" machine.

        s_0 = m start characters            f(s, x) = (s + x)[-m:]  (shift x in, drop the oldest)
        g(s) = s                            (the state is the feature vector; a classifier
                                             p_t = f2(W^o s_t + W0^o) on top of it comes later)

    With `alphabet`, a character outside it is refused (the one-hot RNN could not code it).
    """
    if m < 1:
        raise LectureInputError(f"m must be at least 1 (characters of context), not {m}")
    if len(start) != 1:
        raise LectureInputError(f"the start marker must be one character, not {start!r}")
    check_characters(start, alphabet, "the start marker")

    def f(s: str, x: str) -> str:
        if len(x) != 1:
            raise LectureInputError(f"inputs are single characters, not {x!r}")
        check_characters(x, alphabet)
        return (s + x)[-m:]

    return StateMachine(start * m, f, lambda s: s)


def show(ch: str | None) -> str:
    """How the lecture writes a character in a table: space as _, nothing as blank."""
    if ch is None:
        return ""
    return ch.replace(" ", "_").replace("\n", "⏎")


def format_table(table: Sequence[Step[Any, Any, Any]], with_output: bool = False) -> str:
    """The table as the lecture prints it (t, x_t, s_t[, output]); spaces shown as _."""

    def cell(value: object) -> str:
        return show(value) if value is None or isinstance(value, str) else str(value)

    header = ["t", "x_t", "s_t"] + (["output"] if with_output else [])
    rows = [[str(r.t), cell(r.x), cell(r.s)] + ([cell(r.output)] if with_output else []) for r in table]
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]

    def line(row: list[str]) -> str:  # t right-aligned, the rest left-aligned
        return "  ".join([row[0].rjust(widths[0])] + [c.ljust(w) for c, w in zip(row[1:], widths[1:], strict=True)])

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(row).rstrip() for row in rows)])


# ------------------------------------------------------------------------------ the machine as an RNN


def shift_weights(ell: int, context: int, dtype: type = np.float64) -> tuple[FloatArray, FloatArray]:
    """The fixed W^sx (m×ℓ) and W^ss (m×m), m = c·ℓ, of the window machine (block form).

        W^sx = [I_ℓ; 0; …; 0]                    x_t becomes block 0 (the newest)
        W^ss[block k, block k−1] = I_ℓ           block k−1 of s_{t-1} moves to block k

    For ℓ = 1, c = 3: W^sx = [1,0,0]ᵀ and W^ss = [[0,0,0],[1,0,0],[0,1,0]], the lecture's.
    """
    if ell < 1 or context < 1:
        raise LectureInputError(f"the alphabet size ℓ and the context c must be at least 1, got ℓ={ell}, c={context}")
    m = context * ell
    W_sx: FloatArray = np.zeros((m, ell), dtype)
    W_sx[:ell] = np.eye(ell)
    W_ss: FloatArray = np.eye(m, k=-ell, dtype=dtype)  # ones ℓ rows below the diagonal: the block sub-diagonal
    return W_sx, W_ss


@dataclass(frozen=True)
class WindowRNN:
    """The "last c characters" machine as an RNN with fixed weights: s_t = W^sx x_t + W^ss s_{t-1}.

    `encoding` "one-hot": x_t is the one-hot vector of the character (ℓ = len(alphabet)) and
    s_t is c one-hot blocks, newest first (m = c·ℓ). "scalar": the lecture's binary example,
    a two-character alphabet whose characters are the numbers 0 and 1 (ℓ = 1, m = c).
    """

    alphabet: tuple[str, ...]
    context: int  # c
    start: str  # the start character (s_0 = c of them)
    encoding: str
    W_sx: FloatArray
    W_ss: FloatArray

    @property
    def ell(self) -> int:
        return int(self.W_sx.shape[1])

    @property
    def m(self) -> int:
        return int(self.W_ss.shape[0])

    @property
    def W0_ss(self) -> FloatArray:
        """No offset: the shift is linear."""
        return np.zeros(self.m, self.W_ss.dtype)

    def encode_input(self, ch: str) -> FloatArray:
        """x_t for a character: one-hot (ℓ) or, for the scalar encoding, its value (1)."""
        check_characters(ch, self.alphabet)
        k = self.alphabet.index(ch)
        if self.encoding == "scalar":
            return np.array([float(k)], self.W_ss.dtype)
        x = np.zeros(self.ell, self.W_ss.dtype)
        x[k] = 1.0
        return x

    def encode_state(self, s: str) -> FloatArray:
        """The vector for a state of the window machine (a string, oldest character first)."""
        if len(s) != self.context:
            raise LectureInputError(f"a state holds c = {self.context} characters, not {len(s)} ({s!r})")
        return np.concatenate([self.encode_input(ch) for ch in reversed(s)])  # newest first

    def decode_state(self, s: FloatArray) -> str:
        """The string a state vector codes (inverse of `encode_state`)."""
        blocks = s.reshape(self.context, self.ell)
        if self.encoding == "scalar":
            chars = [self.alphabet[round(b[0])] for b in blocks]
        else:
            chars = [self.alphabet[int(np.argmax(b))] for b in blocks]
        return "".join(reversed(chars))

    @property
    def s0(self) -> FloatArray:
        return self.encode_state(self.start * self.context)

    def states(self, text: str) -> FloatArray:
        """s_0 … s_n, (n+1)×m, computed by the RNN engine's own transition with f1 = relu.

        s_t = relu(W^sx x_t + W^ss s_{t-1} + 0) = W^sx x_t + W^ss s_{t-1}   (all entries ≥ 0)
        """
        check_characters(text, self.alphabet)
        params = self.params(np.zeros((1, self.m), self.W_ss.dtype), np.zeros(1, self.W_ss.dtype))
        out = [self.s0[None, :]]
        for ch in text:
            out.append(transition(params, "relu", out[-1], self.encode_input(ch)[None, :]))
        return np.concatenate(out)

    def params(self, W_o: FloatArray, W0_o: FloatArray) -> Params:
        """The whole RNN: these fixed weights plus an output classifier p_t = softmax(W^o s_t + W0^o)."""
        return Params(
            W_sx=self.W_sx.copy(),
            W_ss=self.W_ss.copy(),
            W0_ss=self.W0_ss,
            W_o=np.asarray(W_o, self.W_ss.dtype),
            W0_o=np.asarray(W0_o, self.W_ss.dtype),
        )


def window_rnn(
    alphabet: Sequence[str], context: int, start: str | None = None, encoding: str = "one-hot", dtype: type = np.float64
) -> WindowRNN:
    """The fixed-weight RNN of the last-`context`-characters machine over `alphabet`.

    `start` (default: the alphabet's first character) fills s_0 and must be in the alphabet.
    """
    alphabet = tuple(alphabet)
    if not alphabet:
        raise LectureInputError("the alphabet is empty; give at least one character")
    if len(set(alphabet)) != len(alphabet):
        raise LectureInputError(f"the alphabet {''.join(alphabet)!r} repeats a character")
    if encoding not in ENCODINGS:
        raise LectureInputError(f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    if encoding == "scalar" and len(alphabet) != 2:
        raise LectureInputError(
            f"the scalar encoding is for two characters (0 and 1); the alphabet "
            f"{''.join(alphabet)!r} has {len(alphabet)}: use one-hot"
        )
    start = alphabet[0] if start is None else start
    check_characters(start, alphabet, "the start marker")
    W_sx, W_ss = shift_weights(1 if encoding == "scalar" else len(alphabet), context, dtype)
    return WindowRNN(alphabet, context, start, encoding, W_sx, W_ss)


def format_matrix(name: str, a: FloatArray) -> str:
    """A small matrix as rows of integers (the fixed weights are 0/1), with its shape."""
    a = a.reshape(-1, 1) if a.ndim == 1 else a
    body = "\n".join(
        "  [" + " ".join(f"{int(v)}" if float(v).is_integer() else f"{v:.3g}" for v in row) + "]" for row in a
    )
    return f"{name} ({a.shape[0]}×{a.shape[1]}) =\n{body}"
