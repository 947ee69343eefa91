"""`nextchar prepare` and training from a prepared directory (prepare.py, memmap_data.py).

The reference for every check is the in-memory path the rest of nextchar uses: a prepared
directory must hold exactly what `encode_corpus(read_corpus(file))` holds, whatever the chunk
boundaries, and its batches must be the batches of `StreamBatches` / `LineBatches`.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from nextchar.checkpoint import load_checkpoint
from nextchar.cli.main import main
from nextchar.data import prepare as prepare_module
from nextchar.data.batches import LineBatches, StreamBatches, encode_corpus, split_validation
from nextchar.data.prepare import prepare
from nextchar.data.prepared import (
    LINES_NAME,
    PREPARED_NAME,
    TOKENS_NAME,
    MemmapLineBatches,
    MemmapStreamBatches,
    PreparedCorpus,
    token_dtype,
)
from nextchar.errors import UserError
from nextchar.text import UNK, Vocabulary, choose_format, read_corpus
from nextchar.training.loop import train
from tests.helpers import NAMES, PROSE, model_config, train_config

# Text that stresses the streaming: multi-byte characters (2, 3 and 4 bytes), a decomposed
# "e" + combining acute that NFC composes (and must compose across a chunk boundary too),
# CRLF line ends, blank and whitespace-only lines, a line without a final newline.
UNICODE = ("naïve café — 東京 🙂 re\u0301sume\u0301\r\n\n  \t \nline two\r\n"
           "Σίσυφος\u0301 ends here\nlast line without newline")
LINES_UNICODE = "añil\nbébé\r\nçà\n\n東京\n  \nzoë 🙂\ne\u0301\n"


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few bytes, so that every boundary case (split characters, NFC pairs) occurs."""
    monkeypatch.setattr(prepare_module, "CHUNK_BYTES", 5)
    monkeypatch.setattr(prepare_module, "MAX_PENDING_CHARS", 7)


def expected_encoding(path: Path, alphabet: str) -> tuple[Vocabulary, str, torch.Tensor | list[torch.Tensor]]:
    text = read_corpus(path)
    corpus_format = choose_format(text)
    vocab = Vocabulary.from_text(Vocabulary.from_text("", alphabet).prepare(text), alphabet)
    return vocab, corpus_format, encode_corpus(text, vocab, corpus_format)


def assert_holds(directory: Path, vocab: Vocabulary, corpus_format: str, encoded) -> None:
    corpus = PreparedCorpus.open(directory)
    assert corpus.vocab == vocab
    assert corpus.format == corpus_format
    if corpus_format == "text":
        assert torch.equal(torch.from_numpy(corpus.tokens.astype(np.int64)), encoded)
    else:
        assert corpus.n_lines == len(encoded)
        assert all(torch.equal(corpus.line(i), line) for i, line in enumerate(encoded))


# ------------------------------------------------------------------------------ what it writes


@pytest.mark.parametrize("chunks", ["small", "default"])
@pytest.mark.parametrize("alphabet", ["corpus", "lecture"])
@pytest.mark.parametrize("content", [PROSE, UNICODE, NAMES, LINES_UNICODE, "\ufeffbom then text\n"],
                         ids=["prose", "unicode", "names", "lines-unicode", "bom"])
def test_prepared_tokens_equal_the_in_memory_encoding(request, tmp_path, write_file, content, alphabet, chunks):
    if chunks == "small":
        request.getfixturevalue("small_chunks")
    corpus = write_file("corpus.txt", content)
    vocab, corpus_format, encoded = expected_encoding(corpus, alphabet)
    result = prepare([str(corpus)], tmp_path / "prepared", alphabet=alphabet, progress=False)
    assert result.format == corpus_format
    assert_holds(tmp_path / "prepared", vocab, corpus_format, encoded)
    meta = json.loads((tmp_path / "prepared" / PREPARED_NAME).read_text())
    assert meta["dtype"] == "uint8" and meta["characters"] == result.characters
    assert (tmp_path / "prepared" / LINES_NAME).exists() == (corpus_format == "lines")
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir() if p.name.startswith(".")) == []


def test_format_auto_matches_choose_format_on_line_statistics(tmp_path, write_file, small_chunks):
    # 100 short lines with one blank line: 1% blank is not "under 1%", so this is text; without
    # it, a list. Then: the 95th percentile of line lengths, and a last line without newline.
    lines = [f"query {i}" for i in range(99)] + [""]
    cases = [("\n".join(lines) + "\n", "text"), ("\n".join(lines[:99]) + "\n", "lines"),
             ("x" * 201 + "\n" + "y\n" * 3, "lines"), (("x" * 201 + "\n") * 3 + "y", "text"),
             ("x" * 200 + "\n" + "y" * 200, "lines"), ("one line only", "text")]
    for content, expected in cases:
        corpus = write_file("c.txt", content)
        assert choose_format(content) == expected
        assert prepare([str(corpus)], tmp_path / "p", progress=False).format == expected


