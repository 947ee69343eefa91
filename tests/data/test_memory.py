"""The memory index answers what a scan of the tokens answers (nextchar/data/memory.py)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import pytest

from nextchar.data.batches import encode_corpus
from nextchar.data.memory import Match, MemoryIndex, memory_tokens
from nextchar.data.suffix_search import WIDE_COUNT
from nextchar.errors import UserError
from nextchar.text import END, START, Vocabulary

V = 7


class Tokens(list[int]):
    """A corpus's tokens, and the same as an array (made once: `occurrences` scans it often)."""

    @cached_property
    def array(self) -> np.ndarray:
        return np.array(self)


def occurrences(tokens: Sequence[int], w: Sequence[int]) -> list[int]:
    """Start positions of w in tokens (overlapping), by scanning: of every suffix for the empty string."""
    if not w:
        return list(range(len(tokens)))
    if len(w) > len(tokens):
        return []
    array = tokens.array if isinstance(tokens, Tokens) else np.asarray(tokens)
    windows = np.lib.stride_tricks.sliding_window_view(array, len(w))
    return np.flatnonzero((windows == np.asarray(w)).all(axis=1)).tolist()


def mapped(array: np.ndarray) -> bool:
    """Whether the array is a view of a memory-mapped file."""
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base
    return False


@pytest.fixture(scope="module", params=[600, 60_000], ids=["small", "wide"])
def corpus(request) -> tuple[Tokens, MemoryIndex]:
    """Skewed, so that long repeats occur. The larger has contexts found WIDE_COUNT times or more,
    whose followers the index lists (suffix_search.wide_contexts), and it ends in one of them, so
    that one listed context holds the suffix that ends there."""
    rng = random.Random(0)
    tokens = [rng.choice([3, 4, 4, 5, 5, 5, 6]) for _ in range(request.param - 2)] + [5, 5]
    index = MemoryIndex.build(np.array(tokens, dtype="u1"))
    assert (len(index.wide[0]) >= 5) == (request.param > WIDE_COUNT)
    return Tokens(tokens), index


def test_every_string_has_the_count_and_followers_a_scan_finds(corpus):
    tokens, index = corpus
    rng = random.Random(1)
    for _ in range(300):
        if rng.random() < 0.7:  # strings that occur, of every length, and strings that may not
            start, length = rng.randrange(len(tokens)), rng.randrange(0, 12)
            w = tokens[start : start + length]
        else:
            w = [rng.randrange(3, V) for _ in range(rng.randrange(1, 8))]
        found = occurrences(tokens, w)
        interval = index.find(w)
        assert interval.count == len(found), w
        if found:
            assert interval.depth == len(w)
            assert sorted(int(index.suffixes[i]) for i in range(interval.lo, interval.hi)) == found
            expected = np.bincount([tokens[i + len(w)] for i in found if i + len(w) < len(tokens)], minlength=V)
            symbols, counts = index.followers(interval)
            following = np.zeros(V, dtype=np.int64)
            following[symbols] = counts
            assert following.tolist() == expected.tolist() and symbols.tolist() == sorted(symbols.tolist())


def test_followers_of_runs_of_every_length_are_counted_exactly():
    """Each run of followers is measured by galloping (suffix_search.followers): rows 1, 2, 4, …
    past its start, then a binary search in the last gap. Runs of every length from 1 to 300,
    each ending at, just before and just after a power of two, count what a scan counts."""
    rng = random.Random(4)
    tokens: list[int] = []
    for length in [*range(1, 40), 63, 64, 65, 127, 128, 129, 255, 256, 257, 300]:
        tokens += [3, rng.choice([4, 5, 6])] * length  # after 3: runs of 4, 5 and 6 of many lengths
        tokens += [rng.randrange(3, V) for _ in range(rng.randrange(0, 4))]
    index = MemoryIndex.build(np.array(tokens, dtype="u1"))
    for w in [[], [3], [4], [3, 4], [4, 3], [3, 5, 3], [6, 3, 6]]:
        interval = index.find(w)
        found = occurrences(tokens, w)
        expected = np.bincount([tokens[i + len(w)] for i in found if i + len(w) < len(tokens)], minlength=V)
        symbols, counts = index.followers(interval)
        following = np.zeros(V, dtype=np.int64)
        following[symbols] = counts
        assert following.tolist() == expected.tolist(), w


