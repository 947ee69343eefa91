"""`nextchar prepare`: stream any number of corpora into a memory-mapped token array.

A prepared directory is what `nextchar train DIR` reads when a corpus is larger than memory:

    prepared.json   version, corpus format, vocabulary, token dtype and count, sources
    tokens.bin      the symbols as one little-endian array (uint8/16/32, by vocabulary size)
    lines.bin       `lines` format only: uint64 offsets, line i = tokens[off[i] : off[i+1] - 1]

`text` format stores the stream exactly as training frames it: <start>, then every character.
`lines` format stores every non-empty line followed by <end>, so lines stay recoverable.

Memory stays constant whatever the corpus size: files are read in chunks of CHUNK_BYTES,
decoded by an incremental UTF-8 decoder (a chunk boundary never splits a character), NFC
normalised in pieces cut where normalisation cannot reach across the cut, and written out as
they are encoded. Without a given vocabulary it takes two passes: the first collects the
character set (and the statistics `--format auto` needs), the second encodes. Standard input
can be read only once, so that first pass copies it to a temporary file in the output directory.

The outputs are written to temporary names and renamed into place; prepared.json, which names
and sizes them, is removed first and written last, so a directory with a prepared.json is
always whole.
"""

from __future__ import annotations

import argparse
import codecs
import functools
import hashlib
import os
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nextchar.data.prepared import (
    LINES_NAME,
    PREPARED_NAME,
    TOKENS_NAME,
    is_prepared,
    prepared_meta,
    read_prepared_meta,
    token_dtype,
)
from nextchar.errors import UserError
from nextchar.text import END, START, UNK, Vocabulary, to_lecture_alphabet

# 256 KiB per read. Measured on an 80 MB corpus: 1 MiB chunks held 38 MB at the peak (their
# transient copies: str, NFC, UTF-32, tokens), 256 KiB 14 MB, and were no slower.
CHUNK_BYTES = 1 << 18
MAX_CODE_POINT = 0x110000
STDIN = "-"
# Undecided text kept waiting for a safe cut before cutting anyway at a weaker boundary.
MAX_PENDING_CHARS = 1 << 20


# ----------------------------------------------------------------------------- reading

@functools.cache
def _whitespace_table() -> np.ndarray:
    """str.isspace for every code point (all whitespace lies below U+3001)."""
    table = np.zeros(MAX_CODE_POINT, dtype=bool)
    table[[c for c in range(0x3001) if chr(c).isspace()]] = True
    return table


