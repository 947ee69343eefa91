"""Online adaptation: the update rule that dynamic evaluation and personalisation share.

A trained model cannot know the names and words of the text in front of it; a compressor can,
because it learns from everything it has already seen. Adaptation lets the model do the same:
after a window of T characters has been scored, one gradient step on that window's loss L_seq
(mean −ln p over its symbols). Who reads the text and scores it lives above this module:
`nextchar.evaluation.dynamic` (dynamic evaluation, Krause et al., 2018: a whole text, all
weights) and `nextchar.completion.personal` (one person's output layer, a line at a time).
This module is the step itself.

Update rules, with θ0 the trained weights and g = ∇_θ L_seq (mean over the window's symbols):

    sgd:  θ ← θ − η g + λ (θ0 − θ)
    rms:  θ ← θ − η g / (RMS + ε·mean(RMS)) + min(λ · RMS / mean(RMS), 1) ⊙ (θ0 − θ)

`rms` is the rule of Krause et al.: RMS = sqrt(mean g²) per weight, measured once on windows of
the *training* text (`gradient_statistics`; that is the trained model's own data, nothing of
the evaluated text is looked at beforehand), so that weights whose gradients are usually small
take proportionally larger steps, and the decay back to θ0 is strongest on the weights that
usually move most. Unlike their code, ε is relative to the mean RMS (so η is in units of a
typical weight step and does not depend on the model's size), and the mean is over all adapted
elements (as in their paper). λ keeps adaptation local: without it the weights drift without
bound over a long text.

Divergence. A gradient or an update that is not finite is caught here: the weights are rolled
back to the last ones the caller marked good (`Adapter.checkpoint`, after they scored a window
sanely) and the event is counted. A loss that is not finite or far worse than guessing is the
caller's to notice (it calls `Adapter.rollback`). After `max_rollbacks` such events the adapter
stops updating: the weights stay at the last good ones.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nextchar.data.batches import IGNORE, LineBatches, StreamBatches
from nextchar.errors import UserError
from nextchar.models import CharModel, State, detach_state

RULES = ("rms", "sgd")
PARAM_SETS = ("all", "output")
# The output layer p_t = softmax(W_o s_t + W0_o) under each model kind's parameter names.
OUTPUT_NAMES = ("W_o", "W0_o", "head.weight", "head.bias", "output_bias")  # tied: P, b and W0^o, not E


@dataclass
class AdaptConfig:
    # Defaults measured on Tiny Shakespeare's validation text (docs/adaptation.md): the gain was
    # flat for η from 5e-5 to 2e-4 and λ up to 2e-3; T = 20 gained a little more at twice the cost.
    rule: str = "rms"  # rms (Krause et al.) | sgd
    lr: float = 1e-4  # η: with rms, about the size of one step of a typical weight
    window: int = 50  # T: characters scored, then learned from (one gradient step per window)
    decay: float = 2e-3  # λ: pull back towards the trained weights θ0 per step (0 = none)
    epsilon: float = 0.1  # rms: ε, relative to the mean RMS (damps weights that never moved in training)
    params: str = "all"  # all | output (only W_o, W0_o: the recurrent state is then unaffected)
    streams: int = 1  # text format: parallel streams that share the adapted weights (1 = Krause et al.)
    stat_windows: int = 200  # rms: training windows for the gradient statistics
    stat_batch: int = 16  # rms: streams per training window for the statistics
    diverge_factor: float = 3.0  # a window's loss above this × ln V nats/symbol counts as diverged
    max_rollbacks: int = 10  # stop adapting after this many divergences

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise UserError(f"adaptation rule must be one of {', '.join(RULES)}, not {self.rule!r}")
        if self.params not in PARAM_SETS:
            raise UserError(f"adapted parameters must be one of {', '.join(PARAM_SETS)}, not {self.params!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"AdaptConfig.lr must be a positive number, not {self.lr}", parameter="AdaptConfig.lr")
        if not (math.isfinite(self.decay) and 0 <= self.decay < 1):
            raise UserError(f"AdaptConfig.decay must be in [0, 1), not {self.decay}", parameter="AdaptConfig.decay")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise UserError(f"adaptation epsilon must be positive, not {self.epsilon}")
        for name in ("window", "streams", "stat_windows", "stat_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"adaptation {name} must be a whole number ≥ 1, not {value!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def adapted_names(model: nn.Module, params: str) -> list[str]:
    """Names of the parameters that adaptation changes (all, or only the output layer)."""
    names = [name for name, _ in model.named_parameters()]
    if params == "all":
        return names
    chosen = [name for name in names if name in OUTPUT_NAMES]
    if not chosen:
        raise UserError(f"this model has no output layer among {', '.join(OUTPUT_NAMES)}; adapt params='all'")
    return chosen


# ---------------------------------------------------------------------------------- statistics


@dataclass
class GradStats:
    """RMS of each parameter's gradient over training windows: RMS = sqrt(mean_k g_k²)."""

    rms: dict[str, Tensor]
    windows: int  # how many training windows were averaged
    window: int  # their length T
    batch: int  # streams (or lines) per window
    seconds: float = 0.0


