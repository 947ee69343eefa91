"""Between the NumPy engine and nextchar's PyTorch models and checkpoints (torch imported lazily).

The engine's parameters are exactly the `rnn` model's (nextchar.models.LectureRNN): the same
names, the same shapes, x_t one-hot over the vocabulary (ℓ = v, <start>/<end>/<unk> at
indices 0/1/2). So a model trained here is saved as an ordinary checkpoint that every other
command uses, and an `rnn` checkpoint loads here.

A `window` checkpoint is the lecture's other model: its p_t is the output function g of the
window machine, whose transition is the fixed-weight RNN of `statemachine.shift_weights`.
`window_from_checkpoint` builds that RNN, whose predictions equal the window model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from nextchar.lecture.errors import LectureInputError
from nextchar.lecture.rnn import F1_CHOICES, Batch, FloatArray, Params
from nextchar.lecture.statemachine import shift_weights
from nextchar.text import START, Vocabulary

if TYPE_CHECKING:
    from nextchar.checkpoint import Checkpoint
    from nextchar.models import LectureRNN, WindowModel


@dataclass
class Converted:
    """A checkpoint in the engine's terms."""

    params: Params  # float64
    f1: str  # tanh | relu
    vocab: Vocabulary
    format: str  # "lines" or "text", as the model was trained
    s0: FloatArray | None = None  # the initial state (None: zeros, as the `rnn` model starts)
    meta: dict[str, Any] = field(default_factory=dict)  # the checkpoint's config.json


def params_to_tensors(params: Params) -> dict[str, Any]:
    """The five arrays as a LectureRNN state dict (float32, as every nextchar checkpoint)."""
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for name, a in params.items()}


def to_torch(params: Params, f1: str = "tanh") -> LectureRNN:
    """A nextchar `rnn` model holding these weights, in the parameters' dtype (float64 stays float64)."""
    import torch

    from nextchar.models import ModelConfig, build_model

    if f1 not in F1_CHOICES:
        raise LectureInputError(f"f1 must be one of {', '.join(F1_CHOICES)}, not {f1!r}")
    if params.ell != params.v:
        raise LectureInputError(
            f"the `rnn` model reads one-hot characters of its own vocabulary, so ℓ must "
            f"equal v; these weights have ℓ = {params.ell} (W_sx) and v = {params.v} (W_o)"
        )
    if params.v < 4:
        raise LectureInputError(
            f"a nextchar vocabulary has at least 4 symbols (<start>, <end>, <unk> and a "
            f"character); these weights have v = {params.v}"
        )
    dtype = torch.float64 if params.dtype == np.float64 else torch.float32
    config = ModelConfig(kind="rnn", vocab_size=params.v, hidden_size=params.m, nonlinearity=f1)
    model = cast("LectureRNN", build_model(config))  # kind "rnn" builds a LectureRNN
    model = model.to(dtype)
    model.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(a)).to(dtype) for name, a in params.items()})
    return model


def from_torch(model: Any) -> tuple[Params, str]:
    """(params as float64, f1) of a nextchar `rnn` model."""
    config = model.config
    if config.kind != "rnn":
        raise LectureInputError(_wrong_kind(config.kind, "model"))
    arrays = {
        name: getattr(model, name).detach().cpu().double().numpy().copy()
        for name in ("W_sx", "W_ss", "W0_ss", "W_o", "W0_o")
    }
    return Params(**arrays), config.nonlinearity


def _wrong_kind(kind: str, what: str) -> str:
    hint = (
        "; a window checkpoint is the window machine: use `nextchar lecture load`, which reads it as a fixed-weight RNN"
        if kind == "window"
        else ""
    )
    return (
        f"{what} is a `{kind}` model; the lecture engine converts only the lecture's RNN "
        f"(`nextchar train --kind rnn`){hint}"
    )


