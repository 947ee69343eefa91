"""Prepared directories read back (nextchar.data.prepared): batches, training and eval from them.

A prepared directory must train and evaluate exactly as the text it came from: its batches are
the batches of `StreamBatches` / `LineBatches`, its figures those of the file; and a damaged
one is a one-line error naming what to do.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nextchar.checkpoint import load_checkpoint
from nextchar.cli.main import main
from nextchar.cli.prepare import given_vocabulary
from nextchar.data.batches import LineBatches, StreamBatches, split_validation
from nextchar.data.prepare import prepare
from nextchar.data.prepared import (
    LINES_NAME,
    PREPARED_NAME,
    TOKENS_NAME,
    MemmapLineBatches,
    MemmapStreamBatches,
    PreparedCorpus,
)
from nextchar.errors import UserError
from nextchar.training.loop import train
from tests.data.helpers import LINES_UNICODE, UNICODE, one_line_error
from tests.helpers import NAMES, PROSE, model_config, train_config


@pytest.fixture
def prepared_dir(tmp_path, write_file) -> Path:
    prepare([str(write_file("prose.txt", PROSE * 3))], tmp_path / "prepared", progress=False)
    return tmp_path / "prepared"


@pytest.fixture
def prepared_lines(tmp_path, write_file) -> Path:
    prepare([str(write_file("names.txt", NAMES * 3))], tmp_path / "prepared-lines", progress=False)
    return tmp_path / "prepared-lines"


def train_argv(directory: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(directory),
        "--out",
        str(out),
        "--steps",
        "4",
        "--eval-interval",
        "2",
        "--kind",
        "gru",
        "--hidden",
        "16",
        "--layers",
        "1",
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def damage_version(directory: Path) -> None:
    meta = json.loads((directory / PREPARED_NAME).read_text())
    meta["prepared_version"] = 99
    (directory / PREPARED_NAME).write_text(json.dumps(meta))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def poke(path: Path, at: int, value: int) -> None:
    """One byte of a file changed in place (its size, and so every size check, unchanged)."""
    data = bytearray(path.read_bytes())
    data[at] = value
    path.write_bytes(bytes(data))


def swap_offsets(directory: Path) -> None:
    """Lines 1 and 2's starts swapped: line 1 then ends before it starts."""
    offsets = np.fromfile(directory / LINES_NAME, dtype="<u8")
    offsets[[1, 2]] = offsets[[2, 1]]
    offsets.tofile(directory / LINES_NAME)


