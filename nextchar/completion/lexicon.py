"""Lexicons: the closed list of things a completion may be (titles, product names, commands).

A lexicon file has one entry per line, optionally followed by a tab and a positive weight
(a count or a popularity score; 1 when absent):

    New York\t8400000
    New Orleans\t380000
    Newcastle

Lines are NFC-normalised and stripped of surrounding whitespace; blank lines are skipped;
the text after the LAST tab of a line is its weight; a line listed twice is one entry whose
weight is the sum (so a file of raw queries, one per line, becomes queries weighted by
frequency). Invalid UTF-8, a bad weight (not a number, ≤ 0, infinite) or an entry that is
empty stops loading with a message naming the line.

The entries are kept in a marisa trie (a compact, static trie in C++): the completion's beam
walks it in lockstep, asking `has_prefix` for each extension it considers. Weights sit in a
numpy array indexed by the trie's key ids.
"""

from __future__ import annotations

import heapq
import math
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import marisa_trie
import numpy as np

from nextchar.errors import UserError


def _parse_fast(lines: list[str]) -> dict[str, float] | None:
    """Entries and summed weights of well-formed lines, in bulk; None if any line is wrong."""
    rows = [line.rpartition("\t") for line in lines if not line.isspace() and line]
    try:
        weights = [float(weight) if tab else 1.0 for _, tab, weight in rows]
    except ValueError:
        return None
    if not all(0.0 < w < math.inf for w in weights):  # also false for nan
        return None
    entries = [(entry if tab else weight).strip() for entry, tab, weight in rows]
    if not all(entries):
        return None
    merged = dict(zip(entries, weights, strict=True))
    if len(merged) < len(entries):  # duplicates: sum their weights
        merged = {}
        for entry, weight in zip(entries, weights, strict=True):
            merged[entry] = merged.get(entry, 0.0) + weight
    return merged


