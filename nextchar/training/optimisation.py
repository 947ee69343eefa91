"""One optimiser step's ingredients: the loss, the optimizer, the moving average of the weights,
and the model as a training step calls it (DDP across processes, compiled if asked).

A step on the batch (x, y) of B rows, carrying the state s from the previous window:

    loss = mean over predicted positions of −ln p(y | x, s)      (sequence_loss; nats)
    g = ∇θ loss, scaled to ‖g‖ ≤ grad_clip                       (exploding gradients)
    θ ← AdamW(θ, g, lr(step)) or SGD with momentum               (make_optimizer)
    θ̄ ← θ̄ + (1 − β_n)(θ − θ̄),  β_n = min(ema, (1+n)/(10+n))      (moving_average)
    s ← s, detached                                              (truncated BPTT)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from nextchar.data.batches import IGNORE
from nextchar.errors import UserError
from nextchar.models import CharModel, State
from nextchar.training.config import TrainConfig, resolved

# What a training step calls: the model, or its DDP wrapper, or either compiled.
Forward = Callable[[torch.Tensor, State | None], tuple[torch.Tensor, State]]


def make_optimizer(model: CharModel, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or SGD with momentum, at the peak learning rate."""
    lr = resolved(config.lr, "lr")
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=resolved(config.weight_decay, "weight_decay"))
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum)
    raise UserError(f"optimizer must be adamw or sgd, not {config.optimizer!r}", parameter="optimizer")


def moving_average(model: CharModel, decay: float) -> AveragedModel:
    """An exponential moving average of `model`'s weights, updated by `update_parameters(model)`.

    The weights at a high learning rate jump around the minimum they are descending into; their
    average lies nearer it (Polyak averaging). Early on, the decay ramps up as
    min(decay, (1+n)/(10+n)) after n updates, so that the random initial weights are soon forgotten.
    """

    def update(
        averaged: tuple[torch.Tensor, ...] | list[torch.Tensor],
        current: tuple[torch.Tensor, ...] | list[torch.Tensor],
        n: torch.Tensor | int,
    ) -> None:
        n = int(n)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1 + n) / (10 + n)))

    return AveragedModel(model, multi_avg_fn=update)


def sequence_loss(
    model: Forward, x: torch.Tensor, y: torch.Tensor, state: State | None, bf16: bool
) -> tuple[torch.Tensor, State]:
    """Mean L_elt (cross-entropy, nats) over the predicted positions of a batch."""
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, new_state = model(x, state)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)
    return loss, new_state


def training_forward(
    model: CharModel, config: TrainConfig, device: torch.device, rank: int, world: int, step: int
) -> Forward:
    """The model as a training step calls it: wrapped in DDP across processes, compiled if asked."""
    forward: Forward = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # The models' buffers are constants: no need to broadcast them before every forward pass.
        no_sync: dict[str, Any] = (
            {"forward_sync_buffers": False}  # torch ≥ 2.13 deprecates broadcast_buffers
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": False}
        )
        forward = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync
        )
        # Dropout masks must differ between ranks; seeding by step keeps a resumed run repeatable.
        torch.manual_seed(config.seed + 1_000_003 * (rank + 1) + step)
    if config.compile:
        forward = torch.compile(forward)
    return forward
