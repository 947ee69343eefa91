"""Evaluation: bits per character and next-character accuracy of a model on a corpus.

BPC is the mean of −log2 p(next symbol) over every predicted position: in `text` format every
character of the text; in `lines` format every character of every line plus its <end>
marker (knowing where a line stops is part of the job). Top-1/top-5 are the fractions of
those positions whose true symbol is the model's first / among its five most likely.
In `text` format the state is carried through the text (see `stream_eval_layout`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nextchar.data import IGNORE, frame_lines, stream_eval_layout
from nextchar.models import CharModel


@dataclass
class EvalResult:
    bpc: float  # bits per character
    top1: float  # next-character accuracy
    top5: float
    chars: int  # number of predicted positions

    def to_json(self) -> dict:
        return asdict(self)


class _Tally:
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
        self.top1 += (best[:, 0] == y).sum().item()
        self.top5 += (best == y[:, None]).any(dim=-1).sum().item()
        self.count += len(y)

    def result(self) -> EvalResult:
        n = max(self.count, 1)
        return EvalResult(self.nats / n / math.log(2), self.top1 / n, self.top5 / n, self.count)


@torch.no_grad()
def evaluate_stream(model: CharModel, data: Tensor, n_streams: int = 16, chunk: int = 512) -> EvalResult:
    """BPC of a `text` stream (index tensor starting with <start>), state carried throughout."""
    was_training = model.training
    model.eval()
    x, y = stream_eval_layout(data, n_streams)
    device = model.device
    x, y = x.to(device), y.to(device)
    state = model.initial_state(x.shape[0], device)
    tally = _Tally()
    for start in range(0, x.shape[1], chunk):
        logits, state = model(x[:, start : start + chunk], state)
        tally.add(logits, y[:, start : start + chunk])
    model.train(was_training)
    return tally.result()


@torch.no_grad()
def evaluate_lines(model: CharModel, lines: list[Tensor], batch_size: int = 128) -> EvalResult:
    """BPC of a `lines` corpus: every line framed "^"+line → line+<end>, each from s_0."""
    was_training = model.training
    model.eval()
    device = model.device
    tally = _Tally()
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]))  # similar lengths, less padding
    for start in range(0, len(order), batch_size):
        x, y = frame_lines([lines[i] for i in order[start : start + batch_size]])
        logits, _ = model(x.to(device))
        tally.add(logits, y.to(device))
    model.train(was_training)
    return tally.result()


def evaluate_encoded(model: CharModel, encoded: Tensor | list[Tensor]) -> EvalResult:
    """Evaluate a `text` stream or a list of lines (see `nextchar.data.encode_corpus`)."""
    if isinstance(encoded, Tensor):
        return evaluate_stream(model, encoded)
    return evaluate_lines(model, encoded)
