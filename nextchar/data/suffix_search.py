"""The suffix array's searches, compiled: narrowing an interval, following a context, counting followers.

These are the loops under nextchar.data.memory (whose docstring has the reasoning): binary searches
that read one element at a time, which cost about half a microsecond per read in Python and a few
nanoseconds compiled. numba compiles each for the dtypes it is first called with and keeps the
machine code in __pycache__ (`cache=True`), so a process after the first only loads it. They
touch no Python object, so they release the GIL (`nogil`): the service's event loop runs
meanwhile.

The arrays: `suffixes` (SA, int32 or int64) and `tokens` (uint8, uint16 or uint32), read-only;
`wide`: the index's list of wide contexts (`wide_contexts`); `rows`: a match's intervals as an
(K, 3) int64 array of (lo, hi, depth), longest first, the root last. The symbol at offset `depth`
of the suffix in SA row i is tokens[SA[i] + depth], or −1 past the end of the tokens (an ended
suffix sorts first).

In a large corpus every read of a search is a cache miss (~100 ns), so what counts is how many
reads a keystroke makes and whether they wait for each other. Three things cut them: the contexts
found WIDE_COUNT times or more are listed once with their followers, so a push or a p_mem meets
them in a search of the list's keys instead of dozens of reads over the corpus; a follower run's
end is found by galloping; and a push's binary searches step side by side. Measured at 2^30
symbols in 16 shards (docs/results.md), a keystroke cost 2.4 ms before them and 0.39 ms after;
in one index, 0.028 ms.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.core.types import UniTuple, int64
from numba.typed import List

# 64-bit FNV-1a, the keys of continuations here and of witten_bell's table of remembered contexts
FNV_OFFSET, FNV_PRIME = np.uint64(14695981039346656037), np.uint64(1099511628211)

WIDE_COUNT = 4096  # contexts found at least this often are listed with their followers (`wide_contexts`)
WIDE_DEPTHS = 128  # a listed context's key: lo · WIDE_DEPTHS + depth (so depth < WIDE_DEPTHS)
_CONTEXT = UniTuple(int64, 3)  # type: ignore[no-untyped-call]  # (lo, hi, depth): wide_contexts' stack
Wide = tuple[np.ndarray, np.ndarray, np.ndarray]  # an index's list of wide contexts: keys, spans, children


@njit(cache=True, inline="always")
def _symbol(suffixes: np.ndarray, tokens: np.ndarray, row: int, depth: int) -> int:
    at = suffixes[row] + depth  # int64 (numba widens the int32 of SA)
    return tokens[at] if at < tokens.shape[0] else -1  # int64 both ways


@njit(cache=True, inline="always")
def _first_above(suffixes: np.ndarray, tokens: np.ndarray, lo: int, hi: int, depth: int, symbol: int) -> int:
    """The first row of [lo, hi) whose symbol at `depth` is greater than `symbol` (hi if none)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if _symbol(suffixes, tokens, mid, depth) <= symbol:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, inline="always")
def _run_end(suffixes: np.ndarray, tokens: np.ndarray, row: int, hi: int, depth: int, symbol: int) -> int:
    """The end of the run of `symbol` that starts at `row` (< hi), found by galloping: rows row + 1,
    row + 2, row + 4, … until one differs, then a binary search in the last gap; about 2·log2 of
    the run's length reads, however wide [row, hi) is."""
    known, step = row + 1, 1  # rows [row, known) hold `symbol`
    while row + step < hi and _symbol(suffixes, tokens, row + step, depth) == symbol:
        known = row + step + 1
        step *= 2
    return _first_above(suffixes, tokens, known, min(row + step, hi), depth, symbol)


@njit(cache=True, inline="always")
def _wide_node(wide: Wide, lo: int, hi: int, depth: int) -> int:
    """The number of the context [lo, hi) at `depth` in a `wide_contexts` list, or −1."""
    if hi - lo < WIDE_COUNT:
        return -1
    keys = wide[0]
    key = lo * WIDE_DEPTHS + depth
    at = int(np.searchsorted(keys, key))
    return at if at < keys.shape[0] and keys[at] == key else -1


