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

The searches are compiled (nextchar.data.suffix_search, numba): a binary search reads one element
at a time, which costs half a microsecond in Python and nanoseconds compiled. The short contexts
of a large corpus are found millions of times; those found WIDE_COUNT (4,096) times or more are
listed with their followers (`wide`: 3.3 s and 39 MB at 2^30 symbols), and answered from the
list. The list is made once, when the index is built, and saved beside it.

SA is built by libdivsufsort (pydivsufsort): O(n log n) time, the array itself plus a byte per
symbol of memory when the symbols fit a byte (they are stored as bytes then), about 20 bytes a
symbol when they are sorted as integers. A saved index is three raw little-endian arrays beside a
checkpoint: the tokens, SA and the list of wide contexts (its keys, spans and children end to end,
int64). `save` returns what describes them (lengths, dtypes, SHA-256), for the checkpoint's
config.json. `load` checks every field of it, the files' sizes and digests and the values' ranges
(every row and symbol the list names is inside the index and the vocabulary: the compiled
searches trust them) before it maps the arrays read-only. Nothing is unpickled. An index saved
without its list (by an older version), or with a list made by other settings, lists its wide
contexts when first used, as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nextchar.errors import UserError
from nextchar.files import atomic_write_bytes
from nextchar.text import END, START

if TYPE_CHECKING:
    from nextchar.data.suffix_search import Wide  # the module itself is imported with the first index

FORMAT = 1
TOKENS_STEM, SUFFIXES_STEM, WIDE_STEM = "memory-tokens", "memory-suffixes", "memory-wide"  # <stem>-<sha256[:16]>.bin
MAX_ORDER = 64  # longest context suffix a Match follows: its cost per symbol grows with it
MEMO_WIDTH = 32  # the followers of intervals wider than this are counted once, then remembered
MEMO_BYTES = 64 << 20  # what the remembered followers may cost (then they start again) …
# … one entry's beyond its arrays' data: its key tuple and ints, the pair, two array headers, the
# dict slot (sys.getsizeof; tests/service/test_cache_bytes.py counts every byte)
MEMO_ENTRY_OVERHEAD = 600
_SUFFIX_DTYPES: dict[str, np.dtype[Any]] = {"<i4": np.dtype("<i4"), "<i8": np.dtype("<i8")}
_TOKEN_DTYPES: dict[str, np.dtype[Any]] = {"|u1": np.dtype("u1"), "<u2": np.dtype("<u2"), "<u4": np.dtype("<u4")}
_MAX_LENGTH = 1 << 40  # symbols: far above any corpus, far below what would overflow a size


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """The smallest unsigned integer type that holds every index of the vocabulary: what a prepared
    corpus and the index store a symbol in. One byte for most alphabets, with the markers; the
    index is read at random, so its bytes are its speed."""
    if vocab_size <= 1 << 8:
        return np.dtype("u1")
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def default_shard_symbols(vocab_size: int) -> int:
    """The symbols per shard of a prepared corpus's index, by default: 2^30 when a symbol is a byte
    (libdivsufsort then needs about 5 bytes a symbol, 5.3 GB), else 2^28 (sorted as integers: about
    20 bytes a symbol, 5.4 GB). Each shard is followed and counted apart, so one index answers a
    keystroke several times faster than shards of it: a 1 GB corpus of bytes is one index."""
    return 1 << 30 if token_dtype(vocab_size).itemsize == 1 else 1 << 28


