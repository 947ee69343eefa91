"""Streaming any number of corpora into a memory-mapped token array (`nextchar prepare`).

A prepared directory is what `nextchar train DIR` reads when a corpus is larger than memory:

    prepared.json   version, corpus format, vocabulary, token dtype and count, sources
    tokens.bin      the symbols as one little-endian array (uint8/16/32, by vocabulary size)
    lines.bin       `lines` format only: uint64 offsets, line i = tokens[off[i] : off[i+1] - 1]

`text` format stores the stream exactly as training frames it: <start>, then every character.
`lines` format stores every non-empty line followed by <end>, so lines stay recoverable.

Memory stays constant whatever the corpus size: files are read in chunks of CHUNK_BYTES and
turned into NFC text by `nextchar.text.CorpusDecoder`, the decoder every reader uses (so a bad
file gets the words `train` gives it, and a chunk boundary never splits a character or an NFC
composition); the text is encoded and written out as it comes. Without a given vocabulary it
takes two passes: the first collects the character set (and the line statistics
`--format auto` feeds to `nextchar.text.format_from_lines`), the second encodes. Standard input
can be read only once, so that first pass copies it to a temporary file in the output directory.

The outputs are written to temporary names and renamed into place; prepared.json, which names
and sizes them, is removed just before the renames and written last: a directory with one is
always whole, and a prepare that fails (a full disk: one line) leaves the one before in use.
The command itself (its options, --vocab-from) is `nextchar.cli.prepare`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn, Protocol

import numpy as np

from nextchar.data.memory import token_dtype
from nextchar.data.prepared import LINES_NAME, PREPARED_NAME, TOKENS_NAME, prepared_meta
from nextchar.errors import UserError
from nextchar.files import WRITE_ERRNOS, atomic_write_json, write_error
from nextchar.text import (
    END,
    FORMATS,
    LIST_MAX_LINE,
    MAX_CODE_POINT,
    SPECIAL_NAMES,
    START,
    UNK,
    CorpusDecoder,
    Vocabulary,
    cannot_read,
    check_corpus_path,
    check_encoding_errors,
    format_from_lines,
    split_lines,
    to_lecture_alphabet,
)

if TYPE_CHECKING:
    from tqdm import tqdm

# 256 KiB per read. Measured on an 80 MB corpus: 1 MiB chunks held 38 MB at the peak (their
# transient copies: str, NFC, UTF-32, tokens), 256 KiB 14 MB, and were no slower.
CHUNK_BYTES = 1 << 18
STDIN = "-"


# ----------------------------------------------------------------------------- reading


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _file_pieces(
    stream: _Readable, name: str, encoding_errors: str, on_bytes: Callable[[int], object]
) -> Iterator[str]:
    """The NFC text of one file, in pieces; bad input raises the errors `read_corpus` raises."""
    decoder = CorpusDecoder(name, encoding_errors)
    while True:
        chunk = stream.read(CHUNK_BYTES)
        final = not chunk
        piece = decoder.decode(chunk, final)
        on_bytes(len(chunk))
        if piece:
            yield piece
        if final:
            return


def _check_source(path: str) -> None:
    if path != STDIN:
        check_corpus_path(path)


class _Spool:
    """Copies standard input to a file while it is read, so that a second pass can reread it."""

    def __init__(self, source: _Readable, target: BinaryIO):
        self.source, self.target = source, target

    def read(self, size: int, /) -> bytes:
        data = self.source.read(size)
        self.target.write(data)
        return data


def _corpus_pieces(
    paths: list[str], encoding_errors: str, on_bytes: Callable[[int], object], stdin_copy: Path, stdin_mode: str
) -> Iterator[str]:
    """The NFC text of all corpora in order; a newline separates files that lack a final one.

    `stdin_mode` says how to read "-": "read" it, "spool" it (read and copy it to `stdin_copy`
    for a second pass), or "reread" the copy.
    """
    ends_with_newline = True
    for path in paths:
        if not ends_with_newline:
            yield "\n"
        with ExitStack() as stack:
            try:
                opened: _Readable
                if path != STDIN:
                    opened = stack.enter_context(open(path, "rb"))
                elif stdin_mode == "reread":
                    opened = stack.enter_context(open(stdin_copy, "rb"))
                elif stdin_mode == "spool":
                    opened = _Spool(sys.stdin.buffer, stack.enter_context(open(stdin_copy, "wb")))
                else:
                    opened = sys.stdin.buffer
            except OSError as exc:
                raise cannot_read(path, exc) from None
            for piece in _file_pieces(opened, "<stdin>" if path == STDIN else path, encoding_errors, on_bytes):
                ends_with_newline = piece.endswith("\n")
                yield piece


class _LectureMapper:
    """to_lecture_alphabet over a text given in pieces (its whitespace rule looks one back)."""

    def __init__(self) -> None:
        self.last: str | None = None  # last character written: None, a letter, " " or "\n"

    def __call__(self, piece: str) -> str:
        prefix = "" if self.last is None else {" ": "a ", "\n": "a\n"}.get(self.last, "a")
        mapped = to_lecture_alphabet(prefix + piece)[len(prefix) :]
        if mapped:
            self.last = mapped[-1] if mapped[-1] in " \n" else "a"
        return mapped


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


# ----------------------------------------------------------------------------- pass 1


@functools.cache
def _whitespace_table() -> np.ndarray:
    """str.isspace for every code point (all whitespace lies below U+3001)."""
    table = np.zeros(MAX_CODE_POINT, dtype=bool)
    table[[c for c in range(0x3001) if chr(c).isspace()]] = True
    return table


# Line lengths 0 … LIST_MAX_LINE, and one bin for every longer line (the format rule only asks
# whether the 95th percentile is above LIST_MAX_LINE, not by how much).
LONG_LINE_BIN = LIST_MAX_LINE + 1


@dataclass
class _Scan:
    """What the first pass learns: the character set and the line statistics of the format rule."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(MAX_CODE_POINT, dtype=np.int64))
    lines: int = 0
    blank: int = 0
    length_histogram: np.ndarray = field(default_factory=lambda: np.zeros(LONG_LINE_BIN + 1, dtype=np.int64))
    line_length: int = 0  # of the line still open at the end of the last piece
    line_has_text: bool = False

    def add_characters(self, cps: np.ndarray) -> None:
        if len(cps):
            seen = np.bincount(cps)  # only as long as the largest code point in this piece
            self.counts[: len(seen)] += seen

    def add_lines(self, cps: np.ndarray) -> None:
        """Line lengths and blank lines of the raw text, as `choose_format` counts them."""
        if not len(cps):
            return
        newlines = np.flatnonzero(cps == 10)
        spaces = np.flatnonzero(_whitespace_table()[cps])  # a line is blank when all of it is in here

        def spaces_in(start: np.ndarray | int, end: np.ndarray | int) -> np.ndarray:
            return np.searchsorted(spaces, end) - np.searchsorted(spaces, start)

        if len(newlines):
            starts = np.concatenate([[0], newlines[:-1] + 1])
            lengths = newlines - starts
            has_text = spaces_in(starts, newlines) < lengths
            lengths[0] += self.line_length
            has_text[0] |= self.line_has_text
            self.lines += len(newlines)
            self.blank += int((~has_text).sum())
            self.length_histogram += np.bincount(np.minimum(lengths, LONG_LINE_BIN), minlength=LONG_LINE_BIN + 1)
            self.line_length, self.line_has_text = 0, False
        tail = int(newlines[-1]) + 1 if len(newlines) else 0
        self.line_length += len(cps) - tail
        self.line_has_text |= bool(spaces_in(tail, len(cps)) < len(cps) - tail)

    def chosen_format(self) -> str:
        """`nextchar.text.choose_format` of the whole text, from the streamed counts."""
        lines, blank, histogram = self.lines, self.blank, self.length_histogram.copy()
        if self.line_length:  # a last line without a final newline is still a line
            lines += 1
            blank += not self.line_has_text
            histogram[min(self.line_length, LONG_LINE_BIN)] += 1
        at_most = np.cumsum(histogram)  # at_most[n]: lines of length ≤ n

        def length_at_rank(rank: int) -> int:
            return int(np.searchsorted(at_most, rank, side="right"))

        return format_from_lines(lines, blank, length_at_rank)

    def vocabulary(self) -> Vocabulary:
        """Every character seen, in code-point order: Vocabulary.from_text of the whole text."""
        return Vocabulary(tuple(chr(c) for c in np.flatnonzero(self.counts)), "corpus")