def _stat_batches(train: Tensor | list[Tensor], window: int, batch: int) -> Iterator[tuple[Tensor, Tensor, bool]]:
    if isinstance(train, Tensor):
        batches: StreamBatches | LineBatches = StreamBatches(train, batch, window)
    else:
        # Whole lines, at most 256 symbols each (the trainer's default cut), in a fixed order.
        batches = LineBatches(train, batch, 256, seed=0)
    step = 0
    while True:
        b = batches(step)
        yield b.x, b.y, b.reset
        step += 1


def gradient_statistics(model: CharModel, train: Tensor | list[Tensor], config: AdaptConfig) -> GradStats:
    """Mean-squared gradients of L_seq on `config.stat_windows` windows of the TRAINING data.

    Windows are laid out as in training (text: `stat_batch` streams of T = `config.window`
    characters with the state carried; lines: `stat_batch` whole lines), the model in eval
    mode (no dropout), weights unchanged.
    """
    started = time.perf_counter()
    work = copy.deepcopy(model).eval()
    names = adapted_names(work, config.params)
    for name, p in work.named_parameters():
        p.requires_grad_(name in names)
    chosen = dict(work.named_parameters())
    sums = {name: torch.zeros_like(chosen[name]) for name in names}
    state: State | None = None
    count = 0
    for x, y, reset in _stat_batches(train, config.window, config.stat_batch):
        if count >= config.stat_windows:
            break
        x, y = x.to(work.device), y.to(work.device)
        if reset or state is None or state[0].shape[0] != x.shape[0]:
            state = work.initial_state(x.shape[0], work.device)
        logits, state = work(x, state)
        state = detach_state(state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)
        work.zero_grad(set_to_none=False)
        loss.backward()  # type: ignore[no-untyped-call]
        for name in names:
            grad = chosen[name].grad
            if grad is not None:
                sums[name].add_(grad * grad)
        count += 1
    if count == 0:
        raise UserError("no training windows to collect gradient statistics from; give a longer training text")
    rms = {name: (total / count).sqrt().detach() for name, total in sums.items()}
    return GradStats(rms, count, config.window, config.stat_batch, time.perf_counter() - started)


# ---------------------------------------------------------------------------------- the update


@dataclass
class StepOutcome:
    applied: bool  # the update was applied
    rolled_back: bool = False  # a non-finite gradient or update was caught and undone


