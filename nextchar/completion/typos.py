"""Typo tolerance: texts within edit distance 1 of what was typed (Damerau–Levenshtein).

One edit is a substitution (teh → tah), an insertion of a missed character (th → the), a
deletion of an extra one (thhe → the) or a transposition of two neighbours (teh → the).
A text of n characters over an alphabet of size a has about (2n + 1)·a such variants, too
many to read them all, so the candidates within the last `typo_window` characters are:
every deletion and every transposition, and at each position the substitutions and
insertions of the `per_position` characters the model finds likeliest there (p_i, the
model's distribution after the first i typed characters, is known from the typing
session's stack). They are ordered by their local gain

    gain(edit at position i) = log p_i[first character the edit puts at i] − log p_i[t_i]

The completer then reads them to the end (batched by length: about typo_window forward
calls however many they are) and completes those the model finds likeliest compared with
what was typed (noisy channel; see `Completer` for the score and the penalty that keeps
exact matches first).

With a lexicon the variants are first restricted to those that are still prefixes of an
entry (`Lexicon.has_prefix`), the way a fuzzy suggester walks its automaton.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from torch import Tensor

from nextchar.completion.lexicon import Lexicon
from nextchar.text import UNK

KINDS = ("substitution", "insertion", "deletion", "transposition")


@dataclass(frozen=True)
class Edit:
    """text[pos:end] replaced by `new`."""

    kind: str
    pos: int
    end: int
    new: str

    def apply(self, text: str) -> str:
        return text[: self.pos] + self.new + text[self.end :]


def edits1(text: str, alphabet: Iterable[str], lo: int = 0) -> Iterator[Edit]:
    """Every edit at positions ≥ lo that changes the text (insertions at the very end excluded:
    appending is what completion does)."""
    alphabet = sorted(set(alphabet))
    n = len(text)
    for i in range(max(0, lo), n):
        for ch in alphabet:
            if ch != text[i]:
                yield Edit("substitution", i, i + 1, ch)
                yield Edit("insertion", i, i, ch)
        yield Edit("deletion", i, i + 1, "")
        if i + 1 < n and text[i] != text[i + 1]:
            yield Edit("transposition", i, i + 2, text[i + 1] + text[i])


def ranked_edits(
    text: str,
    lo: int,
    rows: list[Tensor],
    index: dict[str, int],
    per_position: int,
    limit: int | None = None,
    lexicon: Lexicon | None = None,
    key_start: int = 0,
) -> list[tuple[float, Edit]]:
    """Candidate edits at positions lo…len(text)−1 (at most `limit`), by local gain, best first.

    rows[j] is log p after text[:lo + j] (j = 0 … len(text) − lo). Without a lexicon the
    substitutions/insertions tried at each position are the `per_position` likeliest
    characters there; with one, every character that keeps text[key_start:] a prefix of an
    entry.
    """
    n = len(text)
    scored: dict[str, tuple[float, Edit]] = {}

    def symbol(ch: str) -> int:
        return index.get(ch, UNK)

    def add(edit: Edit, gain: float) -> None:
        variant = edit.apply(text)
        if variant == text:
            return
        if lexicon is not None and not lexicon.has_prefix(variant[key_start:]):
            return
        best = scored.get(variant)
        if best is None or gain > best[0]:
            scored[variant] = (gain, edit)

    inverse = {i: ch for ch, i in index.items()}
    for i in range(max(lo, key_start), n):
        row = rows[i - lo]
        typed = float(row[symbol(text[i])])
        if lexicon is not None:
            stem = text[key_start:i]
            if not lexicon.has_prefix(stem):
                break  # no edit further right can rescue a prefix that already left the trie
            options = [ch for ch in lexicon.alphabet if lexicon.has_prefix(stem + ch)]
        else:
            top = row.topk(min(per_position + 1, row.numel())).indices.tolist()
            options = [inverse[s] for s in top if s in inverse][: per_position + 1]
        for ch in options:
            gain = float(row[symbol(ch)]) - typed
            if ch != text[i]:
                add(Edit("substitution", i, i + 1, ch), gain)
                add(Edit("insertion", i, i, ch), gain)
        following = float(row[symbol(text[i + 1])]) if i + 1 < n else 0.0
        add(Edit("deletion", i, i + 1, ""), following - typed)
        if i + 1 < n and text[i] != text[i + 1]:
            add(Edit("transposition", i, i + 2, text[i + 1] + text[i]), following - typed)
    ranked = sorted(scored.values(), key=lambda item: (-item[0], item[1].pos, item[1].kind, item[1].new))
    return ranked if limit is None else ranked[:limit]
