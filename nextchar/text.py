"""Text → characters: reading corpora safely, the format rule, the vocabulary, the lecture's alphabet.

Everything that turns bytes on disk into a list of characters lives here, so that every
command reports a bad corpus the same way (one line naming the file and what to do). The
in-memory reader (`read_corpus`, `decode_utf8`) and the streaming one of `nextchar prepare`
are one decoder, `CorpusDecoder`, fed a whole file at once or chunk by chunk:

    bytes ─ NUL? ─ incremental UTF-8 ─ byte-order mark dropped ─ NFC ─ any text at all? ─ str

NFC over a text given in pieces equals NFC of the whole only where a cut cannot change the
normalisation; `stable_nfc_cut` finds such places, so the decoder holds back at most
MAX_PENDING_CHARS undecided characters. Fed everything at once it normalises the text in one
go, exactly as `unicodedata.normalize` would.

Whether a corpus is a list of lines or running text is one rule, `format_from_lines`, applied
to line statistics: `choose_format` counts them on a text in memory, prepare on a stream.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nextchar.errors import UserError

# Special symbols occupy the first indices of every vocabulary. They are not characters, so
# a corpus that contains a literal "^" (Python code, regular expressions) keeps it as text.
START, END, UNK = 0, 1, 2
SPECIAL_NAMES = ("<start>", "<end>", "<unk>")
# How the special symbols are drawn for people (the lecture writes the start marker as ^).
SPECIAL_DISPLAY = ("^", "$", "�")

LECTURE_ALPHABET = "abcdefghijklmnopqrstuvwxyz "
FORMATS = ("text", "lines")
ENCODING_ERRORS = ("strict", "replace")  # what to do on invalid UTF-8: stop, or U+FFFD

# A corpus is a list (`lines`) when under LIST_MAX_BLANK of its lines are blank and 95% of its
# lines are at most LIST_MAX_LINE characters: prose and plays have blank lines between
# paragraphs or speeches and long lines; lists of names, queries or titles have neither.
LIST_MAX_BLANK = 0.01
LIST_MAX_LINE = 200

MAX_CODE_POINT = 0x110000
# Undecided text kept waiting for a safe cut before cutting anyway at a weaker boundary.
MAX_PENDING_CHARS = 1 << 20


# ----------------------------------------------------------------------------- reading


def check_encoding_errors(encoding_errors: str) -> str:
    """`encoding_errors` if it is 'strict' or 'replace', else the UserError every reader raises."""
    if encoding_errors not in ENCODING_ERRORS:
        raise UserError(
            f"encoding_errors must be 'strict' or 'replace', not {encoding_errors!r}", parameter="encoding_errors"
        )
    return encoding_errors


def check_corpus_path(path: str | Path) -> Path:
    """`path` as a Path if it names a file; a missing path or a directory is a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a text file")
    return path


def cannot_read(path: str | Path, exc: OSError) -> UserError:
    """The error for a corpus the system refuses to read (permissions, I/O)."""
    return UserError(f"{path}: cannot read ({exc.strerror})")


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


def stable_nfc_cut(text: str) -> int:
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
        if (
            unicodedata.combining(ch) == 0
            and unicodedata.normalize("NFD", ch) == ch
            and ch not in seconds
            and not "\u1100" <= ch <= "\u11ff"
        ):
            return i
    return 0


