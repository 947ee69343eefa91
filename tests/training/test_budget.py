"""Time budgets: a run ends within its budget, final evaluation included, evaluates by the clock,
warms up within its first tenth, and a resumed run whose budget is spent says so
(training/loop.py, config.py, budget.py)."""

from __future__ import annotations

import itertools
import json
import math
import time

import pytest

from nextchar.cli.main import main
from nextchar.data.batches import split_validation
from nextchar.errors import UserError
from nextchar.training.budget import evaluation_estimate
from nextchar.training.config import EVALUATIONS_PER_BUDGET, WARMUP_SHARE, TrainConfig, learning_rate
from nextchar.training.loop import TrainState, train
from nextchar.training.plot import ProgressBar
from nextchar.training.resume import RESUME_DIR
from tests.helpers import PROSE, model_config, train_config

TINY_CLI = [
    *("--kind", "lstm", "--hidden", "16", "--embedding", "8", "--dropout", "0", "--embedding-dropout", "0"),
    *("--batch-size", "4", "--seq-len", "16", "--precision", "fp32", "--device", "cpu", "--quiet"),
]


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def timed_config(budget: float, **settings: object) -> TrainConfig:
    """A run by the clock alone, evaluating by the clock alone (eval_interval out of reach)."""
    return train_config(steps=None, time_budget=budget, eval_interval=10**9, **settings)


# ------------------------------------------------------------------------------ the schedule


def test_the_warm_up_of_a_budgeted_run_ends_by_the_clock_at_the_latest():
    config = TrainConfig(lr=1.0, warmup_steps=10**6, min_lr_ratio=0.0, steps=None, time_budget=100.0)
    end = WARMUP_SHARE * 100.0
    assert learning_rate(config, 0, end / 2) == pytest.approx(0.5)  # the clock's ramp
    assert learning_rate(config, 5, end) == pytest.approx(0.5 * (1 + math.cos(math.pi * WARMUP_SHARE)))
    assert learning_rate(config, 6, 90.0) < 0.1  # decaying to the floor
    # A warm-up that ends by its steps sooner than by the clock goes by its steps, as before.
    quick = TrainConfig(lr=1.0, warmup_steps=300, min_lr_ratio=0.01, steps=None, time_budget=600.0)
    assert learning_rate(quick, 149, 25.0) == pytest.approx(0.5)
    # The clock's warm-up starts with the first step, not with the setup before it.
    assert learning_rate(config, 0, 3.0, warmup_from=3.0) == pytest.approx(1e-6)
    assert learning_rate(config, 0, 3.0 + end / 4, warmup_from=3.0) == pytest.approx(0.25)
    # With --steps the clock plays no part.
    by_steps = TrainConfig(lr=1.0, warmup_steps=10**6, min_lr_ratio=0.0, steps=100, time_budget=100.0)
    assert learning_rate(by_steps, 0, 50.0) == pytest.approx(1e-6)


def built(tmp_path, val_text: str = "the end", **settings: object) -> TrainState:
    return TrainState.build(
        PROSE, val_text, tmp_path, train_config(**settings), model_config("lstm"), "text", "corpus", False, None, None
    )


def test_a_budgeted_run_evaluates_by_the_clock_but_within_its_share(tmp_path):
    state = built(tmp_path, steps=None, time_budget=10.0)
    gap = 10.0 / EVALUATIONS_PER_BUDGET
    state.eval_seconds = 0.01
    state.position.elapsed = gap * 0.9
    assert not state.clock_says_evaluate()
    state.position.elapsed = gap
    assert state.clock_says_evaluate()
    state.eval_seconds = 0.5  # an evaluation this dear is spaced 10× its cost apart
    assert not state.clock_says_evaluate()
    state.position.elapsed = 5.0
    assert state.clock_says_evaluate()
    by_steps = built(tmp_path / "steps", steps=100, time_budget=10.0)
    by_steps.position.elapsed = 5.0
    assert not by_steps.clock_says_evaluate()  # a run by --steps keeps its step schedule


def test_the_budget_keeps_room_for_another_step_and_the_final_evaluation(tmp_path):
    state = built(tmp_path, steps=None, time_budget=10.0)
    state.position.elapsed, state.eval_seconds, state.step_seconds = 9.0, 0.5, 0.4
    assert not state.finished()
    state.step_seconds = 0.5
    assert state.finished()


