"""The completer's model calls with the memory: `MixedForward(forward, memory, mixer)(idx, state)`.

A search asks its forward for the next-symbol scores of every hypothesis (lockstep.py). With a
memory (nextchar.recall), each row's scores are the mixture's log q after its last symbol: the
RNN's log-softmax mixed with p_mem of the row's context (nextchar.recall.mixer). Scores of the
earlier positions of a longer read stay the model's (every reader uses the last one only).

Where the memory's context lives. A hypothesis is a row of states that the search selects,
stacks and caches without looking inside (select_state, stack_states, Node). So the memory's
context is one more tensor of the state tuple, (B, I, K, 3): for each of the memory's I
indexes, the intervals (lo, hi, depth) of the context's suffixes found there, longest first,
padded with depth −1 to K = max_order + 1 rows (Memory.rows). The model never sees it: this
forward takes it off before the model's call, pushes the symbols read and asks p_mem of the
batch's contexts in compiled calls (Memory.push_rows, Memory.predict_rows), and puts the pushed
contexts back after.

What the memory adds to a search's candidates (`continuations`): the commonest ways the
training text goes on after the typed text (to the next word boundary in `word` mode, to the
end of the line in `line` mode). The search keeps them among its hypotheses (search.py's
`extras`), so they are scored by the same mixture as every other one and ranked with them: no
prefix seen in training loses a completion that a frequency trie would offer.

Infix matches (`infix_matches`): the entries (lines) of the memory's text that hold a typed
fragment at the start of a word inside them, "jone" → "bob jones", for the drop-down of a
search box over names or titles, where people type the part they remember. The index finds
them as the occurrences of boundary + fragment (one interval per boundary symbol: a space, a
hyphen, …), each read back to its line's start and on to its end. Not a continuation of the
typed text, so they are listed apart from the suggestions, as such, most frequent first.

The memory alone as a suggester (`recalled`, eval-complete's "memory alone" row): the
continuations after the longest suffix of the typed text it holds, then, while fewer than k are
found, after ever shorter suffixes (only the lengths whose count grows: a suffix found as often
as the longer one before it is found at the same places, and goes on the same ways). No model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nextchar.models import State
from nextchar.recall.estimator import Context, Memory
from nextchar.recall.mixer import Mixer
from nextchar.text import END, START

Forward = Callable[[Tensor, State], tuple[Tensor, State]]


@dataclass(frozen=True)
class InfixMatch:
    """An entry of the memory's text that holds the typed fragment at the start of a word inside
    it (`Completer.infix`): not a completion of what was typed, and listed as such."""

    text: str  # the whole entry (a line of the training text)
    at: int  # where the fragment starts in it (characters), for highlighting
    count: int  # how often the entry holds it there in the training text

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class MixedForward:
    """forward(idx, state), its last position's scores the mixture with the memory (module docstring)."""

    def __init__(self, forward: Forward, memory: Memory, mixer: Mixer, model_state_size: int):
        self.forward = forward
        self.memory = memory
        self.mixer = mixer
        self.model_state_size = model_state_size  # tensors of the model's own state (LSTM 2, GRU 1)

    def __call__(self, idx: Tensor, state: State) -> tuple[Tensor, State]:
        """`state`: the model's own (a fresh read: the memory's context starts empty), or one this
        call returned (the context is its last tensor)."""
        model_state = state
        if len(state) > self.model_state_size:
            model_state, rows = state[: self.model_state_size], state[-1].numpy()
        else:
            rows = self.memory.rows([self.memory.start()] * idx.shape[0])
        logits, new_state = self.forward(idx, model_state)
        symbols = idx.numpy()
        for t in range(symbols.shape[1]):
            rows = self.memory.push_rows(rows, symbols[:, t])
        memory_logp, stats = self.memory.predict_rows(rows, self.mixer.estimator)
        last = torch.log_softmax(logits[:, -1].detach().float(), dim=-1).numpy()
        logits = logits.clone()
        logits[:, -1] = torch.from_numpy(self.mixer.mix_arrays(last, memory_logp, stats)).to(logits.dtype)
        return logits, (*new_state, torch.from_numpy(rows))


SCANNED = 1024  # occurrences read per continuation search (evenly spaced over a wider interval)