class CorpusDecoder:
    """One corpus's bytes → its NFC text, given whole or in chunks, with every reader's checks.

        decoder = CorpusDecoder("notes.txt")
        pieces = [decoder.decode(chunk) for chunk in chunks]   # the text ready so far (maybe "")
        pieces.append(decoder.decode(b"", final=True))         # the rest; the end-of-file checks

    Refused, as one-line UserErrors naming `name`: a NUL byte (a binary file), invalid UTF-8
    (unless `encoding_errors` is 'replace': U+FFFD), an empty file, and one that holds only
    whitespace. Offsets in the messages count bytes from the start of the file, whatever the
    chunks. A byte-order mark at the start is an encoding artefact, not text, and is dropped.
    """

    def __init__(self, name: str, encoding_errors: str = "strict") -> None:
        self.name = name
        self._decoder = codecs.getincrementaldecoder("utf-8")(encoding_errors)
        self._offset = 0  # bytes decoded before the current chunk
        self._pending = ""  # decoded text waiting for a place where NFC may cut it
        self._at_start = True  # nothing decoded yet: a byte-order mark may still come
        self._has_text = False  # a piece returned so far holds something other than whitespace

    def decode(self, chunk: bytes, final: bool = False) -> str:
        """The NFC text that `chunk` completes; `final=True` (the file has ended) returns the rest."""
        nul = chunk.find(b"\x00")
        if nul >= 0:
            raise UserError(
                f"{self.name}: looks like a binary file (NUL byte at offset {self._offset + nul}); "
                "give a UTF-8 text file"
            )
        if final and self._offset == 0 and not chunk:
            raise UserError(f"{self.name}: the file is empty; give a corpus with some text in it")
        held = self._decoder.getstate()[0]  # bytes of a character split by the previous chunk
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            data = held + chunk
            raise UserError(
                f"{self.name}: invalid UTF-8 at byte offset {self._offset - len(held) + exc.start} "
                f'({data[exc.start : exc.start + 1]!r}); fix the file or pass encoding_errors="replace"',
                parameter="encoding_errors",
            ) from None
        self._offset += len(chunk)
        if self._at_start and text:
            text = text.removeprefix("\ufeff")
            self._at_start = False
        self._pending += text
        cut = len(self._pending) if final else stable_nfc_cut(self._pending)
        piece = unicodedata.normalize("NFC", self._pending[:cut]) if cut else ""
        self._pending = self._pending[cut:]
        self._has_text = self._has_text or bool(piece.strip())
        if final and not self._has_text:
            raise UserError(f"{self.name}: the file holds only whitespace; give a corpus with some text in it")
        return piece


def decode_utf8(data: bytes, name: str, encoding_errors: str = "strict") -> str:
    """Decode bytes as UTF-8 and NFC-normalise; refuse binary data and invalid bytes clearly."""
    return CorpusDecoder(name, encoding_errors).decode(data, final=True)


def read_corpus(path: str | Path, encoding_errors: str = "strict") -> str:
    """Read a UTF-8 corpus file (NFC-normalised). `encoding_errors` is 'strict' or 'replace'."""
    check_encoding_errors(encoding_errors)
    path = check_corpus_path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise cannot_read(path, exc) from None
    return decode_utf8(data, str(path), encoding_errors)


def embedded_corpus() -> str:
    """The default corpus every CPython has: the reference documentation in `pydoc_data`.

    About 465,000 characters of English prose and code, topics joined in sorted order so that
    the text (and everything trained on it) is the same on every machine with the same Python.
    """
    from pydoc_data.topics import topics

    return unicodedata.normalize("NFC", "".join(topics[key] for key in sorted(topics)))


def to_lecture_alphabet(text: str) -> str:
    """Map text onto the lecture's 27 classes: lowercase a–z and space.

    Letters are lowercased and stripped of accents (é → e); every run of whitespace, newlines
    included, becomes one space; every other character (digits, punctuation, other scripts)
    is dropped. A `lines` corpus is split into lines before this mapping (see `split_lines`).
    """
    out: list[str] = []
    for ch in unicodedata.normalize("NFD", text.lower()):
        if ch in LECTURE_ALPHABET and ch != " ":
            out.append(ch)
        elif ch.isspace() and out and out[-1] != " ":
            out.append(" ")
    return "".join(out)


# ----------------------------------------------------------------------------- formats


