"""What a run shows: bpc.png, the training and validation BPC of a run over its steps, redrawn
at every evaluation; and the progress bar.

matplotlib is imported when the first plot is drawn (it is slow to import and only training
needs it), with the Agg backend: a run has no display. tqdm is imported when a bar is made.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from nextchar.files import atomic_write_bytes

if TYPE_CHECKING:
    from nextchar.training.config import TrainConfig
    from nextchar.training.resume import Position

PLOT_NAME = "bpc.png"


def import_pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend. Its import takes a good part of a second, which a
    time-budgeted run takes at its start rather than in its first evaluation, whose cost sets
    how often it evaluates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_bpc_plot(out: Path, history: list[dict[str, Any]]) -> None:
    """out/bpc.png from the evaluation records (written atomically: a reader never sees half a PNG)."""
    plt = import_pyplot()
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


class ProgressBar:
    """Rank 0's tqdm bar: steps (or seconds of the time budget) done, the last step's BPC and
    speed, the best validation BPC."""

    def __init__(self, config: TrainConfig, position: Position) -> None:
        from tqdm import tqdm

        self.by_steps = bool(config.steps)
        self.total = config.steps if config.steps else int(config.time_budget or 0)
        self.bar = tqdm(
            total=self.total,
            initial=min(self._done(position), self.total),
            unit="step" if self.by_steps else "s",
            dynamic_ncols=True,
            leave=True,
            mininterval=0.5,
        )

    def _done(self, position: Position) -> int:
        return position.step if self.by_steps else int(position.elapsed)

    def show(self, position: Position, bpc: float, chars_per_second: float) -> None:
        """After a step: its BPC (of the batch) and speed, the best validation BPC so far."""
        done = min(self._done(position), self.total)
        self.bar.set_postfix(
            bpc=f"{bpc:.3f}",
            val=f"{position.best_bpc:.3f}" if math.isfinite(position.best_bpc) else "-",  # none yet
            chars_s=f"{chars_per_second:,.0f}",
            refresh=False,
        )
        self.bar.update(done - self.bar.n)  # redraws at most every bar.mininterval seconds

    def close(self) -> None:
        self.bar.close()
