"""Text → characters: reading corpora safely, the vocabulary, and the lecture's alphabet.

Everything that turns bytes on disk into a list of characters lives here, so that every
command reports a bad corpus the same way (one line naming the file and what to do).
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from nextchar.errors import UserError

# Special symbols occupy the first indices of every vocabulary. They are not characters, so
# a corpus that contains a literal "^" (Python code, regular expressions) keeps it as text.
START, END, UNK = 0, 1, 2
SPECIAL_NAMES = ("<start>", "<end>", "<unk>")
# How the special symbols are drawn for people (the lecture writes the start marker as ^).
SPECIAL_DISPLAY = ("^", "$", "�")

LECTURE_ALPHABET = "abcdefghijklmnopqrstuvwxyz "
FORMATS = ("text", "lines")


def decode_utf8(data: bytes, name: str, encoding_errors: str = "strict") -> str:
    """Decode bytes as UTF-8 and NFC-normalise; refuse binary data and invalid bytes clearly."""
    if not data:
        raise UserError(f"{name}: the file is empty; give a corpus with some text in it")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise UserError(
            f"{name}: looks like a binary file (NUL byte at offset {nul}); give a UTF-8 text file"
        )
    try:
        text = data.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{name}: invalid UTF-8 at byte offset {exc.start} ({data[exc.start:exc.start + 1]!r});"
            " fix the file or pass --encoding-errors replace"
        ) from None
    text = text.removeprefix("\ufeff")  # a byte-order mark is an encoding artefact, not text
    text = unicodedata.normalize("NFC", text)
    if not text.strip():
        raise UserError(f"{name}: the file holds only whitespace; give a corpus with some text in it")
    return text


def read_corpus(path: str | Path, encoding_errors: str = "strict") -> str:
    """Read a UTF-8 corpus file (NFC-normalised). `encoding_errors` is 'strict' or 'replace'."""
    path = Path(path)
    if encoding_errors not in ("strict", "replace"):
        raise UserError(f"--encoding-errors must be 'strict' or 'replace', not {encoding_errors!r}")
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a text file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
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


def choose_format(text: str) -> str:
    """Pick `lines` for lists (names, queries, titles) and `text` for running prose.

    A corpus is a list when under 1% of its lines are blank and 95% of its lines are at most
    200 characters: prose and plays have blank lines between paragraphs or speeches and long
    lines; lists have neither.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) < 2:
        return "text"
    blank = sum(1 for line in lines if not line.strip())
    lengths = sorted(len(line) for line in lines)
    p95 = lengths[int(0.95 * (len(lengths) - 1))]
    return "lines" if blank < 0.01 * len(lines) and p95 <= 200 else "text"


def split_lines(text: str) -> list[str]:
    """The sequences of a `lines` corpus: every non-empty line, trailing '\\r' removed."""
    return [line.rstrip("\r") for line in text.split("\n") if line.rstrip("\r").strip()]


@dataclass(frozen=True)
class Vocabulary:
    """Characters ↔ indices. Indices 0–2 are <start>, <end>, <unk>; characters follow.

    A character never seen in training maps to <unk>, so any text can be encoded.
    """

    chars: tuple[str, ...]
    alphabet: str = "corpus"  # "corpus" (every character seen) or "lecture" (a–z and space)

    @classmethod
    def from_text(cls, text: str, alphabet: str = "corpus") -> Vocabulary:
        if alphabet == "lecture":
            return cls(tuple(LECTURE_ALPHABET), alphabet)
        return cls(tuple(sorted(set(text))), alphabet)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i + len(SPECIAL_NAMES) for i, c in enumerate(self.chars)})

    def __len__(self) -> int:
        return len(SPECIAL_NAMES) + len(self.chars)

    def prepare(self, text: str) -> str:
        """Normalise text the way this vocabulary was built (NFC; lecture mapping if any)."""
        text = unicodedata.normalize("NFC", text)
        return to_lecture_alphabet(text) if self.alphabet == "lecture" else text

    def encode(self, text: str) -> list[int]:
        index = self._index  # type: ignore[attr-defined]
        return [index.get(c, UNK) for c in text]

    def decode(self, indices: list[int]) -> str:
        """Characters for indices; special symbols are dropped (they are not text)."""
        n = len(SPECIAL_NAMES)
        return "".join(self.chars[i - n] for i in indices if i >= n)

    def symbol(self, index: int) -> str:
        """A printable name for one index: the character itself or a special marker."""
        n = len(SPECIAL_NAMES)
        return SPECIAL_DISPLAY[index] if index < n else self.chars[index - n]

    def to_json(self) -> dict:
        return {"chars": "".join(self.chars), "alphabet": self.alphabet, "special": list(SPECIAL_NAMES)}

    @classmethod
    def from_json(cls, obj: dict) -> Vocabulary:
        if list(obj.get("special", [])) != list(SPECIAL_NAMES) or not isinstance(obj.get("chars"), str):
            raise ValueError("vocabulary has an unknown layout")
        chars = tuple(obj["chars"])
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary repeats a character")
        return cls(chars, obj.get("alphabet", "corpus"))

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} symbols: {json.dumps(''.join(self.chars[:40]))}…)"
