"""Benchmark: the service's keystroke searches in one process, alone and batched (not a test).

The searches a server runs under bench/load.py's typists (the same query pool and Zipf draw,
phrase mode, k = 8, the bundled model, `--precision auto`), without HTTP: B typists type at
once, and each keystroke whose answer is not cached yet is one search. A round of keystrokes
is searched together as the service's model thread does (`Completer.drive_together`), with
B = 1 as the baseline in the same process. Prints ms of model thread per search and the
batch's p50/p99: a request waits for its whole batch.

    python -m bench.search                  # B = 1, 5, 10, 16; 300 rounds each
    python -m bench.search --batches 1,5 --rounds 100

The results go to bench/results/ with the command, commit and machine (bench.record).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.parse

import torch

from bench.load import query_pool, typing_paths
from bench.record import write_result
from nextchar.service.engine import build_engine
from nextchar.service.settings import ServiceSettings


def keystroke_rounds(typists: int, rounds: int) -> list[list[str]]:
    """Rounds of the texts typed by `typists` at once, each text once (repeats are cached answers)."""
    pool = query_pool(2000 * 3, seed=1)[1::3]  # bench/load.py's pool for its second level (10 typists)
    paths = typing_paths(pool, typists, 400, 1.0, seed=101, k=8)
    seen: set[str] = set()
    out = []
    for j in range(max(map(len, paths))):
        batch = []
        for path in paths:
            if j < len(path):
                text = urllib.parse.unquote(path[j][0].split("q=", 1)[1].split("&", 1)[0])
                if text not in seen:
                    seen.add(text)
                    batch.append(text)
        if batch:
            out.append(batch)
        if len(out) == rounds:
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,5,10,16", help="typists at once (default 1,5,10,16)")
    parser.add_argument("--rounds", type=int, default=300, help="rounds of keystrokes per batch size (default 300)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"), default="auto")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `nextchar serve` (--threads 1)

    print(f"| typists at once | searches | ms per search | batch p50 ms | batch p99 ms |  (precision {args.precision})")
    print("|--:|--:|--:|--:|--:|")
    rows = []
    for typists in [int(b) for b in args.batches.split(",")]:
        engine = build_engine(ServiceSettings(precision=args.precision))  # fresh caches for each size
        completer = engine.completer
        completer.suggest("warm", 8, "phrase")  # the stepper's tables and int8 copies are made here
        completer.clear_cache()
        rounds = keystroke_rounds(typists, args.rounds)
        times = []
        for batch in rounds:
            start = time.perf_counter()
            completer.drive_together([engine.suggest_job(text, 8, "http://localhost/") for text in batch])
            times.append(1e3 * (time.perf_counter() - start))
        searches = sum(map(len, rounds))
        p99 = sorted(times)[min(len(times) - 1, int(0.99 * len(times)))]
        print(
            f"| {typists} | {searches} | {sum(times) / searches:.2f} | {statistics.median(times):.1f} | {p99:.1f} |",
            flush=True,
        )
        rows.append(
            {
                "typists": typists,
                "searches": searches,
                "ms_per_search": sum(times) / searches,
                "batch_p50_ms": statistics.median(times),
                "batch_p99_ms": p99,
                "batch_ms": times,
            }
        )
        engine.close()
    settings = {"batches": args.batches, "rounds": args.rounds, "precision": args.precision, "threads": 1}
    print(f"results: {write_result('search', {'settings': settings, 'rows': rows})}", file=sys.stderr)


if __name__ == "__main__":
    main()
