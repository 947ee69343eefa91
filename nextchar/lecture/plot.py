"""Figures for the worked example: the loss curve, the hidden state s_t along a line, and how
much gradient reaches each s_t (matplotlib, imported only when a figure is drawn)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from nextchar.lecture.rnn import backward, forward, make_batch
from nextchar.lecture.sgd import ExampleResult, encode_line, run_states
from nextchar.lecture.statemachine import show


def smooth(values: list[float], width: int = 20) -> NDArray[np.float64]:
    """Running mean over the last `width` updates (one SGD step's loss is noisy)."""
    a: NDArray[np.float64] = np.asarray(values, float)
    if len(a) == 0:
        return a
    c = np.cumsum(np.insert(a, 0, 0.0))
    lo = np.maximum(np.arange(1, len(a) + 1) - width, 0)
    return (c[1:] - c[lo]) / (np.arange(1, len(a) + 1) - lo)


def plot_example(path: str | Path, result: ExampleResult, line_index: int = 0) -> None:
    """Write a PNG: (1) L_seq per character over the updates, (2) heatmap of s_t over the
    characters of line `line_index`, (3) ‖dL_seq/ds_t‖ along that line (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nextchar.files import atomic_write_bytes

    line = result.lines[line_index]
    inputs, targets = encode_line(line, result.vocab)
    states, _ = run_states(result.params, result.f1, inputs)  # (n+1) × m: s_0 … s_n
    batch = make_batch([inputs], [targets], result.params.ell, result.params.v)
    fwd = forward(result.params, batch, result.f1)
    dJ_ds = np.linalg.norm(backward(result.params, batch, fwd).dJ_ds[0], axis=1)  # t = 0..n

    fig = plt.figure(figsize=(11, 8), dpi=100)
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.4])
    ax = fig.add_subplot(grid[0, 0])
    steps = np.arange(1, len(result.history.loss) + 1)
    ax.plot(steps, result.history.loss, color="0.8", lw=0.8, label="each update")
    ax.plot(steps, smooth(result.history.loss), color="C0", label="running mean (20)")
    ax.set_yscale("log")
    ax.set_xlabel("SGD update")
    ax.set_ylabel("L_seq / n  (nats per character)")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend()

    ax = fig.add_subplot(grid[0, 1])
    ax.semilogy(np.arange(len(dJ_ds)), np.maximum(dJ_ds, 1e-30), marker=".", color="C3")
    ax.set_xticks(np.arange(len(dJ_ds)))
    ax.set_xticklabels(["s₀"] + [show(ch) for ch in "^" + line], fontsize=7)
    ax.set_xlabel("state s_t after reading x_t")
    ax.set_ylabel("‖dL_seq / ds_t‖")
    ax.set_title("gradient reaching each state (backpropagation through time)")
    ax.grid(alpha=0.3)

    ax = fig.add_subplot(grid[1, :])
    limit = float(np.abs(states).max()) or 1.0
    image = ax.imshow(states.T, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks(np.arange(len(states)))
    ax.set_xticklabels(["s₀"] + [show(ch) for ch in "^" + line], fontsize=8)
    ax.set_xlabel("after reading x_t")
    ax.set_ylabel(f"state unit (m = {result.params.m})")
    ax.set_title(f'hidden state s_t along "{line}" (f1 = {result.f1})')
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