def test_several_files_and_stdin_make_one_corpus(tmp_path, write_file, monkeypatch, small_chunks):
    first, second = write_file("a.txt", "first file, no final newline"), write_file("b.txt", "second file\n")
    joined = write_file("joined.txt", "first file, no final newline\nsecond file\n")
    vocab, corpus_format, encoded = expected_encoding(joined, "corpus")
    prepare([str(first), str(second)], tmp_path / "two", progress=False)
    assert_holds(tmp_path / "two", vocab, corpus_format, encoded)
    # Standard input, read twice (the first pass keeps a copy), gives the same directory.
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(second.read_bytes())))
    prepare([str(first), "-"], tmp_path / "stdin", progress=False)
    assert (tmp_path / "stdin" / TOKENS_NAME).read_bytes() == (tmp_path / "two" / TOKENS_NAME).read_bytes()
    assert not (tmp_path / "stdin" / ".stdin.tmp").exists()


def test_vocab_from_maps_new_characters_to_unknown(tmp_path, write_file, text_model_dir):
    prepare([str(write_file("a.txt", PROSE))], tmp_path / "first", progress=False)
    result = prepare([str(write_file("b.txt", "Zebra ✓ quiz\n"))], tmp_path / "second",
                     vocab_from=tmp_path / "first", progress=False)
    first, second = PreparedCorpus.open(tmp_path / "first"), PreparedCorpus.open(tmp_path / "second")
    assert second.vocab == first.vocab and second.format == first.format
    unknown = {c for c in "Zebra ✓ quiz\n" if c not in first.vocab.chars}
    assert result.unknown == sum(c in unknown for c in "Zebra ✓ quiz\n") > 0
    assert torch.equal(torch.from_numpy(second.tokens[1:].astype(np.int64)),
                       torch.tensor([UNK if c in unknown else first.vocab.encode(c)[0] for c in "Zebra ✓ quiz\n"]))
    # A checkpoint's vocabulary works too: the directory then trains or evaluates with that model.
    prepare([str(write_file("c.txt", "best of times\n"))], tmp_path / "third", vocab_from=text_model_dir,
            progress=False)
    assert PreparedCorpus.open(tmp_path / "third").vocab == load_checkpoint(text_model_dir).vocab


def test_dtype_grows_with_the_vocabulary():
    assert (token_dtype(256), token_dtype(257), token_dtype(65536), token_dtype(65537)) == (
        np.dtype("uint8"), np.dtype("uint16"), np.dtype("uint16"), np.dtype("uint32"))


def test_a_large_vocabulary_uses_uint16(tmp_path, write_file):
    text = "".join(chr(0x4E00 + i) for i in range(300)) + "\n"
    prepare([str(write_file("cjk.txt", text))], tmp_path / "p", progress=False)
    corpus = PreparedCorpus.open(tmp_path / "p")
    assert corpus.tokens.dtype == np.uint16 and len(corpus.vocab) == 304
    assert corpus.vocab.decode(corpus.tokens.astype(np.int64).tolist()) == text


# ------------------------------------------------------------------------------ bad input


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI; it must fail with exit 2 and end with one `nextchar: error:` line, no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("nextchar: error: ") and sum(line.startswith("nextchar:") for line in lines) == 1, err
    return lines[-1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"some text\x00with a NUL byte", "looks like a binary file (NUL byte at offset 9)"),
        (b"valid text then \xff bad", "invalid UTF-8 at byte offset 16"),
        ("caf\u00e9 ok ".encode() + b"\xc3(", "invalid UTF-8 at byte offset 9"),  # a broken 2-byte sequence
        (b"ends in half a character " + "é".encode()[:1], "invalid UTF-8 at byte offset 25"),
        (b" \n\t\n  ", "the file holds only whitespace"),
    ],
    ids=["empty", "binary", "invalid-utf8", "split-sequence", "truncated-end", "whitespace"],
)
def test_prepare_refuses_bad_corpora_like_train(capsys, tmp_path, write_file, small_chunks, content, message):
    corpus = write_file("bad.txt", content)
    line = one_line_error(capsys, ["prepare", str(corpus), "--out", str(tmp_path / "p"), "--quiet"])
    assert message in line and str(corpus) in line
    # train reads the same file with the same words
    assert message in one_line_error(capsys, ["train", str(corpus), "--steps", "1", "--out", str(tmp_path / "t")])
    assert not (tmp_path / "p" / PREPARED_NAME).exists()
    assert list((tmp_path / "p").iterdir()) == []  # no temporary files left behind