# ----------------------------------------------------------------------------- pass 2


class _Encoder:
    """Characters → tokens.bin (+ lines.bin), written as they come; hashes what it writes."""

    def __init__(self, vocab: Vocabulary, corpus_format: str, tokens: BinaryIO, lines: BinaryIO | None):
        self.vocab = vocab
        self.dtype = token_dtype(len(vocab))
        self.lookup = np.full(MAX_CODE_POINT, UNK, dtype=self.dtype)
        self.lookup[[ord(c) for c in vocab.chars]] = np.arange(len(SPECIAL_NAMES), len(vocab), dtype=self.dtype)
        self.format = corpus_format
        if corpus_format == "lines":
            self.lookup[ord("\n")] = END  # lines never contain a newline: it becomes <end>
        self.tokens_file, self.lines_file = tokens, lines
        self.sha256 = hashlib.sha256()
        self.count = 0  # tokens written
        self.characters = 0  # characters written (not <start>/<end>)
        self.unknown = 0
        self.line_count = 0
        self.partial = ""  # `lines`: a line still open at the end of the last piece
        if corpus_format == "text":
            self._write(np.array([START], dtype=self.dtype))
        else:
            self._write_offsets(np.zeros(1, dtype=np.uint64))

    def _write(self, tokens: np.ndarray) -> None:
        data = tokens.astype(self.dtype, copy=False).tobytes()
        self.tokens_file.write(data)
        self.sha256.update(data)
        self.count += len(tokens)

    def _write_offsets(self, offsets: np.ndarray) -> None:
        assert self.lines_file is not None
        self.lines_file.write(offsets.astype("<u8").tobytes())

    def add(self, text: str) -> None:
        if self.format == "text":
            tokens = self.lookup[_code_points(text)]
            self.characters += len(tokens)
        else:
            text = self.partial + text
            cut = text.rfind("\n") + 1
            text, self.partial = text[:cut], text[cut:]
            tokens = self._encode_lines(text)
        self.unknown += int(np.count_nonzero(tokens == UNK))
        self._write(tokens)

    def _encode_lines(self, text: str) -> np.ndarray:
        """Complete lines → their tokens, each followed by <end>; blank lines are dropped."""
        lines = split_lines(text)
        if self.vocab.alphabet == "lecture":  # as encode_corpus: split, then map each line
            lines = [mapped for mapped in map(self.vocab.prepare, lines) if mapped.strip()]
        if not lines:
            return np.zeros(0, dtype=self.dtype)
        tokens: np.ndarray = self.lookup[_code_points("\n".join(lines) + "\n")]
        ends = np.flatnonzero(tokens == END)
        self._write_offsets(self.count + ends + 1)
        self.line_count += len(lines)
        self.characters += len(tokens) - len(lines)
        return tokens

    def finish(self) -> None:
        if self.format == "lines" and self.partial:
            tokens = self._encode_lines(self.partial + "\n")
            self.partial = ""
            self.unknown += int(np.count_nonzero(tokens == UNK))
            self._write(tokens)


