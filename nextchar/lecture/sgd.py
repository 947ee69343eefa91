"""Training as the lecture says: stochastic gradient descent on J, and the three-line example.

The lecture's SGD (section 5): repeat

    choose i uniformly at random from {1, …, q}
    W ← W − η ∇_W L_seq(p^(i), y^(i))          for each of W^sx, W^ss, W0^ss, W^o, W0^o

Minibatches average the gradient over B sequences chosen at random instead of one (the
same step in expectation, less noise). Gradient clipping rescales a step whose norm is too
large (see `clip_gradients`): recurrent nets need it because their gradients can explode.

The worked example trains on the lecture's three lines until, given the first character of
each line, greedy decoding (always take the most likely next character) reproduces the
whole line, <end> included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from nextchar.errors import UserError
from nextchar.lecture.errors import LectureInputError
from nextchar.lecture.rnn import (
    Batch,
    FloatArray,
    Params,
    init_params,
    loss_and_gradients,
    make_batch,
    one_hot,
    output,
    transition,
)
from nextchar.text import END, START, Vocabulary

THREE_LINES = (
    "what happens to a dream deferred",
    "if you can keep your head when all about you",
    "you may write me down in history",
)

Sequences = list[tuple[list[int], list[int]]]  # (inputs x_1..x_n, labels y_1..y_n) as indices


@dataclass
class SGDConfig:
    lr: float = 0.1  # η, the step size (on the gradient of L_seq: a sum over characters, not a mean)
    steps: int = 20_000  # at most this many updates
    batch_size: int = 1  # sequences per update; 1 is the lecture's SGD
    clip: float = 5.0  # largest allowed gradient norm ‖∇‖ over all five arrays; 0 = no clipping
    seed: int = 0  # the random choice of i (and the initial weights in `worked_example`)
    check_every: int = 100  # `worked_example`: test the reconstructions every this many steps


def encode_line(line: str, vocab: Vocabulary) -> tuple[list[int], list[int]]:
    """The lecture's framing of one line: inputs "^" + line, labels line + <end>.

    x^(i) = (^, c_1, …, c_n), y^(i) = (c_1, …, c_n, <end>): at every step the label is the
    character that comes next. A character outside the vocabulary is refused (no <unk>
    here: the lecture's alphabet is closed).
    """
    if not line:
        raise LectureInputError("an empty line: every training sequence needs at least one character")
    indices = []
    for position, ch in enumerate(line):
        code = vocab.encode(ch)[0]
        if code < 3 or ch not in vocab.chars:
            raise LectureInputError(
                f"character {ch!r} (position {position} of {line!r}) is not in the alphabet {''.join(vocab.chars)!r}"
            )
        indices.append(code)
    return [START, *indices], [*indices, END]


def encode_lines(lines: Sequence[str], vocab: Vocabulary) -> Sequences:
    if not lines:
        raise LectureInputError("no lines to train on")
    return [encode_line(line, vocab) for line in lines]


def gradient_norm(grads: Params) -> float:
    """‖∇‖ = sqrt(Σ over all five arrays of the squared entries)."""
    return float(np.sqrt(sum(float(np.sum(g * g)) for _, g in grads.items())))


def clip_gradients(grads: Params, max_norm: float) -> float:
    """Rescale the gradient in place so that ‖∇‖ ≤ max_norm; return ‖∇‖ before clipping.

        ∇ ← ∇ · min(1, max_norm / ‖∇‖)

    Why: dJ/ds_t carries products of (W^ss)ᵀ diag(f1'(z^1)) back through time (see
    `rnn.backward`), so when those factors stretch vectors the gradient grows geometrically
    with the distance it travels: an "exploding gradient". One such step can undo all
    training. Clipping keeps the direction and caps the length. (Vanishing gradients, the
    opposite case, cannot be fixed this way: that is what LSTM and GRU cells are for.)
    """
    norm = gradient_norm(grads)
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / norm
        for _, g in grads.items():
            g *= scale
    return norm


def sgd_step(params: Params, grads: Params, lr: float) -> None:
    """W ← W − η ∇_W, in place, for each of the five arrays."""
    for name, w in params.items():
        w -= lr * getattr(grads, name)


class TrainingDiverged(UserError):
    """SGD produced infinite or undefined numbers; `history` holds the updates up to then."""

    def __init__(self, message: str, history: History) -> None:
        super().__init__(message)
        self.history = history


@dataclass
class History:
    """What training did, one entry per update."""

    loss: list[float] = field(default_factory=list)  # L_seq per character (nats) of the chosen sequences
    grad_norm: list[float] = field(default_factory=list)  # ‖∇‖ before clipping
    clipped: int = 0  # updates whose gradient was clipped


def train(
    params: Params,
    sequences: Sequences,
    ell: int,
    v: int,
    config: SGDConfig,
    f1: str = "tanh",
    on_step: Callable[[int, float], bool | None] | None = None,
) -> History:
    """Minimise J by SGD, in place. Each update:

        choose B indices i uniformly at random (B = batch_size; the lecture's SGD is B = 1)
        ∇ = (1/B) Σ_i ∇ L_seq(p^(i), y^(i))     (by `rnn.backward`)
        clip ∇ to norm `clip`;  W ← W − η ∇

    `on_step(step, loss)` is called after every update; returning True stops training.
    """
    if not sequences:
        raise LectureInputError("no sequences to train on")
    if config.lr <= 0 or config.steps < 0 or config.batch_size < 1 or config.clip < 0:
        raise LectureInputError(f"bad SGD settings {config}: need lr > 0, steps ≥ 0, batch_size ≥ 1, clip ≥ 0")
    rng = np.random.default_rng(config.seed)
    q = len(sequences)
    batch_size = min(config.batch_size, q)
    # Batches of each subset would be rebuilt at every step; with few sequences, cache them.
    cache: dict[tuple[int, ...], Batch] = {}
    history = History()
    for step in range(1, config.steps + 1):
        chosen = tuple(sorted(rng.choice(q, size=batch_size, replace=False).tolist()))
        batch = cache.get(chosen)
        if batch is None:
            batch = make_batch(
                [sequences[i][0] for i in chosen], [sequences[i][1] for i in chosen], ell, v, params.dtype.type
            )
            if len(cache) < 4096:
                cache[chosen] = batch
        # Overflow is a possible outcome of training (exploding gradients without clipping):
        # report it as a diverged run below rather than as NumPy warnings along the way.
        with np.errstate(over="ignore", invalid="ignore"):
            J, grads = loss_and_gradients(params, batch, f1)
        if not np.isfinite(J) or not all(np.isfinite(g).all() for _, g in grads.items()):
            raise TrainingDiverged(
                f"training diverged at step {step} (the loss or the gradient is no longer a finite number; "
                f"the largest gradient norm so far was {max(history.grad_norm, default=0.0):.3g}): exploding "
                f"gradients — turn clipping on (clip > 0) or lower the step size η = {config.lr}",
                history,
            )
        for _, g in grads.items():
            g /= batch_size  # the mean over the minibatch: the same η works for every B
        norm = clip_gradients(grads, config.clip)
        history.clipped += int(config.clip > 0 and norm > config.clip)
        sgd_step(params, grads, config.lr)
        history.loss.append(J / batch.characters)
        history.grad_norm.append(norm)
        if on_step is not None and on_step(step, history.loss[-1]):
            break
    return history


def run_states(
    params: Params, f1: str, indices: Sequence[int], s0: FloatArray | None = None
) -> tuple[FloatArray, FloatArray]:
    """s_0 … s_n ((n+1)×m) and p_1 … p_n (n×v) for one sequence of input indices."""
    s = np.zeros((1, params.m), params.dtype) if s0 is None else np.asarray(s0, params.dtype).reshape(1, -1)
    states, probs = [s[0]], []
    for x in one_hot(indices, params.ell, params.dtype.type):
        s = transition(params, f1, s, x[None, :])
        states.append(s[0])
        probs.append(output(params, s)[0])
    return np.array(states), np.array(probs).reshape(len(probs), params.v)


def greedy_decode(params: Params, f1: str, prompt: Sequence[int], max_length: int = 200) -> list[int]:
    """Read `prompt`, then repeatedly append argmax p_t until <end> (or max_length symbols)."""
    if not prompt:
        raise LectureInputError("greedy decoding needs a prompt of at least one symbol (<start>)")
    s = np.zeros((1, params.m), params.dtype)
    for x in one_hot(prompt, params.ell, params.dtype.type):
        s = transition(params, f1, s, x[None, :])
    out: list[int] = []
    for _ in range(max_length):
        p = output(params, s)[0]
        nxt = int(np.argmax(p))
        if nxt == END:
            break
        out.append(nxt)
        s = transition(params, f1, s, one_hot([nxt], params.ell, params.dtype.type))
    return out


def reconstruct(params: Params, f1: str, vocab: Vocabulary, line: str) -> str:
    """Given the first character of `line`, the line as greedy decoding continues it."""
    prompt = encode_line(line[:1], vocab)[0]  # ^ and the first character
    return line[0] + vocab.decode(greedy_decode(params, f1, prompt, max_length=2 * len(line) + 10))


@dataclass
class ExampleResult:
    params: Params
    f1: str
    vocab: Vocabulary
    lines: tuple[str, ...]
    history: History
    reconstructions: list[str]
    steps: int  # updates made
    solved_at: int | None  # the first check at which every line was reproduced (None: never)

    @property
    def solved(self) -> bool:
        return self.solved_at is not None


def worked_example(
    lines: Sequence[str] = THREE_LINES,
    hidden: int = 64,
    config: SGDConfig | None = None,
    f1: str = "tanh",
    on_step: Callable[[int, float], None] | None = None,
) -> ExampleResult:
    """Train the lecture's RNN on `lines` (the lecture's alphabet a–z and space, ℓ = v = 30)
    until greedy decoding from each line's first character reproduces every line.

    Checks every `config.check_every` updates and stops at the first success.
    """
    config = config or SGDConfig()
    vocab = Vocabulary.from_text("", alphabet="lecture")
    lines = tuple(lines)
    sequences = encode_lines(lines, vocab)
    params = init_params(hidden, len(vocab), len(vocab), config.seed)
    solved_at: list[int] = []

    def check(step: int, loss: float) -> bool:
        if on_step is not None:
            on_step(step, loss)
        if step % config.check_every == 0 and all(reconstruct(params, f1, vocab, line) == line for line in lines):
            solved_at.append(step)
            return True
        return False

    history = train(params, sequences, len(vocab), len(vocab), config, f1, check)
    reconstructions = [reconstruct(params, f1, vocab, line) for line in lines]
    return ExampleResult(
        params, f1, vocab, lines, history, reconstructions, len(history.loss), solved_at[0] if solved_at else None
    )
