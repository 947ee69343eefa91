"""The pieces `train` is made of, one at a time: settings (config.py), the resume state
(resume.py), the plot (plot.py) and the TrainState's steps, evaluations and stops (loop.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nextchar.models import ModelConfig, build_model
from nextchar.training.config import TrainConfig, learning_rate, resolved
from nextchar.training.loop import TrainState
from nextchar.training.optimisation import make_optimizer
from nextchar.training.plot import PLOT_NAME, write_bpc_plot
from nextchar.training.resume import (
    RESUME_DIR,
    Position,
    ResumeState,
    load_optimizer,
    optimizer_tensors,
    write_resume_state,
)
from tests.helpers import NAMES, PROSE, model_config, train_config

# ------------------------------------------------------------------------------ config


def test_config_imports_without_torch():
    code = "import sys, nextchar.training.config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_unresolved_optimiser_settings_are_refused_by_name():
    assert resolved(0.5, "lr") == 0.5
    with pytest.raises(ValueError, match=r"TrainConfig\.lr is unset"):
        learning_rate(TrainConfig(), 0, 0.0)


def test_train_config_round_trips_through_json_and_ignores_unknown_keys():
    config = TrainConfig(steps=7, lr=0.1).for_kind("gru")
    assert TrainConfig.from_json({**config.to_json(), "retired_setting": 1}) == config


# ------------------------------------------------------------------------------ resume state


def stepped_adamw() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="gru", vocab_size=6, hidden_size=4, embedding_size=3))
    optimizer = make_optimizer(model, TrainConfig(lr=0.01, weight_decay=0.1))
    logits, _ = model(torch.tensor([[0, 3, 4]]))
    logits.sum().backward()
    optimizer.step()
    return model, optimizer


def test_optimizer_state_survives_being_taken_apart():
    model, optimizer = stepped_adamw()
    meta, tensors = optimizer_tensors(optimizer)
    json.dumps(meta)  # the part that is not tensors is JSON
    assert tensors and all(k.startswith("optim.") for k in tensors)
    fresh = make_optimizer(model, TrainConfig(lr=0.5, weight_decay=0.0))
    load_optimizer(fresh, json.loads(json.dumps(meta)), tensors)
    before, after = optimizer.state_dict(), fresh.state_dict()
    # As a resume reads them: JSON (betas come back as a list, which AdamW takes as well).
    assert json.loads(json.dumps(before["param_groups"])) == json.loads(json.dumps(after["param_groups"]))
    for pid, slots in before["state"].items():
        for name, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["state"][pid][name])), (pid, name)


def test_resume_state_restores_weights_rng_position_and_this_ranks_rows(tmp_path):
    state = TrainState.build(
        NAMES, "mia\n", tmp_path, train_config(steps=4), model_config("gru"), "lines", "corpus", False, None, None
    )
    state.step()
    position = Position(step=3, elapsed=1.5, best_bpc=2.0, history=[{"step": 3}], warmup_from=0.25)
    carry = (torch.arange(12.0).view(4, 3),)
    rng = torch.get_rng_state()
    write_resume_state(tmp_path, state.spec, position, state.model, state.optimizer, None, carry, {"corpus": "x"})
    assert (tmp_path / RESUME_DIR / "state.json").is_file()

    saved = ResumeState.read(tmp_path)
    assert saved.meta["source"] == {"corpus": "x"}
    model = build_model(state.spec.model_config)
    optimizer = make_optimizer(model, state.config)
    torch.manual_seed(99)
    restored, rows = saved.restore_training(model, optimizer, rank=1, world=2, device=torch.device("cpu"))
    assert restored == position
    assert torch.equal(torch.get_rng_state(), rng)
    assert rows is not None and torch.equal(rows[0], carry[0][1::2])  # rank 1 of 2: rows 1 and 3
    for name, value in state.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


# ------------------------------------------------------------------------------ plot


def test_plot_is_a_png(tmp_path):
    write_bpc_plot(
        tmp_path, [{"step": 1, "train_bpc": 3.0, "val_bpc": 3.5}, {"step": 2, "train_bpc": 2.0, "val_bpc": 2.5}]
    )
    assert (tmp_path / PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ TrainState


def built(tmp_path, **settings: object) -> TrainState:
    return TrainState.build(
        PROSE, "the end", tmp_path, train_config(**settings), model_config("lstm"), "text", "corpus", False, None, None
    )


def test_a_step_advances_the_position_and_the_window(tmp_path):
    state = built(tmp_path, steps=3, seq_len=8)
    assert (tmp_path / "metrics.jsonl").read_text() == ""  # a new run starts its log
    report = state.step()
    assert report is not None and report.share == 1.0
    assert report.chars == state.config.batch_size * 8  # every position of a text window is predicted
    assert state.position.step == 1 and state.position.elapsed == pytest.approx(report.seconds)
    assert state.window.steps == 1 and state.window.loss == report.loss
    assert state.carry is not None and not any(part.requires_grad for part in state.carry)


def test_an_evaluation_logs_keeps_the_best_and_starts_a_new_window(tmp_path):
    state = built(tmp_path, steps=3)
    state.step()
    state.evaluate()
    assert state.evaluations == 1 and state.window.steps == 0
    assert state.best_val is state.last_val and state.position.best_bpc == state.last_val.bpc
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["step"] == 1 and record["val_bpc"] == state.last_val.bpc
    assert (tmp_path / "config.json").is_file() and (tmp_path / PLOT_NAME).is_file()


def test_the_run_finishes_at_its_steps_or_before_the_budget_runs_out(tmp_path):
    state = built(tmp_path, steps=2)
    assert not state.finished()
    state.step()
    state.step()
    assert state.finished()
    timed = built(tmp_path / "timed", steps=None, time_budget=10.0)
    timed.position.elapsed, timed.eval_seconds = 9.0, 0.5
    assert not timed.finished()
    timed.eval_seconds = 1.0  # the final evaluation would no longer fit
    assert timed.finished()


def test_on_the_clock_counts_evaluation_time_in_elapsed(tmp_path):
    state = built(tmp_path, steps=2)
    calls: list[str] = []
    state.on_the_clock(lambda: calls.append("a"), lambda: calls.append("b"))
    assert calls == ["a", "b"] and state.position.elapsed > 0


def test_finish_evaluates_the_last_steps_and_leaves_a_resumable_state(tmp_path):
    state = built(tmp_path, steps=2)
    state.step()
    result = state.finish()
    assert result.steps == 1 and result.final_val is state.last_val is not None
    assert ResumeState.read(tmp_path).meta["step"] == 1