# ----------------------------------------------------------------------------- the job


@dataclass
class PrepareResult:
    out: Path
    format: str
    vocab: Vocabulary
    tokens: int  # symbols in tokens.bin (characters + <start> or the <end> of every line)
    characters: int
    lines: int | None  # `lines` format: number of lines
    unknown: int  # characters outside a given vocabulary, stored as <unk>
    bytes_read: int
    seconds: float


def check_arguments(paths: list[str], out: str | Path, corpus_format: str, alphabet: str, encoding_errors: str) -> Path:
    """Every check `prepare` makes before it reads anything; the output directory as a Path.

    The command runs it before it reads a --vocab-from directory, so that the first problem
    reported is the same whichever way prepare is started.
    """
    if not paths:
        raise UserError("give at least one corpus file (or - for standard input)")
    if paths.count(STDIN) > 1:
        raise UserError("standard input (-) can be given only once")
    if corpus_format not in ("auto", *FORMATS):
        raise UserError(f"corpus_format must be auto, text or lines, not {corpus_format!r}", parameter="corpus_format")
    if alphabet not in ("corpus", "lecture"):
        raise UserError(f"alphabet must be corpus or lecture, not {alphabet!r}", parameter="alphabet")
    check_encoding_errors(encoding_errors)
    for path in paths:
        _check_source(path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another out", parameter="out")
    return out


@dataclass
class _Job:
    """One run of `prepare`: its sources, where it writes, and how it shows progress."""

    paths: list[str]
    out: Path
    encoding_errors: str
    progress: bool
    total_bytes: int | None  # None when standard input is among the sources (its size is unknown)

    @property
    def temporaries(self) -> tuple[Path, Path, Path]:
        """tokens.bin and lines.bin before they are whole, and the copy of standard input."""
        return self.out / f".{TOKENS_NAME}.tmp", self.out / f".{LINES_NAME}.tmp", self.out / ".stdin.tmp"

    def pieces(self, on_bytes: Callable[[int], object], stdin_mode: str) -> Iterator[str]:
        return _corpus_pieces(self.paths, self.encoding_errors, on_bytes, self.temporaries[2], stdin_mode)

    def bar(self, desc: str) -> tqdm[NoReturn]:
        from tqdm import tqdm

        return tqdm(
            total=self.total_bytes,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=0.5,
            file=sys.stderr,
            leave=False,
        )


def _scan(job: _Job, corpus_format: str, vocab: Vocabulary | None) -> tuple[str, Vocabulary]:
    """Pass 1: the format (when it is "auto") and the vocabulary (when none is given)."""
    scan = _Scan()
    with job.bar("scan") as scan_bar:
        for piece in job.pieces(scan_bar.update, "spool"):
            if corpus_format == "auto":
                scan.add_lines(_code_points(piece))
            if vocab is None:
                scan.add_characters(_code_points(piece))
    return (
        scan.chosen_format() if corpus_format == "auto" else corpus_format,
        scan.vocabulary() if vocab is None else vocab,
    )


def _encode(job: _Job, corpus_format: str, vocab: Vocabulary, stdin_mode: str) -> tuple[_Encoder, int]:
    """Pass 2: encode every piece into the temporary token files; the encoder and the bytes read."""
    tokens_tmp, lines_tmp, _ = job.temporaries
    with ExitStack() as stack:
        tokens_file = stack.enter_context(open(tokens_tmp, "wb"))
        lines_file = stack.enter_context(open(lines_tmp, "wb")) if corpus_format == "lines" else None
        encode_bar = stack.enter_context(job.bar("encode"))
        encoder = _Encoder(vocab, corpus_format, tokens_file, lines_file)
        # The lecture's mapping joins whitespace runs across pieces in a stream; lines are
        # split first and mapped one by one (by the encoder), as nextchar.data.batches does.
        mapper = _LectureMapper() if vocab.alphabet == "lecture" and corpus_format == "text" else None
        bytes_read = 0

        def count(n: int) -> None:
            nonlocal bytes_read
            bytes_read += n
            encode_bar.update(n)

        for piece in job.pieces(count, stdin_mode):
            encoder.add(mapper(piece) if mapper else piece)
        encoder.finish()
        for f in (tokens_file, lines_file):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
    return encoder, bytes_read


def _publish(job: _Job, corpus_format: str, vocab: Vocabulary, encoder: _Encoder) -> None:
    """Rename the token files into place and write prepared.json last (it makes the directory whole)."""
    if encoder.characters == 0:
        what = "no non-empty lines" if corpus_format == "lines" else "no characters"
        raise UserError(
            f'{what} left after mapping onto the {vocab.alphabet} alphabet; use alphabet="corpus" or give more text',
            parameter="alphabet",
        )
    tokens_tmp, lines_tmp, _ = job.temporaries
    (job.out / PREPARED_NAME).unlink(missing_ok=True)  # for the renames: none, never a mismatched one
    os.replace(tokens_tmp, job.out / TOKENS_NAME)
    if corpus_format == "lines":
        os.replace(lines_tmp, job.out / LINES_NAME)
    else:
        (job.out / LINES_NAME).unlink(missing_ok=True)
    line_count = encoder.line_count if corpus_format == "lines" else None
    sources = [{"path": "<stdin>" if p == STDIN else str(Path(p).resolve())} for p in job.paths]
    atomic_write_json(
        job.out / PREPARED_NAME,
        prepared_meta(
            corpus_format,
            vocab,
            encoder.count,
            encoder.sha256.hexdigest(),
            encoder.characters,
            line_count,
            encoder.unknown,
            sources,
        ),
    )


def prepare(
    paths: list[str],
    out: str | Path,
    corpus_format: str = "auto",
    alphabet: str = "corpus",
    vocab: Vocabulary | None = None,
    encoding_errors: str = "strict",
    progress: bool = True,
) -> PrepareResult:
    """Stream `paths` ("-" = standard input) into the prepared directory `out`.

    A given `vocab` (a prepared directory's or a model's: `nextchar.cli.prepare.given_vocabulary`)
    fixes the vocabulary, whatever `alphabet` says: characters it lacks become <unk>, so that
    every later corpus maps onto the same indices.
    """
    started = time.perf_counter()
    out = check_arguments(paths, out, corpus_format, alphabet, encoding_errors)
    total_bytes = None if STDIN in paths else sum(Path(p).stat().st_size for p in paths)
    job = _Job(paths, out, encoding_errors, progress, total_bytes)
    if vocab is None and alphabet == "lecture":
        vocab = Vocabulary.from_text("", "lecture")  # a fixed alphabet: nothing to collect
    two_passes = vocab is None or corpus_format == "auto"
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
            if two_passes:  # pass 1: the character set and the format statistics
                corpus_format, vocab = _scan(job, corpus_format, vocab)
            assert vocab is not None
            encoder, bytes_read = _encode(job, corpus_format, vocab, "reread" if two_passes else "read")
        except OSError as exc:  # a write that failed (a full disk, a read-only directory): the old data stands
            raise exc if exc.errno not in WRITE_ERRNOS else write_error(out, exc) from None
        _publish(job, corpus_format, vocab, encoder)
    finally:
        for tmp in job.temporaries:
            tmp.unlink(missing_ok=True)
    line_count = encoder.line_count if corpus_format == "lines" else None
    return PrepareResult(
        out,
        corpus_format,
        vocab,
        encoder.count,
        encoder.characters,
        line_count,
        encoder.unknown,
        bytes_read,
        time.perf_counter() - started,
    )