@njit(cache=True, inline="always")
def _wide_child(wide: Wide, node: int, hi: int, symbol: int) -> tuple[int, int]:
    """`narrow` of a listed context: its follower `symbol`'s rows, from the list."""
    first, count = wide[1][node, 0], wide[1][node, 1]
    children = wide[2]
    for j in range(first, first + count):
        if children[j, 0] >= symbol:
            if children[j, 0] > symbol:
                return children[j, 1], children[j, 1]
            return children[j, 1], children[j + 1, 1] if j + 1 < first + count else hi
    return hi, hi


@njit(cache=True, nogil=True)
def narrow(
    suffixes: np.ndarray, tokens: np.ndarray, wide: Wide, lo: int, hi: int, depth: int, symbol: int
) -> tuple[int, int]:
    """[lo′, hi′): the rows of [lo, hi) whose symbol at `depth` is `symbol` (lo′ = hi′ when none)."""
    node = _wide_node(wide, lo, hi, depth)
    if node >= 0:
        return _wide_child(wide, node, hi, symbol)
    start = _first_above(suffixes, tokens, lo, hi, depth, symbol - 1)
    return start, _first_above(suffixes, tokens, start, hi, depth, symbol)


@njit(cache=True)
def _narrow_all(
    suffixes: np.ndarray, tokens: np.ndarray, wide: Wide, rows: np.ndarray, symbol: int, max_order: int
) -> np.ndarray:
    """`narrow` of every row below max_order, (N, 2): the listed contexts' from the list, the
    others' binary searches side by side, one step of each in turn. They are independent, so the
    processor has the reads of all of them in flight at once: in a large corpus each read is a
    miss (~100 ns), and one search at a time waits for each in turn."""
    n = rows.shape[0]
    ends = np.empty((n, 4), np.int64)  # lo and hi of the searches for > symbol − 1 and for > symbol
    for i in range(n):
        ends[i, 0] = ends[i, 2] = rows[i, 0]
        ends[i, 1] = ends[i, 3] = rows[i, 1] if rows[i, 2] < max_order else rows[i, 0]
        node = _wide_node(wide, rows[i, 0], rows[i, 1], rows[i, 2]) if rows[i, 2] < max_order else -1
        if node >= 0:
            lo, hi = _wide_child(wide, node, rows[i, 1], symbol)
            ends[i, 0] = ends[i, 1] = lo
            ends[i, 2] = ends[i, 3] = hi
    busy = True
    while busy:
        busy = False
        for i in range(n):
            depth = rows[i, 2]
            for j in range(0, 4, 2):
                lo, hi = ends[i, j], ends[i, j + 1]
                if lo < hi:
                    mid = (lo + hi) >> 1
                    if _symbol(suffixes, tokens, mid, depth) <= symbol - 1 + j // 2:
                        ends[i, j] = mid + 1
                    else:
                        ends[i, j + 1] = mid
                    busy = True
    out = np.empty((n, 2), np.int64)
    for i in range(n):
        out[i, 0], out[i, 1] = ends[i, 0], ends[i, 2]
    return out


@njit(cache=True, nogil=True)
def push(
    suffixes: np.ndarray, tokens: np.ndarray, wide: Wide, rows: np.ndarray, symbol: int, max_order: int, min_count: int
) -> np.ndarray:
    """The rows of the context one symbol longer (memory.Match.push, whose docstring says why)."""
    n = rows.shape[0]
    out = np.empty((n + 1, 3), np.int64)
    k = 0
    once = 0
    if min_count <= 1:
        # the longest suffixes found once each end where one occurrence does: what follows it
        # decides them all, and each stays the one row it was
        while once < n and rows[once, 1] - rows[once, 0] == 1:
            once += 1
        if once and _symbol(suffixes, tokens, rows[0, 0], rows[0, 2]) == symbol:
            for i in range(once):
                if rows[i, 2] < max_order:
                    out[k, 0], out[k, 1], out[k, 2] = rows[i, 0], rows[i, 1], rows[i, 2] + 1
                    k += 1
    bounds = _narrow_all(suffixes, tokens, wide, rows[once:], symbol, max_order)
    for i in range(once, n):
        lo, hi = bounds[i - once, 0], bounds[i - once, 1]
        if rows[i, 2] < max_order and hi - lo >= min_count:
            out[k, 0], out[k, 1], out[k, 2] = lo, hi, rows[i, 2] + 1
            k += 1
    out[k, 0], out[k, 1], out[k, 2] = 0, tokens.shape[0], 0  # the root, always last
    return out[: k + 1]