@functools.cache
def _composes_backwards() -> frozenset[str]:
    """Starters that NFC may merge with the character before them (second halves of pairs)."""
    seconds = set()
    for code in range(MAX_CODE_POINT):
        parts = unicodedata.decomposition(chr(code)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(chr(int(parts[1], 16)))
    return frozenset(seconds)


_LAST_ASCII = re.compile(r"[\x00-\x7f][^\x00-\x7f]*\Z")


def _stable_cut(text: str) -> int:
    """A position where NFC(text[:i]) + NFC(text[i:]) == NFC(text), or 0 to wait for more.

    Right after a newline is always safe (a newline never composes and stops reordering),
    and so is right before an ASCII character. Text with neither for MAX_PENDING_CHARS is cut
    before a starter that nothing composes with, so memory stays bounded on any input.
    """
    newline = text.rfind("\n")
    if newline >= 0:
        return newline + 1
    if len(text) < MAX_PENDING_CHARS:
        return 0
    match = _LAST_ASCII.search(text)
    if match and match.start() > 0:
        return match.start()
    seconds = _composes_backwards()
    for i in range(len(text) - 1, 0, -1):
        ch = text[i]
        if (unicodedata.combining(ch) == 0 and unicodedata.normalize("NFD", ch) == ch
                and ch not in seconds and not "\u1100" <= ch <= "\u11ff"):
            return i
    return 0


def _file_pieces(stream: BinaryIO, name: str, encoding_errors: str,
                 on_bytes: Callable[[int], None]) -> Iterator[str]:
    """The NFC text of one file, in pieces; bad input raises the errors `read_corpus` raises."""
    decoder = codecs.getincrementaldecoder("utf-8")(encoding_errors)
    offset = 0  # bytes read before the current chunk
    pending = ""  # decoded text waiting for a safe place to cut
    first, has_text = True, False

    def decode(chunk: bytes, final: bool) -> str:
        held = decoder.getstate()[0]  # bytes of a character split by the previous chunk
        try:
            return decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            data = held + chunk
            raise UserError(
                f"{name}: invalid UTF-8 at byte offset {offset - len(held) + exc.start} "
                f"({data[exc.start:exc.start + 1]!r}); fix the file or pass --encoding-errors replace"
            ) from None

    while True:
        chunk = stream.read(CHUNK_BYTES)
        final = not chunk
        if chunk:
            nul = chunk.find(b"\x00")
            if nul >= 0:
                raise UserError(f"{name}: looks like a binary file (NUL byte at offset {offset + nul}); "
                                "give a UTF-8 text file")
        elif offset == 0:
            raise UserError(f"{name}: the file is empty; give a corpus with some text in it")
        text = decode(chunk, final)
        offset += len(chunk)
        on_bytes(len(chunk))
        if first and text:
            text = text.removeprefix("\ufeff")  # a byte-order mark is an encoding artefact, not text
            first = False
        pending += text
        cut = len(pending) if final else _stable_cut(pending)
        if cut:
            piece = unicodedata.normalize("NFC", pending[:cut])
            pending = pending[cut:]
            has_text = has_text or not piece.isspace()
            yield piece
        if final:
            break
    if not has_text:
        raise UserError(f"{name}: the file holds only whitespace; give a corpus with some text in it")


def _check_source(path: str) -> None:
    if path == STDIN:
        return
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise UserError(f"{p}: is a directory; give a text file")


def _corpus_pieces(paths: list[str], encoding_errors: str, on_bytes: Callable[[int], None],
                   stdin_copy: Path, stdin_mode: str) -> Iterator[str]:
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
                if path != STDIN:
                    opened: BinaryIO = stack.enter_context(open(path, "rb"))
                elif stdin_mode == "reread":
                    opened = stack.enter_context(open(stdin_copy, "rb"))
                elif stdin_mode == "spool":
                    opened = _Spool(sys.stdin.buffer, stack.enter_context(open(stdin_copy, "wb")))  # type: ignore[assignment]
                else:
                    opened = sys.stdin.buffer
            except OSError as exc:
                raise UserError(f"{path}: cannot read ({exc.strerror})") from None
            for piece in _file_pieces(opened, "<stdin>" if path == STDIN else path, encoding_errors, on_bytes):
                if piece:
                    ends_with_newline = piece.endswith("\n")
                yield piece


class _Spool:
    """Copies standard input to a file while it is read, so that a second pass can reread it."""

    def __init__(self, source: BinaryIO, target: BinaryIO):
        self.source, self.target = source, target

    def read(self, size: int) -> bytes:
        data = self.source.read(size)
        self.target.write(data)
        return data


class _LectureMapper:
    """to_lecture_alphabet over a text given in pieces (its whitespace rule looks one back)."""

    def __init__(self) -> None:
        self.last: str | None = None  # last character written: None, a letter, " " or "\n"

    def __call__(self, piece: str) -> str:
        prefix = "" if self.last is None else {" ": "a ", "\n": "a\n"}.get(self.last, "a")
        mapped = to_lecture_alphabet(prefix + piece)[len(prefix):]
        if mapped:
            self.last = mapped[-1] if mapped[-1] in " \n" else "a"
        return mapped


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


# ----------------------------------------------------------------------------- pass 1

@dataclass
class _Scan:
    """What the first pass learns: the character set and what `choose_format` looks at."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(MAX_CODE_POINT, dtype=np.int64))
    lines: int = 0
    blank: int = 0
    length_histogram: np.ndarray = field(default_factory=lambda: np.zeros(202, dtype=np.int64))
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
            self.length_histogram += np.bincount(np.minimum(lengths, 201), minlength=202)
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
            histogram[min(self.line_length, 201)] += 1
        if lines < 2:
            return "text"
        rank = int(0.95 * (lines - 1))
        p95 = int(np.searchsorted(np.cumsum(histogram), rank, side="right"))
        return "lines" if blank < 0.01 * lines and p95 <= 200 else "text"

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
        self.lookup[[ord(c) for c in vocab.chars]] = np.arange(3, len(vocab), dtype=self.dtype)
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
        lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]  # as split_lines
        if self.vocab.alphabet == "lecture":  # as encode_corpus: split, then map each line
            lines = [mapped for mapped in map(self.vocab.prepare, lines) if mapped.strip()]
        if not lines:
            return np.zeros(0, dtype=self.dtype)
        tokens = self.lookup[_code_points("\n".join(lines) + "\n")]
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


def _given_vocabulary(directory: Path) -> tuple[Vocabulary, str]:
    """The vocabulary and format of a prepared directory or a checkpoint (for --vocab-from)."""
    from nextchar.checkpoint import CONFIG_NAME, load_checkpoint

    if is_prepared(directory):
        meta = read_prepared_meta(directory)
        return Vocabulary.from_json(meta["vocabulary"]), meta["format"]
    if directory.is_dir() and not (directory / CONFIG_NAME).exists():
        raise UserError(f"{directory}: neither a prepared directory (no {PREPARED_NAME}) nor a checkpoint "
                        f"(no {CONFIG_NAME}); check --vocab-from")

    ckpt = load_checkpoint(directory)
    return ckpt.vocab, ckpt.format


def prepare(
    paths: list[str],
    out: str | Path,
    corpus_format: str = "auto",
    alphabet: str = "corpus",
    vocab_from: str | Path | None = None,
    encoding_errors: str = "strict",
    progress: bool = True,
) -> PrepareResult:
    """Stream `paths` ("-" = standard input) into the prepared directory `out`.

    `vocab_from` (a prepared directory or a checkpoint) fixes the vocabulary: characters it
    lacks become <unk>, so that every later corpus maps onto the same indices.
    """
    from nextchar.files import atomic_write_json

    started = time.perf_counter()
    if not paths:
        raise UserError("give at least one corpus file (or - for standard input)")
    if paths.count(STDIN) > 1:
        raise UserError("standard input (-) can be given only once")
    if corpus_format not in ("auto", "text", "lines"):
        raise UserError(f"--format must be auto, text or lines, not {corpus_format!r}")
    if alphabet not in ("corpus", "lecture"):
        raise UserError(f"--alphabet must be corpus or lecture, not {alphabet!r}")
    if encoding_errors not in ("strict", "replace"):
        raise UserError(f"--encoding-errors must be 'strict' or 'replace', not {encoding_errors!r}")
    for path in paths:
        _check_source(path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another --out")
    vocab: Vocabulary | None = None
    if vocab_from is not None:
        vocab, given_format = _given_vocabulary(Path(vocab_from))
        if corpus_format == "auto":
            corpus_format = given_format
    total_bytes = None if STDIN in paths else sum(Path(p).stat().st_size for p in paths)
    out.mkdir(parents=True, exist_ok=True)
    (out / PREPARED_NAME).unlink(missing_ok=True)  # the directory is not a prepared one until the end
    tokens_tmp, lines_tmp, stdin_copy = (out / f".{TOKENS_NAME}.tmp", out / f".{LINES_NAME}.tmp",
                                         out / ".stdin.tmp")
    if vocab is None and alphabet == "lecture":
        vocab = Vocabulary.from_text("", "lecture")  # a fixed alphabet: nothing to collect
    two_passes = vocab is None or corpus_format == "auto"

    def bar(desc: str) -> Any:
        from tqdm import tqdm

        return tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                    disable=not progress, dynamic_ncols=True, mininterval=0.5, file=sys.stderr, leave=False)

    try:
        if two_passes:  # pass 1: the character set and the format statistics
            scan = _Scan()
            with bar("scan") as scan_bar:
                for piece in _corpus_pieces(paths, encoding_errors, scan_bar.update, stdin_copy, "spool"):
                    if corpus_format == "auto":
                        scan.add_lines(_code_points(piece))
                    if vocab is None:
                        scan.add_characters(_code_points(piece))
            if corpus_format == "auto":
                corpus_format = scan.chosen_format()
            if vocab is None:
                vocab = scan.vocabulary()
        assert vocab is not None
        with ExitStack() as stack:  # pass 2: encode and write
            tokens_file = stack.enter_context(open(tokens_tmp, "wb"))
            lines_file = stack.enter_context(open(lines_tmp, "wb")) if corpus_format == "lines" else None
            encode_bar = stack.enter_context(bar("encode"))
            encoder = _Encoder(vocab, corpus_format, tokens_file, lines_file)
            # The lecture's mapping joins whitespace runs across pieces in a stream; lines are
            # split first and mapped one by one (by the encoder), as nextchar.data.batches does.
            mapper = _LectureMapper() if vocab.alphabet == "lecture" and corpus_format == "text" else None
            bytes_read = 0

            def count(n: int) -> None:
                nonlocal bytes_read
                bytes_read += n
                encode_bar.update(n)

            for piece in _corpus_pieces(paths, encoding_errors, count, stdin_copy,
                                        "reread" if two_passes else "read"):
                encoder.add(mapper(piece) if mapper else piece)
            encoder.finish()
            for f in (tokens_file, lines_file):
                if f is not None:
                    f.flush()
                    os.fsync(f.fileno())
        if encoder.characters == 0:
            what = "no non-empty lines" if corpus_format == "lines" else "no characters"
            raise UserError(f"{what} left after mapping onto the {vocab.alphabet} alphabet; "
                            "use --alphabet corpus or give more text")
        os.replace(tokens_tmp, out / TOKENS_NAME)
        if corpus_format == "lines":
            os.replace(lines_tmp, out / LINES_NAME)
        else:
            (out / LINES_NAME).unlink(missing_ok=True)
        line_count = encoder.line_count if corpus_format == "lines" else None
        sources = [{"path": "<stdin>" if p == STDIN else str(Path(p).resolve())} for p in paths]
        atomic_write_json(out / PREPARED_NAME, prepared_meta(
            corpus_format, vocab, encoder.count, encoder.sha256.hexdigest(), encoder.characters,
            line_count, encoder.unknown, sources))
    finally:
        for tmp in (tokens_tmp, lines_tmp, stdin_copy):
            tmp.unlink(missing_ok=True)
    return PrepareResult(out, corpus_format, vocab, encoder.count, encoder.characters, line_count,
                         encoder.unknown, bytes_read, time.perf_counter() - started)


# ----------------------------------------------------------------------------- command

def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="stream corpora into a memory-mapped directory for `train DIR`",
        description="Encode any number of UTF-8 corpora (- for standard input) into DIR: a memory-mapped "
                    "token array plus the vocabulary, in constant memory. `nextchar train DIR` then trains "
                    "on corpora larger than RAM.")
    p.add_argument("corpus", nargs="+", metavar="CORPUS", help="UTF-8 text files, or - for standard input")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory")
    p.add_argument("--format", choices=("auto", "text", "lines"), default="auto",
                   help="as for `train` (default auto; with --vocab-from, that directory's format)")
    p.add_argument("--alphabet", choices=("corpus", "lecture"), default="corpus",
                   help="corpus: every character seen; lecture: a-z and space (default corpus)")
    p.add_argument("--vocab-from", metavar="DIR",
                   help="reuse the vocabulary of a prepared directory or a checkpoint (new characters → <unk>)")
    p.add_argument("--encoding-errors", choices=("strict", "replace"), default="strict",
                   help="on invalid UTF-8: stop (strict) or use U+FFFD (replace)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_prepare)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _run_prepare(args: argparse.Namespace) -> int:
    result = prepare(args.corpus, args.out, args.format, args.alphabet, args.vocab_from,
                     args.encoding_errors, progress=not args.quiet)
    megabytes = result.bytes_read / 1e6
    lines = f", {_plural(result.lines, 'line')}" if result.lines is not None else ""
    print(f"prepared {_plural(result.characters, 'character')}{lines} in {result.out} (format {result.format}, "
          f"{len(result.vocab)} symbols, {token_dtype(len(result.vocab)).name}): "
          f"{megabytes:,.1f} MB in {result.seconds:.1f} s ({megabytes / max(result.seconds, 1e-9):,.1f} MB/s)")
    if result.unknown:
        print(f"note: {_plural(result.unknown, 'character')} ({result.unknown / max(result.characters, 1):.2%}) "
              "not in the vocabulary were stored as <unk>", file=sys.stderr)
    return 0