def memory_tokens(encoded: Any, vocab_size: int) -> np.ndarray:
    """The tokens the index remembers, from `data.batches.encode_corpus`'s result: a text stream
    as it is, a lines corpus as ^ line $ per line, in `token_dtype(vocab_size)`."""
    dtype = token_dtype(vocab_size)
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

    def __init__(self, tokens: np.ndarray, suffixes: np.ndarray, wide: Wide | None = None):
        """`wide`: the list of wide contexts, if it was saved (else made when first asked for)."""
        if tokens.ndim != 1 or suffixes.shape != tokens.shape:
            raise ValueError("tokens and suffixes must be 1-D arrays of one length")
        # The compiled searches (numba), imported with the first index: a model without a memory
        # never pays numba's import.
        from nextchar.data import suffix_search

        self._search = suffix_search
        if wide is not None:
            self.__dict__["wide"] = _read_only(wide)  # what the cached property would have made
        # Read-only plain ndarray views, whether the arrays were just built or memory-mapped: one
        # type for the compiled searches (each type of array is compiled apart), and an index
        # never changes.
        self.tokens = tokens.view(np.ndarray)
        self.suffixes = suffixes.view(np.ndarray)
        self.tokens.flags.writeable = self.suffixes.flags.writeable = False
        # What follows a wide interval, kept once counted: the intervals of short strings (wider
        # than MEMO_WIDTH) are few and asked for at nearly every symbol.
        self._followers: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._followers_bytes = 0  # what they cost, as MEMO_ENTRY_OVERHEAD counts it
        self.memo_bytes = MEMO_BYTES

    @classmethod
    def build(cls, tokens: np.ndarray) -> MemoryIndex:
        from pydivsufsort import divsufsort

        tokens = np.ascontiguousarray(tokens)
        if len(tokens) == 0:
            return cls(tokens, np.zeros(0, dtype="<i4"))
        # the same order from bytes, where libdivsufsort is fastest and needs least (tokens saved
        # with two bytes a symbol by an older version, or a small vocabulary's prepared corpus)
        small = tokens.dtype.itemsize > 1 and int(tokens.max()) < 1 << 8
        suffixes = np.asarray(divsufsort(tokens.astype(np.uint8) if small else tokens))
        return cls(tokens, suffixes.astype(suffixes.dtype.newbyteorder("<"), copy=False))

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def wide(self) -> Wide:
        """The contexts found WIDE_COUNT times or more, with their followers
        (suffix_search.wide_contexts): read-only arrays, as saved with the index, else listed
        when first asked for."""
        listed: Wide = self._search.wide_contexts(self.suffixes, self.tokens, _wide_settings()["max_depth"])
        return _read_only(listed)

    @property
    def memo_bytes(self) -> int:
        """What the remembered followers may cost, at most; settable."""
        return self._memo_bytes

    @memo_bytes.setter
    def memo_bytes(self, memo_bytes: int) -> None:
        self._memo_bytes = max(0, memo_bytes)
        if self._followers_bytes > self._memo_bytes:
            self._followers.clear()
            self._followers_bytes = 0

    def root(self) -> Interval:
        """The empty string's interval: every suffix."""
        return Interval(0, len(self.tokens), 0)

    def narrow(self, interval: Interval, symbol: int) -> Interval:
        """The interval of the interval's string followed by `symbol` (empty: count 0)."""
        lo, hi = self._search.narrow(
            self.suffixes, self.tokens, self.wide, interval.lo, interval.hi, interval.depth, symbol
        )
        return Interval(lo, hi, interval.depth + 1)

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
        and how often each does: runs of the interval's rows, sorted already (see the module
        docstring), each one's end found by galloping (suffix_search.followers).
        Remembered for intervals wider than MEMO_WIDTH."""
        lo, hi, depth = interval.lo, interval.hi, interval.depth
        if hi - lo <= MEMO_WIDTH:
            return self._search.followers(self.suffixes, self.tokens, self.wide, lo, hi, depth)
        key = (lo, hi, depth)
        found = self._followers.get(key)
        if found is None:
            found = self._search.followers(self.suffixes, self.tokens, self.wide, lo, hi, depth)
            cost = MEMO_ENTRY_OVERHEAD + found[0].nbytes + found[1].nbytes
            if self._followers_bytes + cost > self._memo_bytes:
                self._followers.clear()
                self._followers_bytes = 0
            if cost <= self._memo_bytes:
                self._followers[key] = found
                self._followers_bytes += cost
        return found

    def continuations(
        self, interval: Interval, step: int, stops: np.ndarray, max_len: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where the text goes on after every `step`-th occurrence of the interval's string:
        (starts, lengths, keys) — its position in the tokens, its length up to a symbol `stops`
        (a bool per symbol) marks or `max_len`, and a key equal for equal continuations
        (suffix_search.continuations)."""
        rows = np.arange(interval.lo, interval.hi, step, dtype=np.int64)
        return self._search.continuations(self.suffixes, self.tokens, rows, interval.depth, stops, max_len)

    # ---------------------------------------------------------------------------- files

    def save(self, directory: Path) -> dict[str, Any]:
        """Write the three arrays into `directory` (atomically; the list of wide contexts made
        first, if it was not yet); returns their description for config.json (`load` reads it
        back). The file names hold the content's digest, as the checkpoint's weights do: a new
        index never overwrites the files that a config.json still names, and removing those once
        it names the new ones is the caller's."""
        keys, spans, children = self.wide
        flat = np.concatenate((keys, spans.ravel(), children.ravel())).astype("<i8", copy=False)
        return {
            "format": FORMAT,
            "length": len(self.tokens),
            "tokens": _write_array(directory, TOKENS_STEM, self.tokens),
            "suffixes": _write_array(directory, SUFFIXES_STEM, self.suffixes),
            "wide": {
                **_write_array(directory, WIDE_STEM, flat),
                "contexts": len(keys),
                "followers": len(children),
                **_wide_settings(),
            },
        }

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
        return cls(tokens, suffixes, _saved_wide(directory, meta.get("wide"), length, vocab_size))


