"""The lecture engine against nextchar's PyTorch models: same loss and gradients as autograd,
checkpoints both ways, and a `window` checkpoint as the lecture's fixed-weight RNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nextchar.checkpoint import load_checkpoint, save_checkpoint
from nextchar.cli.main import build_parser, main
from nextchar.data.batches import IGNORE, frame_lines
from nextchar.lecture import (
    THREE_LINES,
    LectureInputError,
    SGDConfig,
    forward,
    init_params,
    loss_and_gradients,
    make_batch,
    worked_example,
)
from nextchar.lecture.convert import (
    autograd_check,
    from_checkpoint,
    save_as_checkpoint,
    to_torch,
    torch_probabilities,
    window_from_checkpoint,
)
from nextchar.lecture.rnn import NAMES, random_problem, relative_error
from nextchar.models import ModelConfig, build_model
from nextchar.text import END, START, Vocabulary
from nextchar.training.loop import train as nextchar_train
from tests.helpers import NAMES as NAME_LIST
from tests.helpers import model_config, train_config


def _engine_batch(lines: list[list[int]], v: int):
    return make_batch([[START, *line] for line in lines], [[*line, END] for line in lines], v, v)


# ------------------------------------------------------------------------------ 5b. autograd


@pytest.mark.parametrize("f1", ["tanh", "relu"])
def test_same_loss_and_gradients_as_the_rnn_model_with_autograd(f1):
    """The foundation's own model, framing and loss, in float64: J and all five gradients agree."""
    v, m = 9, 7
    rng = np.random.default_rng(1)
    model = build_model(ModelConfig(kind="rnn", vocab_size=v, hidden_size=m, nonlinearity=f1)).double().train()
    with torch.no_grad():
        model.W0_ss.uniform_(-0.2, 0.2)
        model.W0_o.uniform_(-0.2, 0.2)
    lines = [rng.integers(3, v, n).tolist() for n in (5, 1, 8, 3)]
    x, y = frame_lines([torch.tensor(line) for line in lines])  # "^"+line → line+<end>, padded
    logits, _ = model(x)
    J = F.cross_entropy(logits.reshape(-1, v), y.reshape(-1), ignore_index=IGNORE, reduction="sum")
    J.backward()

    from nextchar.lecture.convert import from_torch

    params, got_f1 = from_torch(model)
    assert got_f1 == f1 and params.dtype == np.float64
    J_engine, grads = loss_and_gradients(params, _engine_batch(lines, v), f1)
    assert abs(J_engine - J.item()) / J.item() < 1e-9
    for name in NAMES:
        assert relative_error(getattr(grads, name), getattr(model, name).grad.numpy()) < 1e-9, name


@pytest.mark.parametrize("f1", ["tanh", "relu"])
@pytest.mark.parametrize("seed", range(5))
def test_autograd_check_on_random_shapes(f1, seed):
    params, batch = random_problem(seed, f1, same_alphabet=True)
    differences = autograd_check(params, batch, f1)
    assert set(differences) == {"J", *NAMES}
    assert max(differences.values()) < 1e-9, differences


# ------------------------------------------------------------------------------ 5c. checkpoints both ways


