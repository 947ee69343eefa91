"""Benchmark: the memory index at scale — build rate, bytes per symbol on disk and resident,
and the cost per keystroke of following a typed context and of p_mem after it.

The index of a prepared corpus is built in shards of `--shard-symbols` (what `nextchar index
DIR` and `train` on a prepared directory do: nextchar.training.memory.remember_prepared), each
with pydivsufsort, saved as raw arrays, and memory-mapped back, as a checkpoint loads it. The
corpus: `--size-mb` MB of symbols (2^20 characters a MB) made from the embedded corpus, Tiny
Shakespeare and the names list (what ../shared/data holds), as windows of `--window` symbols
taken at random offsets and joined — text with real local statistics, repeated at the large
scale far more than a real corpus of that size would be (no offline corpus of 1 GB exists here;
say so beside the figure).
`--size-mb 0`: the sources once, as they are; `--source` picks some of them.

    python -m bench.index --size-mb 1024          # 1 GB of characters: 2^30 symbols, one index
    python -m bench.index --size-mb 0             # the sources alone (~6 MB)
    python -m bench.index --size-mb 0 --source tinyshakespeare.txt

Peak memory is the process's (ru_maxrss), building one shard at a time. The build includes
listing each index's wide contexts (suffix_search.wide_contexts; "listed s": those seconds),
which are saved with it. "load s": the seconds from the saved files to a memory that answers
(mapped, every file's digest checked, the saved list read), the median of two; "listing": the
same when the list was not saved and is made at load (the median of two, run alternately).
Resident: what the process gained from mapping the shards, listing and typing the keystrokes
(the pages read). The keystrokes: lines of the names list and of Shakespeare (of the one source
when there is one), typed one symbol at a time from a fresh context per line. The results go to
bench/results/ (or --json FILE).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.memory import keystroke_costs, load_compiled
from bench.record import write_result
from nextchar.data.batches import encode_corpus
from nextchar.data.memory import MemoryIndex, default_shard_symbols, memory_tokens
from nextchar.recall.estimator import Memory
from nextchar.text import Vocabulary, embedded_corpus

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


SOURCES = ("embedded", "tinyshakespeare.txt", "names.txt")


def sources(names: list[str] | None = None) -> list[str]:
    """The texts of `names` (default: all of SOURCES that exist): "embedded" or a file of ../shared/data."""
    texts = []
    for name in names or SOURCES:
        if name == "embedded":
            texts.append(embedded_corpus())
        elif (DATA / name).is_file():
            texts.append((DATA / name).read_text(encoding="utf-8"))
        elif names:
            raise SystemExit(f"bench/index.py: {DATA / name} is missing")
    return texts


def corpus_tokens(vocab: Vocabulary, texts: list[str], size_mb: float, window: int, seed: int) -> np.ndarray:
    encoded = np.concatenate([memory_tokens(encode_corpus(t, vocab, "text"), len(vocab)) for t in texts])
    if size_mb <= 0:
        return encoded
    n = int(size_mb * 2**20)  # a MB of corpus is 2^20 characters, each a symbol
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(encoded) - window, size=(n + window - 1) // window)
    return np.concatenate([encoded[s : s + window] for s in starts])[:n]


def typed_lines(texts: list[str], count: int, seed: int) -> list[str]:
    lines = [line for text in texts[1:] or texts for line in text.splitlines() if 3 <= len(line) <= 60]
    rng = np.random.default_rng(seed)
    return [lines[i] for i in rng.choice(len(lines), size=min(count, len(lines)), replace=False)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--size-mb", type=float, default=1024.0, help="MB of corpus to index, 2^20 symbols each (default 1024)"
    )
    p.add_argument("--shard-symbols", type=int, help="per shard (default: as `nextchar index DIR`, 2^30 for bytes)")
    p.add_argument("--window", type=int, default=4096, help="symbols per window of the made corpus (default 4096)")
    p.add_argument("--lines", type=int, default=300, help="lines typed for the per-keystroke cost (default 300)")
    p.add_argument("--work", default=None, help="where the shards are written (default: a temporary directory)")
    p.add_argument("--json", default=None, help="write the results here instead of bench/results/")
    p.add_argument("--source", action="append", choices=SOURCES, help="index only these (repeatable; default all)")
    args = p.parse_args()

    texts = sources(args.source)
    vocab = Vocabulary.from_text("".join(texts))
    tokens = corpus_tokens(vocab, texts, args.size_mb, args.window, seed=0)
    n = len(tokens)
    load_compiled(MemoryIndex.build(tokens[:64].copy()))  # numba's import and code: neither build nor resident
    shard_symbols = args.shard_symbols or default_shard_symbols(len(vocab))
    print(f"{n:,} symbols ({tokens.nbytes / 2**20:,.0f} MB of {tokens.dtype}), shards of {shard_symbols:,}")
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        directory = Path(work)
        described, build_s, listed_s = [], 0.0, 0.0
        for lo in range(0, n, shard_symbols):
            shard = np.ascontiguousarray(tokens[lo : lo + shard_symbols])
            started = time.perf_counter()
            index = MemoryIndex.build(shard)
            built = time.perf_counter()
            _ = index.wide  # the list of wide contexts, part of the build: saved with the index
            listed_s += time.perf_counter() - built
            build_s += time.perf_counter() - started
            described.append(index.save(directory))
            del index
        del tokens
        disk = sum(path.stat().st_size for path in directory.glob("memory-*.bin"))
        peak_build = peak_mb()
        load_s = {"saved": [], "listed": []}  # ready to answer: mapped, digests checked, the list read or made
        for _ in range(2):  # alternately, each way twice: the files are in the page cache for both
            for way, keep in (("listed", False), ("saved", True)):
                metas = [meta if keep else {k: v for k, v in meta.items() if k != "wide"} for meta in described]
                started = time.perf_counter()
                Memory([MemoryIndex.load(directory, meta, len(vocab)) for meta in metas], len(vocab))
                load_s[way].append(time.perf_counter() - started)
        before = rss_mb()
        indexes = [MemoryIndex.load(directory, meta, len(vocab)) for meta in described]
        memory = Memory(indexes, len(vocab))
        costs = keystroke_costs(memory, [vocab.encode(line) for line in typed_lines(texts, args.lines, seed=1)])
        resident = rss_mb() - before
    results = {
        "symbols": n,
        "shards": len(described),
        "build_s": build_s,
        "wide_contexts_listed_s": listed_s,
        "wide_contexts": sum(len(index.wide[0]) for index in indexes),
        "load_s_saved_list": statistics.median(load_s["saved"]),
        "load_s_listing_it": statistics.median(load_s["listed"]),
        "build_mb_per_s": n / 2**20 / build_s,  # MB of corpus (a character a symbol) a second
        "bytes_per_symbol_disk": disk / n,
        "resident_mb_after_typing": resident,
        "resident_bytes_per_symbol": resident * 2**20 / n,
        "peak_build_mb": peak_build,
        **costs,
    }
    print(
        f"{'symbols':>14} {'shards':>6} {'build MB/s':>10} {'B/sym disk':>10} {'resident MB':>11} "
        f"{'peak MB':>8} {'listed s':>8} {'load s':>6} {'listing':>7} {'push µs p50/p99':>16} {'p_mem µs p50/p99':>17}"
    )
    r = results
    print(
        f"{r['symbols']:>14,} {r['shards']:>6} {r['build_mb_per_s']:>10.1f} {r['bytes_per_symbol_disk']:>10.2f} "
        f"{r['resident_mb_after_typing']:>11.1f} {r['peak_build_mb']:>8.0f} {r['wide_contexts_listed_s']:>8.1f} "
        f"{r['load_s_saved_list']:>6.2f} {r['load_s_listing_it']:>7.2f} "
        f"{r['push_us_median']:>7.1f}/{r['push_us_p99']:<8.1f} "
        f"{r['predict_us_median']:>8.1f}/{r['predict_us_p99']:<8.1f}"
    )
    print(
        f"goals: ≤ 6 bytes/character {'met' if r['bytes_per_symbol_disk'] <= 6 else 'NOT met'}; "
        f"build ≥ 5 MB/s {'met' if r['build_mb_per_s'] >= 5 else 'NOT met'}; ≤ 50 µs per keystroke (push + p_mem, "
        f"median) {'met' if r['push_us_median'] + r['predict_us_median'] <= 50 else 'NOT met'}"
    )
    path = write_result("index", {"settings": vars(args), "results": results}, args.json)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