def test_verify_recomputes_the_checksum(capsys, tmp_path, prepared_lines):
    """A token changed into another valid one passes every check on open; --verify finds it."""
    tokens = np.fromfile(prepared_lines / TOKENS_NAME, dtype=np.uint8)
    poke(prepared_lines / TOKENS_NAME, 0, int(tokens[1]) if tokens[0] != tokens[1] else int(tokens[0]) + 1)
    assert main(train_argv(prepared_lines, tmp_path / "run")) == 0
    line = one_line_error(capsys, train_argv(prepared_lines, tmp_path / "again", "--verify"))
    assert "tokens.bin: its checksum is not the one prepared.json records" in line
    assert not (tmp_path / "again" / "config.json").exists()
    corpus = tmp_path / "plain.txt"
    corpus.write_text(NAMES)
    assert "--verify checks a prepared directory" in one_line_error(
        capsys, train_argv(corpus, tmp_path / "plain", "--verify")
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            damage_version,
            "prepared-data version 99 is not supported by this nextchar (version 1); run `nextchar prepare` again",
        ),
        (lambda d: truncate(d / TOKENS_NAME), "tokens.bin: truncated"),
        (lambda d: truncate(d / LINES_NAME), "lines.bin: truncated"),
        (lambda d: (d / TOKENS_NAME).unlink(), "tokens.bin: missing; run `nextchar prepare` again"),
        (lambda d: (d / PREPARED_NAME).unlink(), "not a prepared directory (no prepared.json)"),
        (lambda d: (d / PREPARED_NAME).write_text("{"), "prepared.json: damaged"),
        (
            lambda d: (d / PREPARED_NAME).write_text('{"prepared_version": 1' + "9" * 5000 + "}"),
            "prepared.json: damaged",
        ),
        (lambda d: poke(d / TOKENS_NAME, 5, 250), "tokens.bin: token 5 is 250, past the vocabulary's"),
        (swap_offsets, "lines.bin: line 1 ends before it starts"),
    ],
    ids=[
        "version",
        "truncated-tokens",
        "truncated-lines",
        "missing-tokens",
        "not-prepared",
        "damaged-json",
        "huge-integer",
        "token-out-of-range",
        "offsets-not-increasing",
    ],
)
def test_damaged_prepared_directories_are_one_line_errors(capsys, tmp_path, prepared_lines, damage, message):
    damage(prepared_lines)
    assert message in one_line_error(capsys, train_argv(prepared_lines, tmp_path / "run"))
    # --vocab-from reads prepared.json through the same checks (it needs no token array)
    if "tokens.bin" not in message and "lines.bin" not in message:
        line = one_line_error(
            capsys,
            [
                "prepare",
                str(prepared_lines.parent / "names.txt"),
                "--out",
                str(tmp_path / "again"),
                "--vocab-from",
                str(prepared_lines),
                "--quiet",
            ],
        )
        assert message.split(" (")[0] in line or "neither a prepared directory" in line


def test_resume_refuses_a_prepared_directory_with_another_vocabulary(capsys, tmp_path, write_file, prepared_dir):
    assert main(train_argv(prepared_dir, tmp_path / "run")) == 0
    prepare(
        [str(write_file("other.txt", "Completely different text: 0123456789!\n" * 20))],
        tmp_path / "other",
        progress=False,
    )
    line = one_line_error(
        capsys, ["train", str(tmp_path / "other"), "--resume", str(tmp_path / "run"), "--steps", "8", "--quiet"]
    )
    assert "its vocabulary (" in line and "differs from the one of the run in" in line
    assert f"--vocab-from {tmp_path / 'run'}" in line
    # The fix the message names works: the same vocabulary, new characters as <unk>.
    vocab, corpus_format = given_vocabulary(tmp_path / "run")
    prepare([str(tmp_path / "other.txt")], tmp_path / "mapped", corpus_format, vocab=vocab, progress=False)
    assert PreparedCorpus.open(tmp_path / "mapped").vocab == load_checkpoint(tmp_path / "run").vocab


def test_train_refuses_a_format_other_than_the_prepared_one(capsys, tmp_path, prepared_dir):
    line = one_line_error(capsys, [*train_argv(prepared_dir, tmp_path / "run"), "--format", "lines"])
    assert "was prepared as text, not lines; run `nextchar prepare --format lines` again or leave --format auto" in line


# ------------------------------------------------------------------------------ batches


@pytest.mark.parametrize("size", [40, 41, 200, 5000])
@pytest.mark.parametrize(("batch_size", "seq_len"), [(4, 8), (7, 3), (64, 16)])
def test_memmap_stream_batches_equal_stream_batches(size, batch_size, seq_len):
    data = torch.randint(3, 50, (size,))
    if size - 1 < seq_len + 1:
        pytest.skip("shorter than one window: both refuse it")
    reference = StreamBatches(data, batch_size, seq_len)
    tokens = data.numpy().astype(np.uint8)
    mapped = MemmapStreamBatches(tokens, batch_size, seq_len)
    ranks = [MemmapStreamBatches(tokens, batch_size, seq_len, rank, 3) for rank in range(3)]
    for step in range(3 * reference.windows_per_epoch + 2):  # several epochs: shifted boundaries
        expected = reference(step)
        got = mapped(step)
        assert torch.equal(got.x, expected.x) and torch.equal(got.y, expected.y) and got.reset == expected.reset
        for rank, batches in enumerate(ranks):  # each rank reads its own rows, and only those
            part = batches(step)
            assert torch.equal(part.x, expected.x[rank::3]) and torch.equal(part.y, expected.y[rank::3])