@njit(cache=True, nogil=True)
def push_rows(
    suffixes: tuple[np.ndarray, ...],
    tokens: tuple[np.ndarray, ...],
    wides: tuple[Wide, ...],
    rows: np.ndarray,
    symbols: np.ndarray,
    max_order: int,
) -> np.ndarray:
    """`push` for B contexts of I indexes at once: `rows` (B, I, K, 3), each index's match padded
    with depth −1 to K = max_order + 1 rows, each context followed by its symbol of `symbols` (B,).
    `suffixes`, `tokens`, `wides`: the I indexes' arrays and lists, all of one type."""
    out = np.full(rows.shape, -1, np.int64)
    for b in range(rows.shape[0]):
        for i in range(rows.shape[1]):
            n = 0
            while n < rows.shape[2] and rows[b, i, n, 2] >= 0:
                n += 1
            pushed = push(suffixes[i], tokens[i], wides[i], rows[b, i, :n], symbols[b], max_order, 1)
            out[b, i, : pushed.shape[0]] = pushed  # at most K: no two rows of one depth, none over max_order
    return out


@njit(cache=True, nogil=True)
def followers(
    suffixes: np.ndarray, tokens: np.ndarray, wide: Wide, lo: int, hi: int, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """(symbols, counts): the distinct symbols at `depth` of the rows [lo, hi), ascending, and how
    many rows hold each (ended suffixes left out): a listed context's from `wide`'s list, the
    others' found in the rows (`_followers_read`)."""
    node = _wide_node(wide, lo, hi, depth)
    if node < 0:
        return _followers_read(suffixes, tokens, lo, hi, depth)
    first, count = wide[1][node, 0], wide[1][node, 1]
    children = wide[2][first : first + count]
    counts = np.empty(count, np.int64)
    for j in range(count):
        counts[j] = (children[j + 1, 1] if j + 1 < count else hi) - children[j, 1]
    return children[:, 0].copy(), counts


@njit(cache=True, nogil=True)
def wide_contexts(suffixes: np.ndarray, tokens: np.ndarray, max_depth: int) -> Wide:
    """(keys, spans, children): every context of at most `max_depth` (< WIDE_DEPTHS) symbols found
    WIDE_COUNT times or more, and its followers. Context g: keys[g] = lo · WIDE_DEPTHS + depth
    (ascending); its followers are children[spans[g, 0] : spans[g, 0] + spans[g, 1]], each (symbol,
    its first row), ascending; a follower's rows end where the next one's begin, the last one's at
    the context's hi. Found top-down from the root, each listed context's followers read once: in a
    corpus of 2^30 symbols (docs/results.md) 280,531 contexts and 2 M followers, listed in 3.3 s.

    Why: the short contexts of a large corpus are found millions of times, and finding their
    followers (p_mem) or one of them (a push) costs dozens of reads all over the corpus, each a
    miss; most of a keystroke's reads were theirs. Listed, each costs a search in the keys."""
    n = tokens.shape[0]
    keys, spans_first, spans_count = List.empty_list(int64), List.empty_list(int64), List.empty_list(int64)
    child_symbols, child_starts = List.empty_list(int64), List.empty_list(int64)
    stack = List.empty_list(_CONTEXT)  # (lo, hi, depth) of the contexts to list
    if n >= WIDE_COUNT:
        stack.append((0, n, 0))
    while len(stack):
        lo, hi, depth = stack.pop()
        symbols, counts = _followers_read(suffixes, tokens, lo, hi, depth)
        keys.append(lo * WIDE_DEPTHS + depth)
        spans_first.append(len(child_symbols))
        spans_count.append(symbols.shape[0])
        start = hi - counts.sum()  # after the one suffix that may end here (it sorts first)
        for j in range(symbols.shape[0]):
            child_symbols.append(symbols[j])
            child_starts.append(start)
            if counts[j] >= WIDE_COUNT and depth < max_depth:
                stack.append((start, start + counts[j], depth + 1))
            start += counts[j]
    unsorted = np.empty(len(keys), np.int64)
    for g in range(len(keys)):
        unsorted[g] = keys[g]
    order = np.argsort(unsorted)
    spans = np.empty((order.shape[0], 2), np.int64)
    for g in range(order.shape[0]):
        spans[g, 0], spans[g, 1] = spans_first[order[g]], spans_count[order[g]]
    children = np.empty((len(child_symbols), 2), np.int64)
    for j in range(len(child_symbols)):
        children[j, 0], children[j, 1] = child_symbols[j], child_starts[j]
    return unsorted[order], spans, children


_WIDE_PROBLEMS = (
    "",
    "has keys out of order or beyond the index",
    "names followers outside the list",
    "names a follower beyond the vocabulary or out of order",
    "names rows outside its contexts",
)


def wide_problem(wide: Wide, length: int, vocab_size: int, max_depth: int) -> str:
    """What is wrong with a saved list of wide contexts for an index of `length` symbols ("" if
    nothing): every key, span, symbol and row it names is checked (`_wide_check`), since the
    searches read where it points unchecked."""
    return _WIDE_PROBLEMS[_wide_check(wide[0], wide[1], wide[2], length, vocab_size, max_depth)]


@njit(cache=True, nogil=True)
def _wide_check(
    keys: np.ndarray, spans: np.ndarray, children: np.ndarray, length: int, vocab_size: int, max_depth: int
) -> int:
    """0, or the number of the first kind of fault found in _WIDE_PROBLEMS: keys ascending, each a
    row of the index and a depth up to max_depth; each span inside `children`; each context's
    followers' symbols ascending in the vocabulary, their first rows ascending from its lo, in
    the index."""
    for g in range(keys.shape[0]):
        lo, depth = keys[g] // WIDE_DEPTHS, keys[g] % WIDE_DEPTHS
        if keys[g] < 0 or lo >= length or depth > max_depth or (g and keys[g] <= keys[g - 1]):
            return 1
        first, count = spans[g, 0], spans[g, 1]
        if first < 0 or count < 0 or first + count > children.shape[0]:
            return 2
        for j in range(first, first + count):
            symbol = children[j, 0]
            if symbol < 0 or symbol >= vocab_size or (j > first and symbol <= children[j - 1, 0]):
                return 3
            previous = lo if j == first else children[j - 1, 1]
            if children[j, 1] < previous or children[j, 1] > length:
                return 4
    return 0


@njit(cache=True, nogil=True)
def _followers_read(
    suffixes: np.ndarray, tokens: np.ndarray, lo: int, hi: int, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """`followers` from the rows. They are sorted by that symbol, so each is one run, and each run's
    end is found by galloping (`_run_end`): about 2·log2 of its length reads. Reading every row
    costs one read a row, the same for runs of one or two and far more for the short contexts of a
    large corpus, whose intervals have millions of rows; a binary search over what is left of the
    interval costs log2 of that for every run, even the short ones."""
    size = min(hi - lo, 64)
    symbols = np.empty(size, np.int64)
    counts = np.empty(size, np.int64)
    k = 0
    row = lo
    while row < hi:
        symbol = _symbol(suffixes, tokens, row, depth)
        end = _run_end(suffixes, tokens, row, hi, depth, symbol)
        if symbol >= 0:
            if k == symbols.shape[0]:  # more distinct symbols than room: twice the room
                symbols = np.concatenate((symbols, np.empty(k, np.int64)))
                counts = np.concatenate((counts, np.empty(k, np.int64)))
            symbols[k], counts[k] = symbol, end - row
            k += 1
        row = end
    return symbols[:k].copy(), counts[:k].copy()  # copies: a remembered view would keep all the room


@njit(cache=True, nogil=True)
def continuations(
    suffixes: np.ndarray, tokens: np.ndarray, rows: np.ndarray, depth: int, stops: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, lengths, keys): for each SA row of `rows`, where the text goes on after its first
    `depth` symbols (a position in the tokens), how far before a symbol that `stops` marks, the
    tokens' end or `max_len` symbols, and a 64-bit FNV-1a hash of those symbols and the length:
    equal continuations have equal keys, two different ones the same with a chance of about 2^−64."""
    n = rows.shape[0]
    starts = np.empty(n, np.int64)
    lengths = np.empty(n, np.int64)
    keys = np.empty(n, np.uint64)
    for r in range(n):
        at = suffixes[rows[r]] + depth
        key = FNV_OFFSET
        length = 0
        while at + length < tokens.shape[0] and length < max_len:
            symbol = tokens[at + length]
            if stops[symbol]:
                break
            key = (key ^ np.uint64(symbol)) * FNV_PRIME
            length += 1
        starts[r], lengths[r], keys[r] = at, length, key ^ np.uint64(length)
    return starts, lengths, keys
