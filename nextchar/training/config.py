"""Training settings: every knob of a run, the optimiser defaults measured per model kind, the
learning-rate schedule, the choice of precision, and what a run returns.

Torch is named in annotations only, so that building the command line's options (which show
these defaults) does not import it.

The schedule is a linear warm-up followed by a cosine decay:

    lr(s) = lr · (s + 1) / warmup                              for s < warmup
    lr(s) = low + (lr − low) · ½ (1 + cos(π · progress))       afterwards, low = lr · min_lr_ratio

where progress runs from 0 to 1 over the run: s / steps when the run has a step count, else
elapsed / time_budget (a time-budgeted run cannot know its step count in advance). A run that
only has a time budget also ends its warm-up by the clock at the latest, at WARMUP_SHARE of the
budget: its ramp is max((s + 1) / warmup, t / (WARMUP_SHARE · time_budget)), t the seconds since
its first step began. So a short run leaves the warm-up early and ends on a decaying learning
rate, while a run whose warm-up steps take less than that share of its budget warms up exactly
as by steps.

A time-budgeted run also evaluates by the clock: every time_budget / EVALUATIONS_PER_BUDGET
seconds (or every eval_interval steps, whichever comes first), but never more often than keeps
its evaluations within EVALUATION_SHARE of its time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nextchar.errors import UserError

if TYPE_CHECKING:
    import torch

    from nextchar.evaluation.bpc import EvalResult
    from nextchar.models import CharModel

# The optimiser's defaults depend on the model kind. The LSTM's were measured in 10-minute runs
# of the default 1×512 model on Tiny Shakespeare (README: a peak learning rate 13× higher, with
# AdamW's decoupled decay, lr × weight_decay a step, as the regulariser that makes it pay; a
# cosine that ends at 1% of the peak, not 5%). No kind averages its weights by default: at the
# end of a run the average scored no better (README). The other kinds keep the values they were
# benchmarked with.
BASE_OPTIMISER_DEFAULTS: dict[str, float] = {
    "lr": 3e-3,
    "warmup_steps": 100,
    "weight_decay": 0.1,
    "min_lr_ratio": 0.05,
    "ema": 0.0,
}
KIND_OPTIMISER_DEFAULTS: dict[str, dict[str, float]] = {
    "lstm": {"lr": 4e-2, "warmup_steps": 300, "weight_decay": 0.2, "min_lr_ratio": 0.01},
}

PRECISIONS = ("auto", "bf16", "fp32")

# A time-budgeted run warms up over 10% of its budget at most. The LSTM's 300 warm-up steps take
# about 50 s of a 10-minute run at its measured 6 steps a second (docs/tuning.md), 8% of it, so
# that run warms up by its steps as before; a 90-second run warms up over its first 9 s.
WARMUP_SHARE = 0.1
# Ten points by the clock show a short run's curve in the progress bar and bpc.png; the default
# 10-minute run evaluates every 200 steps (about 33 s) anyway, more often than every 60 s.
EVALUATIONS_PER_BUDGET = 10
# Evaluations by the clock are spaced at least 10× their own cost apart: at most a tenth of the
# run goes to them, however large the validation text.
EVALUATION_SHARE = 0.1

_Setting = TypeVar("_Setting", int, float)


def optimiser_default(kind: str, name: str) -> float:
    """The default of `name` (a key of BASE_OPTIMISER_DEFAULTS) for models of `kind`."""
    return KIND_OPTIMISER_DEFAULTS.get(kind, {}).get(name, BASE_OPTIMISER_DEFAULTS[name])


def resolved(value: _Setting | None, name: str) -> _Setting:
    """The value of the optimiser setting `name`, which `TrainConfig.for_kind` has filled in.

    The optimiser settings are None until then so that "not given" can mean "the kind's default";
    everything that computes with them runs on a resolved config.
    """
    if value is None:
        raise ValueError(f"TrainConfig.{name} is unset; resolve the kind's defaults with for_kind() first")
    return value


@dataclass
class TrainConfig:
    # data
    batch_size: int = 32  # B: parallel streams (text) or lines (lines) per step
    seq_len: int = 128  # T: characters per truncated-BPTT window (text format)
    max_line_len: int = 256  # lines longer than this are cut for training (lines format)
    # optimisation
    optimizer: str = "adamw"  # adamw | sgd
    lr: float | None = None  # peak learning rate (None: the model kind's default, see for_kind)
    min_lr_ratio: float | None = None  # the cosine ends at lr × this (None: the kind's default)
    warmup_steps: int | None = None  # linear warm-up from 0 (None: the kind's default)
    weight_decay: float | None = None  # AdamW's decoupled decay (None: the kind's default)
    momentum: float = 0.9  # SGD only
    grad_clip: float = 1.0  # max global gradient norm (exploding gradients); 0 disables
    # decay of the moving average of the weights that evaluations score and checkpoints keep;
    # 0: the trained weights themselves (None: the kind's default)
    ema: float | None = None
    # duration: whichever comes first
    steps: int | None = None  # stop after this many optimiser steps
    time_budget: float | None = 600.0  # seconds of wall clock, evaluation included
    eval_interval: int = 200  # evaluate on the validation text every this many steps
    # system
    seed: int = 1337  # seeds the weights, the line order and dropout
    precision: str = "auto"  # auto | bf16 | fp32 (bf16 autocast where the CPU has bf16 units)
    device: str = "auto"  # auto | cpu | cuda | mps (auto: cuda if available, else mps, else cpu)
    compile: bool = False  # torch.compile the training forward pass
    memory: bool = True  # at the end, index the training text for exact recall (nextchar.data.memory)

    def for_kind(self, kind: str) -> TrainConfig:
        """This config with the defaults of models of `kind` where an optimiser setting
        (those of BASE_OPTIMISER_DEFAULTS) is unset."""
        unset: dict[str, Any] = {
            name: optimiser_default(kind, name) for name in BASE_OPTIMISER_DEFAULTS if getattr(self, name) is None
        }
        return replace(self, **unset)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TrainConfig:
        """The config recorded by `to_json`; keys of other versions' settings are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})


