"""Evaluation: bits per character and next-character accuracy of a model on a corpus.

BPC is the mean of −log2 p(next symbol) over every predicted position: in `text` format every
character of the text; in `lines` format every character of every line plus its <end>
marker (knowing where a line stops is part of the job). Top-1/top-5 are the fractions of
those positions whose true symbol is the model's first / among its five most likely.
In `text` format the state is carried through the text (see `stream_eval_layout`).

Both readers take their data piecewise: a stream may be a memory map of a prepared corpus
(`nextchar.data.prepared`) and lines any sequence of index tensors, so evaluating a corpus larger
than memory needs only one batch at a time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nextchar.data.batches import IGNORE, frame_lines, stream_eval_shape
from nextchar.models import CharModel
from nextchar.text import END


class Lines(Protocol):
    """Index tensors of lines, read by position: a list, or a prepared corpus read on demand."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int, /) -> Tensor: ...


@dataclass
class EvalResult:
    bpc: float  # bits per character
    top1: float  # next-character accuracy
    top5: float
    chars: int  # number of predicted positions

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Tally:
    """Running totals of −ln p, top-1 and top-5 hits over the scored positions (IGNORE skipped).

    Every evaluation adds its logits batch by batch (`add`) and reads the figures once (`result`);
    dynamic evaluation (nextchar.evaluation.dynamic) tallies its adapted scores the same way.
    """

    def __init__(self) -> None:
        self.nats = 0.0
        self.top1 = 0
        self.top5 = 0
        self.count = 0

    def add(self, logits: Tensor, y: Tensor) -> None:
        logits = logits.float().reshape(-1, logits.shape[-1])
        y = y.reshape(-1)
        keep = y != IGNORE
        if not keep.any():
            return
        logits, y = logits[keep], y[keep]
        self.nats += F.cross_entropy(logits, y, reduction="sum").item()
        best = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        self.top1 += int((best[:, 0] == y).sum().item())
        self.top5 += int((best == y[:, None]).any(dim=-1).sum().item())
        self.count += len(y)

    def result(self) -> EvalResult:
        n = max(self.count, 1)
        return EvalResult(self.nats / n / math.log(2), self.top1 / n, self.top5 / n, self.count)


def _gather(data: Tensor | np.ndarray, positions: Tensor, mapping: Tensor | None) -> Tensor:
    """data[positions] as a long tensor (reading only those positions of a memory map)."""
    if isinstance(data, Tensor):
        out = data[positions]
    else:
        out = torch.from_numpy(np.asarray(data[positions.numpy()]).astype(np.int64))
    return out if mapping is None else mapping[out]


@torch.no_grad()
def evaluate_stream(
    model: CharModel, data: Tensor | np.ndarray, n_streams: int = 16, chunk: int = 512, mapping: Tensor | None = None
) -> EvalResult:
    """BPC of a `text` stream (indices starting with <start>), state carried throughout.

    The layout is `nextchar.data.batches.stream_eval_layout`'s, read `chunk` columns at a time;
    `mapping` (if given) translates the stream's indices into the model's vocabulary.
    """
    was_training = model.training
    model.eval()
    device = model.device
    n_targets = len(data) - 1
    n_streams, length = stream_eval_shape(n_targets, n_streams)
    first = torch.arange(n_streams)[:, None] * length  # stream i predicts targets [i·L, (i+1)·L)
    state = model.initial_state(n_streams, device)
    tally = Tally()
    for lo in range(0, length, chunk):
        positions = first + torch.arange(lo, min(lo + chunk, length))
        inside = positions < n_targets  # the last stream's tail is padding
        positions = torch.where(inside, positions, 0)
        x, y = _gather(data, positions, mapping), _gather(data, positions + 1, mapping)
        x[~inside], y[~inside] = END, IGNORE
        logits, state = model(x.to(device), state)
        tally.add(logits, y.to(device))
    model.train(was_training)
    return tally.result()


@torch.no_grad()
def evaluate_lines(
    model: CharModel, lines: Lines, batch_size: int = 128, lengths: Sequence[int] | np.ndarray | None = None
) -> EvalResult:
    """BPC of a `lines` corpus: every line framed "^"+line → line+<end>, each from s_0.

    `lengths` (the lines' lengths, when they are known without reading the lines) saves a pass.
    """
    was_training = model.training
    model.eval()
    device = model.device
    tally = Tally()
    sizes = lengths if lengths is not None else [len(lines[i]) for i in range(len(lines))]
    order = sorted(range(len(lines)), key=lambda i: sizes[i])  # similar lengths, less padding
    for start in range(0, len(order), batch_size):
        x, y = frame_lines([lines[i] for i in order[start : start + batch_size]])
        logits, _ = model(x.to(device))
        tally.add(logits, y.to(device))
    model.train(was_training)
    return tally.result()


def evaluate_encoded(model: CharModel, encoded: Tensor | list[Tensor]) -> EvalResult:
    """Evaluate a `text` stream or a list of lines (see `nextchar.data.batches.encode_corpus`)."""
    if isinstance(encoded, Tensor):
        return evaluate_stream(model, encoded)
    return evaluate_lines(model, encoded)


def unigram_bpc(train_text: str, val_text: str) -> float:
    """BPC of counting characters: each character of `val_text` predicted by how often it occurs
    in `train_text`, add-one smoothed over the characters of both, with no context at all. A model
    that has not beaten it has learnt only which characters are common (a large alphabet's first
    minutes). 0.0 for an empty validation text."""
    if not val_text:
        return 0.0
    counts = Counter(train_text)
    symbols = len(counts.keys() | set(val_text))
    total = len(train_text) + symbols
    bits = sum(n * math.log2(total / (counts[ch] + 1)) for ch, n in Counter(val_text).items())
    return bits / len(val_text)
