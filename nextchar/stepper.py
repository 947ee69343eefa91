"""The model calls of a search: `Stepper(model)(idx, state)` computes `model(idx, state)`, fast.

A beam search calls the model once per character, for a handful of hypotheses at a time
(1–64 rows, T = 1). Through nn.LSTM/nn.GRU such a call costs much more than its arithmetic
(module dispatch, layout changes, the fused kernel's set-up). For an LSTM or GRU in eval mode
on the CPU, a one-character call here computes the same function directly:

  * First layer, input term. The input is one character, a one-hot x_t, so the lecture's
    W^sx x_t is a column of W^sx: here W_ih E[x] + b (E the embedding), one row of a table
    of V rows computed once, looked up instead of multiplied.
  * Recurrent term: one matrix product h @ W_hhᵀ (added onto the looked-up row), then the
    gates, as nn.LSTM/nn.GRU compute them (tests/test_stepper.py checks they agree).
  * Deeper layers: W_ih h_below + W_hh h, two products.

Measured (`python -m bench.step`, one thread, default 1×512 LSTM), a step for 8 hypotheses:
0.56 ms through the model's forward; here 0.42 ms in fp32, 0.31 in bf16, 0.20 in int8.

`precision` bf16 or int8 keeps copies of the recurrent weights in that format for the
products (see `Stepper`); the gates, the states and the logits stay fp32.

The table and the copies are caches of weights, so they follow them: each is remade when a
weight it was made from is replaced or changed in place (every in-place update bumps a
tensor's version counter; nextchar.completion.personal adapts weights in place).

Anything else (longer inputs, other kinds, training mode) goes through the model's own
forward, with oneDNN switched off for short inputs (`run_model`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import Tensor

from nextchar.models import CharModel, GatedRNN, State


def run_model(model: CharModel, idx: Tensor, state: State) -> tuple[Tensor, State]:
    """model(idx, state), with oneDNN (mkldnn) off for short inputs.

    Why: PyTorch's oneDNN LSTM pays about 2 ms of set-up per call, whatever the length:
    measured here, one step of the default 2×384 LSTM for 8 hypotheses took 2.5 ms with it
    and 0.8 ms without; it only wins on long reads (2,048 characters: 175 vs 309 ms).
    """
    out: tuple[Tensor, State]
    if idx.shape[1] > 64:
        out = model(idx, state)
        return out
    before = torch.backends.mkldnn.enabled
    # torch types the flag as its descriptor (ContextProp); what is read and set is a bool
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        out = model(idx, state)
        return out
    finally:
        torch.backends.mkldnn.enabled = before


# The same tuple as nextchar.completion.config.PRECISIONS, which the parsers read without
# importing torch; the stepper sits below completion and cannot import it
# (tests/test_stepper.py checks that the two agree).
PRECISIONS = ("auto", "fp32", "bf16", "int8")

Int8Linear = Callable[[Tensor, object, bool], Tensor]  # (h, packed weight, reduce_range) → h @ weightᵀ


def _int8_kernel() -> Int8Linear | None:
    """FBGEMM's dynamic-quantised linear, the overload itself (no lookup per call), or None
    where this PyTorch has no such operator (it is deprecated; torch is pinned below 2.14)."""
    try:
        kernel: Int8Linear = torch.ops.quantized.linear_dynamic.default
    except (AttributeError, RuntimeError):
        return None
    return kernel


_LINEAR_DYNAMIC = _int8_kernel()


def auto_precision(model: CharModel) -> str:
    """What "auto" picks: int8 for LSTM/GRU models on a CPU where PyTorch has its x86 int8 kernels.

    Measured on held-out Shakespeare lines (`python -m bench.complete --precision fp32|auto`,
    docs/autocomplete.md): p99 per keystroke 11.7 ms in fp32, 7.1 in int8, with the same
    keystroke savings (0.037) and the same ranking quality (MRR 0.044).
    """
    engines = torch.backends.quantized.supported_engines
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    x86 = "fbgemm" in engines or "x86" in engines
    if isinstance(model, GatedRNN) and on_cpu and x86 and _LINEAR_DYNAMIC is not None:
        return "int8"
    return "fp32"


class Stepper:
    """`model(idx, state)` for searches; one-character calls of LSTM/GRU models take the fast path.

    `precision` is that of the fast path's matrix products (the gates, the states and the
    logits stay fp32; the model itself, and every longer read, stay fp32):
        fp32  exact: the same function as the model's forward.
        bf16  the recurrent weights as bf16, multiplied on the CPU's bf16 units.
        int8  the recurrent weights as int8 (one scale per row) times h quantised on the fly
              to 8 bits (FBGEMM's dynamic quantisation): a quarter of fp32's bytes per step.
        auto  int8 where it is available (`auto_precision`), else fp32.
    Other kinds of model always run in fp32 (`self.precision` says so).
    """

    def __init__(self, model: CharModel, precision: str = "fp32", share: Stepper | None = None):
        """`share`: a stepper over a model with some of the same weight tensors (a per-person
        view of it: nextchar.completion.personal); what it made from those is used here, not made again
        (the table and the int8 copies are 1.5 MB per person for the default model)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.model = model
        self._gated_model = model if isinstance(model, GatedRNN) else None  # the fast path's model
        self.gated = self._gated_model is not None
        if precision == "auto":
            precision = auto_precision(model)
        self.precision = precision if self.gated else "fp32"
        if self.precision == "int8" and _LINEAR_DYNAMIC is None:
            raise ValueError(
                "precision int8 needs PyTorch's FBGEMM int8 kernels, which this PyTorch lacks: use fp32 or bf16"
            )
        # name → (the (id, version) of each weight it was made from, what was made)
        self._cache: dict[str, tuple[tuple[tuple[int, int], ...], object]] = {}
        self._share = share if share is not None and share.precision == self.precision else None

    @property
    def prepared(self) -> Mapping[str, object]:
        """What the fast path has made from the weights so far, by name ("table", "weight_hh_l0",
        …), read-only. Where a stepper made with `share` has the same weights as the one it
        shares, these are the very objects that one made (each is made once for all views)."""
        return MappingProxyType({name: made for name, (_, made) in self._cache.items()})

    def __call__(self, idx: Tensor, state: State) -> tuple[Tensor, State]:
        if idx.shape[1] == 1 and self._fast():
            return self._step(idx[:, 0], state)
        return run_model(self.model, idx, state)

    def _fast(self) -> bool:
        model = self._gated_model
        if model is None or model.training:
            return False
        weight = model.embedding.weight
        return weight.dtype == torch.float32 and weight.device.type == "cpu"

    @property
    def _net(self) -> GatedRNN:
        """The model, where the fast path runs (only ever asked for then)."""
        assert self._gated_model is not None
        return self._gated_model

    def _sources(self, name: str) -> tuple[Tensor, ...]:
        """The weights that what is cached under `name` is made from."""
        net = self._net
        rnn = net.rnn
        if name == "table":
            return net.embedding.weight, rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
        return (getattr(rnn, name),)

    def _cached(self, name: str) -> object:
        """What `name` is made from its weights (`_make`), remade whenever one is replaced or
        changed in place, and taken from the shared stepper when its weights are these."""
        sources = self._sources(name)
        key = tuple((id(t), t._version) for t in sources)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        share = self._share
        if share is not None and key == tuple((id(t), t._version) for t in share._sources(name)):
            made = share._cached(name)
        else:
            # Plain tensors even when first asked for in inference mode: they outlive that call.
            with torch.inference_mode(False), torch.no_grad():
                made = self._make(name, sources)
        self._cache[name] = (key, made)
        return made

    def _make(self, name: str, sources: tuple[Tensor, ...]) -> object:
        if name == "table":
            # (V, gates·H): W_ih E[x] + b_ih (+ b_hh for the LSTM, whose biases simply add; for
            # the GRU b_hn sits inside r ⊙ (W_hn h + b_hn), so b_hh stays with the recurrent term).
            embedding, w_ih, b_ih, b_hh = sources
            table = torch.addmm(b_ih, embedding, w_ih.t())
            return table + b_hh if self._net.config.kind == "lstm" else table
        weight = sources[0]
        return weight.to(torch.bfloat16) if self.precision == "bf16" else _pack_int8(weight)

    def _product(self, name: str) -> object:
        """The weight `name` of the rnn, in this stepper's precision (see `_affine`)."""
        return getattr(self._net.rnn, name) if self.precision == "fp32" else self._cached(name)

    def _step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        model = self._net
        rnn = model.rnn
        config = model.config
        table: Tensor = self._cached("table")  # type: ignore[assignment]
        x = table[tokens]  # layer 0's input term, per row
        news: list[list[Tensor]] = [[] for _ in state]
        for layer in range(config.num_layers):
            w_hh = self._product(f"weight_hh_l{layer}")
            if layer > 0:
                x = _affine(getattr(rnn, f"bias_ih_l{layer}"), x, self._product(f"weight_ih_l{layer}"))
                if config.kind == "lstm":
                    x = x + getattr(rnn, f"bias_hh_l{layer}")
            h = state[0][:, layer]
            if config.kind == "lstm":
                h, c = _lstm_cell(x, h, state[1][:, layer], w_hh)
                news[0].append(h)
                news[1].append(c)
            else:
                h = _gru_cell(x, h, w_hh, getattr(rnn, f"bias_hh_l{layer}"))
                news[0].append(h)
            x = h
        logits = model.output(x)
        if config.num_layers == 1:
            return logits.unsqueeze(1), tuple(parts[0].unsqueeze(1) for parts in news)
        return logits.unsqueeze(1), tuple(torch.stack(parts, dim=1) for parts in news)


def _pack_int8(weight: Tensor) -> object:
    """FBGEMM's packed int8 form of `weight`: symmetric, one scale per output row."""
    scale = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # The quantized tensor API warns of its future removal; torch is pinned below 2.14.
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_channel(weight.float(), scale, zero, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(quantized, None)


def _affine(base: Tensor, h: Tensor, weight: object) -> Tensor:
    """base + h @ weightᵀ, in fp32 whatever the weight's form (fp32, bf16 or packed int8)."""
    if isinstance(weight, Tensor):
        if weight.dtype == torch.float32:
            return torch.addmm(base, h, weight.t())
        return base + torch.mm(h.to(weight.dtype), weight.t()).float()
    kernel = _LINEAR_DYNAMIC
    assert kernel is not None  # weights are packed to int8 only where the kernel exists (Stepper.__init__)
    # reduce_range: 7-bit activations, FBGEMM's choice for x86 (no overflow in its int16 sums)
    return base + kernel(h.contiguous(), weight, True)


def _lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_hh: object) -> tuple[Tensor, Tensor]:
    """nn.LSTM's cell, gates in its order (i, f, g, o); x holds W_ih x + b_ih + b_hh."""
    gates = _affine(x, h, w_hh)
    size = h.shape[1]
    input_forget = gates[:, : 2 * size].sigmoid()
    candidate = gates[:, 2 * size : 3 * size].tanh()
    output = gates[:, 3 * size :].sigmoid()
    c = input_forget[:, size:] * c
    c.addcmul_(input_forget[:, :size], candidate)
    return output * c.tanh(), c


def _gru_cell(x: Tensor, h: Tensor, w_hh: object, b_hh: Tensor) -> Tensor:
    """nn.GRU's cell, gates in its order (r, z, n); x holds W_ih x + b_ih."""
    hidden = _affine(b_hh, h, w_hh)
    size = h.shape[1]
    reset_update = (x[:, : 2 * size] + hidden[:, : 2 * size]).sigmoid()
    candidate = torch.addcmul(x[:, 2 * size :], reset_update[:, :size], hidden[:, 2 * size :]).tanh()
    # h' = (1 − z) ⊙ n + z ⊙ h  =  n + z ⊙ (h − n)
    return torch.addcmul(candidate, reset_update[:, size:], h - candidate)
