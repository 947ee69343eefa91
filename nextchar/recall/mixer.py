"""The mixer: the RNN's and the memory's predictions combined, with weights chosen per position.

Per position, with p_rnn the RNN's softmax and p_mem^(1) … p_mem^(M) the memory's estimates
(estimator.py: interpolated from every distinct context found, and from all but the longest),
the mixture is their weighted geometric mean, renormalised (logistic mixing, as PAQ and cmix mix
their models' predictions, here over the whole alphabet at once):

    log q(c) = a · log p_rnn(c) + Σ_m β_m · log p_mem^(m)(c) − log Z

with Z the sum over c of the exponential. The weights (a, β_1 … β_M) are the output of a small
gate, g(f) = W2 tanh(W1 f + b1) + b2, fed with what says how far each prediction can be trusted
here (`features`): for the longest context suffix the memory holds and the next shorter one, how
long it is, how often it occurs, how many symbols followed it and whether only one ever did; the
entropy and top probability of each distribution, and whether each p_mem agrees with p_rnn on
its first choice. A long match always followed by one symbol earns a large β; a short, common
one leaves the RNN in charge; the difference of the two depths says how much the longest
context itself adds. Where the memory holds nothing (it is empty), q is p_rnn itself. The gate
starts at a = 1, every β = 0 (W2 = 0, b2 = (1, 0, …)): the RNN exactly.

The weights are clipped to [0, WEIGHT_MAX]. Unclipped, a gate fitted on one half of the
embedded corpus's validation text gave a weight far outside what the other half's inputs had
taught it and scored 2.157 BPC on that half, worse than the RNN's 1.724; which seed it started
from decided whether it did (1.599 to 2.157). Clipped, the same three seeds gave 1.607 to 1.610.

Two depths against one, and clipping (2026-12-01, AMD EPYC Zen 4, `python -m bench.memory
--no-adapt`, each half of the validation text scored by a mixer fitted on the other; the
10-minute Tiny Shakespeare model, the bundled model on the embedded corpus): one p_mem and its
top level's stats, unclipped, 1.948 and 1.518 BPC (the RNN alone 1.995 and 1.610); two depths
and both levels' stats, unclipped, 1.945 and 1.528; clipped, 1.947 and 1.462.

Measured, with one p_mem, against weights looked up in a table by (match length, count,
determinism), as PAQ's mixers select theirs (2026-12-01, AMD EPYC Zen 4, first 40,000 validation characters of Tiny
Shakespeare, 10-minute model, each half scored by a mixer fitted on the other): RNN 1.982 BPC,
table of 210 buckets 1.935, gate 1.928; the table with the RNN's confidence as well (840
buckets) overfits, 1.948.

Fitting (`fit`) minimises the mean −log q of positions the memory did not hold (the checkpoint's
validation split) or, where there are none, of the training text with leave-one-out counts
(estimator.py), by Adam on the whole set at once. Either way the memory never counts the
occurrence it is predicting; with its own copy counted, every position would look perfectly
recalled and β would be learned far too large. The gate's weights are saved in config.json.

Adapting (`nextchar eval --adapt`), the memory learns what it reads (nextchar.recall.online) and
the fixed gate, fitted on the training text's memory alone, no longer knows how far to trust it:
`OnlineMixer` is a gate of its own, learned while reading, over the training text's and the
online memory's predictions apart.
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
from nextchar.recall.estimator import DEPTHS, ESTIMATOR, ESTIMATORS, STATS, Context, Memory

FORMAT = 2
HIDDEN = 16
WEIGHT_MAX = 3.0  # each weight the gate gives is clipped to [0, WEIGHT_MAX] (see the docstring)
FIT_STEPS = 300
FIT_LR = 0.01
# The online gate (OnlineMixer): once every ONLINE_EVERY positions scored, ONLINE_STEPS Adam steps
# of ONLINE_LR on the last ONLINE_REPLAY positions scored
ONLINE_EVERY = 800
ONLINE_INPUTS = DEPTHS + 2  # its p_mem: both depths from every index, then the static and the online alone
ONLINE_STATS = STATS + 3  # … match_stats of every index, then the online index's top level
ONLINE_STEPS = 10
ONLINE_LR = 0.01
ONLINE_REPLAY = 8000


def features(stats: np.ndarray, rnn_logp: np.ndarray, memory_logp: np.ndarray) -> np.ndarray:
    """The gate's inputs (N, F), float32, from each position's match `stats` (N, 3·k: for each of
    k levels its depth, count and distinct followers; 0s where the memory holds none) and the
    log-distributions: the RNN's (N, V) and the memory's (N, M, V). Per level: whether one symbol
    only ever followed, log2(1 + count) / 8, log2(1 + depth) / 6, log2(1 + distinct) / 6; the
    RNN's entropy (over log V) and top probability; per p_mem, its entropy, top probability and
    whether its first choice is the RNN's. Compiled (gating.py)."""
    from nextchar.recall import gating  # numba: imported with the first memory, as estimator.py's

    out: np.ndarray = gating.features(*_compiled_inputs(stats, rnn_logp, memory_logp))
    return out