def test_memmap_line_batches_equal_line_batches(prepared_lines):
    corpus = PreparedCorpus.open(prepared_lines)
    lines = [corpus.line(i) for i in range(corpus.n_lines)]
    reference = LineBatches(lines, 5, 4, seed=7)
    mapped = MemmapLineBatches(corpus, corpus.n_lines, 5, 4, seed=7)
    halves = [MemmapLineBatches(corpus, corpus.n_lines, 5, 4, 7, rank, 2) for rank in range(2)]
    for step in range(3 * reference.batches_per_epoch):
        expected = reference(step)
        assert torch.equal(mapped(step).x, expected.x) and torch.equal(mapped(step).y, expected.y)
        for rank, batches in enumerate(halves):
            part = batches(step)
            width = part.x.shape[1]  # padded to this rank's longest line only
            assert torch.equal(part.y, expected.y[rank::2, :width])
            assert (expected.y[rank::2, width:] == -100).all()


def test_huge_line_counts_use_an_affine_permutation_that_visits_every_line(prepared_lines, monkeypatch):
    monkeypatch.setattr("nextchar.data.prepared.FULL_SHUFFLE_LINES", 0)
    corpus = PreparedCorpus.open(prepared_lines)
    seen: list[int] = []  # the lines the batches read from the corpus, in order
    read_line = corpus.line

    def reading(i: int) -> torch.Tensor:
        seen.append(i)
        return read_line(i)

    monkeypatch.setattr(corpus, "line", reading)
    batches = MemmapLineBatches(corpus, corpus.n_lines, 6, 64, seed=3)
    for epoch in range(2):
        seen.clear()
        for index in range(batches.batches_per_epoch):
            assert batches(epoch * batches.batches_per_epoch + index).x.shape[0] == 6
        assert len(set(seen)) == len(seen) == batches.batches_per_epoch * 6  # no line twice in an epoch
        assert all(0 <= i < corpus.n_lines for i in seen)
        # affine, (a·i + c) mod n: one stride between consecutive lines (a shuffle has many)
        assert len({(b - a) % corpus.n_lines for a, b in itertools.pairwise(seen)}) == 1
    assert batches(0).x.shape[0] == 6


# ------------------------------------------------------------------------------ training from it


@pytest.mark.slow
@pytest.mark.parametrize(("content", "corpus_format"), [(PROSE * 3, "text"), (NAMES * 3, "lines")])
def test_training_from_a_prepared_directory_equals_training_from_the_text(tmp_path, write_file, content, corpus_format):
    corpus = write_file("corpus.txt", content)
    train_text, val_text = split_validation(content, corpus_format, 0.1)
    config = train_config(steps=12, eval_interval=4)
    in_memory = train(
        train_text, val_text, tmp_path / "text-run", config, model_config("lstm"), corpus_format, progress=False
    )
    prepare([str(corpus)], tmp_path / "prepared", progress=False)
    split = PreparedCorpus.open(tmp_path / "prepared").split(0.1, 10**9)
    mapped = train("", "", tmp_path / "prepared-run", config, model_config("lstm"), progress=False, prepared=split)
    assert mapped.final_val.chars == in_memory.final_val.chars
    assert mapped.final_val.bpc == pytest.approx(in_memory.final_val.bpc, abs=1e-6)


def test_validation_tail_is_capped(prepared_dir, prepared_lines):
    corpus = PreparedCorpus.open(prepared_dir)
    assert len(corpus.split(0.5, 30).val) == 31  # <start> + 30 characters
    assert len(corpus.split(0.01, 10**9).val) == len(corpus.tokens) - 1 - int(0.99 * (len(corpus.tokens) - 1)) + 1
    lines = PreparedCorpus.open(prepared_lines)
    assert len(lines.split(0.5, 1).val) == 1  # at least one whole line
    with pytest.raises(UserError, match=r"^val_fraction must be between 0 and 1"):
        corpus.split(1.5, 100)


