"""What tests share besides fixtures: tiny corpora, tiny model settings, a call counter.

Nothing here needs the corpora in /work/shared/data: every test writes its own few lines.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from nextchar.models import ModelConfig
from nextchar.training.config import TrainConfig
from nextchar.training.loop import train

# Why one thread: the models in tests are tiny, and on a small shared machine two OpenMP
# threads spin against each other and against other processes — measured here, a 100-step
# LSTM run took 0.2 s with one thread and up to 38 s with two while a benchmark was running.
torch.set_num_threads(1)
# The commands, which choose their own threads (nextchar.threads), too: OMP_NUM_THREADS decides.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A one-line corpus: every 6-character context determines the next character (see
# test_training's overfitting test, which checks that before relying on it).
ONE_LINE = "a quick fox jumps over 7 lazy dogs!"

PROSE = (
    "It was the best of times, it was the worst of times, it was the age of wisdom,\n"
    "it was the age of foolishness, it was the epoch of belief, it was the epoch of\n"
    "incredulity, it was the season of Light, it was the season of Darkness.\n"
    "\n"
    "There were a king with a large jaw and a queen with a plain face, on the throne\n"
    "of England; there were a king with a large jaw and a queen with a fair face, on\n"
    "the throne of France.\n"
)

NAMES = "emma\nolivia\nava\nisabella\nsophia\ncharlotte\nmia\namelia\nharper\nevelyn\nabigail\nemily\n"


class CallCounter:
    """Counts the model calls of completers (through their `forward`) and the characters read."""

    def __init__(self, *completers: object) -> None:
        self.calls = self.steps = 0
        for completer in completers:
            completer.forward = self._counting(completer.forward)  # type: ignore[attr-defined]

    def _counting(self, forward: Callable) -> Callable:
        def counted(idx: torch.Tensor, state: tuple) -> object:
            self.calls += 1
            self.steps += idx.shape[1]
            return forward(idx, state)

        return counted

    def reset(self) -> None:
        self.calls = self.steps = 0


def model_config(kind: str, **overrides: object) -> ModelConfig:
    """A tiny model of `kind` (vocab_size is filled in by train / the test)."""
    kind, _, nonlinearity = kind.partition("-")  # "rnn-relu" → rnn with f1 = relu
    settings: dict = {
        "kind": kind,
        "hidden_size": 24,
        "num_layers": 1,
        "embedding_size": 12,
        "dropout": 0.0,
        "embedding_dropout": 0.0,
        "context": 4,
        "nonlinearity": nonlinearity or "tanh",
    }
    settings.update(overrides)
    return ModelConfig(**settings)


def train_config(**overrides: object) -> TrainConfig:
    """A short, exact (fp32, CPU) run measured in steps, evaluating only at the end."""
    settings: dict = {
        "batch_size": 4,
        "seq_len": 16,
        "lr": 0.01,
        "warmup_steps": 2,
        "steps": 10,
        "time_budget": None,
        "eval_interval": 1000,
        "precision": "fp32",
        "device": "cpu",
    }
    settings.update(overrides)
    return TrainConfig(**settings)


def train_on_prose(out: Path, kind: str, steps: int) -> Path:
    """A tiny model of `kind` trained for `steps` steps on PROSE in `text` format (its last
    10% validates), written to `out`."""
    cut = int(0.9 * len(PROSE))
    train(PROSE[:cut], PROSE[cut:], out, train_config(steps=steps), model_config(kind), "text", progress=False)
    return out


# A tiny, exact, quick `train` run: the CLI tests add these flags to every training command.
TINY_TRAIN_FLAGS = [
    "--kind",
    "gru",
    "--hidden",
    "16",
    "--layers",
    "1",
    "--embedding",
    "8",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--steps",
    "3",
    "--warmup",
    "1",
    "--precision",
    "fp32",
    "--device",
    "cpu",
    "--quiet",
]


class Bounded:
    """Fuzzing's bounds: each example within `seconds` of wall time, and the process's peak
    resident memory within `mb` of what it was when this was made (a file or request that
    made the code allocate for what it declares, or loop on it, fails here).

        bound = Bounded(seconds=5, mb=200)
        with bound.example(): ...        # each example
        bound.check()                    # after them all
    """

    def __init__(self, seconds: float, mb: float) -> None:
        self.seconds, self.mb = seconds, mb
        self.peak_before = _peak_rss_mb()
        self.slowest = 0.0
        self.examples = 0

    @contextmanager
    def example(self) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.examples += 1

    def check(self) -> None:
        grown = _peak_rss_mb() - self.peak_before
        assert self.examples > 0
        assert self.slowest <= self.seconds, f"an example took {self.slowest:.1f} s (bound {self.seconds:g})"
        assert grown <= self.mb, f"peak memory grew by {grown:.0f} MB over {self.examples} examples (bound {self.mb:g})"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
