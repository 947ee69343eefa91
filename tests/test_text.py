"""Text → characters → index tensors: corpus reading, vocabulary, formats, batches (text.py, data.py)."""

from __future__ import annotations

import unicodedata

import pytest
import torch

from nextchar.data.batches import (
    IGNORE,
    LineBatches,
    StreamBatches,
    count_targets,
    encode_corpus,
    encode_stream,
    frame_lines,
    split_validation,
    stream_eval_layout,
)
from nextchar.errors import UserError
from nextchar.text import (
    END,
    LECTURE_ALPHABET,
    START,
    UNK,
    CorpusDecoder,
    Vocabulary,
    choose_format,
    decode_utf8,
    embedded_corpus,
    read_corpus,
    split_lines,
    to_lecture_alphabet,
)
from tests.helpers import NAMES, PROSE

# ------------------------------------------------------------------------------ reading


def test_read_corpus_normalises_to_nfc_and_drops_bom(write_file):
    decomposed = "Cafe\u0301 nai\u0308ve\n"  # e + combining acute, i + combining diaeresis
    path = write_file("nfd.txt", b"\xef\xbb\xbf" + decomposed.encode("utf-8"))
    text = read_corpus(path)
    assert text == "Café naïve\n"
    assert text == unicodedata.normalize("NFC", decomposed)
    assert len(text) == 11  # one code point per accented letter, no BOM


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"  \n\t\n", "only whitespace"),
        (b"abc\x00def", "binary file (NUL byte at offset 3)"),
        (b"caf\xc3\xa9 ok \xff more", "invalid UTF-8 at byte offset 9"),
        (b"\xc3", "invalid UTF-8 at byte offset 0"),  # truncated multi-byte sequence
    ],
)
def test_read_corpus_refuses_bad_content(write_file, content, message):
    path = write_file("bad.txt", content)
    with pytest.raises(UserError, match="^" + str(path).replace("\\", "\\\\")) as info:
        read_corpus(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_invalid_utf8_message_tells_how_to_go_on(write_file):
    path = write_file("latin1.txt", "naïve text".encode("latin-1"))
    with pytest.raises(UserError, match=r"byte offset 2 \(b'\\xef'\).*encoding_errors=\"replace\""):
        read_corpus(path)
    assert read_corpus(path, encoding_errors="replace") == "na\ufffdve text"


def test_read_corpus_refuses_missing_file_directory_and_bad_mode(tmp_path, write_file):
    with pytest.raises(UserError, match="no such file"):
        read_corpus(tmp_path / "absent.txt")
    with pytest.raises(UserError, match="is a directory"):
        read_corpus(tmp_path)
    with pytest.raises(UserError, match=r"^encoding_errors must be"):
        read_corpus(write_file("ok.txt", "hello"), encoding_errors="ignore")


def test_decode_utf8_names_the_source():
    with pytest.raises(UserError, match=r"^<stdin>: the file is empty"):
        decode_utf8(b"", "<stdin>")


@pytest.mark.parametrize(
    "data",
    [
        "\ufeffCafe\u0301 naïve 東京 🙂\r\nre\u0301sume\u0301\n\nend".encode(),
        b"caf\xc3\xa9 ok \xff more",
        b"ends in half a character " + "é".encode()[:1],
        b"some text\x00with a NUL byte",
        b" \n\t\n  ",
        b"",
    ],
    ids=["unicode", "invalid", "truncated", "binary", "whitespace", "empty"],
)
def test_corpus_decoder_in_chunks_equals_decoding_at_once(data, monkeypatch):
    """Fed a byte at a time (cut anywhere: inside characters and NFC pairs), the streaming decoder
    returns the text `decode_utf8` returns, or raises its error with the same byte offset."""
    monkeypatch.setattr("nextchar.text.MAX_PENDING_CHARS", 3)
    try:
        expected: str | UserError = decode_utf8(data, "f.txt")
    except UserError as exc:
        expected = exc
    decoder = CorpusDecoder("f.txt")
    try:
        got: str | UserError = "".join(decoder.decode(data[i : i + 1]) for i in range(len(data)))
        got += decoder.decode(b"", final=True)
    except UserError as exc:
        got = exc
    assert str(got) == str(expected)


def test_embedded_corpus_is_deterministic_prose():
    text = embedded_corpus()
    assert len(text) > 100_000
    assert text == embedded_corpus()
    assert unicodedata.is_normalized("NFC", text)
    assert choose_format(text) == "text"


# ------------------------------------------------------------------------------ formats


def test_choose_format_list_vs_prose():
    assert choose_format(NAMES) == "lines"
    assert choose_format(PROSE) == "text"  # a blank line between paragraphs
    assert choose_format("one single line without newline") == "text"
    long_lines = "\n".join("word " * 60 for _ in range(50))  # no blank lines but 300-char lines
    assert choose_format(long_lines) == "text"


def test_split_lines_drops_blank_lines_and_carriage_returns():
    assert split_lines("alpha\r\n\r\n  \nbeta\ngamma") == ["alpha", "beta", "gamma"]


# ------------------------------------------------------------------------------ lecture alphabet


def test_lecture_alphabet_mapping():
    assert len(LECTURE_ALPHABET) == 27
    assert to_lecture_alphabet("Héllo,  Wörld!\tÇa va? 42 ÆØ 日本") == "hello world ca va "
    assert to_lecture_alphabet("First line\nSecond LINE") == "first line second line"
    vocab = Vocabulary.from_text("anything at all: Ünïcode 123", alphabet="lecture")
    assert vocab.chars == tuple("abcdefghijklmnopqrstuvwxyz ")
    assert len(vocab) == 27 + 3  # the lecture's 27 classes plus <start>, <end>, <unk>
    prepared = vocab.prepare("Crème Brûlée!")
    assert prepared == "creme brulee"
    assert UNK not in vocab.encode(prepared)


def test_lecture_alphabet_output_uses_only_its_classes():
    text = "".join(chr(c) for c in range(32, 0x250)) + " Ωμέγα 😀 ÀÉÎÕÜ"
    mapped = to_lecture_alphabet(text)
    assert set(mapped) <= set(LECTURE_ALPHABET)
    assert "aeiou" in mapped


# ------------------------------------------------------------------------------ vocabulary


def test_vocabulary_round_trip_and_unknown_characters():
    vocab = Vocabulary.from_text("hello world")
    assert vocab.chars == (" ", "d", "e", "h", "l", "o", "r", "w")
    assert len(vocab) == 3 + 8
    assert (START, END, UNK) == (0, 1, 2)
    encoded = vocab.encode("hello world")
    assert min(encoded) >= 3
    assert vocab.decode(encoded) == "hello world"
    # Characters never seen map to <unk>, and special symbols decode to nothing.
    assert vocab.encode("h日😀") == [vocab.encode("h")[0], UNK, UNK]
    assert vocab.decode([START, *vocab.encode("ow"), UNK, END]) == "ow"
    assert [vocab.symbol(i) for i in (START, END, UNK)] == ["^", "$", "\ufffd"]
    assert vocab.symbol(vocab.encode("w")[0]) == "w"
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab
    assert again.encode("world!") == vocab.encode("world!")


def test_vocabulary_keeps_a_literal_caret_as_text():
    vocab = Vocabulary.from_text("a^b$")
    assert vocab.encode("^$") == [vocab.chars.index("^") + 3, vocab.chars.index("$") + 3]
    assert vocab.decode(vocab.encode("a^b$")) == "a^b$"


@pytest.mark.parametrize(
    "obj",
    [
        {"chars": "abc", "special": ["<start>", "<unk>", "<end>"]},
        {"chars": "abca", "special": ["<start>", "<end>", "<unk>"]},
        {"chars": ["a", "b"], "special": ["<start>", "<end>", "<unk>"]},
        {"chars": "abc"},
    ],
)
def test_vocabulary_from_json_refuses_unknown_layouts(obj):
    with pytest.raises(ValueError, match="vocabulary"):
        Vocabulary.from_json(obj)


def test_vocabulary_prepare_normalises_like_training():
    vocab = Vocabulary.from_text("café")
    assert vocab.encode(vocab.prepare("cafe\u0301")) == vocab.encode("café")


# ------------------------------------------------------------------------------ validation split


def test_split_validation_text_is_the_last_tenth():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val = split_validation(text, "text", 0.1)
    assert train == text[:900] and val == text[900:]
    train, val = split_validation(text, "text", 0.25)
    assert len(val) == 250 and train + val == text


def test_split_validation_lines_is_the_last_tenth_of_lines():
    lines = [f"name{i}" for i in range(40)]
    train, val = split_validation("\n".join(lines) + "\n\n", "lines", 0.1)
    assert train.splitlines() == lines[:36]
    assert val.splitlines() == lines[36:]
    # Very few lines still leave at least one on each side.
    train, val = split_validation("a\nb\n", "lines", 0.1)
    assert (train, val) == ("a\n", "b\n")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_split_validation_refuses_bad_fraction(fraction):
    with pytest.raises(UserError, match=r"^val_fraction must be between 0 and 1"):
        split_validation("some text", "text", fraction)


def test_split_validation_needs_two_lines():
    with pytest.raises(UserError, match="at least 2 non-empty lines"):
        split_validation("only\n\n", "lines", 0.1)


# ------------------------------------------------------------------------------ encoding


def test_encode_corpus_formats():
    vocab = Vocabulary.from_text(NAMES)
    stream = encode_corpus("mia\nava\n", vocab, "text")
    assert stream[0].item() == START
    assert vocab.decode(stream.tolist()) == "mia\nava\n"
    assert torch.equal(stream, encode_stream("mia\nava\n", vocab))
    lines = encode_corpus("mia\n\nava\n", vocab, "lines")
    assert [vocab.decode(line.tolist()) for line in lines] == ["mia", "ava"]
    assert count_targets(stream) == 8
    assert count_targets(lines) == 3 + 1 + 3 + 1  # characters plus one <end> per line


def test_encode_corpus_applies_the_lecture_mapping():
    vocab = Vocabulary.from_text("", alphabet="lecture")
    lines = encode_corpus("Émile!\nZoë\n", vocab, "lines")
    assert [vocab.decode(line.tolist()) for line in lines] == ["emile", "zoe"]


# ------------------------------------------------------------------------------ batches


def test_stream_batches_targets_are_inputs_shifted_and_windows_continue():
    data = torch.arange(1000)  # index = position, so every relation is visible in the values
    batches = StreamBatches(data, batch_size=4, seq_len=10)
    assert batches.batch_size == 4
    previous = None
    for step in range(batches.windows_per_epoch):
        batch = batches(step)
        assert batch.x.shape == batch.y.shape == (4, 10)
        assert torch.equal(batch.y, batch.x + 1)  # the target of each input is the next symbol
        assert batch.reset == (step == 0)
        if previous is not None:  # each stream goes on where it stopped: the state may be carried
            assert torch.equal(batch.x[:, 0], previous.x[:, -1] + 1)
        previous = batch
    # Streams are disjoint and contiguous within an epoch.
    firsts = batches(0).x[:, 0]
    assert torch.all(firsts[1:] - firsts[:-1] == batches.stream_len)


def test_stream_batches_start_anew_each_epoch_with_shifted_boundaries():
    data = torch.arange(500)
    batches = StreamBatches(data, batch_size=2, seq_len=8)
    n = batches.windows_per_epoch
    first, second = batches(0), batches(n)
    assert first.reset and second.reset
    assert not torch.equal(first.x, second.x)  # the window boundaries moved
    assert torch.equal(second.y, second.x + 1)
    assert torch.equal(batches(3).x, batches(3).x)  # a pure function of the step


@pytest.mark.parametrize(
    ("chars", "seq_len", "batch_size"), [(9, 8, 4), (10, 8, 4), (18, 8, 4), (30, 8, 4), (17, 8, 1)]
)
def test_stream_batches_on_tiny_corpora_give_full_windows(chars, seq_len, batch_size):
    data = torch.arange(chars + 1)
    batches = StreamBatches(data, batch_size, seq_len)
    for step in range(3 * batches.windows_per_epoch + 1):
        batch = batches(step)
        assert batch.x.shape == batch.y.shape == (batches.batch_size, seq_len)
        assert torch.equal(batch.y, batch.x + 1)  # never wrapped around the end of the text


def test_stream_batches_refuse_a_corpus_shorter_than_one_window():
    with pytest.raises(UserError, match="shorter than one training window of seq_len=8"):
        StreamBatches(torch.arange(9), batch_size=4, seq_len=8)  # 8 characters, 8 + 1 needed


def test_frame_lines_framing():
    a, b = torch.tensor([5, 6, 7]), torch.tensor([8])
    x, y = frame_lines([a, b])
    assert x.tolist() == [[START, 5, 6, 7], [START, 8, END, END]]
    assert y.tolist() == [[5, 6, 7, END], [8, END, IGNORE, IGNORE]]


def test_frame_lines_cut_lines_do_not_end_where_they_are_cut():
    x, y = frame_lines([torch.tensor([5, 6, 7, 8, 9]), torch.tensor([4])], max_len=3)
    assert x.tolist() == [[START, 5, 6, 7], [START, 4, END, END]]
    assert y.tolist() == [[5, 6, 7, 8], [4, END, IGNORE, IGNORE]]


def test_line_batches_cover_every_line_each_epoch_deterministically():
    lines = [torch.tensor([3 + i] * (1 + i % 4)) for i in range(12)]
    batches = LineBatches(lines, batch_size=4, max_len=10, seed=7)
    assert batches.batches_per_epoch == 3
    seen = []
    for step in range(3):
        batch = batches(step)
        assert batch.reset
        assert (batch.x[:, 0] == START).all()
        seen += batch.x[:, 1].tolist()
    assert sorted(seen) == list(range(3, 15))
    again = LineBatches(lines, batch_size=4, max_len=10, seed=7)
    assert torch.equal(again(4).x, batches(4).x)  # same (step, seed), same batch
    assert not torch.equal(batches(0).x[:, 1], batches(3).x[:, 1])  # reshuffled next epoch


def test_line_batches_refuse_no_lines():
    with pytest.raises(UserError, match="no non-empty lines"):
        LineBatches([], batch_size=4, max_len=10, seed=1)


@pytest.mark.parametrize(("n", "streams"), [(1, 16), (2, 16), (17, 4), (100, 16), (1000, 7)])
def test_stream_eval_layout_covers_each_target_once(n, streams):
    data = torch.arange(n + 1)  # data[i + 1] is the target after data[i]
    x, y = stream_eval_layout(data, streams)
    assert x.shape == y.shape and x.shape[0] <= streams
    keep = y != IGNORE
    assert torch.equal(y[keep], data[1:])  # every target, once, in order (row by row)
    assert torch.equal(y[keep], x[keep] + 1)  # each paired with its own input
    assert (y[~keep] == IGNORE).all() and (~keep).sum() < x.shape[0]
    # Streams are contiguous: each row continues the text where it goes on.
    assert torch.equal(x[:, 1:][keep[:, 1:]], x[:, :-1][keep[:, 1:]] + 1)