@pytest.mark.parametrize(
    ("dtype", "values"),
    [("u1", [3, 4, 5, 255]), ("<u2", [3, 4, 5, 255]), ("<u4", [3, 4, 5, 255]), ("<u2", [300, 70, 5, 256, 299])],
)
def test_the_suffix_array_is_the_suffixes_in_order_whatever_the_symbols_type(dtype, values):
    """Tokens that fit a byte are sorted as bytes (libdivsufsort's fastest path), whatever type
    holds them; wider symbols as they are. Either way, SA lists the suffixes in order."""
    rng = random.Random(5)
    tokens = [rng.choice(values) for _ in range(500)]
    index = MemoryIndex.build(np.array(tokens, dtype=dtype))
    assert index.suffixes.tolist() == sorted(range(len(tokens)), key=lambda i: tokens[i:])
    assert index.tokens.dtype == np.dtype(dtype)


def test_a_match_follows_the_longest_suffix_found_and_backspace_is_the_previous_match(corpus):
    tokens, index = corpus
    rng = random.Random(2)
    context: list[int] = []
    history = [Match.start(index)]
    for _ in range(200 if len(tokens) < 1000 else 60):  # the wide corpus's scans cost more
        if context and rng.random() < 0.2:  # backspace
            context.pop()
            history.pop()
        else:
            symbol = rng.choice([3, 4, 5, 6]) if rng.random() < 0.3 else tokens[rng.randrange(len(tokens))]
            context.append(symbol)
            history.append(history[-1].push(index, symbol, max_order=10))
        match = history[-1]
        longest = max(d for d in range(min(len(context), 10) + 1) if occurrences(tokens, context[len(context) - d :]))
        assert match.longest.depth == longest
        for interval in match.intervals:  # each a suffix of the context, with its count
            suffix = context[len(context) - interval.depth :] if interval.depth else []
            assert interval.count == len(occurrences(tokens, suffix)) > 0
        assert match == rebuilt(index, context, 10)  # the same as typing it afresh


def rebuilt(index: MemoryIndex, context: list[int], max_order: int) -> Match:
    match = Match.start(index)
    for symbol in context:
        match = match.push(index, symbol, max_order)
    return match


def test_lines_are_framed_with_their_start_and_end():
    vocab = Vocabulary.from_text("abc")
    tokens = memory_tokens(encode_corpus("ab\nc\n", vocab, "lines"), len(vocab))
    a, b, c = vocab.encode("abc")
    assert tokens.tolist() == [START, a, b, END, START, c, END]
    stream = memory_tokens(encode_corpus("ab\nc", Vocabulary.from_text("ab\nc"), "text"), 7)
    assert stream[0] == START and stream.dtype == np.dtype("u1")
    assert memory_tokens([], 256).dtype == np.dtype("u1") and memory_tokens([], 257).dtype == np.dtype("<u2")
    assert memory_tokens([], 70_000).dtype == np.dtype("<u4")