def format_from_lines(lines: int, blank: int, length_at_rank: Callable[[int], int]) -> str:
    """The format rule: `lines` for a list, `text` for running prose (see LIST_MAX_BLANK).

    `lines` is the number of lines (a last line without a final newline counts), `blank` how
    many of them hold only whitespace, and `length_at_rank(r)` the length of the r-th shortest
    line (0-based; a length above LIST_MAX_LINE may be given as any larger number).
    """
    if lines < 2:
        return "text"
    p95 = length_at_rank(int(0.95 * (lines - 1)))
    return "lines" if blank < LIST_MAX_BLANK * lines and p95 <= LIST_MAX_LINE else "text"


def choose_format(text: str) -> str:
    """Pick `lines` for lists (names, queries, titles) and `text` for running prose.

    A corpus is a list when under 1% of its lines are blank and 95% of its lines are at most
    200 characters (`format_from_lines`).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    blank = sum(1 for line in lines if not line.strip())
    lengths = sorted(len(line) for line in lines)
    return format_from_lines(len(lines), blank, lengths.__getitem__)


def split_lines(text: str) -> list[str]:
    """The sequences of a `lines` corpus: every non-empty line, trailing '\\r' removed."""
    return [line.rstrip("\r") for line in text.split("\n") if line.rstrip("\r").strip()]


# ----------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Vocabulary:
    """Characters ↔ indices. Indices 0–2 are <start>, <end>, <unk>; characters follow.

    A character never seen in training maps to <unk>, so any text can be encoded.
    """

    chars: tuple[str, ...]
    alphabet: str = "corpus"  # "corpus" (every character seen) or "lecture" (a–z and space)
    # character → index, built from `chars` (so neither compared, hashed nor shown)
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    @classmethod
    def from_text(cls, text: str, alphabet: str = "corpus") -> Vocabulary:
        if alphabet == "lecture":
            return cls(tuple(LECTURE_ALPHABET), alphabet)
        return cls(tuple(sorted(set(text))), alphabet)

    @classmethod
    def of_corpus(cls, text: str, alphabet: str = "corpus") -> Vocabulary:
        """The vocabulary a model of raw `text` has: its characters once normalised (`prepare`)."""
        return cls.from_text(cls.from_text("", alphabet).prepare(text), alphabet)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i + len(SPECIAL_NAMES) for i, c in enumerate(self.chars)})

    def __len__(self) -> int:
        return len(SPECIAL_NAMES) + len(self.chars)

    def prepare(self, text: str) -> str:
        """Normalise text the way this vocabulary was built (NFC; lecture mapping if any)."""
        text = unicodedata.normalize("NFC", text)
        return to_lecture_alphabet(text) if self.alphabet == "lecture" else text

    def encode(self, text: str) -> list[int]:
        index = self._index
        return [index.get(c, UNK) for c in text]

    def decode(self, indices: list[int]) -> str:
        """Characters for indices; special symbols are dropped (they are not text)."""
        n = len(SPECIAL_NAMES)
        return "".join(self.chars[i - n] for i in indices if i >= n)

    def symbol(self, index: int) -> str:
        """A printable name for one index: the character itself or a special marker."""
        n = len(SPECIAL_NAMES)
        return SPECIAL_DISPLAY[index] if index < n else self.chars[index - n]

    def to_json(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars), "alphabet": self.alphabet, "special": list(SPECIAL_NAMES)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Vocabulary:
        if not isinstance(obj, dict) or not isinstance(obj.get("special", []), list):
            raise ValueError("vocabulary has an unknown layout")
        if list(obj.get("special", [])) != list(SPECIAL_NAMES) or not isinstance(obj.get("chars"), str):
            raise ValueError("vocabulary has an unknown layout")
        chars = tuple(obj["chars"])
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary repeats a character")
        return cls(chars, obj.get("alphabet", "corpus"))

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} symbols: {json.dumps(''.join(self.chars[:40]))}…)"