def test_the_final_evaluation_is_foreseen_before_any_has_run(tmp_path):
    small = built(tmp_path / "small", steps=None, time_budget=10.0)
    big = built(tmp_path / "big", PROSE * 50, steps=None, time_budget=10.0)
    small.begin(time.perf_counter())
    assert small.eval_seconds > 0
    # scaled by the targets: 50 times as many to score
    assert evaluation_estimate(big.model, big.val_data) > evaluation_estimate(small.model, small.val_data)


def test_the_bar_shows_no_validation_score_before_there_is_one(tmp_path):
    state = built(tmp_path, steps=3)
    bar = ProgressBar(state.config, state.position)
    bar.show(state.position, 3.0, 1000.0)
    assert "val=-" in bar.bar.postfix and "inf" not in bar.bar.postfix
    state.step()
    state.evaluate()
    bar.show(state.position, 3.0, 1000.0)
    assert f"val={state.position.best_bpc:.3f}" in bar.bar.postfix
    bar.close()


# ------------------------------------------------------------------------------ whole runs


@pytest.mark.slow
@pytest.mark.parametrize("val_copies", [1, 9000], ids=["cheap-evaluation", "evaluation-of-seconds"])
def test_a_20_second_budget_holds_final_evaluation_included(tmp_path, val_copies):
    # 9000 copies: about 3.7 million characters, seconds to score, more than a tenth of the budget.
    val_text = PROSE * val_copies
    started = time.perf_counter()
    result = train(PROSE * 20, val_text, tmp_path, timed_config(20.0), model_config("lstm"), progress=False)
    wall = time.perf_counter() - started
    assert 18.0 <= wall <= 22.0, wall
    assert result.elapsed <= wall  # the run's own clock, inside the call
    points = records(tmp_path)
    elapsed = [r["elapsed"] for r in points]
    if val_copies == 1:
        assert len(points) >= 5, elapsed  # every 2 s: the curve of a short run
        by_clock = elapsed[:-1]  # the final evaluation comes when the budget ends, not by the clock
        assert all(b - a >= 20.0 / EVALUATIONS_PER_BUDGET - 0.2 for a, b in itertools.pairwise(by_clock)), elapsed
    else:
        assert len(points) >= 1  # spaced 10× their cost apart: the final one, perhaps one more
    assert all(math.isfinite(r["val_bpc"]) for r in points)


@pytest.mark.slow
def test_a_short_budgeted_run_ends_on_a_decaying_learning_rate(tmp_path):
    # What the first run in a process spends importing and warming up (a second or more) would
    # come out of the 3 s and leave room for only one or two evaluations: pay it first.
    train(PROSE, PROSE, tmp_path / "warm", train_config(steps=1), model_config("lstm"), progress=False)
    # A warm-up of a million steps: only the clock can end it.
    config = timed_config(3.0, lr=0.01, warmup_steps=10**6)
    train(PROSE * 20, PROSE, tmp_path, config, model_config("lstm"), progress=False)
    lrs = [r["lr"] for r in records(tmp_path)]
    assert len(lrs) >= 3, lrs
    assert lrs[-1] < lrs[-2] < max(lrs) <= 0.01  # past the peak, decaying
    assert lrs[-1] < 0.2 * 0.01


@pytest.mark.slow
def test_resuming_a_run_whose_budget_is_spent_is_a_one_line_error(tmp_path, write_file, capsys):
    corpus = str(write_file("prose.txt", PROSE * 20))
    out = tmp_path / "run"
    # 3 s: the first run in a process also spends a second or so importing what the optimiser needs.
    assert main(["train", corpus, "--out", str(out), "--time-budget", "3", *TINY_CLI]) == 0
    state_file = out / RESUME_DIR / "state.json"
    before = state_file.read_bytes()
    spent = json.loads(before)["elapsed"]
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--time-budget", repr(spent), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()  # after the line that names the corpus
    assert err[-1].startswith("nextchar: error: ")
    assert err[-1].endswith(
        f"the run in {out} has used its whole --time-budget ({spent:g} s); give a larger --time-budget to go on"
    )
    assert [line for line in err if line.startswith("nextchar:")] == err[-1:]
    assert state_file.read_bytes() == before  # nothing trained, nothing written
    train_text, val_text = split_validation(PROSE * 20, "text", 0.1)  # what the command trained on
    with pytest.raises(UserError, match="has used its whole time_budget") as caught:
        train(train_text, val_text, out, TrainConfig(time_budget=0.5), resume=True, progress=False)
    assert caught.value.parameter == "time_budget"
    # A larger budget goes on.
    assert main(["train", "--resume", str(out), "--time-budget", str(spent + 1), "--quiet"]) == 0
    assert json.loads(state_file.read_text())["step"] > json.loads(before)["step"]
