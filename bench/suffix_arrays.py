"""Benchmark: the suffix-array builders the memory index could use, side by side on the same tokens.

The candidates, each run in a fresh process (its peak resident set is its own) and checked
against pydivsufsort's array, which nextchar.data.memory builds with:

  pydivsufsort   libdivsufsort (Mori), through pydivsufsort: integer alphabets, int32/int64 output
  PySAIS         SA-IS (Nong, Zhang & Chan) by Yuta Mori, through PySAIS: bytes only, so it runs
                 only where every token fits in a byte, and it imports PyTables
  numpy          prefix doubling with numpy's sorts, O(n log² n): what a hand-written builder in
                 the project's own stack would cost (the baseline)

The tokens: the sources of bench/index.py (the embedded corpus, Tiny Shakespeare, the names list)
as symbols of their joint vocabulary, or `--size-mb` of windows of them. A candidate that is not
installed is reported as such (`pip install PySAIS` adds it; it needs a C compiler).

    python -m bench.suffix_arrays                       # the three sources once, 1.8 M symbols
    python -m bench.suffix_arrays --size-mb 64          # 32 M symbols of windows of them
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.index import corpus_tokens, sources
from bench.record import write_result
from nextchar.text import Vocabulary

CANDIDATES = ("pydivsufsort", "PySAIS", "numpy")


def prefix_doubling(tokens: np.ndarray) -> np.ndarray:
    """SA by prefix doubling: rank every suffix by its first 2^k symbols, k = 0, 1, …, sorting
    (rank of the first half, rank of the second) pairs until every rank is distinct. A suffix
    that ends ranks −1 past its end, so it sorts before the longer ones it begins."""
    n = len(tokens)
    rank = tokens.astype(np.int64)
    width = 1
    while True:
        second = np.full(n, -1, dtype=np.int64)  # the rank of the suffix `width` on, −1 past the end
        if width < n:
            second[: n - width] = rank[width:]
        order = np.lexsort((second, rank))
        pairs_first, pairs_second = rank[order], second[order]
        new = np.empty(n, dtype=np.int64)
        changed = np.empty(n, dtype=bool)
        changed[0] = True
        changed[1:] = (pairs_first[1:] != pairs_first[:-1]) | (pairs_second[1:] != pairs_second[:-1])
        new[order] = np.cumsum(changed) - 1
        rank = new
        if changed.all() or width >= n:
            return order
        width *= 2


def build(name: str, tokens: np.ndarray) -> np.ndarray | None:
    """The suffix array by candidate `name`; None where it cannot take these tokens."""
    if name == "pydivsufsort":
        from pydivsufsort import divsufsort

        return np.asarray(divsufsort(tokens))
    if name == "PySAIS":
        if int(tokens.max()) > 255:
            return None
        from PySAIS import sais  # type: ignore[import-not-found]

        return np.asarray(sais(tokens.astype(np.uint8).tobytes(), reduce_size=False))
    return prefix_doubling(tokens)


def run_one(name: str, path: str, repeats: int) -> dict:
    """In this process: build `repeats` times, the times and the peak resident set."""
    tokens = np.load(path)
    try:
        __import__({"pydivsufsort": "pydivsufsort", "PySAIS": "PySAIS", "numpy": "numpy"}[name])
    except ImportError as exc:
        return {"name": name, "status": f"not installed ({exc.name})"}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, suffixes = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        suffixes = build(name, tokens)
        times.append(time.perf_counter() - started)
        if suffixes is None:
            return {"name": name, "status": "cannot: a token above 255"}
    assert suffixes is not None
    np.save(path + f".{name}.npy", suffixes.astype(np.int64))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"name": name, "status": "ok", "seconds": times, "peak_extra_mb": (peak - before) / 1024}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=float, default=0.0, help="MB of 2-byte symbols (default 0: the sources once)")
    p.add_argument("--repeats", type=int, default=3, help="builds per candidate; the median is reported")
    p.add_argument("--json", default=None, help="write the results here instead of bench/results/")
    p.add_argument("--one", nargs=2, metavar=("NAME", "TOKENS"), help=argparse.SUPPRESS)  # a candidate's process
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.repeats)))
        return 0

    texts = sources()
    vocab = Vocabulary.from_text("".join(texts))
    tokens = corpus_tokens(vocab, texts, args.size_mb, 4096, seed=0)
    print(f"{len(tokens):,} symbols of a vocabulary of {len(vocab)} ({tokens.dtype})")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        path = str(Path(work) / "tokens.npy")
        np.save(path, tokens)
        for name in CANDIDATES:
            command = [sys.executable, "-m", "bench.suffix_arrays", "--repeats", str(args.repeats), "--one", name, path]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            if row["status"] == "ok":
                row["equal_to_pydivsufsort"] = bool(
                    np.array_equal(np.load(f"{path}.{name}.npy"), np.load(f"{path}.pydivsufsort.npy"))
                )
            rows.append(row)
    base = next((statistics.median(r["seconds"]) for r in rows if r["name"] == "pydivsufsort" and "seconds" in r), None)
    print(f"{'builder':<14} {'median s':>9} {'MB/s':>7} {'× pydivsufsort':>15} {'peak extra MB':>14} {'same SA':>8}")
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['name']:<14} {r['status']}")
            continue
        median = statistics.median(r["seconds"])
        r["median_s"], r["mb_per_s"] = median, tokens.nbytes / 2**20 / median
        ratio = f"{median / base:.1f}×" if base else "–"
        print(
            f"{r['name']:<14} {median:>9.3f} {r['mb_per_s']:>7.1f} {ratio:>15} {r['peak_extra_mb']:>14.0f} "
            f"{'yes' if r['equal_to_pydivsufsort'] else 'NO':>8}"
        )
    saved = write_result("suffix_arrays", {"settings": vars(args), "symbols": len(tokens), "rows": rows}, args.json)
    print(f"saved {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
