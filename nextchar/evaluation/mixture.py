"""Evaluation with the memory: the RNN, the memory and their mixture scored on the same positions.

The RNN reads the corpus exactly as `nextchar.evaluation.bpc` does (a stream cut into contiguous
streams with the state carried, or every line from s_0), so its figure here is the one
`nextchar eval --no-memory` prints. The memory follows the same reading: each stream's (each
line's) context starts where the RNN's does and grows by one symbol per position
(`Memory.push`), and p_mem is computed for each scored position. The mixer
(nextchar.recall.mixer) combines the two.

Fitting the mixer (`fit_mixer`) reads held-out text the same way (the validation split, which
neither the weights nor the memory hold) or, without any, evenly spaced pieces of the training
text with leave-one-out counts (nextchar.recall.estimator): nothing it learns from was
predicted by the memory's own copy of it. Measured, fitting on held-out text is much the better
of the two. With a 10-minute Tiny Shakespeare model on the first 40,000 validation characters,
the RNN alone gives 1.982 BPC; fitted on the other half of those, 1.929; fitted leave-one-out on
the training text, 1.974 (second half). The RNN, not the memory, knows its training text too well.

`OnlineScorer` is the memory's side of dynamic evaluation: score a window, then add it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nextchar.data.batches import IGNORE, Encoded, count_targets, frame_lines, stream_eval_layout
from nextchar.evaluation.bpc import EvalResult, Tally
from nextchar.models import CharModel
from nextchar.recall.estimator import DEPTHS, ESTIMATOR, STATS, Context, Memory, match_stats
from nextchar.recall.mixer import ONLINE_INPUTS, ONLINE_STATS, Mixer, OnlineMixer, fit
from nextchar.recall.online import OnlineMemory

FIT_POSITIONS = 40_000  # positions the mixer learns from (at most)
FIT_VALUES = 20_000_000  # … and at most this many (positions × vocabulary) log-probabilities held


@dataclass
class MixtureResult:
    rnn: EvalResult  # the RNN alone (what `eval --no-memory` prints)
    memory: EvalResult  # the memory alone (p_mem)
    mixture: EvalResult  # the mixer's combination

    def to_json(self) -> dict[str, object]:
        return {"rnn": self.rnn.to_json(), "memory": self.memory.to_json(), "mixture": self.mixture.to_json()}


@dataclass
class Scored:
    """One block of scored positions: log p_rnn (n, V), log p_mem (n, DEPTHS, V), match stats
    (n, STATS), targets (n,)."""

    rnn: Tensor
    memory: Tensor
    stats: Tensor
    targets: Tensor


def memory_columns(
    memory: Memory,
    x: Tensor,
    y: Tensor,
    contexts: list[Context],
    estimator: str,
    loo: bool = False,
    parts: tuple[Memory, Memory] | None = None,
) -> tuple[Tensor, Tensor]:
    """log p_mem (B, T, DEPTHS, V) and match stats (B, T, STATS) of a block read row by row;
    `contexts` (one per row, updated in place) are those before the block. Padding (y = IGNORE)
    gets uniform, 0s. `parts`, the memory's training-text indexes and its online one as two
    memories (nextchar.recall.online.OnlineMemory.parts): each position also gets p_mem of each
    part alone and the online part's top stats, the OnlineMixer's ONLINE_INPUTS and ONLINE_STATS."""
    rows, columns = x.shape
    V = memory.vocab_size
    depth, width = (ONLINE_INPUTS, ONLINE_STATS) if parts is not None else (DEPTHS, STATS)
    logp = torch.full((rows, columns, depth, V), -math.log(V), dtype=torch.float32)
    stats = torch.zeros((rows, columns, width), dtype=torch.long)
    xs, ys = x.tolist(), y.tolist()
    static, online = parts if parts is not None else (None, None)
    split = len(static.indexes) if static is not None else 0
    for r in range(rows):
        context = contexts[r]
        out = np.empty((columns, depth, V), dtype=np.float32)
        found_stats = np.zeros((columns, width), dtype=np.int64)
        filled = []
        for j in range(columns):
            target = ys[r][j]
            if target == IGNORE:
                continue
            context = memory.push(context, xs[r][j], loo)
            if loo:
                levels = memory.levels(context, own=target)
                out[j], found = np.log(memory.distributions(levels, estimator)), match_stats(levels)
            else:
                out[j, :DEPTHS], found = memory.predict(context, estimator)
            found_stats[j, :STATS] = found
            if static is not None and online is not None:
                out[j, DEPTHS] = static.predict(Context(context.matches[:split]), estimator)[0][0]
                online_logp, online_stats = online.predict(Context(context.matches[split:]), estimator)
                out[j, DEPTHS + 1], found_stats[j, STATS:] = online_logp[0], online_stats[:3]
            filled.append(j)
        contexts[r] = context
        if filled:
            logp[r, filled] = torch.from_numpy(out[filled])
            stats[r, filled] = torch.from_numpy(found_stats[filled])
    return logp, stats


def _blocks_stream(
    model: CharModel, data: Tensor, memory: Memory, estimator: str, n_streams: int, chunk: int, loo: bool
) -> Iterator[Scored]:
    x, y = stream_eval_layout(data, n_streams)
    state = model.initial_state(x.shape[0], model.device)
    contexts = [memory.start() for _ in range(x.shape[0])]
    for lo in range(0, x.shape[1], chunk):
        xb, yb = x[:, lo : lo + chunk], y[:, lo : lo + chunk]
        logits, state = model(xb.to(model.device), state)
        mem, stats = memory_columns(memory, xb, yb, contexts, estimator, loo)
        yield _flat(logits, mem, stats, yb)


def _blocks_lines(
    model: CharModel, lines: Sequence[Tensor], memory: Memory, estimator: str, batch_size: int, loo: bool
) -> Iterator[Scored]:
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]))
    for start in range(0, len(order), batch_size):
        x, y = frame_lines([lines[i] for i in order[start : start + batch_size]])
        logits, _ = model(x.to(model.device))
        contexts = [memory.start() for _ in range(x.shape[0])]
        mem, stats = memory_columns(memory, x, y, contexts, estimator, loo)
        yield _flat(logits, mem, stats, y)


def _flat(logits: Tensor, memory_logp: Tensor, stats: Tensor, y: Tensor) -> Scored:
    keep = y.reshape(-1) != IGNORE
    V = logits.shape[-1]
    rnn = torch.log_softmax(logits.float().reshape(-1, V), dim=-1).cpu()[keep]
    memory, stats = memory_logp.reshape(-1, *memory_logp.shape[2:])[keep], stats.reshape(-1, stats.shape[-1])[keep]
    return Scored(rnn, memory, stats, y.reshape(-1)[keep])


def scored_blocks(
    model: CharModel,
    encoded: Encoded,
    memory: Memory,
    estimator: str = ESTIMATOR,
    loo: bool = False,
    n_streams: int = 16,
    chunk: int = 512,
    batch_size: int = 128,
) -> Iterator[Scored]:
    """The scored positions of a `text` stream or of lines, block by block (the module docstring)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(encoded, Tensor):
                yield from _blocks_stream(model, encoded, memory, estimator, n_streams, chunk, loo)
            else:
                yield from _blocks_lines(model, encoded, memory, estimator, batch_size, loo)
    finally:
        model.train(was_training)