def test_a_saved_index_loads_memory_mapped_and_equal(tmp_path, corpus):
    tokens, index = corpus
    meta = index.save(tmp_path)
    json.dumps(meta)  # it goes into config.json as it is
    loaded = MemoryIndex.load(tmp_path, json.loads(json.dumps(meta)), V)
    assert isinstance(loaded.tokens.base, np.memmap) and not loaded.tokens.flags.writeable  # a view of the map
    assert loaded.tokens.tolist() == tokens
    assert np.array_equal(loaded.suffixes, index.suffixes)
    assert loaded.find(tokens[10:15]) == index.find(tokens[10:15])
    assert "wide" in loaded.__dict__  # the saved list, not listed again …
    assert all(mapped(part) or part.size == 0 for part in loaded.wide)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.wide, index.wide, strict=True))  # … and the same
    files = [meta[key]["file"] for key in ("tokens", "suffixes", "wide")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    assert meta["tokens"]["file"] == f"memory-tokens-{meta['tokens']['sha256'][:16]}.bin"  # no .tmp left
    other = MemoryIndex.build(np.array(tokens[:300], dtype="u1")).save(tmp_path)  # a new index beside it
    assert MemoryIndex.load(tmp_path, meta, V).tokens.tolist() == tokens  # leaves the old one whole
    assert len(MemoryIndex.load(tmp_path, other, V)) == 300


def test_a_changed_or_cut_file_is_refused_in_one_line(tmp_path, corpus):
    tokens, index = corpus
    meta = index.save(tmp_path)
    path = tmp_path / meta["suffixes"]["file"]
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256 is not the one recorded"):
        MemoryIndex.load(tmp_path, meta, V)
    path.write_bytes(bytes(data[:-4]))
    with pytest.raises(UserError, match=f"{4 * len(tokens) - 4:,} bytes where {len(tokens):,} × 4 were written"):
        MemoryIndex.load(tmp_path, meta, V)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(length=10**4000), "length must be a whole number"),
        (lambda m: m.update(length=-1), "length must be a whole number"),
        (lambda m: m.update(length=True), "length must be a whole number"),
        (lambda m: m.update(format=2), "not format 1"),
        (lambda m: m["tokens"].update(file="../" + m["tokens"]["file"]), "must be a plain file name"),
        (lambda m: m["tokens"].update(dtype="|O"), "tokens entry is not one `save` writes"),
        (lambda m: m.update(suffixes=None), "suffixes entry is not one `save` writes"),
        (lambda m: m.update(wide="x"), "wide entry is not one `save` writes"),
        (lambda m: m["wide"].update(contexts=-1), "wide entry is not one `save` writes"),
        (lambda m: m["wide"].update(followers=m["wide"]["followers"] + 1), r"bytes where [\d,]+ × 8 were written"),
    ],
)
def test_a_description_that_save_never_writes_is_refused_before_anything_is_read(tmp_path, corpus, change, message):
    _, index = corpus
    meta = index.save(tmp_path)
    change(meta)
    with pytest.raises(UserError, match=message):
        MemoryIndex.load(tmp_path, meta, V)


def test_values_out_of_range_are_refused(tmp_path):
    index = MemoryIndex.build(np.array([3, 4, 5, 9], dtype="<u2"))
    meta = index.save(tmp_path)
    with pytest.raises(UserError, match="symbols beyond the vocabulary of 8"):
        MemoryIndex.load(tmp_path, meta, 8)
    assert MemoryIndex.load(tmp_path, meta, 10).find([5, 9]).count == 1


def test_an_index_saved_without_its_list_or_with_other_settings_lists_it_when_first_used(tmp_path, corpus):
    tokens, index = corpus
    meta = index.save(tmp_path)
    for change in (lambda m: m.pop("wide"), lambda m: m["wide"].update(min_count=WIDE_COUNT * 2)):
        described = json.loads(json.dumps(meta))
        change(described)
        loaded = MemoryIndex.load(tmp_path, described, V)
        assert "wide" not in loaded.__dict__
        assert all(np.array_equal(a, b) for a, b in zip(loaded.wide, index.wide, strict=True))
        assert loaded.find(tokens[-6:]) == index.find(tokens[-6:])


def _rewritten_wide(directory, meta, part: int, row: int, column: int, value: int) -> None:
    """Write the index's list of wide contexts with one value changed, recorded as saved (digest
    and all): a list that only a hand could have made."""
    from nextchar.data.memory import _write_array

    keys, spans, children = (np.array(a) for a in MemoryIndex.load(directory, meta, V).wide)
    parts = [keys.reshape(-1, 1), spans, children]
    parts[part][row, column] = value
    flat = np.concatenate([a.ravel() for a in parts]).astype("<i8")
    meta["wide"].update(_write_array(directory, "memory-wide", flat))


@pytest.mark.parametrize(
    ("part", "row", "column", "value", "message"),
    [
        (0, 1, 0, -1, "keys out of order or beyond the index"),
        (0, -1, 0, 10**9 * 128, "keys out of order or beyond the index"),
        (1, 0, 1, 10**6, "followers outside the list"),
        (2, 0, 0, V, "follower beyond the vocabulary"),
        (2, 1, 1, 10**9, "rows outside its contexts"),
    ],
)
def test_a_list_of_wide_contexts_pointing_outside_the_index_is_refused(tmp_path, part, row, column, value, message):
    rng = random.Random(0)
    index = MemoryIndex.build(np.array([rng.choice([3, 4, 4, 5, 5, 5, 6]) for _ in range(20_000)], dtype="u1"))
    meta = index.save(tmp_path)
    _rewritten_wide(tmp_path, meta, part, row, column, value)
    with pytest.raises(UserError, match=f"list of wide contexts .*{message}.*; rebuild the index"):
        MemoryIndex.load(tmp_path, meta, V)