def save_as_checkpoint(
    directory: str | Path,
    params: Params,
    f1: str,
    vocab: Vocabulary,
    corpus_format: str = "lines",
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> None:
    """Write a normal nextchar `rnn` checkpoint (eval, sample, predict, complete, serve use it).

    The weights are stored in float32, as every nextchar checkpoint.
    """
    from nextchar.checkpoint import save_checkpoint

    if len(vocab) != params.v:
        raise LectureInputError(f"the vocabulary has {len(vocab)} symbols but W_o has v = {params.v} rows")
    if corpus_format not in ("lines", "text"):
        raise LectureInputError(f"the corpus format must be lines or text, not {corpus_format!r}")
    model = to_torch(params.astype(np.float32), f1)
    save_checkpoint(
        Path(directory),
        model,
        vocab,
        corpus_format,
        training={"trainer": "nextchar.lecture (NumPy, hand-written BPTT)", **(training or {})},
        metrics=metrics,
    )


def _load(directory: str | Path | None) -> Checkpoint:
    from nextchar.checkpoint import load_checkpoint

    return load_checkpoint(directory)


def from_checkpoint(directory: str | Path | None) -> Converted:
    """Load a nextchar `rnn` checkpoint into the engine (float64). Other kinds are refused."""
    ckpt = _load(directory)
    if ckpt.model.config.kind != "rnn":
        raise LectureInputError(_wrong_kind(ckpt.model.config.kind, f"{ckpt.path}"))
    params, f1 = from_torch(ckpt.model)
    return Converted(params, f1, ckpt.vocab, ckpt.format, None, ckpt.meta)


def window_from_checkpoint(directory: str | Path | None) -> Converted:
    """A nextchar `window` checkpoint as the lecture's fixed-weight RNN plus its classifier.

        s_t = W^sx x_t + W^ss s_{t-1}  (fixed shift weights, ℓ = v, m = c·v, s_0 = c × <start>)
        p_t = softmax(W^o s_t + W0^o)  (the window model's own classifier)

    The window model lays its c one-hot blocks out oldest first; the lecture's shift puts the
    newest first, so W^o's blocks are taken in reverse order. f1 = relu (see statemachine).
    """
    ckpt = _load(directory)
    config = ckpt.model.config
    if config.kind != "window":
        raise LectureInputError(
            f"{ckpt.path} is a `{config.kind}` model, not a `window` model; for an `rnn` checkpoint use from_checkpoint"
        )
    model = cast("WindowModel", ckpt.model)  # config.kind == "window"
    v, c = config.vocab_size, config.context
    W_sx, W_ss = shift_weights(v, c)
    W_o_window = model.W_o.detach().double().numpy()  # v × (c·v), block j = j-th oldest
    W_o = np.concatenate([W_o_window[:, (c - 1 - k) * v : (c - k) * v] for k in range(c)], axis=1)
    params = Params(
        W_sx=W_sx, W_ss=W_ss, W0_ss=np.zeros(c * v), W_o=W_o, W0_o=model.W0_o.detach().double().numpy().copy()
    )
    s0 = np.zeros(c * v)
    s0[START::v] = 1.0  # c start characters: <start> in every block
    return Converted(params, "relu", ckpt.vocab, ckpt.format, s0, ckpt.meta)


def torch_probabilities(directory_or_model: Any, indices: list[int]) -> FloatArray:
    """p_1 … p_n of a nextchar model (float64 NumPy, n×v) for one sequence of input indices."""
    import torch

    model = _load(directory_or_model).model if isinstance(directory_or_model, str | Path) else directory_or_model
    with torch.no_grad():
        logits, _ = model(torch.tensor([indices], dtype=torch.long, device=model.device))
    return torch.softmax(logits[0].double(), dim=-1).cpu().numpy()


def autograd_check(params: Params, batch: Batch, f1: str = "tanh") -> dict[str, float]:
    """Relative differences between the engine and PyTorch autograd on the same weights.

    The same weights go into nextchar's `rnn` model (in the parameters' dtype: use float64),
    which runs PyTorch's fused RNN kernel; its loss Σ cross-entropy over the unpadded
    positions is J, and autograd's gradients are compared with `rnn.backward`'s.
    Returns {"J": …, "W_sx": …, …}.
    """
    import torch
    import torch.nn.functional as F

    from nextchar.data.batches import IGNORE
    from nextchar.lecture.rnn import NAMES, backward, forward, relative_error

    fwd = forward(params, batch, f1)
    grads = backward(params, batch, fwd).grads
    model = to_torch(params, f1)
    model.train()
    idx = torch.from_numpy(batch.x.argmax(axis=-1))  # the one-hot inputs back to indices
    y = torch.from_numpy(np.where(batch.mask, batch.y, IGNORE))
    logits, _ = model(idx)
    J = F.cross_entropy(logits.reshape(-1, params.v), y.reshape(-1), ignore_index=IGNORE, reduction="sum")
    J.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
    out = {"J": abs(J.item() - fwd.J) / max(abs(fwd.J), 1e-300)}
    for name in NAMES:
        out[name] = relative_error(getattr(grads, name), getattr(model, name).grad.double().numpy())
    return out
