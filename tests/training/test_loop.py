"""Training and evaluation: overfitting, exact BPC, exact resume, schedules (training/loop.py, config.py, resume.py)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from nextchar.checkpoint import load_checkpoint, read_bundle, save_checkpoint
from nextchar.cli.main import main
from nextchar.data.batches import encode_corpus
from nextchar.errors import UserError
from nextchar.evaluation.bpc import evaluate_encoded, evaluate_lines, evaluate_stream
from nextchar.models import ModelConfig, build_model
from nextchar.text import END, START, Vocabulary
from nextchar.training.config import BASE_OPTIMISER_DEFAULTS, TrainConfig, learning_rate, optimiser_default
from nextchar.training.loop import train
from nextchar.training.optimisation import moving_average
from nextchar.training.resume import RESUME_DIR
from tests.helpers import NAMES, ONE_LINE, PROSE, model_config, train_config

# ------------------------------------------------------------------------------ overfitting

OVERFIT = {  # kind → (model settings, learning rate); 150 full-batch steps of one line each
    "window": ({"context": 6}, 0.1),
    "rnn-tanh": ({}, 0.03),
    "rnn-relu": ({}, 0.03),
    "lstm": ({}, 0.03),
    "gru": ({}, 0.03),
}


def test_one_line_corpus_is_determined_by_six_characters():
    framed = "^" * 6 + ONE_LINE + "$"
    following: dict[str, set[str]] = {}
    for i in range(len(ONE_LINE) + 1):
        following.setdefault(framed[i : i + 6], set()).add(framed[i + 6])
    assert all(len(nexts) == 1 for nexts in following.values())  # so a window of 6 can reach zero loss


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(OVERFIT))
def test_every_model_kind_overfits_one_line(tmp_path, kind):
    settings, lr = OVERFIT[kind]
    config = train_config(steps=150, lr=lr, warmup_steps=5, weight_decay=0.0)
    result = train(
        ONE_LINE + "\n",
        ONE_LINE + "\n",
        tmp_path,
        config,
        model_config(kind, hidden_size=32, **settings),
        "lines",
        progress=False,
    )
    assert result.steps == 150
    assert result.final_val.chars == len(ONE_LINE) + 1
    assert result.final_val.top1 == 1.0
    assert result.final_val.bpc < 0.05, result.final_val
    # The saved checkpoint reproduces the line greedily, character by character.
    ckpt = load_checkpoint(tmp_path)
    idx, state, out = torch.tensor([[START]]), None, []
    with torch.no_grad():
        for _ in range(len(ONE_LINE) + 1):
            logits, state = ckpt.model(idx, state)
            idx = logits[:, -1].argmax(dim=-1, keepdim=True)
            out.append(int(idx))
    assert out[-1] == END
    assert ckpt.vocab.decode(out) == ONE_LINE


# ------------------------------------------------------------------------------ exact BPC


def hand_set_window_model() -> tuple[Vocabulary, torch.nn.Module]:
    """A window model (c = 1) over "ab" whose probabilities are simple fractions.

    Logits z = W_o s + W0_o with W0_o = ln 2 on <end> only, and columns of W_o:
      after ^ : ln 3 on a           → exp(z) = [1, 2, 1, 3, 1], p(a|^) = 3/8
      after a : ln 3 on $, ln 4 on b → exp(z) = [1, 6, 1, 1, 4], p(b|a) = 4/13, p($|a) = 6/13
      after b : 0                   → exp(z) = [1, 2, 1, 1, 1], p($|b) = 2/6
    """
    vocab = Vocabulary.from_text("ab")
    a, b = vocab.encode("ab")
    model = build_model(ModelConfig(kind="window", vocab_size=len(vocab), context=1))
    with torch.no_grad():
        model.W_o.zero_()
        model.W_o[a, START] = math.log(3)
        model.W_o[END, a] = math.log(3)
        model.W_o[b, a] = math.log(4)
        model.W0_o.zero_()
        model.W0_o[END] = math.log(2)
    return vocab, model.eval()


def test_bpc_of_a_hand_set_model_lines():
    vocab, model = hand_set_window_model()
    # "ab": a|^, b|a, $|b ; "a": a|^, $|a
    probabilities = [3 / 8, 4 / 13, 2 / 6, 3 / 8, 6 / 13]
    expected = -sum(math.log2(p) for p in probabilities) / 5
    result = evaluate_lines(model, encode_corpus("ab\na\n", vocab, "lines"))
    assert result.chars == 5
    assert result.bpc == pytest.approx(expected, rel=1e-6)
    assert result.top1 == pytest.approx(4 / 5)  # after "a" the model's first choice is $, not b
    assert result.top5 == 1.0  # only five symbols


@pytest.mark.parametrize("streams", [1, 2, 16])
def test_bpc_of_a_hand_set_model_text(streams):
    vocab, model = hand_set_window_model()
    data = encode_corpus("abab", vocab, "text")  # a|^, b|a, a|b, b|a
    p_a_after_b = 1 / 6
    expected = -(math.log2(3 / 8) + 2 * math.log2(4 / 13) + math.log2(p_a_after_b)) / 4
    result = evaluate_stream(model, data, n_streams=streams)
    assert result.chars == 4
    assert result.bpc == pytest.approx(expected, rel=1e-6)
    assert result.top1 == pytest.approx(1 / 4)


def test_cli_eval_reports_the_hand_computed_bpc(tmp_path, write_file, capsys):
    vocab, model = hand_set_window_model()
    save_checkpoint(tmp_path / "hand", model, vocab, "lines")
    corpus = write_file("eval.txt", "ab\na\n")
    assert main(["eval", str(corpus), "-m", str(tmp_path / "hand"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = -sum(math.log2(p) for p in [3 / 8, 4 / 13, 2 / 6, 3 / 8, 6 / 13]) / 5
    assert report["bpc"] == pytest.approx(expected, rel=1e-6)
    assert report["chars"] == 5


def test_uniform_model_costs_log2_v_bits():
    model = build_model(ModelConfig(kind="window", vocab_size=9, context=2)).eval()  # all zeros: uniform
    result = evaluate_encoded(model, torch.tensor([START, 3, 4, 5, 6, 7, 8, 3]))
    assert result.bpc == pytest.approx(math.log2(9))


# ------------------------------------------------------------------------------ resuming


def resume_weights(out) -> tuple[dict, dict[str, torch.Tensor]]:
    meta, tensors = read_bundle(out / RESUME_DIR, json_name="state.json")
    return meta, tensors


@pytest.mark.slow
@pytest.mark.parametrize(
    ("corpus_format", "kind", "precision", "ema"),
    [
        ("text", "lstm", "fp32", 0.0),
        ("lines", "lstm", "fp32", 0.0),
        ("text", "rnn-tanh", "auto", 0.0),
        ("lines", "window", "fp32", 0.0),
        ("text", "gru", "fp32", 0.9),
    ],
)
def test_interrupted_and_resumed_training_equals_uninterrupted(tmp_path, corpus_format, kind, precision, ema):
    if corpus_format == "text":
        cut = int(0.9 * len(PROSE))
        train_text, val_text = PROSE[:cut], PROSE[cut:]
    else:
        train_text, val_text = NAMES, "mia\nava\n"
    # Two layers with dropout, so that the random-number state has to be restored too.
    model = model_config(kind, num_layers=2, dropout=0.2)
    config = train_config(steps=12, eval_interval=4, precision=precision, ema=ema)
    straight = train(train_text, val_text, tmp_path / "a", config, model, corpus_format, progress=False)

    stopped = train(
        train_text,
        val_text,
        tmp_path / "b",
        config,
        model,
        corpus_format,
        progress=False,
        should_stop=lambda step: step == 6,
    )  # mid-epoch: a carried state is saved
    assert stopped.steps == 6
    meta, _ = resume_weights(tmp_path / "b")
    assert meta["step"] == 6
    resumed = train(train_text, val_text, tmp_path / "b", train_config(steps=12), resume=True, progress=False)
    assert straight.steps == resumed.steps == 12

    _, tensors_a = resume_weights(tmp_path / "a")
    meta_b, tensors_b = resume_weights(tmp_path / "b")
    assert meta_b["step"] == 12
    assert set(tensors_a) == set(tensors_b)
    assert any(k.startswith("model.") for k in tensors_a) and any(k.startswith("optim.") for k in tensors_a)
    assert any(k.startswith("ema.") for k in tensors_a) == (ema > 0)  # the average goes on where it stopped
    for key in tensors_a:  # weights, optimizer moments, RNG and carried state: bit for bit
        assert torch.equal(tensors_a[key], tensors_b[key]), key
    assert straight.final_val.bpc == resumed.final_val.bpc


def test_resume_refuses_a_different_corpus(tmp_path):
    train(NAMES, "mia\n", tmp_path, train_config(steps=2), model_config("gru"), "lines", progress=False)
    with pytest.raises(UserError, match="training text differs"):
        train(NAMES + "zoe\n", "mia\n", tmp_path, train_config(steps=4), resume=True, progress=False)


def test_resume_keeps_the_runs_settings(tmp_path):
    config = train_config(steps=2, seq_len=8, lr=0.02)
    train(PROSE, "the end", tmp_path, config, model_config("rnn-relu"), "text", alphabet="lecture", progress=False)
    result = train(PROSE, "the end", tmp_path, TrainConfig(steps=4, time_budget=None), resume=True, progress=False)
    assert result.steps == 4
    meta, _ = resume_weights(tmp_path)
    assert meta["train_config"]["seq_len"] == 8 and meta["train_config"]["lr"] == 0.02
    assert meta["model"]["nonlinearity"] == "relu"
    assert meta["vocabulary"]["alphabet"] == "lecture"
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["training"]["alphabet"] == "lecture"


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_unset_optimiser_settings_take_the_kinds_defaults_and_are_recorded(tmp_path, kind):
    # lstm has defaults of its own (measured, README), gru the base ones; given values win.
    config = train_config(steps=2, **dict.fromkeys(BASE_OPTIMISER_DEFAULTS))
    train(PROSE, "the end", tmp_path, config, model_config(kind), progress=False)
    meta, _ = resume_weights(tmp_path)
    recorded = meta["train_config"]
    for name in BASE_OPTIMISER_DEFAULTS:
        assert recorded[name] == optimiser_default(kind, name)
    assert optimiser_default("lstm", "lr") != optimiser_default("gru", "lr")
    given = TrainConfig(lr=1e-3, weight_decay=0.0).for_kind(kind)
    assert (given.lr, given.weight_decay, given.warmup_steps) == (1e-3, 0.0, optimiser_default(kind, "warmup_steps"))
    # a resumed run keeps the numbers it started with
    train(PROSE, "the end", tmp_path, TrainConfig(steps=3, time_budget=None), resume=True, progress=False)
    assert resume_weights(tmp_path)[0]["train_config"]["lr"] == recorded["lr"]


def test_resume_without_a_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint directory"):
        train(NAMES, "mia\n", tmp_path, train_config(), resume=True, progress=False)


# ------------------------------------------------------------------------------ outputs and settings


def test_training_writes_checkpoint_metrics_plot_and_resume_state(tmp_path):
    result = train(
        NAMES,
        "mia\nemma\n",
        tmp_path,
        train_config(steps=9, eval_interval=3),
        model_config("gru"),
        "lines",
        source={"corpus": "names"},
        progress=False,
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 9]
    assert {"step", "elapsed", "train_bpc", "val_bpc", "val_top1", "lr", "chars_per_s"} <= set(records[0])
    best = min(records, key=lambda r: r["val_bpc"])
    assert result.best_val.bpc == best["val_bpc"]
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["metrics"]["step"] == best["step"]  # the checkpoint is the best by validation BPC
    assert meta["training"]["source"] == {"corpus": "names"}
    assert meta["format"] == "lines"
    assert (tmp_path / "bpc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / RESUME_DIR / "state.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) <= 2  # the checkpoint's, and the one before it
    assert not list(tmp_path.rglob("*.tmp"))
    ckpt = load_checkpoint(tmp_path)
    assert evaluate_encoded(ckpt.model, encode_corpus("mia\nemma\n", ckpt.vocab, "lines")).bpc == pytest.approx(
        result.best_val.bpc, rel=1e-6
    )


def test_moving_average_ramps_its_decay_up_to_the_given_one():
    model = build_model(ModelConfig(kind="window", vocab_size=5, context=1))
    averaged = moving_average(model, decay=0.3)
    expected = None
    for n in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
        averaged.update_parameters(model)
        current = torch.cat([p.detach().flatten() for p in model.parameters()])
        # the first update copies; then decay min(0.3, (1+n)/(10+n)): 2/11, 3/12, 0.3, 0.3
        decay = min(0.3, (1 + n) / (10 + n))
        expected = current.clone() if expected is None else decay * expected + (1 - decay) * current
        got = torch.cat([p.detach().flatten() for p in averaged.module.parameters()])
        torch.testing.assert_close(got, expected)


def test_evaluations_score_and_save_the_moving_average(tmp_path):
    cut = int(0.9 * len(PROSE))
    result = train(
        PROSE[:cut], PROSE[cut:], tmp_path, train_config(steps=8, ema=0.5), model_config("lstm"), progress=False
    )
    _, tensors = resume_weights(tmp_path)
    ckpt = load_checkpoint(tmp_path)
    for name, saved in ckpt.model.state_dict().items():
        assert torch.equal(saved, tensors[f"ema.module.{name}"]), name
    assert any(not torch.equal(saved, tensors[f"model.{name}"]) for name, saved in ckpt.model.state_dict().items())
    val = encode_corpus(PROSE[cut:], ckpt.vocab, "text")
    assert evaluate_encoded(ckpt.model, val).bpc == pytest.approx(result.best_val.bpc, rel=1e-6)
    assert evaluate_encoded(result.model, val).bpc != pytest.approx(result.best_val.bpc, rel=1e-6)


def test_time_budget_ends_training(tmp_path):
    result = train(
        NAMES,
        "mia\n",
        tmp_path,
        train_config(steps=None, time_budget=0.3),
        model_config("rnn-tanh"),
        "lines",
        progress=False,
    )
    assert result.steps > 0
    assert result.final_val is not None


def test_sgd_and_bf16_train(tmp_path):
    result = train(
        NAMES,
        "mia\n",
        tmp_path,
        train_config(steps=5, optimizer="sgd", precision="bf16"),
        model_config("lstm"),
        "lines",
        progress=False,
    )
    assert result.steps == 5 and math.isfinite(result.final_val.bpc)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": None, "time_budget": None}, "give steps or time_budget"),
        ({"optimizer": "adam"}, "^optimizer must be"),
        ({"precision": "fp16"}, "^precision must be"),
    ],
)
def test_bad_training_settings_are_user_errors(tmp_path, settings, message):
    with pytest.raises(UserError, match=message):
        train(NAMES, "mia\n", tmp_path, train_config(**settings), model_config("gru"), "lines", progress=False)


def test_empty_validation_and_short_corpus_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="validation text is empty"):
        train(PROSE, "", tmp_path, train_config(), model_config("gru"), "text", progress=False)
    with pytest.raises(UserError, match="shorter than one training window"):
        train("tiny", "tiny", tmp_path, train_config(seq_len=16), model_config("gru"), "text", progress=False)


def test_learning_rate_schedule():
    config = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, steps=110, time_budget=None)
    assert learning_rate(config, 0, 0.0) == pytest.approx(0.1)  # linear warm-up from 0
    assert learning_rate(config, 9, 0.0) == pytest.approx(1.0)
    assert learning_rate(config, 10, 0.0) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 10 / 110)))
    assert learning_rate(config, 110, 0.0) == pytest.approx(0.1)  # ends at lr × min_lr_ratio
    timed = TrainConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.0, steps=None, time_budget=100.0)
    assert learning_rate(timed, 5, 50.0) == pytest.approx(0.5)  # progress by the clock
    lrs = [learning_rate(config, s, 0.0) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