def test_prepare_refuses_missing_files_and_directories(capsys, tmp_path, write_file):
    assert "absent.txt: no such file" in one_line_error(capsys, ["prepare", str(tmp_path / "absent.txt"),
                                                                 "--out", str(tmp_path / "p")])
    assert "is a directory" in one_line_error(capsys, ["prepare", str(tmp_path), "--out", str(tmp_path / "p")])
    corpus = write_file("a.txt", "abc\n")
    assert "--encoding-errors replace" in one_line_error(
        capsys, ["prepare", str(write_file("b.txt", b"\xff")), "--out", str(tmp_path / "p"), "--quiet"])
    assert main(["prepare", str(write_file("c.txt", b"ok \xff ok\n")), "--out", str(tmp_path / "p"),
                 "--encoding-errors", "replace", "--quiet"]) == 0
    assert "\ufffd" in PreparedCorpus.open(tmp_path / "p").vocab.chars
    assert "no characters left" in one_line_error(
        capsys, ["prepare", str(write_file("digits.txt", "123 456")), "--out", str(tmp_path / "q"),
                 "--alphabet", "lecture", "--quiet"])
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "ok"), "--quiet"]) == 0


@pytest.fixture
def prepared_dir(tmp_path, write_file) -> Path:
    prepare([str(write_file("prose.txt", PROSE * 3))], tmp_path / "prepared", progress=False)
    return tmp_path / "prepared"


@pytest.fixture
def prepared_lines(tmp_path, write_file) -> Path:
    prepare([str(write_file("names.txt", NAMES * 3))], tmp_path / "prepared-lines", progress=False)
    return tmp_path / "prepared-lines"


def train_argv(directory: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(directory), "--out", str(out), "--steps", "4", "--eval-interval", "2", "--kind", "gru",
            "--hidden", "16", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--precision", "fp32",
            "--device", "cpu", "--quiet", *extra]


def damage_version(directory: Path) -> None:
    meta = json.loads((directory / PREPARED_NAME).read_text())
    meta["prepared_version"] = 99
    (directory / PREPARED_NAME).write_text(json.dumps(meta))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (damage_version, "prepared-data version 99 is not supported by this nextchar (version 1); "
                         "run `nextchar prepare` again"),
        (lambda d: truncate(d / TOKENS_NAME), "tokens.bin: truncated"),
        (lambda d: truncate(d / LINES_NAME), "lines.bin: truncated"),
        (lambda d: (d / TOKENS_NAME).unlink(), "tokens.bin: missing; run `nextchar prepare` again"),
        (lambda d: (d / PREPARED_NAME).unlink(), "not a prepared directory (no prepared.json)"),
        (lambda d: (d / PREPARED_NAME).write_text("{"), "prepared.json: damaged"),
    ],
    ids=["version", "truncated-tokens", "truncated-lines", "missing-tokens", "not-prepared", "damaged-json"],
)
def test_damaged_prepared_directories_are_one_line_errors(capsys, tmp_path, prepared_lines, damage, message):
    damage(prepared_lines)
    assert message in one_line_error(capsys, train_argv(prepared_lines, tmp_path / "run"))
    # --vocab-from reads prepared.json through the same checks (it needs no token array)
    if "tokens.bin" not in message and "lines.bin" not in message:
        line = one_line_error(capsys, ["prepare", str(prepared_lines.parent / "names.txt"), "--out",
                                       str(tmp_path / "again"), "--vocab-from", str(prepared_lines), "--quiet"])
        assert message.split(" (")[0] in line or "neither a prepared directory" in line


def test_resume_refuses_a_prepared_directory_with_another_vocabulary(capsys, tmp_path, write_file, prepared_dir):
    assert main(train_argv(prepared_dir, tmp_path / "run")) == 0
    prepare([str(write_file("other.txt", "Completely different text: 0123456789!\n" * 20))], tmp_path / "other",
            progress=False)
    line = one_line_error(capsys, ["train", str(tmp_path / "other"), "--resume", str(tmp_path / "run"),
                                   "--steps", "8", "--quiet"])
    assert "its vocabulary (" in line and "differs from the one of the run in" in line
    assert f"--vocab-from {tmp_path / 'run'}" in line
    # The fix the message names works: the same vocabulary, new characters as <unk>.
    prepare([str(tmp_path / "other.txt")], tmp_path / "mapped", vocab_from=tmp_path / "run", progress=False)
    assert PreparedCorpus.open(tmp_path / "mapped").vocab == load_checkpoint(tmp_path / "run").vocab


