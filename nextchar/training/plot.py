"""bpc.png: the training and validation BPC of a run over its steps, redrawn at every evaluation.

matplotlib is imported when the first plot is drawn (it is slow to import and only training
needs it), with the Agg backend: a run has no display.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from nextchar.files import atomic_write_bytes

PLOT_NAME = "bpc.png"


def write_bpc_plot(out: Path, history: list[dict[str, Any]]) -> None:
    """out/bpc.png from the evaluation records (written atomically: a reader never sees half a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["train_bpc"] for h in history], marker=".", label="train (mean since last point)")
    ax.plot(steps, [h["val_bpc"] for h in history], marker=".", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(out / PLOT_NAME, buffer.getvalue())