class Lexicon:
    """A static set of entries with weights, searchable by prefix."""

    def __init__(self, entries: dict[str, float], source: str = "<memory>"):
        if not entries:
            raise UserError(f"{source}: the lexicon has no entries")
        self.source = source
        self._trie = marisa_trie.Trie(entries.keys())
        items = self._trie.items()  # (key, id) pairs in one call; ids are marisa's own numbering
        self._weights = np.zeros(len(self._trie), dtype=np.float64)
        self._weights[np.fromiter((key_id for _, key_id in items), dtype=np.int64, count=len(items))] = np.fromiter(
            (entries[key] for key, _ in items), dtype=np.float64, count=len(items)
        )
        self.alphabet = frozenset("".join(entries))  # every character of every entry
        self.max_len = max(map(len, entries))
        self._outside: tuple[dict[str, int], tuple[str, ...]] | None = None

    # ------------------------------------------------------------------ building

    @classmethod
    def from_entries(cls, entries: Iterable[str | tuple[str, float]], source: str = "<memory>") -> Lexicon:
        """From strings (weight 1) or (entry, weight) pairs; duplicates are merged by summing."""
        merged: dict[str, float] = {}
        for item in entries:
            entry, weight = (item, 1.0) if isinstance(item, str) else item
            entry = unicodedata.normalize("NFC", entry).strip()
            if not entry:
                continue
            if not (math.isfinite(weight) and weight > 0):
                raise UserError(f"{source}: entry {entry!r} has a bad weight {weight!r} (need a positive number)")
            merged[entry] = merged.get(entry, 0.0) + float(weight)
        return cls(merged, source)

    @classmethod
    def load(cls, path: str | Path) -> Lexicon:
        """Read a lexicon file (see the module docstring); every mistake names its line."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such lexicon file; check the path")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror})") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            number = data.count(b"\n", 0, exc.start) + 1
            raise UserError(
                f"{path}:{number}: invalid UTF-8 (byte {data[exc.start : exc.start + 1]!r}); save the lexicon as UTF-8"
            ) from None
        if "\x00" in text:
            number = text.count("\n", 0, text.index("\x00")) + 1
            raise UserError(f"{path}:{number}: NUL byte; a lexicon is a UTF-8 text file")
        # NFC once for the whole file: a newline never takes part in a normalisation.
        text = unicodedata.normalize("NFC", text.removeprefix("\ufeff"))
        lines = text.split("\n")
        if "\t" not in text:  # fast path: entries only, weights are counts
            counts = Counter(stripped for line in lines if (stripped := line.strip()))
            return cls({entry: float(n) for entry, n in counts.items()}, str(path))
        merged = _parse_fast(lines)
        if merged is not None:
            return cls(merged, str(path))
        merged = {}  # something is wrong: go line by line to name it
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            entry, tab, weight_text = line.rpartition("\t")
            if not tab:
                entry, weight = line, 1.0
            else:
                try:
                    weight = float(weight_text)
                except ValueError:
                    raise UserError(
                        f"{path}:{number}: bad weight {weight_text.strip()!r} after the tab (need a positive number)"
                    ) from None
                if not (math.isfinite(weight) and weight > 0):
                    raise UserError(
                        f"{path}:{number}: bad weight {weight_text.strip()!r} (need a positive, finite number)"
                    )
            entry = entry.strip()
            if not entry:
                raise UserError(f"{path}:{number}: a weight without an entry")
            merged[entry] = merged.get(entry, 0.0) + weight
        return cls(merged, str(path))

    def mapped(self, prepare: Callable[[str], str]) -> Lexicon:
        """The lexicon with every entry passed through `prepare` (e.g. a model's alphabet).

        Returns self when nothing changes; entries that collide are merged, empty ones dropped.
        """
        changed = False
        merged: dict[str, float] = {}
        for entry, key_id in self._trie.iteritems():
            new = prepare(entry).strip()
            changed = changed or new != entry
            if new:
                merged[new] = merged.get(new, 0.0) + float(self._weights[key_id])
        if not changed:
            return self
        return Lexicon(merged, self.source)

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._trie)

    def __contains__(self, entry: object) -> bool:
        return entry in self._trie

    def has_prefix(self, prefix: str) -> bool:
        """True when some entry starts with `prefix` (the trie walk's one question).

        The first key of marisa's lazy iterator (has_keys_with_prefix is deprecated); about
        1–2 µs, like a dictionary lookup from Python.
        """
        return next(self._trie.iterkeys(prefix), None) is not None

    def weight(self, entry: str) -> float:
        """The entry's weight (0 when it is not an entry)."""
        key_id = self._trie.get(entry)
        return 0.0 if key_id is None else float(self._weights[key_id])

    def keys(self, prefix: str = "") -> list[str]:
        """Every entry that starts with `prefix` (in the trie's order)."""
        keys: list[str] = self._trie.keys(prefix)
        return keys

    def top(self, prefix: str, k: int) -> list[tuple[str, float]]:
        """The k heaviest entries that start with `prefix`, heaviest first (ties alphabetical).

        That is the classic autocomplete: a frequency-ranked prefix trie (marisa returns
        matches in its own order, so they are ranked here).
        """
        items = self._trie.items(prefix)
        if not items:
            return []
        weights = self._weights[[key_id for _, key_id in items]]
        best = heapq.nsmallest(k, range(len(items)), key=lambda i: (-weights[i], items[i][0]))
        return [(items[i][0], float(weights[i])) for i in best]

    def alphabet_outside(self, index: dict[str, int]) -> tuple[str, ...]:
        """Characters of the lexicon that are not keys of `index` (a model's vocabulary), sorted."""
        if self._outside is None or self._outside[0] is not index:
            self._outside = (index, tuple(sorted(ch for ch in self.alphabet if ch not in index)))
        return self._outside[1]

    def __repr__(self) -> str:
        return f"Lexicon({len(self):,} entries from {self.source})"