@dataclass
class TrainResult:
    out: Path  # the run's directory
    steps: int  # optimiser steps taken, those before a resume included
    elapsed: float  # seconds of training and evaluation, those before a resume included
    best_val: EvalResult | None  # the best evaluation (the checkpoint's), None on ranks other than 0
    final_val: EvalResult | None  # the last evaluation, None on ranks other than 0
    chars_per_second: float  # of the whole job: all ranks together
    model: CharModel | None = None  # the final trained weights (not necessarily the best checkpoint's,
    # nor the moving average that the evaluations use when config.ema > 0)
    memory_symbols: int = 0  # symbols of training text in the checkpoint's memory (0: none built)
    mixer_positions: int = 0  # positions its mixer was fitted on
    memory_seconds: float = 0.0  # the time both took, after training
    terminated: bool = False  # SIGTERM stopped the run (evaluated and saved; `--resume` goes on)


def cpu_has_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX), i.e. autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast: `auto` uses it where it is fast (GPUs, bf16 CPUs)."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be auto, bf16 or fp32, not {precision!r}", parameter="precision")
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
    return precision == "bf16"


def learning_rate(config: TrainConfig, step: int, elapsed: float, warmup_from: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to lr·min_lr_ratio over the run (see the module docstring).

    Progress through the run is step/steps when --steps is set, else elapsed/time_budget; then
    the warm-up also ends by the clock, WARMUP_SHARE of the budget after `warmup_from` (the
    elapsed time when the first step began: the setup before it is no part of the warm-up).
    """
    peak = resolved(config.lr, "lr")
    warmup_steps = resolved(config.warmup_steps, "warmup_steps")
    by_clock = 0.0  # a run with only a time budget ends its warm-up by the clock at the latest
    if config.time_budget and not config.steps:
        by_clock = (elapsed - warmup_from) / (WARMUP_SHARE * config.time_budget)
    if step < warmup_steps and by_clock < 1.0:
        return peak * max((step + 1) / warmup_steps, by_clock)
    if config.steps:
        progress = step / config.steps
    elif config.time_budget:
        progress = elapsed / config.time_budget
    else:
        progress = 0.0
    progress = min(max(progress, 0.0), 1.0)
    low = peak * resolved(config.min_lr_ratio, "min_lr_ratio")
    return low + (peak - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
