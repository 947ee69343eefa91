"""The page's four views as PNG figures, for slides and notes (`nextchar lecture plot VIEW TEXT`).

Each figure draws the same dictionary the page draws (views.py, bptt.py; their docstrings
give the equations), so a figure and the page show the same numbers:

    machine        the window machine's table (t, x_t, s_t) and s_t as m one-hot blocks of ℓ
    state          s_t, units × characters, and the text coloured by one unit
    distribution   p_t[y_t] under every character, and ℓ_t = −log2 p_t[y_t] adding up to L_seq
    bptt           ‖dL_seq/ds_t‖ back through time and ‖dJ/dW^ss‖ accumulated from t = n down

matplotlib (Agg) is imported only when a figure is drawn.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nextchar.lecture.statemachine import show

FIGURES = ("machine", "state", "distribution", "bptt")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> None:
    from nextchar.files import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())


def plot_machine(view: dict[str, Any], path: str | Path) -> None:
    """The table beside s_t as one-hot blocks (rows t = 0..n+1, columns the m·ℓ units, newest block first)."""
    plt = _pyplot()
    rows, ell, c = view["rows"], view["ell"], view["context"]
    states = np.zeros((len(rows), view["m"]))
    for t, blocks in enumerate(view["hot"]):
        for b, k in enumerate(blocks):
            states[t, b * ell + k] = 1.0
    fig, (ax_table, ax) = plt.subplots(1, 2, figsize=(11, 0.28 * len(rows) + 1.6), gridspec_kw={"width_ratios": [1, 3]})
    ax_table.axis("off")
    cells = [[str(r["t"]), show(r["x"]), show(r["s"]), show(r["output"])] for r in rows]
    table = ax_table.table(cells, colLabels=["t", "x_t", "s_t", "output"], loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    ax.imshow(states, aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
    for b in range(1, c):
        ax.axvline(b * ell - 0.5, color="C0", lw=1)
    ax.set_yticks(np.arange(len(rows)))
    ax.set_yticklabels([f"s_{r['t']}" for r in rows], fontsize=7)
    ax.set_xlabel(f"units of s_t: {c} one-hot blocks of ℓ = {ell} (newest character first)")
    ax.set_title(f"the last m = {c} characters as the RNN s_t = W^sx x_t + W^ss s_t-1 (m·ℓ = {view['m']})")
    fig.tight_layout()
    _save(fig, path)


def plot_state(view: dict[str, Any], path: str | Path, unit: int | None = None) -> None:
    """The heatmap of s_t (units × characters) and the text coloured by `unit` (default: the unit
    most correlated with the first feature that has one)."""
    plt = _pyplot()
    states = np.array(view["states"], float).reshape(len(view["inputs"]), view["units_shown"])
    if unit is None:
        found = [f["units"][0]["unit"] for f in view["features"] if f["units"]]
        unit = found[0] if found else 0
    limit = float(view["limit"]) or 1.0
    fig, (ax, ax_text) = plt.subplots(2, 1, figsize=(11, 7), gridspec_kw={"height_ratios": [4, 1]})
    image = ax.imshow(states.T, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks(np.arange(len(view["inputs"])))
    ax.set_xticklabels([show(x) for x in view["inputs"]], fontsize=7)
    ax.set_xlabel("after reading x_t")
    ax.set_ylabel(f"unit of s_t (m = {view['m']})")
    ax.set_title("the RNN's state s_t")
    fig.colorbar(image, ax=ax, fraction=0.03)
    ax_text.axis("off")
    ax_text.set_title(f"the text coloured by unit {unit}'s activation after each character", fontsize=9)
    cmap = plt.get_cmap("RdBu_r")
    for i, ch in enumerate(view["text"][:100]):  # one line of the figure; the page shows all of them
        value = states[i + 1, unit] / limit
        ax_text.text(
            i / max(len(view["text"][:100]), 40),
            0.5,
            show(ch),
            family="monospace",
            fontsize=9,
            backgroundcolor=cmap(0.5 + value / 2),
        )
    fig.tight_layout()
    _save(fig, path)


def plot_distribution(view: dict[str, Any], path: str | Path) -> None:
    """p_t[y_t] as a bar under each character, and L_seq = Σ −log2 p_t[y_t] as the text grows."""
    plt = _pyplot()
    rows = view["rows"]
    t = np.arange(1, len(rows) + 1)
    fig, (ax, ax_loss) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    ax.bar(t, [r["p"] for r in rows], color="C0")
    ax.set_ylim(0, 1)
    ax.set_ylabel("p_t[y_t]")
    ax.set_title("the probability the model gave each true next character")
    ax_loss.bar(t, [r["bits"] for r in rows], color="0.7", label="−log2 p_t[y_t] (bits)")
    ax_loss.plot(t, [r["L_seq"] for r in rows], color="C3", marker=".", label="L_seq so far (bits)")
    ax_loss.set_xticks(t)
    ax_loss.set_xticklabels([show(r["y"]) for r in rows], fontsize=8)
    bpc = view["BPC"]
    ax_loss.set_title(f"L_seq = {view['L_seq_bits']:.2f} bits, BPC = {bpc:.3f}" if bpc is not None else "L_seq")
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_bptt(view: dict[str, Any], path: str | Path) -> None:
    """‖dL_seq/ds_t‖ for t = 0..n and ‖dJ/dW^ss accumulated from n down to t‖ (log scale)."""
    plt = _pyplot()
    norms = np.array([np.nan if v is None else v for v in view["dL_ds_norms"]], float)
    partial = np.array([np.nan if v is None else v for v in view["accumulated_norms"]], float)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.bar(np.arange(len(norms)), np.maximum(norms, 1e-300), color="C0", label="‖dL_seq/ds_t‖")
    ax.plot(np.arange(1, len(partial) + 1), partial, color="C3", marker=".", label="‖dJ/dW^ss‖ accumulated from n to t")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(norms)))
    ax.set_xticklabels(["s₀", *(show(x) for x in view["inputs"])], fontsize=8)
    ax.set_xlabel("state s_t after reading x_t")
    stretch = "overflow" if view["W_ss_norm"] is None else f"{view['W_ss_norm']:.3g}"
    ax.set_title(f"backpropagation through time: f1 = {view['f1']}, W^ss × {view['scale']:g} (‖W^ss‖₂ = {stretch})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


PLOTTERS: dict[str, Callable[[dict[str, Any], str | Path], None]] = {
    "machine": plot_machine,
    "state": plot_state,
    "distribution": plot_distribution,
    "bptt": plot_bptt,
}