@pytest.fixture(scope="module")
def lecture_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The three-line worked example, trained here and saved as a nextchar checkpoint."""
    result = worked_example(config=SGDConfig(steps=3000, check_every=10))
    assert result.solved
    out = tmp_path_factory.mktemp("lecture-model")
    save_as_checkpoint(out, result.params, result.f1, result.vocab, "lines", training={"note": "test"})
    return out, result


def test_a_model_trained_here_is_a_normal_checkpoint(lecture_checkpoint):
    out, result = lecture_checkpoint
    ckpt = load_checkpoint(out)
    assert ckpt.model.config.kind == "rnn" and ckpt.format == "lines"
    assert ckpt.vocab == result.vocab
    assert ckpt.meta["training"]["trainer"].startswith("nextchar.lecture")
    indices = [START, *result.vocab.encode("what happens")]
    engine = forward(result.params, make_batch([indices], [[0] * len(indices)], 30, 30), "tanh").P[0]
    np.testing.assert_allclose(torch_probabilities(ckpt.model, indices), engine, atol=1e-5)


def test_every_command_uses_a_model_trained_here(lecture_checkpoint, capsys, tmp_path):
    out, _ = lecture_checkpoint
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(THREE_LINES) + "\n", encoding="utf-8")
    assert main(["eval", str(corpus), "-m", str(out), "--json"]) == 0
    assert '"top1"' in capsys.readouterr().out
    assert main(["predict", "what happens to a dream deferre", "-m", str(out), "-k", "1"]) == 0
    assert capsys.readouterr().out.split()[0] == "d"
    assert main(["sample", "-m", str(out), "--prefix", "you m", "--temperature", "0.01", "--seed", "0"]) == 0
    assert capsys.readouterr().out.strip() == THREE_LINES[2]
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if "complete" in commands:  # the completion command, where this build has it
        assert main(["complete", "if you can keep your he", "-m", str(out), "--mode", "line", "-k", "1"]) == 0
        assert THREE_LINES[1] in capsys.readouterr().out


def test_an_rnn_checkpoint_trained_by_nextchar_loads_here(tmp_path):
    out = tmp_path / "rnn"
    nextchar_train(
        NAME_LIST, "mia\nemma\n", out, train_config(steps=5), model_config("rnn-relu"), "lines", progress=False
    )
    converted = from_checkpoint(out)
    ckpt = load_checkpoint(out)
    assert converted.f1 == "relu" and converted.format == "lines" and converted.vocab == ckpt.vocab
    for name in NAMES:
        np.testing.assert_array_equal(getattr(converted.params, name), getattr(ckpt.model, name).detach().double())
    indices = [START, *ckpt.vocab.encode("amelia")]
    batch = make_batch([indices], [[0] * len(indices)], converted.params.ell, converted.params.v)
    np.testing.assert_allclose(
        forward(converted.params, batch, "relu").P[0], torch_probabilities(ckpt.model, indices), atol=1e-6
    )


@pytest.mark.parametrize("f1", ["tanh", "relu"])
def test_round_trip_keeps_the_weights(tmp_path, f1):
    vocab = Vocabulary.from_text("abc de")
    params = init_params(5, len(vocab), len(vocab), seed=3)
    params.W0_ss[:] = 0.25
    save_as_checkpoint(tmp_path, params, f1, vocab, "text")
    back = from_checkpoint(tmp_path)
    assert back.f1 == f1 and back.format == "text" and back.vocab == vocab
    for name in NAMES:
        np.testing.assert_array_equal(getattr(back.params, name), getattr(params, name).astype(np.float32))


def test_converter_refuses_other_kinds_and_bad_shapes(tmp_path):
    vocab = Vocabulary.from_text("abcd")
    for kind in ("gru", "lstm", "window"):
        model = build_model(model_config(kind, vocab_size=len(vocab)))
        save_checkpoint(tmp_path / kind, model, vocab, "lines")
    with pytest.raises(LectureInputError, match="is a `gru` model; the lecture engine converts only the lecture's RNN"):
        from_checkpoint(tmp_path / "gru")
    with pytest.raises(LectureInputError, match="is a `lstm` model"):
        from_checkpoint(tmp_path / "lstm")
    with pytest.raises(LectureInputError, match=r"is a `window` model.*fixed-weight RNN"):
        from_checkpoint(tmp_path / "window")
    with pytest.raises(LectureInputError, match="is a `gru` model, not a `window` model"):
        window_from_checkpoint(tmp_path / "gru")
    with pytest.raises(LectureInputError, match="ℓ must equal v"):
        to_torch(init_params(3, 5, 6), "tanh")
    with pytest.raises(LectureInputError, match="the vocabulary has 7 symbols but W_o has v = 6 rows"):
        save_as_checkpoint(tmp_path / "x", init_params(3, 6, 6), "tanh", vocab)


# ------------------------------------------------------------------------------ 2. window = fixed-weight RNN


@pytest.mark.parametrize("context", [1, 3])
def test_window_checkpoint_equals_the_fixed_weight_rnn(tmp_path, context):
    """The window model is the output function g of the window machine: same p_t at every step."""
    out = tmp_path / "window"
    nextchar_train(
        NAME_LIST,
        "mia\nemma\n",
        out,
        train_config(steps=5, lr=0.3),
        model_config("window", context=context),
        "lines",
        progress=False,
    )
    ckpt = load_checkpoint(out)
    with torch.no_grad():  # trained weights are nearly uniform after 5 steps: make them distinctive
        ckpt.model.W_o.normal_(0, 2.0)
        ckpt.model.W0_o.normal_(0, 1.0)
    save_checkpoint(out, ckpt.model, ckpt.vocab, ckpt.format)
    converted = window_from_checkpoint(out)
    params = converted.params
    v = len(ckpt.vocab)
    assert converted.f1 == "relu" and params.m == context * v and params.ell == v
    for text in ("", "a", "isabella", "mmmmm"):
        indices = [START, *ckpt.vocab.encode(text)]
        batch = make_batch([indices], [[0] * len(indices)], v, v)
        engine = forward(params, batch, "relu", converted.s0)
        np.testing.assert_allclose(engine.P[0], torch_probabilities(ckpt.model, indices), rtol=1e-5, atol=1e-7)
        assert set(np.unique(engine.S)) <= {0.0, 1.0}  # the state is exactly the one-hot window