def _wide_settings() -> dict[str, int]:
    """What a list of wide contexts is made with: a saved list made otherwise is made again."""
    from nextchar.data import suffix_search

    return {
        "min_count": suffix_search.WIDE_COUNT,
        "depth_key": suffix_search.WIDE_DEPTHS,
        "max_depth": min(MAX_ORDER, suffix_search.WIDE_DEPTHS - 1),
    }


def _read_only(wide: Wide) -> Wide:
    for array in wide:
        array.flags.writeable = False
    return wide


def _write_array(directory: Path, stem: str, array: np.ndarray) -> dict[str, Any]:
    """Write one array as <stem>-<its SHA-256's first 16 hex digits>.bin, unless that file is there."""
    data = np.ascontiguousarray(array)
    raw = data.data.cast("B")  # the array's own bytes, not a copy
    digest = hashlib.sha256(raw).hexdigest()
    name = f"{stem}-{digest[:16]}.bin"
    if not (Path(directory) / name).is_file():
        atomic_write_bytes(Path(directory) / name, raw)
    return {"file": name, "dtype": data.dtype.str, "sha256": digest}


def _saved_wide(directory: Path, entry: Any, length: int, vocab_size: int) -> Wide | None:
    """The saved list of wide contexts, mapped and checked; None when there is none, or it was
    made with other settings (it is made again when first used)."""
    if entry is None or (isinstance(entry, dict) and any(entry.get(k) != v for k, v in _wide_settings().items())):
        return None
    contexts, followers = (entry.get(key) if isinstance(entry, dict) else None for key in ("contexts", "followers"))
    if not isinstance(contexts, int) or not isinstance(followers, int) or isinstance(contexts, bool):
        raise UserError(f"{directory}: the memory index's wide entry is not one `save` writes")
    if isinstance(followers, bool) or not 0 <= min(contexts, followers) <= max(contexts, followers) <= _MAX_LENGTH:
        raise UserError(f"{directory}: the memory index's wide entry is not one `save` writes")
    flat = _mapped(directory, entry, {"<i8": np.dtype("<i8")}, 3 * contexts + 2 * followers, "wide")
    flat = flat.view(np.ndarray)
    wide = (
        flat[:contexts],
        flat[contexts : 3 * contexts].reshape(contexts, 2),
        flat[3 * contexts :].reshape(followers, 2),
    )
    from nextchar.data import suffix_search

    problem = suffix_search.wide_problem(wide, length, vocab_size, _wide_settings()["max_depth"])
    if problem:
        raise UserError(f"{directory}: the memory index's list of wide contexts {problem}; rebuild the index")
    return wide


def _mapped(directory: Path, entry: Any, dtypes: dict[str, np.dtype[Any]], length: int, what: str) -> np.ndarray:
    """One array of a saved index (of `length` elements), checked (name, dtype, size, SHA-256) and
    then memory-mapped."""
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


@dataclass(frozen=True, eq=False)
class Match:
    """The intervals of a context's suffixes found in the corpus, longest first (the empty
    suffix, the root, always last), as `rows`: a read-only (K, 3) int64 array of (lo, hi, depth),
    what the compiled searches read and write. `push` returns the match of the context one symbol
    longer."""

    rows: np.ndarray

    def __post_init__(self) -> None:
        self.rows.flags.writeable = False

    @classmethod
    def start(cls, index: MemoryIndex) -> Match:
        return cls(np.array([[0, len(index), 0]], dtype=np.int64))

    @cached_property
    def intervals(self) -> tuple[Interval, ...]:
        """The rows as Intervals (made when first asked for: the searches need only the rows)."""
        return tuple(Interval(lo, hi, depth) for lo, hi, depth in self.rows.tolist())

    @property
    def longest(self) -> Interval:
        """The interval of the longest suffix of the context found in the corpus."""
        lo, hi, depth = self.rows[0].tolist()
        return Interval(lo, hi, depth)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Match) and np.array_equal(self.rows, other.rows)

    __hash__ = None  # type: ignore[assignment]  # compared by value, never a key

    def push(self, index: MemoryIndex, symbol: int, max_order: int = MAX_ORDER, min_count: int = 1) -> Match:
        """Every interval narrowed by `symbol`, those that no longer occur (or, with `min_count`
        2, occur only once) left out, the root put back last. `min_count` 2 is what leave-one-out
        asks for when the context is the indexed text itself (its own occurrence is one of the
        count). The longest intervals found once each all end where one occurrence does (an
        occurrence of a longer suffix ends in one of the shorter): what follows it decides them
        all, and each stays the one row of SA it was (nextchar.data.suffix_search.push)."""
        return Match(
            index._search.push(index.suffixes, index.tokens, index.wide, self.rows, symbol, max_order, min_count)
        )
