"""`nextchar prepare` (nextchar.data.prepare, nextchar.cli.prepare): what it writes, what it refuses.

The reference for every check is the in-memory path the rest of nextchar uses: a prepared
directory must hold exactly what `encode_corpus(read_corpus(file))` holds, whatever the chunk
boundaries. Reading the directory back (batches, training, eval) is tests/data/test_prepared.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from nextchar import text as text_module
from nextchar.checkpoint import load_checkpoint
from nextchar.cli.main import main
from nextchar.cli.prepare import given_vocabulary
from nextchar.data import prepare as prepare_module
from nextchar.data.batches import encode_corpus
from nextchar.data.memory import token_dtype
from nextchar.data.prepare import prepare
from nextchar.data.prepared import (
    LINES_NAME,
    PREPARED_NAME,
    TOKENS_NAME,
    PreparedCorpus,
)
from nextchar.text import UNK, Vocabulary, choose_format, read_corpus
from tests.data.helpers import LINES_UNICODE, UNICODE, one_line_error
from tests.helpers import NAMES, PROSE


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few bytes, so that every boundary case (split characters, NFC pairs) occurs."""
    monkeypatch.setattr(prepare_module, "CHUNK_BYTES", 5)
    monkeypatch.setattr(text_module, "MAX_PENDING_CHARS", 7)


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
@pytest.mark.parametrize(
    "content",
    [PROSE, UNICODE, NAMES, LINES_UNICODE, "\ufeffbom then text\n"],
    ids=["prose", "unicode", "names", "lines-unicode", "bom"],
)
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
    cases = [
        ("\n".join(lines) + "\n", "text"),
        ("\n".join(lines[:99]) + "\n", "lines"),
        ("x" * 201 + "\n" + "y\n" * 3, "lines"),
        (("x" * 201 + "\n") * 3 + "y", "text"),
        ("x" * 200 + "\n" + "y" * 200, "lines"),
        ("one line only", "text"),
    ]
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
    vocab, corpus_format = given_vocabulary(tmp_path / "first")
    result = prepare(
        [str(write_file("b.txt", "Zebra ✓ quiz\n"))], tmp_path / "second", corpus_format, vocab=vocab, progress=False
    )
    first, second = PreparedCorpus.open(tmp_path / "first"), PreparedCorpus.open(tmp_path / "second")
    assert second.vocab == first.vocab and second.format == first.format
    unknown = {c for c in "Zebra ✓ quiz\n" if c not in first.vocab.chars}
    assert result.unknown == sum(c in unknown for c in "Zebra ✓ quiz\n") > 0
    assert torch.equal(
        torch.from_numpy(second.tokens[1:].astype(np.int64)),
        torch.tensor([UNK if c in unknown else first.vocab.encode(c)[0] for c in "Zebra ✓ quiz\n"]),
    )
    # A checkpoint's vocabulary works too: the directory then trains or evaluates with that model.
    vocab, corpus_format = given_vocabulary(text_model_dir)
    prepare(
        [str(write_file("c.txt", "best of times\n"))], tmp_path / "third", corpus_format, vocab=vocab, progress=False
    )
    assert PreparedCorpus.open(tmp_path / "third").vocab == load_checkpoint(text_model_dir).vocab


def test_dtype_grows_with_the_vocabulary():
    assert (token_dtype(256), token_dtype(257), token_dtype(65536), token_dtype(65537)) == (
        np.dtype("uint8"),
        np.dtype("uint16"),
        np.dtype("uint16"),
        np.dtype("uint32"),
    )


def test_a_large_vocabulary_uses_uint16(tmp_path, write_file):
    text = "".join(chr(0x4E00 + i) for i in range(300)) + "\n"
    prepare([str(write_file("cjk.txt", text))], tmp_path / "p", progress=False)
    corpus = PreparedCorpus.open(tmp_path / "p")
    assert corpus.tokens.dtype == np.uint16 and len(corpus.vocab) == 304
    assert corpus.vocab.decode(corpus.tokens.astype(np.int64).tolist()) == text


# ------------------------------------------------------------------------------ bad input


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
    assert "absent.txt: no such file" in one_line_error(
        capsys, ["prepare", str(tmp_path / "absent.txt"), "--out", str(tmp_path / "p")]
    )
    assert "is a directory" in one_line_error(capsys, ["prepare", str(tmp_path), "--out", str(tmp_path / "p")])
    corpus = write_file("a.txt", "abc\n")
    assert "--encoding-errors replace" in one_line_error(
        capsys, ["prepare", str(write_file("b.txt", b"\xff")), "--out", str(tmp_path / "p"), "--quiet"]
    )
    assert (
        main(
            [
                "prepare",
                str(write_file("c.txt", b"ok \xff ok\n")),
                "--out",
                str(tmp_path / "p"),
                "--encoding-errors",
                "replace",
                "--quiet",
            ]
        )
        == 0
    )
    assert "\ufffd" in PreparedCorpus.open(tmp_path / "p").vocab.chars
    assert "no characters left" in one_line_error(
        capsys,
        [
            "prepare",
            str(write_file("digits.txt", "123 456")),
            "--out",
            str(tmp_path / "q"),
            "--alphabet",
            "lecture",
            "--quiet",
        ],
    )
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "ok"), "--quiet"]) == 0


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
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_GROWTH.format(corpus=str(corpus), out=str(out))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    before, peak = map(int, done.stdout.split())
    return before, peak


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_prepare_runs_in_constant_memory(tmp_path):
    # About 80 MB of varied text (ASCII, accents, CJK, emoji; varying lines), written in a few
    # dozen bulk writes of 20,000 lines each (never line by line: that is what keeps it cheap).
    rng = np.random.default_rng(0)
    words = np.array(["the", "quick", "brown", "fox", "naïve", "café", "東京", "🙂", "jumps", "über", "data"])
    corpus = tmp_path / "big.txt"
    writes = 0
    with open(corpus, "w", encoding="utf-8") as f:
        while f.tell() < 80_000_000:
            block = rng.choice(words, size=(20_000, 12))
            f.write("\n".join(" ".join(row) for row in block) + "\n")
            writes += 1
    assert writes <= 100  # each block is over 1 MB of text
    size = corpus.stat().st_size
    baseline, peak = memory_growth(corpus, tmp_path / "p")
    prepared = PreparedCorpus.open(tmp_path / "p")
    assert prepared.format == "lines" and prepared.n_lines > 1_000_000
    # The whole corpus would be 80 MB as bytes and ~4× that as a str; streaming needs ~20 MB.
    assert peak - baseline < size / 3, f"peak {peak / 1e6:.0f} MB, after the imports {baseline / 1e6:.0f} MB"
