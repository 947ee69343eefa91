"""The lecture's RNN in NumPy: forward pass, loss, and backpropagation through time by hand.

The model (lecture, section 4), one sequence, column vectors:

    z_t^1 = W^sx x_t + W^ss s_{t-1} + W0^ss        s_t = f1(z_t^1)             f1 ∈ {tanh, relu}
    z_t^2 = W^o s_t + W0^o                           p_t = f2(z_t^2) = softmax(z_t^2)

    shapes: s_t m×1, x_t ℓ×1, p_t v×1; W^sx m×ℓ, W^ss m×m, W0^ss m×1, W^o v×m, W0^o v×1

and the loss (section 5), with y_t the index of the true next character:

    L_elt(p_t, y_t) = −log p_t[y_t]          (cross-entropy, the negative log-likelihood)
    L_seq(p, y)     = Σ_{t=1..n} L_elt(p_t, y_t)
    J(W, W0)        = Σ_{i=1..q} L_seq(p^(i), y^(i))

The slides stop at "we need dp_t/dW^sx"; `backward` finishes the derivation (its docstring
is the derivation, step by step).

How the arrays are laid out. To be usable and not only readable, every function works on a
batch of B sequences at once. The lecture's column vector for sequence i becomes row i of a
matrix, so "W^ss s_{t-1} for every sequence" is `S[:, t-1] @ W_ss.T`. Sequences of
different lengths n^(i) are padded to the longest, T; the mask M[i, t-1] = [t ≤ n^(i)]
removes the padding from L_seq, and therefore from every gradient. Time indices:

    x[:, t-1]  = x_t   (t = 1..T)        S[:, t] = s_t   (t = 0..T; S[:, 0] = s_0)
    Z1[:, t-1] = z_t^1                   P[:, t-1] = p_t,  y[:, t-1] = y_t

W0^ss and W0^o are stored as flat vectors (m,) and (v,), as PyTorch stores biases.
Every array keeps the dtype of the parameters: float64 for checking, float32 for speed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from nextchar.lecture.errors import LectureInputError

F1_CHOICES = ("tanh", "relu")

FloatArray: TypeAlias = NDArray[np.floating[Any]]  # float64 for checking, float32 for speed
IntArray: TypeAlias = NDArray[np.integer[Any]]  # character indices, lengths
BoolArray: TypeAlias = NDArray[np.bool_]  # the mask


# ------------------------------------------------------------------------------ parameters


@dataclass
class Params:
    """The five parameter arrays of the lecture's RNN (also used to hold their gradients)."""

    W_sx: FloatArray  # m × ℓ: how the new character enters the state
    W_ss: FloatArray  # m × m: how the previous state enters the state
    W0_ss: FloatArray  # m: the state's offset (the lecture's m×1 column)
    W_o: FloatArray  # v × m: the output classifier's weights
    W0_o: FloatArray  # v: the output classifier's offset

    def __post_init__(self) -> None:
        check_shapes(self)

    @property
    def m(self) -> int:
        """Size of the state s_t."""
        return int(self.W_ss.shape[0])

    @property
    def ell(self) -> int:
        """ℓ, size of the input x_t (the alphabet, one-hot)."""
        return int(self.W_sx.shape[1])

    @property
    def v(self) -> int:
        """Number of output classes (characters that can come next)."""
        return int(self.W_o.shape[0])

    @property
    def dtype(self) -> np.dtype[np.floating[Any]]:
        return self.W_ss.dtype

    def items(self) -> Iterator[tuple[str, FloatArray]]:
        """(name, array) in the lecture's order: W_sx, W_ss, W0_ss, W_o, W0_o."""
        for f in fields(self):
            yield f.name, getattr(self, f.name)

    def astype(self, dtype: np.dtype[Any] | type) -> Params:
        return Params(**{name: a.astype(dtype) for name, a in self.items()})

    def copy(self) -> Params:
        return Params(**{name: a.copy() for name, a in self.items()})

    def zeros_like(self) -> Params:
        return Params(**{name: np.zeros_like(a) for name, a in self.items()})


NAMES = tuple(f.name for f in fields(Params))