def continuations(
    memory: Memory, context: Context, stops: Sequence[bool] | np.ndarray, max_len: int, k: int, depth: int | None = None
) -> list[list[int]]:
    """The k commonest ways the memory's text goes on after the longest suffix of `context` it
    holds (or the suffix of length `depth`), each read up to (not including) a symbol that `stops`
    marks (a bool per symbol), or up to `max_len`; the text's end stops one too. Empty
    continuations are left out; of two as common, the one met first (in index, then SA order)
    comes first. The reading is compiled (MemoryIndex.continuations): each continuation comes back
    as a key, and only the k kept are read as symbols."""
    marks = np.asarray(stops, dtype=bool)
    keys, weights, where = [], [], []  # where: (index, start, length) of each continuation kept
    for i, (index, match) in enumerate(zip(memory.indexes, context.matches, strict=True)):
        chosen = [iv for iv in match.intervals if iv.depth == depth] if depth is not None else [match.longest]
        if not chosen or chosen[0].depth == 0 or chosen[0].count == 0:
            continue
        step = max(1, chosen[0].count // SCANNED)
        starts, lengths, found = index.continuations(chosen[0], step, marks, max_len)
        read = lengths > 0
        keys.append(found[read])
        weights.append(np.full(int(read.sum()), step))
        where.append(np.stack([np.full(len(keys[-1]), i), starts[read], lengths[read]], axis=1))
    if not keys:
        return []
    _, first, inverse = np.unique(np.concatenate(keys), return_index=True, return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate(weights))
    ranked = np.lexsort((first, -counts))[:k]  # commonest first, then the first met
    rows = np.concatenate(where)[first[ranked]]
    return [memory.indexes[i].tokens[start : start + length].tolist() for i, start, length in rows.tolist()]


def recalled(
    memory: Memory, context: Context, stops: Sequence[bool], max_len: int, k: int, min_depth: int = 1
) -> list[list[int]]:
    """The memory alone's k suggestions (module docstring): `continuations` after the suffixes of
    `context` of `min_depth` symbols or more, longest first, until k distinct ones are found."""
    depths: dict[int, int] = {}  # suffix length -> occurrences over every index
    for match in context.matches:
        for interval in match.intervals:
            if interval.depth >= min_depth:
                depths[interval.depth] = depths.get(interval.depth, 0) + interval.count
    out: list[list[int]] = []
    found: set[tuple[int, ...]] = set()
    previous = -1
    marks = np.asarray(stops, dtype=bool)  # once, not at every depth
    for depth in sorted(depths, reverse=True):
        if depths[depth] == previous:
            continue
        previous = depths[depth]
        for symbols in continuations(memory, context, marks, max_len, k, depth):
            if tuple(symbols) not in found:
                found.add(tuple(symbols))
                out.append(symbols)
        if len(out) >= k:
            break
    return out[:k]


INFIX_SCANNED = 1024  # occurrences read per boundary symbol (evenly spaced over a wider interval)
MAX_ENTRY = 256  # symbols read back and on from an occurrence, at most, to its line's ends


def infix_matches(
    memory: Memory, fragment: Sequence[int], boundaries: Sequence[int], k: int
) -> list[tuple[list[int], int, int]]:
    """The k entries (lines) of the memory's text holding `fragment` at the start of a word inside
    them — right after one of the `boundaries` symbols, not at the line's own start (that is a
    prefix, which the search completes) — as (the entry's symbols, where the fragment starts in
    it, occurrences), commonest first; ties in the vocabulary's order."""
    counts: dict[tuple[int, ...], list[int]] = {}
    for index in memory.indexes:
        tokens, n = index.tokens, len(index.tokens)
        for boundary in boundaries:
            interval = index.root()
            for symbol in (boundary, *fragment):
                interval = index.narrow(interval, symbol)
                if interval.count == 0:
                    break
            if interval.count == 0:
                continue
            step = max(1, interval.count // INFIX_SCANNED)
            for row in range(interval.lo, interval.hi, step):
                at = int(index.suffixes[row]) + 1  # where the fragment begins
                before = tokens[max(0, at - MAX_ENTRY) : at]
                starts = np.flatnonzero((before == START) | (before == END))
                if not len(starts):
                    continue  # a line longer than MAX_ENTRY: not an entry of a drop-down
                start = at - len(before) + int(starts[-1]) + 1
                after = tokens[at : min(n, at + MAX_ENTRY)]
                ends = np.flatnonzero((after == END) | (after == START))
                end = at + (int(ends[0]) if len(ends) else len(after))
                entry = tuple(int(t) for t in tokens[start:end])
                found = counts.setdefault(entry, [at - start, 0])
                found[1] += step
    ranked = sorted(counts.items(), key=lambda item: (-item[1][1], item[0]))[:k]
    return [(list(entry), offset, count) for entry, (offset, count) in ranked]
