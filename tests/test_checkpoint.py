"""Checkpoints: exact round trips, atomic writes, and every kind of damage as one clear error."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

import nextchar.checkpoint as checkpoint
from nextchar.checkpoint import (
    CONFIG_NAME,
    FORMAT_VERSION,
    load_checkpoint,
    read_bundle,
    save_checkpoint,
    write_bundle,
)
from nextchar.cli.main import main
from nextchar.errors import UserError
from nextchar.models import build_model
from nextchar.sampling import predict, read_text
from nextchar.text import Vocabulary
from tests.helpers import PROSE, model_config

KINDS = ["window", "rnn-tanh", "rnn-relu", "lstm", "gru"]


def fresh(kind: str, seed: int = 0):
    vocab = Vocabulary.from_text(PROSE)
    torch.manual_seed(seed)
    model = build_model(model_config(kind, vocab_size=len(vocab), num_layers=2, dropout=0.1))
    with torch.no_grad():
        for p in model.parameters():  # random everywhere, including zero-initialised biases
            p.normal_(0.0, 0.3)
    return vocab, model.eval()


def weights_file(directory):
    """The weights file config.json names (the one before it is kept until the next save)."""
    return directory / json.loads((directory / CONFIG_NAME).read_text())["weights"]["file"]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_gives_identical_predictions(tmp_path, kind):
    vocab, model = fresh(kind)
    save_checkpoint(tmp_path, model, vocab, "lines", training={"seed": 1}, metrics={"val": {"bpc": 2.5}})
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.vocab == vocab and ckpt.format == "lines" and ckpt.path == tmp_path
    assert ckpt.model.config == model.config
    assert not ckpt.model.training  # loaded for use: dropout off
    assert ckpt.meta["metrics"] == {"val": {"bpc": 2.5}} and ckpt.meta["training"] == {"seed": 1}
    idx = torch.tensor([vocab.encode("It was the age of wisdom")])
    with torch.no_grad():
        expected, _ = model(idx)
        got, _ = ckpt.model(idx)
    assert torch.equal(got, expected)
    for (name, a), (_, b) in zip(model.state_dict().items(), ckpt.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoint_is_json_and_safetensors_only(tmp_path):
    vocab, model = fresh("gru")
    save_checkpoint(tmp_path, model, vocab, "text")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == CONFIG_NAME and len(names) == 2 and names[1].endswith(".safetensors")
    meta = json.loads((tmp_path / CONFIG_NAME).read_text(encoding="utf-8"))
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["vocabulary"]["chars"] == "".join(vocab.chars)
    assert meta["weights"]["file"] == names[1]


def test_saving_again_replaces_the_weights_file(tmp_path):
    vocab, first = fresh("lstm", seed=0)
    _, second = fresh("lstm", seed=1)
    save_checkpoint(tmp_path, first, vocab, "text")
    old = weights_file(tmp_path)
    save_checkpoint(tmp_path, second, vocab, "text")
    new = weights_file(tmp_path)
    assert new != old and {p.name for p in tmp_path.glob("model-*.safetensors")} == {old.name, new.name}
    _, third = fresh("lstm", seed=2)
    save_checkpoint(tmp_path, third, vocab, "text")  # the one before the last is kept, no older one
    assert {p.name for p in tmp_path.glob("model-*.safetensors")} == {new.name, weights_file(tmp_path).name}
    save_checkpoint(tmp_path, second, vocab, "text")
    loaded = load_checkpoint(tmp_path).model
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), second.state_dict().values(), strict=True)
    )


def test_a_kill_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    vocab, first = fresh("gru", seed=0)
    _, second = fresh("gru", seed=1)
    save_checkpoint(tmp_path, first, vocab, "text")
    before = predict(load_checkpoint(tmp_path), "It was", k=5)

    def killed(path, obj):  # the process dies after the new weights are written, before config.json
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, second, vocab, "text")
    monkeypatch.undo()
    assert len(list(tmp_path.glob("model-*.safetensors"))) == 2  # the new file exists, unreferenced
    assert predict(load_checkpoint(tmp_path), "It was", k=5) == before
    save_checkpoint(tmp_path, second, vocab, "text")  # the next save tidies up (keeping the one before)
    assert len(list(tmp_path.glob("model-*.safetensors"))) == 2


def test_read_bundle_round_trip_with_another_name(tmp_path):
    tensors = {"a": torch.arange(6).view(2, 3), "b": torch.ones(2, dtype=torch.uint8)}
    write_bundle(
        tmp_path, {"format_version": FORMAT_VERSION, "x": [1, 2]}, tensors, json_name="state.json", stem="state"
    )
    meta, back = read_bundle(tmp_path, json_name="state.json")
    assert meta["x"] == [1, 2]
    assert all(torch.equal(tensors[k], back[k]) for k in tensors)


# ------------------------------------------------------------------------------ damage


def damage_missing_dir(d):
    shutil.rmtree(d)


def damage_missing_config(d):
    (d / CONFIG_NAME).unlink()


def damage_missing_weights(d):
    weights_file(d).unlink()


def damage_truncated_weights(d):
    path = weights_file(d)
    path.write_bytes(path.read_bytes()[:100])


def damage_tampered_weights(d):
    path = weights_file(d)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a flipped byte inside a tensor: the file still parses, the checksum does not
    path.write_bytes(bytes(data))


def damage_truncated_config(d):
    path = d / CONFIG_NAME
    path.write_bytes(path.read_bytes()[:50])


def edit_config(d, change):
    path = d / CONFIG_NAME
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


DAMAGE = {
    "missing directory": (damage_missing_dir, "no such checkpoint directory"),
    "missing config": (damage_missing_config, "not a nextchar checkpoint"),
    "missing weights": (damage_missing_weights, "is missing"),
    "truncated weights": (damage_truncated_weights, "truncated or were modified"),
    "tampered weights": (damage_tampered_weights, "truncated or were modified"),
    "truncated config": (damage_truncated_config, "damaged checkpoint description"),
    "not an object": (lambda d: (d / CONFIG_NAME).write_text("[1, 2]"), "damaged checkpoint description"),
    "format version": (
        lambda d: edit_config(d, lambda m: m.update(format_version=FORMAT_VERSION + 1)),
        f"checkpoint format {FORMAT_VERSION + 1} is not supported",
    ),
    "no format version": (lambda d: edit_config(d, lambda m: m.pop("format_version")), "is not supported"),
    "unknown setting": (
        lambda d: edit_config(d, lambda m: m["model"].update(attention_heads=4)),
        "incompatible checkpoint (unknown model settings ['attention_heads'])",
    ),
    "other shape": (lambda d: edit_config(d, lambda m: m["model"].update(hidden_size=25)), "incompatible checkpoint"),
    "other kind": (lambda d: edit_config(d, lambda m: m["model"].update(kind="lstm")), "incompatible checkpoint"),
    "bad kind": (lambda d: edit_config(d, lambda m: m["model"].update(kind="xl")), "unknown model kind"),
    "vocabulary": (lambda d: edit_config(d, lambda m: m["vocabulary"].update(chars="abc")), "symbols"),
    "format": (lambda d: edit_config(d, lambda m: m.update(format="poems")), "unknown corpus format"),
    "no model": (lambda d: edit_config(d, lambda m: m.pop("model")), "incompatible checkpoint"),
    "huge integer": (lambda d: damage_huge_integer(d), "damaged checkpoint description"),
    "setting of another type": (
        lambda d: edit_config(d, lambda m: m["model"].update(hidden_size="24")),
        "model setting hidden_size is '24', not a int",
    ),
    "size past its limit": (
        lambda d: edit_config(d, lambda m: m["model"].update(num_layers=10**9)),
        "model setting num_layers is 1,000,000,000, not in 0…64",
    ),
    "non-finite weights": (lambda d: damage_nan_weights(d), "holds NaN or infinite values"),
}


def damage_huge_integer(d):
    """An integer of 5,000 digits, past what Python converts from a string."""
    path = d / CONFIG_NAME
    path.write_text(re.sub(r'"hidden_size": \d+', '"hidden_size": ' + "9" * 5000, path.read_text()))


def damage_nan_weights(d):
    """Weights that diverged: a NaN, in a file whose checksum is right."""
    meta, tensors = read_bundle(d)
    name = next(name for name, t in tensors.items() if t.is_floating_point())
    tensors[name].view(-1)[0] = float("nan")
    meta.pop("weights")
    write_bundle(d, meta, tensors)


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint_is_one_clear_user_error(tmp_path, case, capsys, write_file):
    damage, message = DAMAGE[case]
    directory = tmp_path / "ckpt"
    vocab, model = fresh("gru")
    save_checkpoint(directory, model, vocab, "text")
    damage(directory)
    with pytest.raises(UserError) as info:
        load_checkpoint(directory)
    assert message in str(info.value)
    assert str(directory) in str(info.value)
    assert "\n" not in str(info.value)
    # The CLI says the same on one line of stderr and exits 2 without a traceback.
    corpus = write_file("eval.txt", "It was the best of times.")
    for argv in (
        ["predict", "It", "-m", str(directory)],
        ["eval", str(corpus), "-m", str(directory)],
        ["sample", "-m", str(directory), "--length", "5"],
    ):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.count("\n") == 1 and captured.err.startswith("nextchar: error: ")
        assert message in captured.err
        assert "Traceback" not in captured.err


def test_checkpoint_path_that_is_a_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x04 pickle")
    with pytest.raises(UserError, match="is a file, not a checkpoint directory; give the directory a training run"):
        load_checkpoint(path)


def test_loaded_model_reads_text_like_the_original(tmp_path):
    vocab, model = fresh("rnn-tanh")
    save_checkpoint(tmp_path, model, vocab, "text")
    ckpt = load_checkpoint(tmp_path)
    logits, _ = read_text(ckpt, "It was the")
    with torch.no_grad():
        expected, _ = model(torch.tensor([[0, *vocab.encode("It was the")]]))
    assert torch.equal(logits, expected[0, -1])


# ------------------------------------------------------------------------------ the memory index


def test_a_memory_is_added_to_a_checkpoint_and_replaced_whole(tmp_path):
    from nextchar.checkpoint import read_memory
    from nextchar.training.memory import remember

    vocab, model = fresh("gru")
    save_checkpoint(tmp_path, model, vocab, "text")
    assert read_memory(load_checkpoint(tmp_path)) is None
    text, held_out = PROSE[:400], PROSE[:200]
    done = remember(tmp_path, text, held_out)
    assert done.held_out and done.mixer.positions == 200  # fitted on the held-out text's targets
    (index,), mixer = read_memory(load_checkpoint(tmp_path))
    assert len(index) == len(text) + 1  # <start>, then the text
    assert index.find(vocab.encode("the ")).count == text.count("the ")
    assert mixer.to_json() == done.mixer.to_json()  # the fitted gate, read back from config.json
    first = sorted(p.name for p in tmp_path.glob("memory-*.bin"))
    remember(tmp_path, text[:200])  # a new index: the old files go once config.json names the new
    (index,), mixer = read_memory(load_checkpoint(tmp_path))
    assert len(index) == 201 and mixer.positions > 0  # no held-out text: leave-one-out on the training text
    now = sorted(p.name for p in tmp_path.glob("memory-*.bin"))
    arrays = {name for name in now if not name.startswith("memory-wide-")}  # both texts' lists are empty: one file
    assert len(now) == 3 and len(arrays) == 2 and not arrays & set(first)
    save_checkpoint(tmp_path, model, vocab, "text")  # new weights say nothing of a memory: it goes
    assert read_memory(load_checkpoint(tmp_path)) is None and not list(tmp_path.glob("memory-*.bin"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: m.pop("mixer"), "its memory index has no mixer; run `nextchar index` again"),
        (lambda m: m["mixer"].update(estimator="magic"), "the mixer's estimator 'magic' is not one of"),
        (lambda m: m["mixer"]["gate"]["0.weight"][0].__setitem__(0, float("nan")), "must be finite numbers"),
        (lambda m: m["mixer"]["gate"].pop("2.bias"), "the mixer's gate must hold"),
        (lambda m: m["mixer"].update(positions=-1), "the mixer's positions must be a whole number"),
    ],
)
def test_a_damaged_mixer_is_one_line(tmp_path, damage, message):
    from nextchar.checkpoint import read_memory
    from nextchar.training.memory import remember

    vocab, model = fresh("gru")
    save_checkpoint(tmp_path, model, vocab, "text")
    remember(tmp_path, PROSE[:300], PROSE[300:])
    meta = json.loads((tmp_path / "config.json").read_text())
    damage(meta["memory"])
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=re.escape(message)):
        read_memory(load_checkpoint(tmp_path))


def test_a_config_that_declares_a_huge_model_is_refused_before_it_is_allocated(tmp_path):
    """hidden_size 8,000 in a config whose weights are a small model's: the model it describes
    needs gigabytes; the refusal must cost almost nothing (measured in a process of its own)."""
    import subprocess
    import sys

    directory = tmp_path / "ckpt"
    vocab, model = fresh("gru")
    save_checkpoint(directory, model, vocab, "text")
    edit_config(directory, lambda m: m["model"].update(hidden_size=8000))
    script = (
        "import resource, sys\n"
        "from nextchar.checkpoint import load_checkpoint\n"
        "from nextchar.errors import UserError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    load_checkpoint(sys.argv[1])\nexcept UserError as exc:\n    print(exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(directory)], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert "incompatible checkpoint" in out[0] and "the config describes" in out[0]
    assert int(out[1]) < 200, f"refusing grew the process by {out[1]} MB"