def check_shapes(params: Params) -> None:
    """Refuse arrays whose shapes disagree with the lecture's (one message naming the array)."""
    arrays = dict(params.items())
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise LectureInputError(f"{name} must be a NumPy array, not {type(a).__name__}")
        if not np.issubdtype(a.dtype, np.floating):
            raise LectureInputError(f"{name} must hold floating-point numbers, not {a.dtype}")
    if arrays["W_ss"].ndim != 2 or arrays["W_ss"].shape[0] != arrays["W_ss"].shape[1]:
        raise LectureInputError(f"W_ss must be square (m × m), got shape {arrays['W_ss'].shape}")
    m = arrays["W_ss"].shape[0]
    if arrays["W_o"].ndim != 2:
        raise LectureInputError(f"W_o must be v × m, got shape {arrays['W_o'].shape}")
    v = arrays["W_o"].shape[0]
    if arrays["W_sx"].ndim != 2 or arrays["W_sx"].shape[0] != m:
        raise LectureInputError(
            f"W_sx has shape {'×'.join(map(str, arrays['W_sx'].shape))}, expected {m}×ℓ (m = {m} from W_ss)"
        )
    expected = {"W0_ss": (m,), "W_o": (v, m), "W0_o": (v,)}
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            want = "×".join(map(str, shape))
            raise LectureInputError(
                f"{name} has shape {'×'.join(map(str, arrays[name].shape))}, expected {want} "
                f"(m = {m} from W_ss, v = {v} from W_o)"
            )
    dtypes = {a.dtype for a in arrays.values()}
    if len(dtypes) > 1:
        raise LectureInputError(f"the parameter arrays mix dtypes {sorted(map(str, dtypes))}; use one")


def init_params(m: int, ell: int, v: int, seed: int | np.random.Generator = 0, dtype: type = np.float64) -> Params:
    """Random weights U(−1/√m, 1/√m) and zero offsets (PyTorch's RNN initialisation)."""
    if min(m, ell, v) < 1:
        raise LectureInputError(f"sizes must be at least 1, got m={m}, ℓ={ell}, v={v}")
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(m)
    return Params(
        W_sx=rng.uniform(-bound, bound, (m, ell)).astype(dtype),
        W_ss=rng.uniform(-bound, bound, (m, m)).astype(dtype),
        W0_ss=np.zeros(m, dtype),
        W_o=rng.uniform(-bound, bound, (v, m)).astype(dtype),
        W0_o=np.zeros(v, dtype),
    )


# ------------------------------------------------------------------------------ batches


@dataclass
class Batch:
    """B sequences padded to the longest, T: inputs x_t (one-hot), labels y_t and the mask."""

    x: FloatArray  # (B, T, ℓ): x[i, t-1] = x_t^(i); zero after the end of sequence i
    y: IntArray  # (B, T) int: y[i, t-1] = y_t^(i), the index of the character after x_t
    mask: BoolArray  # (B, T) bool: M[i, t-1] = [t ≤ n^(i)]

    @property
    def lengths(self) -> IntArray:
        """n^(i) for every sequence."""
        lengths: IntArray = self.mask.sum(axis=1)
        return lengths

    @property
    def characters(self) -> int:
        """Predicted positions Σ_i n^(i)."""
        return int(self.mask.sum())


def one_hot(indices: Sequence[int] | IntArray, ell: int, dtype: type = np.float64) -> FloatArray:
    """x_t for each index: the ℓ-vector with a 1 at the character's index."""
    indices = np.asarray(indices, dtype=np.int64)
    out = np.zeros((*indices.shape, ell), dtype)
    np.put_along_axis(out, indices[..., None], 1.0, axis=-1)
    return out


