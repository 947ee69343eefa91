"""The memory index: an exact memory of a corpus's symbols (a suffix array), and what it answers.

The tokens are the corpus as a model reads it (`memory_tokens`): a `text` corpus as its stream of
symbol indices, <start> first; a `lines` corpus as ^ line $ ^ line $ …, so that a line's start and
its end are symbols that a context can match. The suffix array SA lists the starting position of
every suffix of the tokens in the lexicographic order of the suffixes (by symbol index; a suffix
that ends sorts before every longer one it begins).

Every string w that occurs in the tokens owns one interval [lo, hi) of SA: the suffixes that
begin with w. Its count is hi − lo, and what follows w is the symbol at offset |w| of each of
them. Those symbols are sorted inside the interval, because the suffixes share w. So the
interval of w·c lies inside w's and is found by two binary searches there on the symbol at
offset |w| (`narrow`): O(log(hi − lo)) reads, never a pass over the text.

A context (what was typed) is followed by a `Match`: the intervals of its suffixes of length 0,
1, …, up to `max_order` that occur in the corpus, longest first. One more symbol narrows each of
them (`Match.push`); a suffix that no longer occurs drops out. The longest survivor is the
longest suffix of the context found in the corpus. A match is immutable, so backspace is going
back to the previous one.

SA is built by libdivsufsort (pydivsufsort): O(n log n) time, the array itself plus a few
bytes per symbol of memory. A saved index is two raw little-endian arrays beside a checkpoint.
`save` returns what describes them (lengths, dtypes, SHA-256), for the checkpoint's config.json.
`load` checks every field of it, the files' sizes and digests and the values' ranges before it
maps the arrays read-only. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nextchar.errors import UserError
from nextchar.files import atomic_write_bytes
from nextchar.text import END, START

FORMAT = 1
TOKENS_STEM, SUFFIXES_STEM = "memory-tokens", "memory-suffixes"  # files <stem>-<sha256[:16]>.bin
MAX_ORDER = 64  # longest context suffix a Match follows: its cost per symbol grows with it
MEMO_WIDTH = 32  # intervals wider than this are narrowed and counted once, then remembered
SMALL = 32  # intervals this narrow are read element by element
SEARCH_WIDTH = 8192  # intervals wider than this have their followers found by search, not read whole
MEMO_ENTRIES = 1 << 16  # at most this many remembered of each (then they start again) …
# … what one remembered pair costs at most: a narrowed interval (its key tuple, the Interval, their
# ints) and a followers entry (its key, two small arrays); sys.getsizeof, tests/service/test_cache_bytes.py
MEMO_ENTRY_BYTES = 1400
_SUFFIX_DTYPES: dict[str, np.dtype[Any]] = {"<i4": np.dtype("<i4"), "<i8": np.dtype("<i8")}
_TOKEN_DTYPES: dict[str, np.dtype[Any]] = {"<u2": np.dtype("<u2"), "<u4": np.dtype("<u4")}
_MAX_LENGTH = 1 << 40  # symbols: far above any corpus, far below what would overflow a size


def memory_tokens(encoded: Any, vocab_size: int) -> np.ndarray:
    """The tokens the index remembers, from `data.batches.encode_corpus`'s result: a text stream
    as it is, a lines corpus as ^ line $ per line. uint16 when the vocabulary fits, else uint32."""
    dtype = np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")
    if not isinstance(encoded, list):
        return np.asarray(encoded, dtype=dtype)
    parts: list[np.ndarray] = []
    for line in encoded:
        parts += [np.array([START], dtype=dtype), np.asarray(line, dtype=dtype), np.array([END], dtype=dtype)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


@dataclass(frozen=True)
class Interval:
    """The suffixes [lo, hi) of SA that begin with one string, of length `depth`."""

    lo: int
    hi: int
    depth: int

    @property
    def count(self) -> int:
        return self.hi - self.lo


class MemoryIndex:
    """A corpus's tokens and their suffix array (see the module docstring)."""

    def __init__(self, tokens: np.ndarray, suffixes: np.ndarray):
        if tokens.ndim != 1 or suffixes.shape != tokens.shape:
            raise ValueError("tokens and suffixes must be 1-D arrays of one length")
        # Plain ndarray views of the (memory-mapped) arrays: a memmap's own indexing costs
        # several times more per element, and a search reads elements one at a time.
        self.tokens = tokens.view(np.ndarray)
        self.suffixes = suffixes.view(np.ndarray)
        self._length = len(tokens)
        # What a wide interval narrows to and what follows it, kept once computed: the intervals
        # of short strings (wider than MEMO_WIDTH) are few and asked for at nearly every symbol.
        self._narrowed: dict[tuple[int, int, int, int], Interval] = {}
        self._followers: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.memo_entries = MEMO_ENTRIES  # of each: set through memo_bytes to bound them in bytes
        self.search_width = SEARCH_WIDTH  # see _followers_by_search

    @classmethod
    def build(cls, tokens: np.ndarray) -> MemoryIndex:
        from pydivsufsort import divsufsort

        tokens = np.ascontiguousarray(tokens)
        if len(tokens) == 0:
            return cls(tokens, np.zeros(0, dtype="<i4"))
        suffixes = np.asarray(divsufsort(tokens))
        return cls(tokens, suffixes.astype(suffixes.dtype.newbyteorder("<"), copy=False))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def memo_bytes(self) -> int:
        """What the remembered intervals and followers may cost together, at most; settable."""
        return self.memo_entries * MEMO_ENTRY_BYTES

    @memo_bytes.setter
    def memo_bytes(self, memo_bytes: int) -> None:
        self.memo_entries = max(0, memo_bytes // MEMO_ENTRY_BYTES)
        if len(self._narrowed) > self.memo_entries:
            self._narrowed.clear()
        if len(self._followers) > self.memo_entries:
            self._followers.clear()

    def root(self) -> Interval:
        """The empty string's interval: every suffix."""
        return Interval(0, len(self.tokens), 0)

    def _symbol(self, i: int, depth: int) -> int:
        """The symbol at offset `depth` of the i-th suffix in SA order (−1 past the end)."""
        # .item: a Python int straight away, half the cost of indexing and int() (the reads of
        # a search are one element at a time)
        at = self.suffixes.item(i) + depth
        return self.tokens.item(at) if at < self._length else -1

    def narrow(self, interval: Interval, symbol: int) -> Interval:
        """The interval of the interval's string followed by `symbol` (empty: count 0)."""
        if interval.count <= MEMO_WIDTH:
            return self._narrow(interval, symbol)
        key = (interval.lo, interval.hi, interval.depth, symbol)
        found = self._narrowed.get(key)
        if found is None:
            found = self._narrow(interval, symbol)
            if len(self._narrowed) >= self.memo_entries:
                self._narrowed.clear()
            if self.memo_entries:
                self._narrowed[key] = found
        return found

    def _narrow(self, interval: Interval, symbol: int) -> Interval:
        d = interval.depth
        lo, hi = interval.lo, interval.hi
        if hi - lo <= SMALL:  # a few suffixes: one pass over them (sorted by the symbol at d)
            found = [i for i in range(lo, hi) if self._symbol(i, d) == symbol]
            return Interval(found[0], found[-1] + 1, d + 1) if found else Interval(lo, lo, d + 1)
        while lo < hi:  # first suffix whose symbol at d is ≥ symbol
            mid = (lo + hi) // 2
            if self._symbol(mid, d) < symbol:
                lo = mid + 1
            else:
                hi = mid
        start, hi = lo, interval.hi
        while lo < hi:  # first suffix whose symbol at d is > symbol
            mid = (lo + hi) // 2
            if self._symbol(mid, d) <= symbol:
                lo = mid + 1
            else:
                hi = mid
        return Interval(start, lo, d + 1)

    def find(self, symbols: Sequence[int]) -> Interval:
        """The interval of a whole string (count 0 when it does not occur)."""
        interval = self.root()
        for symbol in symbols:
            interval = self.narrow(interval, symbol)
            if interval.count == 0:
                break
        return interval

    def followers(self, interval: Interval) -> tuple[np.ndarray, np.ndarray]:
        """(symbols, counts): the distinct symbols that follow the interval's string, ascending,
        and how often each does. They are read in one pass over the interval: sorted already
        (see the module docstring), so runs of one symbol are its count."""
        if interval.count <= MEMO_WIDTH:
            return self._followers_of(interval)
        key = (interval.lo, interval.hi, interval.depth)
        found = self._followers.get(key)
        if found is None:
            found = self._followers_of(interval)
            if len(self._followers) >= self.memo_entries:
                self._followers.clear()
            if self.memo_entries:
                self._followers[key] = found
        return found

    def _followers_of(self, interval: Interval) -> tuple[np.ndarray, np.ndarray]:
        if interval.count <= SMALL:  # element by element: cheaper than numpy's set-up for a few
            runs: dict[int, int] = {}
            for i in range(interval.lo, interval.hi):
                symbol = self._symbol(i, interval.depth)
                if symbol >= 0:
                    runs[symbol] = runs.get(symbol, 0) + 1
            return np.fromiter(runs, dtype=np.int64, count=len(runs)), np.fromiter(
                runs.values(), dtype=np.int64, count=len(runs)
            )
        if interval.count > self.search_width:
            return self._followers_by_search(interval)
        starts = np.asarray(self.suffixes[interval.lo : interval.hi], dtype=np.int64) + interval.depth
        starts = starts[starts < len(self.tokens)]
        if len(starts) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        following = np.asarray(self.tokens[starts], dtype=np.int64)
        cuts = np.flatnonzero(following[1:] != following[:-1]) + 1
        firsts = np.concatenate(([0], cuts))
        return following[firsts], np.diff(np.concatenate((firsts, [len(following)])))

    def _followers_by_search(self, interval: Interval) -> tuple[np.ndarray, np.ndarray]:
        """`_followers_of` by binary search: the interval's rows are sorted by the symbol at its
        depth, so each distinct symbol is one run, and a run's end is the first row whose symbol
        is greater — about σ·log2(count) reads instead of count. The short contexts of a large
        corpus have intervals of millions of rows; reading them whole is what made p_mem cost
        milliseconds there (bench/index.py)."""
        d, row, hi = interval.depth, interval.lo, interval.hi
        symbols: list[int] = []
        counts: list[int] = []
        while row < hi:
            symbol = self._symbol(row, d)
            lo_, hi_ = row + 1, hi
            while lo_ < hi_:  # the first row past the run of `symbol`
                mid = (lo_ + hi_) // 2
                if self._symbol(mid, d) <= symbol:
                    lo_ = mid + 1
                else:
                    hi_ = mid
            if symbol >= 0:  # −1: the text ended there (sorted first)
                symbols.append(symbol)
                counts.append(lo_ - row)
            row = lo_
        return np.asarray(symbols, dtype=np.int64), np.asarray(counts, dtype=np.int64)

    # ---------------------------------------------------------------------------- files

    def save(self, directory: Path) -> dict[str, Any]:
        """Write the two arrays into `directory` (atomically); returns their description for
        config.json (`load` reads it back). The file names hold the content's digest, as the
        checkpoint's weights do: a new index never overwrites the files that a config.json still
        names, and removing those once it names the new ones is the caller's."""
        meta: dict[str, Any] = {"format": FORMAT, "length": len(self.tokens)}
        for key, stem, array in (("tokens", TOKENS_STEM, self.tokens), ("suffixes", SUFFIXES_STEM, self.suffixes)):
            data = np.ascontiguousarray(array)
            raw = data.data.cast("B")  # the array's own bytes, not a copy
            digest = hashlib.sha256(raw).hexdigest()
            name = f"{stem}-{digest[:16]}.bin"
            if not (Path(directory) / name).is_file():
                atomic_write_bytes(Path(directory) / name, raw)
            meta[key] = {"file": name, "dtype": data.dtype.str, "sha256": digest}
        return meta

    @classmethod
    def load(cls, directory: Path, meta: Any, vocab_size: int) -> MemoryIndex:
        """The index `save` wrote, memory-mapped read-only, after checking `meta` (from
        config.json: any JSON), each file's size and digest, and that every value is in range."""
        directory = Path(directory)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(f"{directory}: the memory index's description is not format {FORMAT}")
        length = meta.get("length")
        if type(length) is not int or not 0 <= length <= _MAX_LENGTH:
            raise UserError(f"{directory}: the memory index's length must be a whole number ≥ 0, not {length!r}")
        tokens = _mapped(directory, meta.get("tokens"), _TOKEN_DTYPES, length, "tokens")
        suffixes = _mapped(directory, meta.get("suffixes"), _SUFFIX_DTYPES, length, "suffixes")
        if length and (int(tokens.max()) >= vocab_size):
            raise UserError(f"{directory}: the memory index holds symbols beyond the vocabulary of {vocab_size}")
        if length and (int(suffixes.min()) < 0 or int(suffixes.max()) >= length):
            raise UserError(f"{directory}: the memory index's suffix array points outside its {length:,} symbols")
        return cls(tokens, suffixes)


def _mapped(directory: Path, entry: Any, dtypes: dict[str, np.dtype[Any]], length: int, what: str) -> np.ndarray:
    """One array of a saved index, checked (name, dtype, size, SHA-256) and then memory-mapped."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or entry.get("dtype") not in dtypes:
        raise UserError(f"{directory}: the memory index's {what} entry is not one `save` writes")
    name = entry["file"]
    if Path(name).name != name or name in ("", ".", ".."):
        raise UserError(f"{directory}: the memory index's {what} file {name!r} must be a plain file name")
    path = directory / name
    dtype = dtypes[entry["dtype"]]
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UserError(f"{path}: cannot read the memory index ({exc.strerror}); rebuild it") from None
    if size != length * dtype.itemsize:
        raise UserError(f"{path}: {size:,} bytes where {length:,} × {dtype.itemsize} were written; rebuild the index")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != entry.get("sha256"):
        raise UserError(f"{path}: its SHA-256 is not the one recorded; the file changed since it was saved")
    if length == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


@dataclass(frozen=True)
class Match:
    """The intervals of a context's suffixes found in the corpus, longest first (the empty
    suffix, the root, always last). `push` returns the match of the context one symbol longer."""

    intervals: tuple[Interval, ...]

    @classmethod
    def start(cls, index: MemoryIndex) -> Match:
        return cls((index.root(),))

    @property
    def longest(self) -> Interval:
        """The interval of the longest suffix of the context found in the corpus."""
        return self.intervals[0]

    def push(self, index: MemoryIndex, symbol: int, max_order: int = MAX_ORDER, min_count: int = 1) -> Match:
        """`min_count` 2 keeps only the suffixes found twice: what leave-one-out asks for when the
        context is the indexed text itself (its own occurrence is one of the count)."""
        intervals = self.intervals
        found: list[Interval] = []
        once = 0
        if min_count <= 1:
            # The longest suffixes found once each all end where one occurrence does (an
            # occurrence of a longer suffix ends in one of the shorter): what follows it decides
            # them all, and each stays the one row of SA it was.
            while once < len(intervals) and intervals[once].count == 1:
                once += 1
            if once and index._symbol(intervals[0].lo, intervals[0].depth) == symbol:
                found = [Interval(iv.lo, iv.hi, iv.depth + 1) for iv in intervals[:once] if iv.depth < max_order]
        for interval in intervals[once:]:
            if interval.depth < max_order:
                narrowed = index.narrow(interval, symbol)
                if narrowed.count >= min_count:
                    found.append(narrowed)
        return Match((*found, index.root()))
