"""The mixer: the RNN's and the memory's predictions combined, with weights chosen per position.

Per position, with p_rnn the RNN's softmax and p_mem the memory's estimate (estimator.py), the
mixture is their weighted geometric mean, renormalised (logistic mixing, as PAQ and cmix mix
their models' predictions, here over the whole alphabet at once):

    log q(c) = a · log p_rnn(c) + β · log p_mem(c) − log Z,     Z = Σ_c p_rnn(c)^a · p_mem(c)^β

The weights (a, β) are the output of a small gate, g(f) = W2 tanh(W1 f + b1) + b2, fed with what
says how far each prediction can be trusted here (`features`): how long the longest context
suffix the memory holds is, how often it occurs and whether only one symbol ever followed it,
the entropies and top probabilities of p_rnn and p_mem, and whether they agree on their first
choice. A long match always followed by one symbol earns a large β; a short, common one leaves
the RNN in charge. Where the memory holds nothing (it is empty), q is p_rnn itself. The gate
starts at a = 1, β = 0 for every input (W2 = 0, b2 = (1, 0)): the RNN exactly.

Measured against weights looked up in a table by (match length, count, determinism), as PAQ's
mixers select theirs (2026-12-01, AMD EPYC Zen 4, first 40,000 validation characters of Tiny
Shakespeare, 10-minute model, each half scored by a mixer fitted on the other): RNN 1.982 BPC,
table of 210 buckets 1.935, gate 1.928; the table with the RNN's confidence as well (840
buckets) overfits, 1.948.

Fitting (`fit`) minimises the mean −log q of positions the memory did not hold (the checkpoint's
validation split) or, where there are none, of the training text with leave-one-out counts
(estimator.py), by Adam on the whole set at once. Either way the memory never counts the
occurrence it is predicting; with its own copy counted, every position would look perfectly
recalled and β would be learned far too large. The gate's weights are saved in config.json.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nextchar.errors import UserError
from nextchar.recall.estimator import ESTIMATOR, ESTIMATORS, Context, Memory

FORMAT = 1
FEATURES = 8
HIDDEN = 16
FIT_STEPS = 300
FIT_LR = 0.01


def features(stats: np.ndarray, rnn_logp: np.ndarray, memory_logp: np.ndarray) -> np.ndarray:
    """The gate's inputs (N, FEATURES), float32, from each position's match `stats` (N, 3: the
    longest distinct context's depth, count and distinct followers; 0s where the memory holds
    none) and the two log-distributions (N, V). NumPy: a search asks for a few rows at a time,
    where each torch operation's fixed cost would be most of the work."""
    stats = np.asarray(stats, dtype=np.float32).reshape(-1, 3)
    log_v = math.log(rnn_logp.shape[-1])
    p_rnn, p_mem = np.exp(rnn_logp), np.exp(memory_logp)
    out = np.empty((len(stats), FEATURES), dtype=np.float32)
    out[:, 0] = stats[:, 2] == 1
    out[:, 1] = np.log2(1 + stats[:, 1]) / 8
    out[:, 2] = np.log2(1 + stats[:, 0]) / 6
    out[:, 3] = -np.where(p_rnn > 0, p_rnn * rnn_logp, 0).sum(-1) / log_v
    out[:, 4] = -(p_mem * memory_logp).sum(-1) / log_v
    out[:, 5] = p_rnn.max(-1)
    out[:, 6] = p_mem.max(-1)
    out[:, 7] = rnn_logp.argmax(-1) == memory_logp.argmax(-1)
    return out


def _gate() -> nn.Sequential:
    first, last = nn.Linear(FEATURES, HIDDEN), nn.Linear(HIDDEN, 2)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, 0.0]))
    return nn.Sequential(first, nn.Tanh(), last)


def _linears(gate: nn.Sequential) -> tuple[nn.Linear, nn.Linear]:
    first, last = gate[0], gate[2]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    return first, last