def make_batch(
    inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], ell: int, v: int, dtype: type = np.float64
) -> Batch:
    """Pad sequences of character indices into a Batch (x one-hot over ℓ, y indices below v).

    inputs[i][t-1] is the index of x_t^(i) and targets[i][t-1] that of y_t^(i).
    """
    if len(inputs) != len(targets):
        raise LectureInputError(f"{len(inputs)} input sequences but {len(targets)} target sequences")
    if len(inputs) == 0:
        raise LectureInputError("no sequences: a batch needs at least one")
    for i, (xs, ys) in enumerate(zip(inputs, targets, strict=True)):
        if len(xs) == 0:
            raise LectureInputError(f"sequence {i} is empty: every sequence needs n ≥ 1 characters")
        if len(xs) != len(ys):
            raise LectureInputError(f"sequence {i} has {len(xs)} inputs but {len(ys)} targets")
    lengths = [len(xs) for xs in inputs]
    B, T = len(inputs), max(lengths)
    x_index = np.zeros((B, T), np.int64)
    y = np.zeros((B, T), np.int64)
    mask = np.arange(T)[None, :] < np.array(lengths)[:, None]
    for i, (xs, ys) in enumerate(zip(inputs, targets, strict=True)):
        x_index[i, : len(xs)] = xs
        y[i, : len(ys)] = ys
    for what, index, size in (("input", x_index, ell), ("target", y, v)):
        bad = mask & ((index < 0) | (index >= size))
        if bad.any():
            i, t = np.argwhere(bad)[0]
            raise LectureInputError(
                f"sequence {i}: {what} index {index[i, t]} (step {t + 1}) is outside the "
                f"alphabet (indices 0..{size - 1})"
            )
    x = one_hot(x_index, ell, dtype) * mask[..., None]  # zero after the end of each sequence
    return Batch(x, y, mask)


# ------------------------------------------------------------------------------ forward


def f1_apply(f1: str, z: FloatArray) -> FloatArray:
    """s = f1(z): tanh(z), or relu(z) = max(z, 0)."""
    if f1 == "tanh":
        return np.tanh(z)
    if f1 == "relu":
        return np.maximum(z, 0.0)
    raise LectureInputError(f"f1 must be one of {', '.join(F1_CHOICES)}, not {f1!r}")


def f1_derivative(f1: str, z: FloatArray, s: FloatArray) -> FloatArray:
    """f1'(z), written with s = f1(z) where that is simpler:

    tanh'(z) = 1 − tanh(z)² = 1 − s²        relu'(z) = [z > 0]
    """
    if f1 == "tanh":
        return 1.0 - s * s
    if f1 == "relu":
        return (z > 0).astype(z.dtype)
    raise LectureInputError(f"f1 must be one of {', '.join(F1_CHOICES)}, not {f1!r}")