def evaluate_mixture(model: CharModel, encoded: Encoded, memory: Memory, mixer: Mixer) -> MixtureResult:
    """BPC, top-1 and top-5 of the RNN, the memory and the mixture on the same positions."""
    tallies = Tally(), Tally(), Tally()
    for block in scored_blocks(model, encoded, memory, mixer.estimator):
        mixed = mixer.mix(block.rnn, block.memory, block.stats)
        for tally, logp in zip(tallies, (block.rnn, block.memory[:, 0], mixed), strict=True):
            tally.add(logp, block.targets)
    rnn, mem, mixture = (t.result() for t in tallies)
    return MixtureResult(rnn, mem, mixture)


def fit_mixer(
    model: CharModel, memory: Memory, held_out: Encoded | None, train: Encoded, estimator: str = ESTIMATOR
) -> Mixer:
    """The mixer of `model` and `memory`, fitted on up to FIT_POSITIONS positions the memory does
    not hold: the start of `held_out` (the validation split), or where there is none, evenly
    spaced pieces of `train` (the text `memory`'s first index holds) with leave-one-out counts."""
    positions = min(FIT_POSITIONS, FIT_VALUES // max(memory.vocab_size, 1))
    blocks: list[Scored] = []
    if held_out is not None and count_targets(held_out) > 0:
        blocks += scored_blocks(model, _first(held_out, positions), memory, estimator)
    else:
        for piece in _pieces(train, positions):
            blocks += scored_blocks(model, piece, memory, estimator, loo=True, n_streams=1)
    blocks = [b for b in blocks if len(b.targets)]
    if not blocks:
        return Mixer.rnn_only(estimator)
    rnn, mem, stats, targets = (
        torch.cat([getattr(b, name) for b in blocks]) for name in ("rnn", "memory", "stats", "targets")
    )
    return fit(rnn, mem, stats, targets, estimator)


def _first(encoded: Encoded, positions: int) -> Encoded:
    """The first `positions` targets or so of a stream, or the lines that hold them."""
    if isinstance(encoded, Tensor):
        return encoded[: positions + 1]
    out, total = [], 0
    for line in encoded:
        if total >= positions:
            break
        out.append(line)
        total += len(line) + 1
    return out


def _pieces(train: Encoded, positions: int, pieces: int = 16) -> list[Encoded]:
    """Evenly spaced pieces of the training text holding about `positions` targets in all."""
    if isinstance(train, Tensor):
        length = max(1, positions // pieces)
        starts = np.linspace(0, max(len(train) - length - 1, 0), pieces).astype(int)
        cut = [train[start : start + length + 1] for start in sorted(set(starts.tolist()))]
        return [piece for piece in cut if len(piece) >= 2]
    total = sum(len(line) + 1 for line in train)
    step = max(1, math.ceil(total / max(positions, 1)))
    return [list(train[::step])]


class OnlineScorer:
    """The memory's side of dynamic evaluation (nextchar.evaluation.dynamic): each window scored
    by the mixture with the memory as it stands, then added to the online memory
    (nextchar.recall.online), rows' contexts carried as the RNN's states are. `learn_mixer`: the
    mixture is an OnlineMixer learning from each window once it is scored, as the weights and
    the memory do; otherwise `mixer`, fixed."""

    def __init__(self, memory: Memory, mixer: Mixer, record: bool = False, learn_mixer: bool = True) -> None:
        self.online = OnlineMemory(memory)
        self.mixer = mixer
        self.online_mixer = OnlineMixer() if learn_mixer else None
        self.recorded: list[Tensor] | None = [] if record else None  # log q of each target, reading order
        self.contexts: list[Context] = []
        self.histories: list[list[int]] = []
        self.pieces: list[int] = []
        self.tallies = Tally(), Tally()  # the memory alone, the mixture

    def score(self, x: Tensor, y: Tensor, carry: bool, rnn_logits: Tensor) -> None:
        """Score a window (x, y: (B, T)) given the RNN's logits for it (B·T, V)."""
        x, y = x.cpu(), y.cpu()
        if not carry or not self.contexts:
            self.start_rows(x)
        parts = self.online.parts() if self.online_mixer is not None else None
        memory_logp, stats = memory_columns(self.online.memory, x, y, self.contexts, self.mixer.estimator, parts=parts)
        flat_y = y.reshape(-1)
        keep = flat_y != IGNORE
        V = rnn_logits.shape[-1]
        rnn_logp = torch.log_softmax(rnn_logits.detach().float().reshape(-1, V), dim=-1).cpu()[keep]
        memory_logp = memory_logp.reshape(-1, *memory_logp.shape[2:])[keep]
        stats, targets = stats.reshape(-1, stats.shape[-1])[keep], flat_y[keep]
        if self.online_mixer is not None:
            mixed = self.online_mixer.mix(rnn_logp, memory_logp, stats)
        else:
            mixed = self.mixer.mix(rnn_logp, memory_logp, stats)
        self.tallies[0].add(memory_logp[:, 0], targets)
        self.tallies[1].add(mixed, targets)
        if self.recorded is not None:
            self.recorded.append(mixed.gather(1, targets[:, None]).squeeze(1))
        if self.online_mixer is not None and len(targets):
            self.online_mixer.learn(targets)  # scored: now the gate may learn from it
        self.learn(x, y, carry)

    def start_rows(self, x: Tensor) -> None:
        """Fresh contexts for the rows of a window that carries nothing over, each a new piece
        of the online memory that starts with the row's first symbol."""
        rows = x.shape[0]
        self.contexts = [self.online.start() for _ in range(rows)]
        self.histories = [[] for _ in range(rows)]
        self.pieces = [self.online.piece() for _ in range(rows)]
        for piece, first in zip(self.pieces, x[:, 0].tolist(), strict=True):
            self.online.extend(piece, [first])

    def learn(self, x: Tensor, y: Tensor, carry: bool) -> None:
        """Add the window's symbols (now scored) to the online memory, and match the contexts
        that go on into the next window (`carry`) again."""
        for row, (xs, ys) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
            scored = [i for i, target in enumerate(ys) if target != IGNORE]
            self.online.extend(self.pieces[row], [ys[i] for i in scored])
            self.histories[row] = (self.histories[row] + [xs[i] for i in scored])[-self.online.memory.max_order :]
        self.online.rebuild()
        if carry:
            self.contexts = [self.online.rematch(c, h) for c, h in zip(self.contexts, self.histories, strict=True)]
        else:
            self.contexts = []

    def results(self) -> tuple[EvalResult, EvalResult]:
        """(the memory alone, the mixture), adapted."""
        return self.tallies[0].result(), self.tallies[1].result()