@dataclass
class Mixer:
    """The gate, and the estimator p_mem is computed with (it was fitted on that one's output)."""

    gate: nn.Sequential
    estimator: str = ESTIMATOR
    positions: int = 0  # positions it was fitted on

    @classmethod
    def rnn_only(cls, estimator: str = ESTIMATOR) -> Mixer:
        return cls(_gate(), estimator)

    def __post_init__(self) -> None:
        self._freeze()

    def _freeze(self) -> None:
        """The gate's weights as NumPy arrays, for `mix` (after fitting or loading)."""
        first, last = _linears(self.gate)
        self._w1, self._b1 = first.weight.detach().numpy().T.copy(), first.bias.detach().numpy().copy()
        self._w2, self._b2 = last.weight.detach().numpy().T.copy(), last.bias.detach().numpy().copy()

    def weights(self, inputs: np.ndarray) -> np.ndarray:
        """(a, β) per position (N, 2) from the gate's inputs (`features`)."""
        out: np.ndarray = np.tanh(inputs @ self._w1 + self._b1) @ self._w2 + self._b2
        return out

    def mix(self, rnn_logp: Tensor, memory_logp: Tensor, stats: Tensor) -> Tensor:
        """log q (N, V) from log p_rnn, log p_mem (N, V) and each position's match stats (N, 3)."""
        rnn, mem = rnn_logp.detach().float().numpy(), memory_logp.detach().float().numpy()
        stats_np = stats.numpy()
        w = self.weights(features(stats_np, rnn, mem))
        z = w[:, :1] * rnn + w[:, 1:] * mem
        z = z - z.max(-1, keepdims=True)
        logq = z - np.log(np.exp(z).sum(-1, keepdims=True))
        out = np.where(stats_np[:, 1:2] > 0, logq, rnn)  # an empty memory: the RNN itself
        return torch.from_numpy(out.astype(np.float32))

    def next_logprobs(self, memory: Memory, contexts: Sequence[Context], rnn_logp: Tensor) -> Tensor:
        """log q (N, V) after each of N contexts, given the RNN's log p there (N, V)."""
        answers = [memory.predict(context, self.estimator) for context in contexts]
        memory_logp = torch.from_numpy(np.stack([logp for logp, _ in answers]))
        stats = torch.tensor([found for _, found in answers], dtype=torch.long).reshape(len(contexts), 3)
        return self.mix(rnn_logp.float(), memory_logp, stats)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "estimator": self.estimator,
            "positions": self.positions,
            "gate": {name: _rounded(value.tolist()) for name, value in self.gate.state_dict().items()},
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Mixer:
        """A mixer `to_json` wrote; anything else is one line naming what is wrong."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{where}: the mixer's description is not format {FORMAT}; run `nextchar index` again")
        if data.get("estimator") not in ESTIMATORS:
            raise UserError(f"{where}: the mixer's estimator {data.get('estimator')!r} is not one of {ESTIMATORS}")
        positions = data.get("positions")
        if type(positions) is not int or positions < 0:
            raise UserError(f"{where}: the mixer's positions must be a whole number ≥ 0, not {positions!r}")
        gate = _gate()
        stored = data.get("gate")
        expected = gate.state_dict()
        if not isinstance(stored, dict) or set(stored) != set(expected):
            raise UserError(f"{where}: the mixer's gate must hold {', '.join(expected)}; run `nextchar index` again")
        loaded = {}
        for name, tensor in expected.items():
            value = _tensor(stored[name], tuple(tensor.shape))
            if value is None:
                raise UserError(f"{where}: the mixer's {name} must be finite numbers of shape {tuple(tensor.shape)}")
            loaded[name] = value
        gate.load_state_dict(loaded)
        gate.requires_grad_(False)
        return cls(gate, data["estimator"], positions)


def _rounded(value: Any) -> Any:
    return [_rounded(v) for v in value] if isinstance(value, list) else round(float(value), 7)


def _tensor(value: Any, shape: tuple[int, ...]) -> Tensor | None:
    """`value` (nested JSON lists) as a float tensor of `shape`, or None when it is not one."""

    def flat(v: Any, dims: tuple[int, ...]) -> list[float] | None:
        if not dims:
            ok = type(v) in (int, float) and math.isfinite(v) and abs(v) <= 1e6
            return [float(v)] if ok else None
        if not isinstance(v, list) or len(v) != dims[0]:
            return None
        out: list[float] = []
        for item in v:
            part = flat(item, dims[1:])
            if part is None:
                return None
            out += part
        return out

    values = flat(value, shape)
    return None if values is None else torch.tensor(values, dtype=torch.float32).reshape(shape)


def _mixed(weights: Tensor, rnn_logp: Tensor, memory_logp: Tensor, stats: Tensor) -> Tensor:
    """log q as `Mixer.mix` computes it, in torch, for fitting (gradients through the weights)."""
    mixed = torch.log_softmax(weights[:, :1] * rnn_logp + weights[:, 1:] * memory_logp, dim=-1)
    return torch.where(stats[:, 1:2] > 0, mixed, rnn_logp)


def fit(rnn_logp: Tensor, memory_logp: Tensor, stats: Tensor, targets: Tensor, estimator: str = ESTIMATOR) -> Mixer:
    """The gate that minimises the mean −log q of these positions (the module docstring);
    (N, V), (N, V), (N, 3), (N,). Deterministic: the same positions give the same gate."""
    generator = torch.random.fork_rng()
    with generator:
        torch.manual_seed(0)
        mixer = Mixer.rnn_only(estimator)
    rnn_logp, memory_logp = rnn_logp.float(), memory_logp.float()
    inputs = torch.from_numpy(features(stats.numpy(), rnn_logp.numpy(), memory_logp.numpy()))
    optimiser = torch.optim.Adam(mixer.gate.parameters(), lr=FIT_LR)
    for _ in range(FIT_STEPS if len(targets) else 0):
        optimiser.zero_grad()
        logq = _mixed(mixer.gate(inputs), rnn_logp, memory_logp, stats)
        loss = -logq.gather(1, targets[:, None]).mean()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        optimiser.step()
    mixer.positions = len(targets)
    mixer.gate.requires_grad_(False)
    mixer._freeze()
    return mixer