def _compiled_inputs(
    stats: np.ndarray, rnn_logp: np.ndarray, memory_logp: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arrays as gating.py's functions take them (numba compiles for one type of each):
    stats (N, STATS) int64, log p_rnn and log p_mem float32, contiguous."""
    return (
        np.ascontiguousarray(stats, dtype=np.int64).reshape(len(rnn_logp), -1),
        np.ascontiguousarray(rnn_logp, dtype=np.float32),
        np.ascontiguousarray(memory_logp, dtype=np.float32),
    )


def feature_count(stats: int, inputs: int) -> int:
    """F of `features` for `stats` numbers and `inputs` memory distributions per position."""
    return 4 * (stats // 3) + 2 + 3 * inputs


def _gate(stats: int = STATS, inputs: int = DEPTHS) -> nn.Sequential:
    """g(f) = W2 tanh(W1 f + b1) + b2, one weight per distribution (the RNN's first); it starts
    at the RNN alone (W2 = 0, b2 = (1, 0, …))."""
    first, last = nn.Linear(feature_count(stats, inputs), HIDDEN), nn.Linear(HIDDEN, 1 + inputs)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[0] = 1.0
    return nn.Sequential(first, nn.Tanh(), last)


def _linears(gate: nn.Sequential) -> tuple[nn.Linear, nn.Linear]:
    first, last = gate[0], gate[2]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    return first, last


def _clipped(weights: Tensor) -> Tensor:
    """The gate's weights as `Mixer.mix` uses them (gating.mixed), in torch: clipped to [0, WEIGHT_MAX]."""
    return weights.clamp(0.0, WEIGHT_MAX)


def _mixed(weights: Tensor, rnn_logp: Tensor, memory_logp: Tensor, held: Tensor) -> Tensor:
    """log q as `Mixer.mix` computes it, in torch, for fitting (gradients through the weights)."""
    z = weights[:, :1] * rnn_logp + torch.einsum("nm,nmv->nv", weights[:, 1:], memory_logp)
    return torch.where(held[:, None], torch.log_softmax(z, dim=-1), rnn_logp)


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
        """The gate's weights as NumPy arrays, for `mix` (after fitting or loading): W1ᵀ, b1, W2ᵀ, b2."""
        first, last = _linears(self.gate)
        self._w1, self._b1 = first.weight.detach().numpy().T.copy(), first.bias.detach().numpy().copy()
        self._w2, self._b2 = last.weight.detach().numpy().T.copy(), last.bias.detach().numpy().copy()

    def mix(self, rnn_logp: Tensor, memory_logp: Tensor, stats: Tensor) -> Tensor:
        """log q (N, V) from log p_rnn (N, V), log p_mem (N, DEPTHS, V) and each position's
        match stats (N, STATS)."""
        rnn, mem = rnn_logp.detach().float().numpy(), memory_logp.detach().float().numpy()
        return torch.from_numpy(self.mix_arrays(rnn, mem, stats.numpy()))

    def mix_arrays(self, rnn_logp: np.ndarray, memory_logp: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """`mix` on arrays: log q (N, V) float32 from float32 arrays of log p_rnn (N, V) and log
        p_mem (N, DEPTHS, V), and the stats (N, STATS)."""
        from nextchar.recall import gating  # numba: imported with the first memory

        inputs = _compiled_inputs(stats, rnn_logp, memory_logp)
        out: np.ndarray = gating.mixed(self._w1, self._b1, self._w2, self._b2, WEIGHT_MAX, *inputs)
        return out

    def next_logprobs(self, memory: Memory, contexts: Sequence[Context], rnn_logp: Tensor) -> Tensor:
        """log q (N, V) after each of N contexts, given the RNN's log p there (N, V)."""
        memory_logp, stats = memory.predict_rows(memory.rows(contexts), self.estimator)
        return torch.from_numpy(self.mix_arrays(rnn_logp.detach().float().numpy(), memory_logp, stats))

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


def fit(rnn_logp: Tensor, memory_logp: Tensor, stats: Tensor, targets: Tensor, estimator: str = ESTIMATOR) -> Mixer:
    """The gate that minimises the mean −log q of these positions (the module docstring);
    (N, V), (N, DEPTHS, V), (N, STATS), (N,). Deterministic: the same positions give the same gate."""
    generator = torch.random.fork_rng()
    with generator:
        torch.manual_seed(0)
        mixer = Mixer.rnn_only(estimator)
    rnn_logp, memory_logp = rnn_logp.float(), memory_logp.float()
    inputs = torch.from_numpy(features(stats.numpy(), rnn_logp.numpy(), memory_logp.numpy()))
    held = stats[:, 1] > 0
    optimiser = torch.optim.Adam(mixer.gate.parameters(), lr=FIT_LR)
    for _ in range(FIT_STEPS if len(targets) else 0):
        optimiser.zero_grad()
        logq = _mixed(_clipped(mixer.gate(inputs)), rnn_logp, memory_logp, held)
        loss = -logq.gather(1, targets[:, None]).mean()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        optimiser.step()
    mixer.positions = len(targets)
    mixer.gate.requires_grad_(False)
    mixer._freeze()
    return mixer


class OnlineMixer:
    """A gate learned while it reads, as PAQ's mixers learn theirs: each window is mixed with the
    gate as it stands; once ONLINE_EVERY more positions have been scored, the gate takes
    ONLINE_STEPS Adam steps on the last ONLINE_REPLAY of them. What dynamic evaluation does to
    the weights, done to the mixture: score first, learn after.

    Its inputs are those of the memory learning online (nextchar.recall.online): log p_mem of
    every index together at both depths, of the training text's indexes alone and of the online
    one alone (ONLINE_INPUTS rows); its stats, ONLINE_STATS numbers (match_stats of every index
    together, and the online index's top level). Where the training text and what was just read
    disagree, the gate learns which to believe; the fixed gate sees only their summed counts.
    It starts at the RNN alone. Measured against the fixed gate (2026-12-01, AMD EPYC Zen 4,
    `python -m bench.memory`, each half of the validation text, the model adapted as well):
    1.791 → 1.771 BPC with Tiny Shakespeare's 10-minute model, 1.308 → 1.144 with the bundled
    model on the embedded corpus. Learning every 800 positions, not every 50-symbol window:
    the gate learned 16 times as often, and worse (1.794 on Tiny Shakespeare). Its weights are
    not clipped as the fixed gate's are: it learns from the text it goes on to score, where the
    fixed gate must carry over to text it never saw, and clipping cost it 0.007 and 0.014 BPC
    (1.778 and 1.158)."""

    def __init__(self, seed: int = 0) -> None:
        generator = torch.random.fork_rng()
        with generator:
            torch.manual_seed(seed)
            self.gate = _gate(ONLINE_STATS, ONLINE_INPUTS)
        self.optimiser = torch.optim.Adam(self.gate.parameters(), lr=ONLINE_LR)
        self._seen: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]] = []  # inputs, rnn, memory, held, targets
        self._held = 0  # positions in _seen
        self._fresh = 0  # positions scored since the gate last learned

    def mix(self, rnn_logp: Tensor, memory_logp: Tensor, stats: Tensor) -> Tensor:
        """log q (N, V) from log p_rnn (N, V), log p_mem (N, ONLINE_INPUTS, V), stats (N, ONLINE_STATS)."""
        rnn, mem = rnn_logp.detach().float(), memory_logp.detach().float()
        inputs, held = torch.from_numpy(features(stats.numpy(), rnn.numpy(), mem.numpy())), stats[:, 1] > 0
        with torch.no_grad():
            logq = _mixed(self.gate(inputs), rnn, mem, held)
        self._last = (inputs, rnn, mem, held)
        return logq

    def learn(self, targets: Tensor) -> None:
        """Learn from the positions `mix` just scored, whose symbols were `targets` (N,)."""
        self._seen.append((*self._last, targets))
        self._held += len(targets)
        self._fresh += len(targets)
        if self._fresh < ONLINE_EVERY:
            return
        self._fresh = 0
        while len(self._seen) > 1 and self._held - len(self._seen[0][4]) >= ONLINE_REPLAY:
            self._held -= len(self._seen.pop(0)[4])
        inputs, rnn, mem, held, y = (torch.cat([part[i] for part in self._seen]) for i in range(5))
        for _ in range(ONLINE_STEPS):
            self.optimiser.zero_grad()
            loss = -_mixed(self.gate(inputs), rnn, mem, held).gather(1, y[:, None]).mean()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            self.optimiser.step()
