"""The models: the lecture's window classifier, the lecture's RNN, and LSTM/GRU for quality.

All of them share one small interface (makemore's lesson), so that training, evaluation,
sampling and completion never ask which model they hold:

    state = model.initial_state(batch_size)          # a tuple of tensors, batch first
    logits, state = model(idx, state)                # idx: (B, T) indices → logits (B, T, V)

A state is always a tuple of tensors whose first dimension is the batch, so generic code can
pick rows out of it (`select_state`) or stack states together (`stack_states`) without
knowing what is inside.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nextchar.text import START

State = tuple[Tensor, ...]
KINDS = ("window", "rnn", "lstm", "gru")
OUTPUTS = ("auto", "full", "tied")
# Symbols from which `auto` ties the output layer to the embedding: past a thousand the full
# layer is most of a step (docs/tuning.md#large-alphabets); below, as for every Latin-script
# corpus, the full layer is cheap and keeps today's models as they are.
TIED_FROM = 1000


# The largest sizes a checkpoint may declare: far past any model this project trains, and small
# enough that describing the model (on the meta device) costs nothing.
SIZE_LIMITS = {
    "vocab_size": 1 << 21,
    "hidden_size": 1 << 16,
    "num_layers": 64,
    "embedding_size": 1 << 16,
    "context": 1 << 12,
}


@dataclass
class ModelConfig:
    kind: str = "lstm"  # window | rnn | lstm | gru
    vocab_size: int = 0  # v (= ℓ): characters plus <start>, <end>, <unk>
    hidden_size: int = 512  # m, the size of the state s_t (rnn/lstm/gru)
    num_layers: int = 1  # stacked recurrent layers (lstm/gru; rnn is the lecture's single layer)
    embedding_size: int = 128  # input embedding (lstm/gru); the lecture's rnn uses one-hot x_t
    dropout: float = 0.3  # between layers and before the output layer (lstm/gru)
    embedding_dropout: float = 0.1  # on the input embeddings x_t while training (lstm/gru)
    weight_drop: float = 0.0  # DropConnect on the recurrent weights W_hh while training (lstm/gru)
    context: int = 8  # c, characters of context of the window model
    nonlinearity: str = "tanh"  # f1 of the lecture's rnn: tanh | relu
    output: str = "auto"  # lstm/gru output layer: full | tied | auto (GatedRNN; resolved when trained)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelConfig:
        """A config read from a checkpoint, each setting of the right type and within SIZE_LIMITS
        (a file says what to allocate: it is checked before anything is)."""
        if not isinstance(obj, dict):
            raise ValueError("the model settings are not a JSON object")
        unknown = set(obj) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}")
        defaults = cls()
        for name, value in obj.items():
            kind = type(getattr(defaults, name))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if type(value) is not kind:
                raise ValueError(f"model setting {name} is {value!r}, not a {kind.__name__}")
            if kind is float and not 0.0 <= value < 1.0:
                raise ValueError(f"model setting {name} is {value!r}, not in [0, 1)")
            if name in SIZE_LIMITS and not 0 <= value <= SIZE_LIMITS[name]:
                raise ValueError(f"model setting {name} is {value:,}, not in 0…{SIZE_LIMITS[name]:,}")
        # Checkpoints written before there was a choice of output layer have a full one.
        return cls(**{"output": "full", **obj})


class CharModel(nn.Module):
    """Base class: a next-character model over a vocabulary of `config.vocab_size` symbols."""

    config: ModelConfig

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        raise NotImplementedError

    def forward(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        raise NotImplementedError

    def flops_per_char(self) -> int:
        """Multiply-adds ×2 of one forward step (for MFU: training costs about 3× this)."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class WindowModel(CharModel):
    """The lecture's first model: state = the last c characters, p_t = softmax(W^o s_t + W0^o).

    s_t is the concatenation of c one-hot vectors (oldest first), m = c·ℓ; the classifier is
    multi-class linear (softmax regression). Multiplying W^o by a concatenation of one-hots
    is a sum of c of its columns, which is how it is computed here.
    """

    offsets: Tensor  # k·v for the k-th character of a window: its block of W^o's columns

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c, v = config.context, config.vocab_size
        if c < 1:
            raise ValueError("the window model needs a context of at least 1 character")
        self.W_o = nn.Parameter(torch.zeros(v, c * v))  # v × m with m = c·ℓ (ℓ = v here)
        self.W0_o = nn.Parameter(torch.zeros(v))
        self.register_buffer("offsets", torch.arange(c) * v, persistent=False)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        # s_0 = c start characters (the lecture's ^^^ for c = 3).
        return (torch.full((batch_size, self.config.context), START, dtype=torch.long, device=device),)

    def forward(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        c = self.config.context
        if state is None:
            state = self.initial_state(idx.shape[0], idx.device)
        history = torch.cat([state[0], idx], dim=1)  # (B, c + T)
        windows = history.unfold(1, c, 1)[:, 1:, :]  # (B, T, c): s_t ends with x_t
        columns = F.embedding(windows + self.offsets, self.W_o.t())  # (B, T, c, v)
        logits = columns.sum(dim=2) + self.W0_o
        return logits, (history[:, -c:],)

    def flops_per_char(self) -> int:
        return 2 * self.config.context * self.config.vocab_size


class LectureRNN(CharModel):
    """The lecture's RNN, exactly:

        s_t = f1(W^sx x_t + W^ss s_{t-1} + W0^ss)      x_t one-hot (ℓ), s_t (m)
        p_t = f2(W^o s_t + W0^o)                       f2 = softmax (applied by the loss)

    The recurrence runs in PyTorch's fused RNN kernel, which computes this very function
    (it has a second bias b_hh, fixed here at zero so that W0^ss is the only one).
    """

    zero_bias: Tensor  # the kernel's b_hh, always 0

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"f1 must be tanh or relu, not {config.nonlinearity!r}")
        self.config = config
        m, v = config.hidden_size, config.vocab_size
        bound = 1.0 / m**0.5
        self.W_sx = nn.Parameter(torch.empty(m, v).uniform_(-bound, bound))  # m × ℓ
        self.W_ss = nn.Parameter(torch.empty(m, m).uniform_(-bound, bound))  # m × m
        self.W0_ss = nn.Parameter(torch.zeros(m))  # m
        self.W_o = nn.Parameter(torch.empty(v, m).uniform_(-bound, bound))  # v × m
        self.W0_o = nn.Parameter(torch.zeros(v))  # v
        self.register_buffer("zero_bias", torch.zeros(m), persistent=False)
        self._kernel = torch.rnn_tanh if config.nonlinearity == "tanh" else torch.rnn_relu

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return (torch.zeros(batch_size, self.config.hidden_size, device=device),)

    def forward(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if state is None:
            state = self.initial_state(idx.shape[0], idx.device)
        x = F.one_hot(idx, self.config.vocab_size).to(self.W_sx.dtype)  # (B, T, ℓ)
        if torch.is_autocast_enabled("cpu"):
            x = x.to(torch.get_autocast_dtype("cpu"))
        s0 = state[0].unsqueeze(0).to(x.dtype)  # (1, B, m)
        params = [self.W_sx, self.W_ss, self.W0_ss, self.zero_bias]
        s, s_last = self._kernel(x, s0, params, True, 1, 0.0, self.training, False, True)
        logits = F.linear(s, self.W_o, self.W0_o)  # z_t^2 = W^o s_t + W0^o
        return logits, (s_last.squeeze(0).float(),)

    def flops_per_char(self) -> int:
        m, v = self.config.hidden_size, self.config.vocab_size
        return 2 * (m * v + m * m + v * m)


class GatedRNN(CharModel):
    """Embedding → dropout → stacked LSTM or GRU (dropout between layers) → dropout → output → logits.

    The output layer (`config.output`):
        full   z = W^o h + W0^o                    W^o: V × m, a row of m weights per symbol
        tied   z = E (P h + b) + W0^o               P: e × m; E: V × e, the input embedding itself
    A full layer costs m·V multiply-adds a character and m·V parameters, which outgrow the
    recurrence itself once V is in the thousands (Chinese: 2.4 M of them for 4,691 symbols and
    m = 512, against the LSTM's 1.3 M). Tied costs e·m + e·V, and every symbol's one vector is
    trained both where it is read and where it is predicted, which a rare symbol needs (Press &
    Wolf, 2017). `auto` ties from TIED_FROM symbols on (docs/tuning.md#large-alphabets).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        cell = {"lstm": nn.LSTM, "gru": nn.GRU}[config.kind]
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.rnn = cell(
            config.embedding_size,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.drop_embedding = nn.Dropout(config.embedding_dropout)
        if config.output not in OUTPUTS:
            raise ValueError(f"unknown output layer {config.output!r}; choose one of {', '.join(OUTPUTS)}")
        self.tied = resolved_output(config) == "tied"
        if self.tied:
            self.head = nn.Linear(config.hidden_size, config.embedding_size)
            self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))
        else:
            self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        shape = (batch_size, self.config.num_layers, self.config.hidden_size)
        count = 2 if self.config.kind == "lstm" else 1  # LSTM carries (h, c)
        return tuple(torch.zeros(shape, device=device) for _ in range(count))

    def forward(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if state is None:
            state = self.initial_state(idx.shape[0], idx.device)
        # nn.LSTM/GRU keep layers first; our states keep the batch first (see module docstring).
        layers_first = tuple(s.transpose(0, 1).contiguous() for s in state)
        x = self.drop_embedding(self.embedding(idx))
        if torch.is_autocast_enabled("cpu"):
            x = x.to(torch.get_autocast_dtype("cpu"))
        # States are kept in fp32 between calls; they enter in the compute dtype (bf16 under
        # autocast, or when the weights themselves are bf16: see nextchar.completion.completer).
        layers_first = tuple(s.to(x.dtype) for s in layers_first)
        hx = layers_first if self.config.kind == "lstm" else layers_first[0]
        if self.training and self.config.weight_drop > 0:
            out, new = self._weight_dropped(x, hx)
        else:
            out, new = self.rnn(x, hx)
        new = new if isinstance(new, tuple) else (new,)
        logits = self.output(self.drop(out))
        return logits, tuple(s.transpose(0, 1).float() for s in new)

    def output(self, h: Tensor) -> Tensor:
        """Logits from the top layer's state h (…, m): W^o h + W0^o, or tied, E (P h + b) + W0^o."""
        z = F.linear(h, self.head.weight, self.head.bias)
        return F.linear(z, self.embedding.weight, self.output_bias) if self.tied else z

    def _weight_dropped(self, x: Tensor, hx: Tensor | State) -> tuple[Tensor, Tensor | State]:
        """The same fused kernel with DropConnect on each W_hh (AWD-LSTM's weight drop).

        One mask per forward call (per window of T characters), shared by every time step:
        it regularises the recurrence without breaking the state the way dropping s_t would.
        """
        rnn, weights = self.rnn, []
        for layer in range(self.config.num_layers):
            w_ih, w_hh, b_ih, b_hh = (
                getattr(rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            weights += [w_ih, F.dropout(w_hh, self.config.weight_drop, training=True), b_ih, b_hh]
        layers, between = self.config.num_layers, self.config.dropout if self.config.num_layers > 1 else 0.0
        if isinstance(hx, tuple):  # an LSTM's (h, c)
            out, h, c = torch.lstm(x, hx, weights, True, layers, between, True, False, True)
            return out, (h, c)
        out, h = torch.gru(x, hx, weights, True, layers, between, True, False, True)
        return out, h

    def flops_per_char(self) -> int:
        c = self.config
        gates = 4 if c.kind == "lstm" else 3
        per_layer = [
            gates * c.hidden_size * ((c.embedding_size if i == 0 else c.hidden_size) + c.hidden_size)
            for i in range(c.num_layers)
        ]
        if resolved_output(c) == "tied":
            return 2 * (sum(per_layer) + c.embedding_size * (c.hidden_size + c.vocab_size))
        return 2 * (sum(per_layer) + c.hidden_size * c.vocab_size)


def build_model(config: ModelConfig) -> CharModel:
    """A freshly initialised model of `config.kind`."""
    if config.kind not in KINDS:
        raise ValueError(f"unknown model kind {config.kind!r}; choose one of {', '.join(KINDS)}")
    if config.vocab_size < 4:
        raise ValueError("vocabulary too small")
    if config.kind == "window":
        return WindowModel(config)
    if config.kind == "rnn":
        return LectureRNN(config)
    return GatedRNN(config)


def select_state(state: State, index: Tensor | int | slice) -> State:
    """Rows of a batch of states (e.g. the surviving hypotheses of a beam)."""
    if isinstance(index, int):
        index = slice(index, index + 1)
    return tuple(s[index] for s in state)


def stack_states(states: list[State]) -> State:
    """One batch of states from several (each with batch size ≥ 1)."""
    return tuple(torch.cat(parts, dim=0) for parts in zip(*states, strict=True))


def detach_state(state: State) -> State:
    """Cut the graph between truncated-BPTT windows, keeping the values (why: memory/time)."""
    return tuple(s.detach() for s in state)


def resolved_output(config: ModelConfig) -> str:
    """The output layer `config` builds: "full" or "tied" (auto: tied from TIED_FROM symbols on;
    models other than lstm/gru have their own, reported as full)."""
    if config.kind not in ("lstm", "gru"):
        return "full"
    if config.output == "auto":
        return "tied" if config.vocab_size >= TIED_FROM else "full"
    return config.output
