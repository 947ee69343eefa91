"""The Python training API (nextchar/training/run.py, `nextchar.train`): the same run as
`nextchar train`, its options checked by name, and mistakes found before the corpus is read."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import nextchar
from nextchar.checkpoint import Checkpoint, load_checkpoint
from nextchar.cli.main import main
from nextchar.errors import UserError
from nextchar.training.run import GIVEN_TEXT, settings
from tests.helpers import NAMES, PROSE, TINY_TRAIN_FLAGS

# A tiny, exact, quick run as keyword options (tests.helpers.TINY_TRAIN_FLAGS: the same as flags).
TINY = {
    "kind": "gru",
    "hidden_size": 16,
    "num_layers": 1,
    "embedding_size": 8,
    "batch_size": 4,
    "seq_len": 16,
    "steps": 3,
    "warmup_steps": 1,
    "precision": "fp32",
    "device": "cpu",
}


@pytest.mark.slow
def test_import_nextchar_does_not_import_torch_and_train_is_there():
    code = (
        "import sys, nextchar\n"
        "assert 'torch' not in sys.modules, 'import nextchar imported torch'\n"
        "from nextchar.training.run import train\n"
        "assert nextchar.train is train and 'train' in dir(nextchar)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        nextchar.trian  # noqa: B018  # a misspelt name is still an AttributeError


def test_train_on_text_returns_the_best_checkpoint(tmp_path):
    out = tmp_path / "run"
    ckpt = nextchar.train(text=PROSE * 3, out=out, progress=False, **TINY)
    assert isinstance(ckpt, Checkpoint) and ckpt.path == out
    assert ckpt.model.config.kind == "gru" and ckpt.model.config.hidden_size == 16 and ckpt.format == "text"
    assert ckpt.meta["training"]["source"]["corpus"] == GIVEN_TEXT
    assert ckpt.meta["training"]["config"]["steps"] == 3
    assert ckpt.meta["training"]["config"]["time_budget"] is None  # steps alone end the run, as with --steps
    # It is the checkpoint on disk, loaded.
    again = load_checkpoint(out)
    assert all(
        torch.equal(a, b)
        for a, b in zip(ckpt.model.state_dict().values(), again.model.state_dict().values(), strict=True)
    )
    # A run on text has no path to read again: resuming it needs the text.
    with pytest.raises(UserError, match="trained on text given in Python; give the same text again"):
        nextchar.train(resume=out, steps=5, progress=False)
    resumed = nextchar.train(text=PROSE * 3, resume=out, steps=5, progress=False)
    meta = json.loads((out / "resume" / "state.json").read_text())
    assert meta["step"] == 5 and resumed.path == out


@pytest.mark.slow
def test_the_api_and_the_command_make_the_same_run(capsys, tmp_path, write_file):
    """One implementation: the same corpus, split and settings give the same weights."""
    corpus = write_file("names.txt", NAMES * 2)
    assert main(["train", str(corpus), "--out", str(tmp_path / "cli"), *TINY_TRAIN_FLAGS]) == 0
    capsys.readouterr()
    api = nextchar.train(corpus, tmp_path / "api", progress=False, **TINY)
    cli = load_checkpoint(tmp_path / "cli")
    assert api.format == cli.format == "lines"
    assert api.meta["training"] == cli.meta["training"]  # settings and source (corpus path, split, format)
    assert api.vocab.chars == cli.vocab.chars
    assert all(
        torch.equal(a, b) for a, b in zip(api.model.state_dict().values(), cli.model.state_dict().values(), strict=True)
    )


def test_unknown_options_are_named_with_the_valid_ones():
    with pytest.raises(UserError) as info:
        nextchar.train(text=PROSE, hidden=16)
    message = str(info.value)
    assert message.startswith("unknown option 'hidden'; did you mean hidden_size? the options are ")
    assert all(name in message for name in ("batch_size", "time_budget", "hidden_size", "kind", "dropout"))
    assert "vocab_size" not in message  # the corpus decides it
    assert info.value.parameter == "hidden"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dropout": 1.0}, r"^dropout must be in \[0, 1\), not 1.0"),
        ({"ema": -0.1}, r"^ema must be in \[0, 1\), not -0.1"),
        ({"min_lr_ratio": 2.0}, r"^min_lr_ratio must be in \[0, 1\], not 2.0"),
    ],
)
def test_option_ranges_are_checked_before_anything_is_written(tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        nextchar.train(text=PROSE, out=tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()


def test_settings_end_a_run_as_the_command_does():
    config, model_config = settings({"steps": 10})
    assert config.steps == 10 and config.time_budget is None
    config, _ = settings({})
    assert config.steps is None and config.time_budget == 600.0
    config, _ = settings({}, resume=True)  # a resumed run keeps its own duration
    assert config.time_budget is None
    config, model_config = settings({"steps": 10, "time_budget": 30.0, "kind": "gru"})
    assert (config.steps, config.time_budget, model_config.kind) == (10, 30.0, "gru")


@pytest.mark.parametrize("case", ["a file", "under a file", "unwritable"])
def test_a_bad_out_is_refused_before_the_corpus_is_read(tmp_path, case):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a regular file\n")
    corpus = tmp_path / "binary.bin"
    corpus.write_bytes(b"\x00" * 1000)  # reading it would fail: an error about out shows it was not read
    out, message = {
        "a file": (blocker, f'out="{blocker}" is a file, not a directory; name a new or existing directory as out'),
        "under a file": (blocker / "run", f'out="{blocker / "run"}" cannot be created: {blocker} is a file'),
        "unwritable": ("/proc/nextchar-run", 'out="/proc/nextchar-run" cannot be written: making a file in /proc'),
    }[case]
    with pytest.raises(UserError) as info:
        nextchar.train(corpus, out, **TINY)
    assert str(info.value).startswith(message) and info.value.parameter == "out"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["binary.bin", "notes.txt"]


def test_corpus_or_text_and_the_validation_parameter_by_its_name(tmp_path, write_file):
    corpus = write_file("prose.txt", PROSE)
    with pytest.raises(UserError, match=r"^give corpus or text, not both"):
        nextchar.train(corpus, tmp_path / "run", text=PROSE)
    with pytest.raises(UserError, match=r"^format must be auto, text or lines, not 'poems'"):
        nextchar.train(corpus, tmp_path / "run", format="poems")
    # The training loop calls the validation text val_text; here it is the `val` parameter.
    with pytest.raises(UserError, match=r"give more lines or val$") as info:
        nextchar.train(text="one line only\n", out=tmp_path / "run", format="lines", **TINY)
    assert info.value.parameters == ("val",)