def test_prepare_train_eval_round_trip(capsys, tmp_path, write_file):
    corpus = write_file("prose.txt", PROSE * 3)
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"prepared {len(PROSE) * 3:,} characters in {tmp_path / 'p'} (format text, ")
    assert main(train_argv(tmp_path / "p", tmp_path / "run")) == 0
    assert "best validation BPC" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.vocab == PreparedCorpus.open(tmp_path / "p").vocab
    assert ckpt.meta["training"]["source"]["prepared"] is True
    assert main(["eval", str(corpus), "-m", str(tmp_path / "run"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chars"] == len(PROSE) * 3 and 0 < report["bpc"] < 8
    # Resuming needs no corpus argument: the run remembers its prepared directory.
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "6", "--quiet"]) == 0
    assert "trained 6 steps" in capsys.readouterr().out


@pytest.mark.parametrize("content", [PROSE * 3 + UNICODE, NAMES * 3 + LINES_UNICODE], ids=["text", "lines"])
def test_eval_of_a_prepared_directory_equals_eval_of_its_file(capsys, tmp_path, write_file, content):
    corpus = write_file("corpus.txt", content)
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    assert main(train_argv(tmp_path / "p", tmp_path / "run")) == 0
    capsys.readouterr()

    def report(*argv: str) -> dict:  # the model alone: a prepared directory is scored so
        assert main(["eval", *argv, "-m", str(tmp_path / "run"), "--json", "--no-memory"]) == 0
        return json.loads(capsys.readouterr().out)

    assert main(["eval", str(tmp_path / "p"), "-m", str(tmp_path / "run"), "--json"]) == 0
    assert "is scored by the model alone" in capsys.readouterr().err  # said, with a memory
    from_file = report(str(corpus))
    from_dir = report(str(tmp_path / "p"))
    assert from_dir["chars"] == from_file["chars"]
    assert from_dir["bpc"] == pytest.approx(from_file["bpc"], rel=1e-6)
    assert from_dir["top1"] == from_file["top1"]
    # A corpus prepared with a vocabulary of its own (other characters, other indices) is
    # translated into the model's: characters the model never saw count as <unk>, as in the file.
    other = write_file("other.txt", "Zebra quotes ¿¡ " + content[::-1])
    assert (
        main(
            [
                "prepare",
                str(other),
                "--out",
                str(tmp_path / "q"),
                "--quiet",
                "--format",
                PreparedCorpus.open(tmp_path / "p").format,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert report(str(tmp_path / "q")) == pytest.approx(report(str(other)), rel=1e-6)


def test_eval_of_a_prepared_directory_bad_input(capsys, tmp_path, write_file, prepared_dir):
    assert main(train_argv(prepared_dir, tmp_path / "run")) == 0
    capsys.readouterr()
    model = ["-m", str(tmp_path / "run")]
    assert main(["eval", str(prepared_dir), *model, "--format", "lines"]) == 2
    assert "was prepared in text format, not lines" in capsys.readouterr().err
    assert main(["eval", str(prepared_dir), *model, "--adapt"]) == 2
    assert "--adapt reads a text file, not a prepared directory" in capsys.readouterr().err
    prepare([str(write_file("lecture.txt", PROSE))], tmp_path / "lecture", alphabet="lecture", progress=False)
    assert main(["eval", str(tmp_path / "lecture"), *model]) == 2
    assert "prepared with the lecture alphabet, the model uses the corpus alphabet" in capsys.readouterr().err
    (prepared_dir / TOKENS_NAME).write_bytes((prepared_dir / TOKENS_NAME).read_bytes()[:-3])
    assert main(["eval", str(prepared_dir), *model]) == 2
    assert "truncated" in capsys.readouterr().err
