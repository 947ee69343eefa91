"""What a time-budgeted run foresees before it has timed an evaluation: the cost of scoring the
validation text, from a timed slice of it.

The run keeps that much of its budget for its final evaluation (nextchar.training.loop), and
spaces its evaluations by the clock by it (nextchar.training.config). Scoring reads a text in
the same layout whatever its length (`nextchar.evaluation.bpc`), so its cost grows with the
targets; fixed costs weigh more in a slice, which errs on the safe side of a budget. Scoring
uses no random numbers, so timing it changes nothing that a run computes.
"""

from __future__ import annotations

import itertools
import math
import time

from nextchar.data.batches import Encoded, count_targets
from nextchar.evaluation.bpc import evaluate_encoded
from nextchar.models import CharModel

# The slice: long enough to be timed steadily on a busy machine, short next to a large
# validation text (the default corpus's 46,000 characters are about three slices).
ESTIMATE_TARGETS = 16384
# What the run keeps on top of the estimate: the final evaluation may meet a busier machine.
ESTIMATE_MARGIN = 1.25


def evaluation_estimate(model: CharModel, val_data: Encoded) -> float:
    """The seconds that scoring all of `val_data` should take: its first ESTIMATE_TARGETS
    targets or so (a stream's first characters, or its first lines), timed and scaled up."""
    part: Encoded = val_data[: ESTIMATE_TARGETS + 1]
    if isinstance(val_data, list):  # lines: as many as hold ESTIMATE_TARGETS targets
        ends = itertools.accumulate(len(line) + 1 for line in val_data)
        part = val_data[: 1 + sum(1 for _ in itertools.takewhile(lambda end: end < ESTIMATE_TARGETS, ends))]
    seconds = math.inf
    for _ in range(2):  # the faster of two: the first may pay for one-off setup
        started = time.perf_counter()
        evaluate_encoded(model, part)
        seconds = min(seconds, time.perf_counter() - started)
    return seconds * count_targets(val_data) / max(count_targets(part), 1)


def foreseen_seconds(model: CharModel, val_data: Encoded) -> float:
    """What a run keeps for its final evaluation before it has timed one: the estimate and its margin."""
    return ESTIMATE_MARGIN * evaluation_estimate(model, val_data)
