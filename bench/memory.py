"""Benchmark: the memory, alone and mixed with the RNN, against compressors that read the same text.

For a checkpoint and the corpus it was trained on (its standard split: the last 10% held out),
the validation text is cut in two halves. For each half, the mixer is fitted on the *other*
half (so no figure is scored by a mixer that saw it), and the half is scored as if it followed
the training text directly:

    rnn        the model alone (`nextchar eval --no-memory`)
    memory     p_mem alone (nextchar.recall.estimator)
    mixture    the fitted mixture (`nextchar eval`)
    adapted    dynamic evaluation with the online memory (`nextchar eval --adapt`): the model
               adapted and the memory learning each window once it is scored; rnn/memory/mixture
    PPMd, bz2, xz   conditioned on the training text: 8·(C(train + half) − C(train)) / |half|

The figures are the two halves' means, weighted by their characters. Then the index's costs:
build time (MB of symbols per second), bytes per symbol on disk, and the cost per keystroke of
following a typed context (Memory.push) and of p_mem after it (Memory.predict, cold).

    python -m bench.memory -m DIR --corpus FILE          # a checkpoint trained on FILE
    python -m bench.memory -m DIR                        # ... on the embedded corpus
    python -m bench.memory --no-adapt                    # the bundled model, static only

The results go to bench/results/ (or --json FILE) with the command, commit and machine (bench.record).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterable, Sequence

from bench.compressors import compressors, conditional_bpc
from bench.record import write_result
from nextchar.adapt import AdaptConfig, gradient_statistics
from nextchar.checkpoint import load_checkpoint
from nextchar.data.batches import encode_corpus, split_validation
from nextchar.data.memory import MemoryIndex, memory_tokens
from nextchar.evaluation.dynamic import dynamic_evaluate
from nextchar.evaluation.mixture import evaluate_mixture, fit_mixer
from nextchar.recall.estimator import Memory
from nextchar.text import embedded_corpus, read_corpus


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", default=None, help="checkpoint directory (default: the bundled model)")
    p.add_argument("--corpus", default=None, help="its training corpus (default: the embedded corpus)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--no-adapt", action="store_true", help="static figures only (adaptation is the slow part)")
    p.add_argument("--ppmd-orders", default="6,16", help="PPMd model orders to compare (default 6,16)")
    p.add_argument("--json", default=None, help="write the results here instead of bench/results/")
    return p.parse_args()


def weighted(rows: list[tuple[float, int]]) -> float:
    return sum(v * n for v, n in rows) / max(sum(n for _, n in rows), 1)


def index_costs(memory: Memory, train_tokens, typed: list[int]) -> dict[str, float]:
    """Build rate, bytes per symbol on disk, and µs per keystroke of push and of a cold predict."""
    started = time.perf_counter()
    index = MemoryIndex.build(train_tokens)
    build = time.perf_counter() - started
    fresh = Memory([index], memory.vocab_size)
    n = len(train_tokens)
    return {
        "symbols": n,
        "build_s": build,
        "build_mb_per_s": n * train_tokens.dtype.itemsize / 1e6 / build,
        "bytes_per_symbol": (index.tokens.nbytes + index.suffixes.nbytes) / max(n, 1),
        **keystroke_costs(fresh, [typed]),
    }


def load_compiled(index: MemoryIndex, indexes: int = 1) -> None:
    """Load the memory's compiled searches for the array types of `index` and a memory of
    `indexes` of them (numba loads or compiles them at their first call), on a small index of
    those types: not a keystroke's cost."""
    built = MemoryIndex.build(index.tokens[:64].copy())
    small = MemoryIndex(built.tokens, built.suffixes.astype(index.suffixes.dtype))
    memory = Memory([small] * indexes, 1 + int(built.tokens.max()))
    memory.predict(memory.push(memory.start(), int(built.tokens[0])))