class Adapter:
    """The online update on some of a model's parameters, with θ0, rollback and reset.

    `Adapter(model, config, stats)` changes `model`'s adapted parameters in place (callers pass
    a copy, or a view that owns them: nextchar.completion.personal) and nothing else: gradients are taken
    with torch.autograd.grad for the adapted parameters only, so no other parameter's `.grad`
    or `requires_grad` is touched (a shared model stays as it was). After the caller has scored
    a window with the current weights: `checkpoint()` (they scored sanely), then `learn(loss)`.
    """

    def __init__(self, model: nn.Module, config: AdaptConfig, stats: GradStats | None = None):
        if config.rule == "rms" and stats is None:
            raise UserError(
                "the rms adaptation rule needs gradient statistics from training text "
                "(give stats: gradient_statistics(model, text, config)) or use the sgd rule",
                parameter="stats",
            )
        self.config = config
        names = adapted_names(model, config.params)
        named = dict(model.named_parameters())
        self.params: dict[str, nn.Parameter] = {name: named[name] for name in names}
        for p in self.params.values():
            p.requires_grad_(True)
        self.theta0 = {name: p.detach().clone() for name, p in self.params.items()}
        self._good = {name: p.detach().clone() for name, p in self.params.items()}
        self.scale: dict[str, Tensor] = {}  # multiplies g in the step
        self.pull: dict[str, Tensor | float] = {}  # multiplies (θ0 − θ)
        if config.rule == "rms":
            assert stats is not None
            missing = [name for name in names if name not in stats.rms]
            if missing:
                raise UserError(
                    f"the gradient statistics lack parameters {missing}; collect them with the same "
                    "adapted parameter set"
                )
            total = sum(stats.rms[name].sum().item() for name in names)
            size = sum(stats.rms[name].numel() for name in names)
            mean = total / max(size, 1)
            if not (math.isfinite(mean) and mean > 0):
                raise UserError(
                    "the gradient statistics are all zero or not finite; collect them on more training text"
                )
            for name in names:
                rms = stats.rms[name].to(self.params[name].device)
                self.scale[name] = 1.0 / (rms + config.epsilon * mean)
                self.pull[name] = (config.decay * rms / mean).clamp(max=1.0)
        else:
            for name in names:
                self.pull[name] = config.decay
        self.steps = 0
        self.rollbacks = 0
        self.dirty = False  # an update has been applied since the last checkpoint()

    @property
    def stopped(self) -> bool:
        """True once more than `max_rollbacks` divergences have happened: no more updates."""
        return self.rollbacks > self.config.max_rollbacks

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.params.values()

    def checkpoint(self) -> None:
        """Remember the current weights as good (they have just scored a window sanely)."""
        with torch.no_grad():
            for name, p in self.params.items():
                self._good[name].copy_(p)
        self.dirty = False

    def rollback(self) -> None:
        """Back to the last good weights; counts one divergence."""
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self._good[name])
        self.rollbacks += 1
        self.dirty = False

    def reset(self) -> None:
        """Back to the trained weights θ0 (forget everything learned)."""
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.theta0[name])
                self._good[name].copy_(self.theta0[name])
        self.dirty = False

    def learn(self, loss: Tensor) -> StepOutcome:
        """One step on `loss` (already scored): its gradient, then the update of the module docstring."""
        if self.stopped or not loss.requires_grad:
            return StepOutcome(applied=False)
        names = list(self.params)
        found = torch.autograd.grad(loss, [self.params[n] for n in names], allow_unused=True)
        with torch.no_grad():
            grads = {name: g for name, g in zip(names, found, strict=True) if g is not None}
            if not grads:
                return StepOutcome(applied=False)
            if not all(bool(torch.isfinite(g).all()) for g in grads.values()):
                self.rollback()  # the weights that produced a non-finite gradient are suspect too
                return StepOutcome(applied=False, rolled_back=True)
            lr = self.config.lr
            for name, p in self.params.items():
                g = grads.get(name)
                if g is not None:
                    if name in self.scale:
                        g = g * self.scale[name]
                    p.add_(g, alpha=-lr)
                pull = self.pull[name]
                if isinstance(pull, Tensor) or pull > 0:
                    p.add_((self.theta0[name] - p) * pull)
            if not all(bool(torch.isfinite(p).all()) for p in self.params.values()):
                self.rollback()
                return StepOutcome(applied=False, rolled_back=True)
        self.steps += 1
        self.dirty = True
        return StepOutcome(applied=True)

    def delta_norm(self) -> float:
        """‖θ − θ0‖ over the adapted parameters (how far adaptation has moved the model)."""
        with torch.no_grad():
            return math.sqrt(sum(((p - self.theta0[n]) ** 2).sum().item() for n, p in self.params.items()))