def test_train_refuses_a_format_other_than_the_prepared_one(capsys, tmp_path, prepared_dir):
    line = one_line_error(capsys, [*train_argv(prepared_dir, tmp_path / "run"), "--format", "lines"])
    assert "was prepared in text format, not lines" in line


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
    batches = MemmapLineBatches(corpus, corpus.n_lines, 6, 64, seed=3)
    for epoch in range(2):
        seen = []
        for index in range(batches.batches_per_epoch):
            positions = [index * 6 + r for r in range(6)]
            seen += batches._affine_order(epoch, positions)
        assert len(set(seen)) == len(seen) == batches.batches_per_epoch * 6  # no line twice in an epoch
    assert batches(0).x.shape[0] == 6


# ------------------------------------------------------------------------------ training from it


@pytest.mark.parametrize(("content", "corpus_format"), [(PROSE * 3, "text"), (NAMES * 3, "lines")])
def test_training_from_a_prepared_directory_equals_training_from_the_text(tmp_path, write_file, content,
                                                                           corpus_format):
    corpus = write_file("corpus.txt", content)
    train_text, val_text = split_validation(content, corpus_format, 0.1)
    config = train_config(steps=12, eval_interval=4)
    in_memory = train(train_text, val_text, tmp_path / "text-run", config, model_config("lstm"), corpus_format,
                      progress=False)
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
    with pytest.raises(UserError, match="--val-fraction"):
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

    def report(*argv: str) -> dict:
        assert main(["eval", *argv, "-m", str(tmp_path / "run"), "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    from_file = report(str(corpus))
    from_dir = report(str(tmp_path / "p"))
    assert from_dir["chars"] == from_file["chars"]
    assert from_dir["bpc"] == pytest.approx(from_file["bpc"], rel=1e-6)
    assert from_dir["top1"] == from_file["top1"]
    # A corpus prepared with a vocabulary of its own (other characters, other indices) is
    # translated into the model's: characters the model never saw count as <unk>, as in the file.
    other = write_file("other.txt", "Zebra quotes ¿¡ " + content[::-1])
    assert main(["prepare", str(other), "--out", str(tmp_path / "q"), "--quiet", "--format",
                 PreparedCorpus.open(tmp_path / "p").format]) == 0
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


# ------------------------------------------------------------------------------ constant memory


MEMORY_GROWTH = """
import re
from pathlib import Path
from nextchar.data.prepare import prepare

def status(field):
    return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
prepare([{corpus!r}], {out!r}, progress=False)
print(before, status("VmHWM"))
"""


def memory_growth(corpus: Path, out: Path) -> tuple[int, int]:
    """(resident memory after the imports, peak resident memory while preparing), in bytes.

    Measured in a fresh process, from the imports on: what prepare itself holds at its peak.
    """
    done = subprocess.run([sys.executable, "-c", MEMORY_GROWTH.format(corpus=str(corpus), out=str(out))],
                          capture_output=True, text=True, timeout=120, check=True)
    before, peak = map(int, done.stdout.split())
    return before, peak


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_prepare_runs_in_constant_memory(tmp_path):
    # About 80 MB of varied text (ASCII, accents, CJK, emoji; varying lines), written in < 2 s.
    rng = np.random.default_rng(0)
    words = np.array(["the", "quick", "brown", "fox", "naïve", "café", "東京", "🙂", "jumps", "über", "data"])
    corpus = tmp_path / "big.txt"
    started = time.perf_counter()
    with open(corpus, "w", encoding="utf-8") as f:
        while f.tell() < 80_000_000:
            block = rng.choice(words, size=(20_000, 12))
            f.write("\n".join(" ".join(row) for row in block) + "\n")
    assert time.perf_counter() - started < 20
    size = corpus.stat().st_size
    baseline, peak = memory_growth(corpus, tmp_path / "p")
    prepared = PreparedCorpus.open(tmp_path / "p")
    assert prepared.format == "lines" and prepared.n_lines > 1_000_000
    # The whole corpus would be 80 MB as bytes and ~4× that as a str; streaming needs ~20 MB.
    assert peak - baseline < size / 3, f"peak {peak / 1e6:.0f} MB, after the imports {baseline / 1e6:.0f} MB"