def keystroke_costs(memory: Memory, lines: Iterable[Sequence[int]]) -> dict[str, float]:
    """µs per keystroke, median and p99, of Memory.push and of a cold predict after it, typing
    each line a symbol at a time from a fresh context (the compiled searches loaded first)."""
    load_compiled(memory.indexes[0], len(memory.indexes))
    pushes, predicts = [], []
    for line in lines:
        context = memory.start()
        for symbol in line:
            started = time.perf_counter()
            context = memory.push(context, symbol)
            pushed = time.perf_counter()
            memory.predict(context)
            predicts.append(time.perf_counter() - pushed)
            pushes.append(pushed - started)
    return {
        "keystrokes": len(pushes),
        "push_us_median": statistics.median(pushes) * 1e6,
        "predict_us_median": statistics.median(predicts) * 1e6,
        "push_us_p99": sorted(pushes)[int(0.99 * (len(pushes) - 1))] * 1e6,
        "predict_us_p99": sorted(predicts)[int(0.99 * (len(predicts) - 1))] * 1e6,
    }


def main() -> None:
    args = parse_args()
    ckpt = load_checkpoint(args.model)
    text = read_corpus(args.corpus) if args.corpus else embedded_corpus()
    train_text, val_text = split_validation(text, ckpt.format, args.val_fraction)
    cut = split_validation(val_text, ckpt.format, 0.5)
    halves = [h for h in cut if h]
    train = encode_corpus(train_text, ckpt.vocab, ckpt.format)
    tokens = memory_tokens(train, len(ckpt.vocab))
    memory = Memory([MemoryIndex.build(tokens)], len(ckpt.vocab))
    encoded = [encode_corpus(h, ckpt.vocab, ckpt.format) for h in halves]
    stats = None if args.no_adapt else gradient_statistics(ckpt.model, train, AdaptConfig())
    rows: dict[str, list[tuple[float, int]]] = {}

    def add(name: str, value: float, n: int) -> None:
        rows.setdefault(name, []).append((value, n))

    for i, half in enumerate(encoded):
        other = encoded[1 - i] if len(encoded) == 2 else None
        mixer = fit_mixer(ckpt.model, memory, other, train)
        static = evaluate_mixture(ckpt.model, half, memory, mixer)
        n = static.rnn.chars
        for name, result in (("rnn", static.rnn), ("memory", static.memory), ("mixture", static.mixture)):
            add(name, result.bpc, n)
        print(f"half {i + 1}: {n:,} characters, static done", file=sys.stderr)
        if not args.no_adapt:
            adapted = dynamic_evaluate(ckpt.model, half, AdaptConfig(), stats, static=False, recall=(memory, mixer))
            assert adapted.memory is not None and adapted.mixture is not None
            add("adapted rnn", adapted.adapted.bpc, n)
            add("adapted memory", adapted.memory.bpc, n)
            add("adapted mixture", adapted.mixture.bpc, n)
            print(f"half {i + 1}: adapted done", file=sys.stderr)
        found = compressors()
        for order in [int(o) for o in args.ppmd_orders.split(",") if o]:
            if "PPMd order 6 (var. H)" in found:
                found[f"PPMd order {order}"] = _ppmd(order)
        found.pop("PPMd order 6 (var. H)", None)
        for name, compress in found.items():
            add(name, conditional_bpc(compress, train_text, halves[i]), len(halves[i]))
    typed = encode_corpus(halves[0][:2000], ckpt.vocab, ckpt.format)
    typed_symbols = typed.tolist() if hasattr(typed, "tolist") else [s for line in typed for s in line.tolist()]
    costs = index_costs(memory, tokens, typed_symbols)
    results = {"bpc": {name: weighted(values) for name, values in rows.items()}, "index": costs}
    print(f"{'':24}{'BPC':>8}")
    for name, value in results["bpc"].items():
        print(f"{name:24}{value:8.3f}")
    c = costs
    print(
        f"index: {c['symbols']:,} symbols built in {c['build_s']:.3f} s ({c['build_mb_per_s']:.1f} MB/s), "
        f"{c['bytes_per_symbol']:.1f} bytes per symbol; per keystroke: push {c['push_us_median']:.0f} µs "
        f"(p99 {c['push_us_p99']:.0f}), p_mem {c['predict_us_median']:.0f} µs (p99 {c['predict_us_p99']:.0f})"
    )
    print(f"results: {write_result('memory', results, args.json)}", file=sys.stderr)


def _ppmd(order: int):
    def compress(data: bytes) -> bytes:
        import pyppmd

        encoder = pyppmd.Ppmd7Encoder(order, 256 << 20)
        return encoder.encode(data) + encoder.flush()

    return compress


if __name__ == "__main__":
    main()