def softmax(z: FloatArray) -> FloatArray:
    """f2(z)_k = exp(z_k) / Σ_j exp(z_j) along the last axis (shifted by max z: same value, no overflow)."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    p: FloatArray = e / e.sum(axis=-1, keepdims=True)  # (NumPy's stubs type the sums as Any)
    return p


def transition(params: Params, f1: str, s_prev: FloatArray, x: FloatArray) -> FloatArray:
    """s_t = f1(W^sx x_t + W^ss s_{t-1} + W0^ss), for one step of a batch (rows are sequences)."""
    return f1_apply(f1, x @ params.W_sx.T + s_prev @ params.W_ss.T + params.W0_ss)


def output(params: Params, s: FloatArray) -> FloatArray:
    """p_t = f2(W^o s_t + W0^o) = softmax(z_t^2)."""
    return softmax(s @ params.W_o.T + params.W0_o)


@dataclass
class Forward:
    """Everything the forward pass computed (the backward pass reuses it)."""

    f1: str
    S: FloatArray  # (B, T+1, m): S[:, t] = s_t, S[:, 0] = s_0
    Z1: FloatArray  # (B, T, m):  Z1[:, t-1] = z_t^1
    P: FloatArray  # (B, T, v):  P[:, t-1] = p_t
    L_elt: FloatArray  # (B, T): L_elt(p_t, y_t), 0 on padding
    L_seq: FloatArray  # (B,): Σ_t L_elt for each sequence

    @property
    def J(self) -> float:
        """J = Σ_i L_seq(p^(i), y^(i))."""
        return float(self.L_seq.sum())

    def final_state(self, batch: Batch) -> FloatArray:
        """s_{n^(i)} of every sequence (its last real step, not the padding)."""
        return self.S[np.arange(len(self.S)), batch.lengths]


def check_batch(params: Params, batch: Batch, s0: FloatArray | None = None) -> None:
    """Refuse a batch that does not fit the parameters (the message names both shapes)."""
    if batch.x.ndim != 3 or batch.x.shape[2] != params.ell:
        raise LectureInputError(
            f"inputs x have shape {batch.x.shape}, expected (B, T, ℓ={params.ell}) "
            f"to match W_sx ({params.m}×{params.ell})"
        )
    if batch.y.shape != batch.x.shape[:2] or batch.mask.shape != batch.x.shape[:2]:
        raise LectureInputError(
            f"labels y {batch.y.shape} and mask {batch.mask.shape} must both have the "
            f"shape (B, T) = {batch.x.shape[:2]} of the inputs"
        )
    if not batch.mask[:, 0].all():
        empty = int(np.flatnonzero(~batch.mask[:, 0])[0])
        raise LectureInputError(f"sequence {empty} is empty: every sequence needs n ≥ 1 characters")
    labels = batch.y[batch.mask]
    if labels.size and (labels.min() < 0 or labels.max() >= params.v):
        raise LectureInputError(f"a label y_t is outside 0..{params.v - 1} (W_o has v = {params.v} rows)")
    if s0 is not None and s0.shape not in ((params.m,), (batch.x.shape[0], params.m)):
        raise LectureInputError(
            f"s_0 has shape {s0.shape}, expected ({params.m},) or (B={batch.x.shape[0]}, m={params.m})"
        )


def forward(params: Params, batch: Batch, f1: str = "tanh", s0: FloatArray | None = None) -> Forward:
    """Run the RNN over a batch and compute the losses.

        for t = 1..T:   z_t^1 = W^sx x_t + W^ss s_{t-1} + W0^ss,   s_t = f1(z_t^1)
        all t at once:  z_t^2 = W^o s_t + W0^o,   p_t = softmax(z_t^2)
                        L_elt = −log p_t[y_t] (0 on padding),   L_seq = Σ_t L_elt

    s_0 is zero unless given (the lecture's window machine starts from m start characters).
    Only the recurrence needs a loop over t; W^sx x_t for every t is one matrix product.
    """
    f1_apply(f1, np.zeros(0))  # refuse an unknown f1 before doing any work
    check_batch(params, batch, s0)
    B, T, _ = batch.x.shape
    dtype = params.dtype
    S = np.empty((B, T + 1, params.m), dtype)
    S[:, 0] = 0.0 if s0 is None else s0
    Z1 = batch.x.astype(dtype, copy=False) @ params.W_sx.T + params.W0_ss  # W^sx x_t + W0^ss, all t
    W_ss_T = params.W_ss.T
    for t in range(1, T + 1):
        Z1[:, t - 1] += S[:, t - 1] @ W_ss_T  # + W^ss s_{t-1}
        S[:, t] = f1_apply(f1, Z1[:, t - 1])
    Z2 = S[:, 1:] @ params.W_o.T + params.W0_o
    # log p_t = z_t^2 − log Σ_k exp(z_t^2[k]); taking −log p_t[y_t] from it avoids log(0).
    shifted = Z2 - Z2.max(axis=-1, keepdims=True)
    log_P = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    L_elt = -np.take_along_axis(log_P, batch.y[..., None], axis=-1)[..., 0] * batch.mask
    return Forward(f1, S, Z1, np.exp(log_P), L_elt, L_elt.sum(axis=1))


# ------------------------------------------------------------------------------ backward


@dataclass
class Backward:
    grads: Params  # dJ/dW for each of the five parameter arrays
    dJ_ds: FloatArray  # (B, T+1, m): dJ/ds_t, t = 0..T, accumulated back through time
    dJ_dz1: FloatArray  # (B, T, m): dJ/dz_t^1


def backward(params: Params, batch: Batch, fwd: Forward) -> Backward:
    """Gradients of J for all five parameter arrays, by backpropagation through time.

    The derivation, finished from where the lecture stops (one sequence, column vectors; the
    batch adds a sum over i, and padding positions have L_elt = 0 so they add nothing):

    1. Output layer, one step. L_t = −log p_t[y_t] with p_t = softmax(z_t^2) gives the
       familiar softmax-regression gradient (e_y is the one-hot vector of y_t):

           dL_t/dz_t^2 = p_t − e_{y_t}                                        (v×1)

    2. z_t^2 = W^o s_t + W0^o, so for the output parameters, summed over the steps:

           dJ/dW^o  = Σ_t (dL_t/dz_t^2) s_tᵀ      (v×m)
           dJ/dW0^o = Σ_t  dL_t/dz_t^2            (v×1)

    3. The state. s_t influences J twice: directly through p_t, and through every later
       state, since z_{t+1}^1 = W^sx x_{t+1} + W^ss s_t + W0^ss. So

           dJ/ds_t = (W^o)ᵀ dL_t/dz_t^2  +  (W^ss)ᵀ dJ/dz_{t+1}^1          (m×1)

       with the second term absent at t = n (nothing comes after the last step).
       This is "backpropagation through time": the recursion runs from t = n down to 1,
       each step carrying the gradient one step further back through W^ss.

    4. Through the nonlinearity, s_t = f1(z_t^1) elementwise:

           dJ/dz_t^1 = dJ/ds_t ⊙ f1'(z_t^1)       (tanh' = 1 − s_t², relu' = [z_t^1 > 0])

    5. z_t^1 = W^sx x_t + W^ss s_{t-1} + W0^ss, and the same weights are used at every step
       (shared across time, as convolution shares them across space), so the gradients of
       the recurrent parameters are sums over t:

           dJ/dW^sx  = Σ_t (dJ/dz_t^1) x_tᵀ        (m×ℓ)   ← the lecture's dp_t/dW^sx, finished
           dJ/dW^ss  = Σ_t (dJ/dz_t^1) s_{t-1}ᵀ    (m×m)
           dJ/dW0^ss = Σ_t  dJ/dz_t^1              (m×1)

    Why gradients vanish or explode: unrolling step 3, the part of dJ/ds_t that comes from
    L_{t+k} is a product of k factors (W^ss)ᵀ diag(f1'(z^1)). When these factors shrink
    vectors (|f1'| ≤ 1 for tanh, and a small W^ss) the influence of distant steps decays
    geometrically — the RNN cannot learn long dependencies; when they stretch them (a large
    W^ss, relu) it grows geometrically and one SGD step can throw the weights far away.
    `nextchar.lecture.sgd.clip_gradients` is the usual cure for the second; `dJ_ds` lets you
    watch both.
    """
    B, T, _ = batch.x.shape
    x = batch.x.astype(params.dtype, copy=False)
    # 1. dL_t/dz_t^2 = p_t − e_{y_t}, zero on padding.
    dZ2 = fwd.P.copy()
    np.put_along_axis(dZ2, batch.y[..., None], np.take_along_axis(dZ2, batch.y[..., None], axis=-1) - 1.0, axis=-1)
    dZ2 *= batch.mask[..., None]
    # 2. Output parameters: sums over i and t of outer products, as one matrix product each.
    states = fwd.S[:, 1:].reshape(B * T, params.m)
    dW_o = dZ2.reshape(B * T, params.v).T @ states
    dW0_o = dZ2.sum(axis=(0, 1))
    # 3.–4. Back through time. The direct part (W^o)ᵀ dL_t/dz_t^2 for every t is one product;
    # the recurrent part is carried from t+1 to t, which is the only loop.
    dJ_ds = np.zeros_like(fwd.S)
    dJ_ds[:, 1:] = dZ2 @ params.W_o
    f1_prime = f1_derivative(fwd.f1, fwd.Z1, fwd.S[:, 1:])
    dJ_dz1 = np.empty_like(fwd.Z1)
    for t in range(T, 0, -1):
        dJ_dz1[:, t - 1] = dJ_ds[:, t] * f1_prime[:, t - 1]  # 4.
        dJ_ds[:, t - 1] += dJ_dz1[:, t - 1] @ params.W_ss  # 3., the (W^ss)ᵀ dJ/dz_t^1 term (rows: transposed)
    # 5. Recurrent parameters: sums over i and t.
    dz1 = dJ_dz1.reshape(B * T, params.m)
    dW_sx = dz1.T @ x.reshape(B * T, params.ell)
    dW_ss = dz1.T @ fwd.S[:, :-1].reshape(B * T, params.m)
    dW0_ss = dz1.sum(axis=0)
    grads = Params(W_sx=dW_sx, W_ss=dW_ss, W0_ss=dW0_ss, W_o=dW_o, W0_o=dW0_o)
    return Backward(grads, dJ_ds, dJ_dz1)


def loss_and_gradients(
    params: Params, batch: Batch, f1: str = "tanh", s0: FloatArray | None = None
) -> tuple[float, Params]:
    """J and dJ/dW for the five arrays: `forward` then `backward`."""
    fwd = forward(params, batch, f1, s0)
    return fwd.J, backward(params, batch, fwd).grads


# ------------------------------------------------------------------------------ gradient check


def relative_error(a: FloatArray, b: FloatArray) -> float:
    """‖a − b‖ / max(‖a‖ + ‖b‖, tiny): 0 for equal arrays, 1 for opposite ones."""
    denominator = float(np.linalg.norm(a) + np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / max(denominator, 1e-300)


def numerical_gradients(
    params: Params, batch: Batch, f1: str = "tanh", eps: float = 1e-6, s0: FloatArray | None = None
) -> Params:
    """dJ/dW by central finite differences, one entry at a time:

    dJ/dW[k] ≈ (J(W + ε e_k) − J(W − ε e_k)) / 2ε          (error O(ε²))
    """
    numeric = params.zeros_like()
    for name, array in params.items():
        target = getattr(numeric, name)
        for k in np.ndindex(array.shape):
            saved = array[k]
            array[k] = saved + eps
            plus = forward(params, batch, f1, s0).J
            array[k] = saved - eps
            minus = forward(params, batch, f1, s0).J
            array[k] = saved
            target[k] = (plus - minus) / (2 * eps)
    return numeric


def gradient_check(
    params: Params, batch: Batch, f1: str = "tanh", eps: float = 1e-6, s0: FloatArray | None = None
) -> dict[str, float]:
    """Relative error between `backward`'s gradients and finite differences, per parameter array.

    Use float64 parameters: in float32 the differences drown in rounding.
    """
    _, analytic = loss_and_gradients(params, batch, f1, s0)
    numeric = numerical_gradients(params, batch, f1, eps, s0)
    return {name: relative_error(getattr(analytic, name), getattr(numeric, name)) for name in NAMES}


def random_problem(seed: int, f1: str = "tanh", max_size: int = 6, same_alphabet: bool = False) -> tuple[Params, Batch]:
    """Random shapes, weights and sequences of different lengths (for gradient checks).

    `same_alphabet`: ℓ = v ≥ 4, as in a nextchar vocabulary (for comparisons with the `rnn` model).

    For relu, pre-activations within 1e-3 of the kink are nudged away so that the finite
    differences of step size ε never straddle it (the derivative is undefined there).
    """
    rng = np.random.default_rng(seed)
    m, ell, v = (int(rng.integers(1, max_size + 1)) for _ in range(3))
    if same_alphabet:
        ell = v = int(rng.integers(4, max_size + 4))
    B = int(rng.integers(1, 4))
    lengths = rng.integers(1, max_size + 1, size=B)
    params = init_params(m, ell, v, rng)
    params.W0_ss[:] = rng.normal(0, 0.1, m)
    params.W0_o[:] = rng.normal(0, 0.1, v)
    inputs = [rng.integers(0, ell, n).tolist() for n in lengths]
    targets = [rng.integers(0, v, n).tolist() for n in lengths]
    batch = make_batch(inputs, targets, ell, v)
    if f1 == "relu":
        for _ in range(100):
            z1 = forward(params, batch, f1).Z1[batch.mask]
            close = np.abs(z1).min() if z1.size else 1.0
            if close > 1e-3:
                break
            params.W0_ss += rng.normal(0, 0.05, m)
    return params, batch
