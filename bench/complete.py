"""Benchmark: autocomplete on held-out lines — the trie, the window model, the default model
alone, its memory alone, and the two mixed (the default), side by side.

Two `lines` corpora from ../shared/data:
  names        makemore's split: torch.manual_seed(3407), randperm of the 32,033 names, the
               last 1,000 held out (test), the rest for training.
  shakespeare  the non-empty lines of Tiny Shakespeare: the first 90% for training, a sample
               of the last 10% for testing (--test-lines, spread evenly over that 10%).
For each corpus it trains the default model (ModelConfig() defaults: kind, size; with its
memory of the training lines, as `train` builds it) and the lecture's window model on the
training lines (their last 10% validate), builds the trie baseline from the same lines the
models and the memory learned (not the 10% that validated them: every system knows the same),
runs eval-complete (docs/autocomplete.md defines every metric) in `line` mode (names) and in
`line`, `word` and `next-word` modes (Shakespeare), with the KSR of the targets seen in
training (lines, or words) and of the unseen ones apart; the mixture runs twice, exact and
with the serving deadline (--deadline-ms, `serve`'s default). Then it measures per-keystroke latency after 1,
10, 100 and 10,000 typed characters (must stay flat) with 1 and 2 torch threads.

    python -m bench.complete --quick        # seconds: tiny models, a few test lines
    python -m bench.complete                # full: about 4 min training per default model,
                                            # 1 min per window model, then about 20 min of
                                            # evaluation (roughly 30 minutes in all)

Models are kept in --work (default runs/bench-complete) and reused on the next run unless
--retrain; give your own with --names-model/--names-window/--lines-model/--lines-window (one
without a memory is compared without the memory's rows).
Results: a markdown table on stdout, JSON in --work/results.json, and the same with the command,
commit and machine in bench/results/ (bench.record).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from bench.record import write_result
from nextchar.checkpoint import load_checkpoint, read_memory
from nextchar.collector import tune_for_latency
from nextchar.completion.completer import Completer
from nextchar.completion.config import SERVING_DEADLINE_MS
from nextchar.data.batches import split_validation
from nextchar.evaluation.keystrokes import (
    CompleterPredictor,
    MemoryPredictor,
    Predictor,
    TriePredictor,
    evaluate_completion,
    typing_latency,
)
from nextchar.files import atomic_write_json
from nextchar.models import ModelConfig
from nextchar.text import read_corpus, split_lines
from nextchar.training.config import TrainConfig
from nextchar.training.loop import train
from nextchar.training.memory import remember

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LENGTHS = (1, 10, 100, 10_000)
GOAL_RATIO = 1.15  # the mixture's KSR against the better of the trie and the model alone


def names_split(path: Path) -> tuple[list[str], list[str]]:
    """makemore's split: seed 3407, a random permutation, the last 1,000 names held out."""
    words = [w.strip() for w in path.read_text(encoding="utf-8").splitlines()]
    words = [w for w in words if w]
    torch.manual_seed(3407)
    order = torch.randperm(len(words)).tolist()
    test_size = min(1000, int(len(words) * 0.1))
    return [words[i] for i in order[:-test_size]], [words[i] for i in order[-test_size:]]


def shakespeare_split(path: Path, test_lines: int) -> tuple[list[str], list[str]]:
    """First 90% of the non-empty lines for training; `test_lines` spread over the last 10%."""
    lines = split_lines(read_corpus(path))
    cut = int(0.9 * len(lines))
    held = lines[cut:]
    step = max(1, len(held) // test_lines)
    return lines[:cut], held[::step][:test_lines]


def get_model(
    name: str,
    given: str | None,
    train_lines: list[str],
    kind_config: ModelConfig,
    seconds: float,
    steps: int | None,
    work: Path,
    retrain: bool,
    quiet: bool,
) -> Path:
    """A checkpoint: the one given, the one from a previous run, or a freshly trained one."""
    if given:
        return Path(given)
    out = work / name
    train_text, val_text = split_validation("\n".join(train_lines) + "\n", "lines", 0.1)
    if (out / "config.json").is_file() and not retrain:
        print(f"[{name}] reusing {out}", file=sys.stderr)
    else:
        config = TrainConfig(time_budget=None if steps else seconds, steps=steps, eval_interval=steps or 200)
        duration = f"{steps} steps" if steps else f"{seconds:.0f} s"
        print(f"[{name}] training {kind_config.kind} ({duration})", file=sys.stderr)
        train(train_text, val_text, out, config, kind_config, "lines", progress=not quiet, overwrite=True)
    if kind_config.kind != "window" and read_memory(load_checkpoint(out)) is None:  # as `train` ends
        print(f"[{name}] indexing its training lines and fitting the mixer", file=sys.stderr)
        remember(out, train_text, val_text)
    return out


def systems(ckpt_dir: Path, window_dir: Path, train_lines: list[str], mode: str, k: int, args: argparse.Namespace):
    """The predictors compared in one mode: trie, window, the model alone, the memory alone, the
    mixture exact and at the serving deadline (the last three when the checkpoint has a memory)."""
    ckpt, window_ckpt = load_checkpoint(ckpt_dir), load_checkpoint(window_dir)
    kind, precision = ckpt.model.config.kind, args.precision
    out: list[Predictor] = [
        TriePredictor.from_lines(train_lines, mode, k),
        CompleterPredictor(Completer(window_ckpt, precision=precision, memory=False), mode, k, name="window"),
        CompleterPredictor(Completer(ckpt, precision=precision, memory=False), mode, k, name=f"{kind} alone"),
    ]
    mixed = Completer(ckpt, precision=precision)
    if mixed.recall is not None:
        at_deadline = Completer(ckpt, precision=precision, deadline_ms=args.deadline_ms)
        out += [
            MemoryPredictor(mixed, mode, k),
            CompleterPredictor(mixed, mode, k, name=f"{kind} + memory"),
            CompleterPredictor(at_deadline, mode, k, name=f"{kind} + memory, {args.deadline_ms:g} ms"),
        ]
    tune_for_latency()  # the collector as `serve` and eval-complete have it, the models loaded
    return out


def evaluate_corpus(
    label: str,
    train_lines: list[str],
    test_lines: list[str],
    model_dir: Path,
    window_dir: Path,
    modes: list[str],
    args: argparse.Namespace,
) -> dict:
    ckpt = load_checkpoint(model_dir)
    out: dict = {
        "corpus": label,
        "train_lines": len(train_lines),
        "test_lines": len(test_lines),
        "model": ckpt.model.config.to_json(),
        "model_val": ckpt.meta.get("metrics", {}),
        "modes": {},
    }
    # What the model and its memory saw: the training lines less the last 10% (which validated
    # the model and fitted the mixer). The trie is built from these too, and "seen" means these.
    known = split_lines(split_validation("\n".join(train_lines) + "\n", "lines", 0.1)[0])
    out["known_lines"] = len(known)
    seen = set(known)
    for mode in modes:
        results = []
        for system in systems(model_dir, window_dir, known, mode, args.k, args):
            started = time.perf_counter()
            result = evaluate_completion(test_lines, system, mode, args.k, progress=True, seen=seen).to_json()
            completer = getattr(system, "completer", None)
            if completer is not None:
                result["expired"] = completer.search_stats["expired"]
                result["searches"] = completer.search_stats["searches"]
            print(
                f"[{label}/{mode}] {system.name}: KSR {result['ksr']:.3f} in {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
            )
            results.append(result)
        out["modes"][mode] = results
    text = " ".join(test_lines)
    while len(text) < max(LENGTHS) + args.latency_keys:
        text += " " + text
    out["latency_by_length"] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        lat = typing_latency(
            Completer(ckpt, precision=args.precision),
            text,
            LENGTHS,
            keystrokes=args.latency_keys,
            k=args.k,
            mode="line",
        )
        out["latency_by_length"][str(threads)] = {str(n): v for n, v in lat.items()}
    torch.set_num_threads(1)
    return out


def markdown(results: list[dict], k: int) -> str:
    rows = []
    for corpus in results:
        for mode, systems in corpus["modes"].items():
            rows.append(
                f"\n**{corpus['corpus']}**, mode `{mode}`, k = {k}: {corpus['test_lines']:,} held-out lines "
                f"({systems[0]['chars']:,} characters, {systems[0]['targets']:,} targets); trained on "
                f"{corpus['train_lines']:,} lines ({corpus['known_lines']:,} of them known to every system: the rest "
                "validated the models)\n"
            )
            groups = systems[0]["groups"]
            rows.append(
                f"| system | KSR | KSR seen ({groups['seen']['targets']:,} targets) | KSR unseen "
                f"({groups['unseen']['targets']:,}) | MRR | s@1 (prefix 1/2/3/4/5) | s@k (prefix 1/2/3/4/5) "
                "| p50 ms | p95 ms | p99 ms | at deadline |"
            )
            rows.append("|---|---|---|---|---|---|---|---|---|---|---|")
            for r in systems:
                s1 = " / ".join(f"{r['success_at_1'][str(i)]:.2f}" for i in range(1, 6))
                sk = " / ".join(f"{r['success_at_k'][str(i)]:.2f}" for i in range(1, 6))
                lat, g = r["latency_ms"], r["groups"]
                seen = f"{g['seen']['ksr']:.3f}" if g["seen"]["targets"] else "–"
                expired = f"{r['expired']:,} / {r['searches']:,}" if r.get("expired") else ""
                rows.append(
                    f"| {r['name']} | {r['ksr']:.3f} | {seen} | {g['unseen']['ksr']:.3f} | {r['mrr']:.3f} | {s1} "
                    f"| {sk} | {lat['p50']:.2f} | {lat['p95']:.2f} | {lat['p99']:.2f} | {expired} |"
                )
        rows.append(
            f"\nPer-keystroke latency of the default model (with its memory) on {corpus['corpus']} (top {k} `line` "
            "suggestions) after n typed characters, ms:\n"
        )
        rows.append("| threads | " + " | ".join(f"n = {n:,} p50 / p99" for n in LENGTHS) + " |")
        rows.append("|---|" + "---|" * len(LENGTHS))
        for threads, by_length in corpus["latency_by_length"].items():
            cells = [f"{by_length[str(n)]['p50']:.2f} / {by_length[str(n)]['p99']:.2f}" for n in LENGTHS]
            rows.append(f"| {threads} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and a few lines: seconds")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-complete"), help="model and result directory")
    parser.add_argument("--retrain", action="store_true", help="train even if --work holds models")
    parser.add_argument("--seconds", type=float, default=240.0, help="training budget of each default model")
    parser.add_argument("--window-seconds", type=float, default=60.0, help="training budget of each window model")
    parser.add_argument("--test-lines", type=int, default=400, help="held-out Shakespeare lines evaluated")
    parser.add_argument("--names-test", type=int, default=1000, help="held-out names evaluated (makemore: 1000)")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--latency-keys", type=int, default=100, help="timed keystrokes per typed length")
    parser.add_argument(
        "--deadline-ms",
        type=float,
        default=SERVING_DEADLINE_MS,
        help=f"the mixture's second run: its searches' deadline (default {SERVING_DEADLINE_MS:g}, serve's)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "int8"),
        default="auto",
        help="of the searches' matrix products, as eval-complete's --precision (default auto)",
    )
    for flag in ("names-model", "names-window", "lines-model", "lines-window"):
        parser.add_argument(f"--{flag}", metavar="DIR", help="use this checkpoint instead of training one")
    return parser.parse_args()


def get_models(
    args: argparse.Namespace,
    names_train: list[str],
    lines_train: list[str],
    default: ModelConfig,
    steps: int | None,
    work: Path,
) -> dict[str, Path]:
    """The four checkpoints, by their flag: the default and the window model for each corpus."""
    window = ModelConfig(kind="window")
    plan = [  # flag, name in --work, given checkpoint, training lines, model, training seconds
        ("names-model", "names-default", args.names_model, names_train, default, args.seconds),
        ("names-window", "names-window", args.names_window, names_train, window, args.window_seconds),
        ("lines-model", "shakespeare-default", args.lines_model, lines_train, default, args.seconds),
        ("lines-window", "shakespeare-window", args.lines_window, lines_train, window, args.window_seconds),
    ]
    return {
        flag: get_model(name, given, lines, config, seconds, steps, work, args.retrain, args.quick)
        for flag, name, given, lines, config, seconds in plan
    }


def print_goals(results: list[dict], k: int, deadline_ms: float) -> None:
    """Whether the mixture met the goals: KSR ≥ 1.15 × the better of the trie and the model
    alone in every row, on the seen and the unseen lines; p99 ≤ 10 ms at the serving deadline."""
    for corpus in results:
        for mode, systems in corpus["modes"].items():
            by = {r["name"]: r for r in systems}
            alone = next(r for name, r in by.items() if name.endswith(" alone") and name != "memory alone")
            mixed = [r for name, r in by.items() if name.endswith(" + memory")]
            timed = [r for name, r in by.items() if name.endswith(f"memory, {deadline_ms:g} ms")]
            if not mixed:
                print(f"{corpus['corpus']} / {mode}: the checkpoint has no memory; no goals to check")
                continue
            for group in ("all", "seen", "unseen"):

                def ksr(r: dict, group: str = group) -> float:
                    return r["ksr"] if group == "all" else r["groups"][group]["ksr"]

                if group != "all" and not by["trie"]["groups"][group]["targets"]:
                    continue
                better = max(ksr(by["trie"]), ksr(alone))
                got = ksr(mixed[0])
                verdict = "met" if got >= GOAL_RATIO * better else "NOT met"
                print(
                    f"goal KSR(mixture) ≥ {GOAL_RATIO} × max(trie, model alone), {corpus['corpus']} / {mode} / "
                    f"{group}: {got:.3f} vs {GOAL_RATIO} × {better:.3f} = {GOAL_RATIO * better:.3f} {verdict}"
                )
            p99 = timed[0]["latency_ms"]["p99"]
            print(
                f"goal p99 ≤ 10 ms ({corpus['corpus']} / {mode}, top {k}, mixture at {deadline_ms:g} ms): "
                f"{p99:.2f} ms {'met' if p99 <= 10 else 'NOT met'}"
            )


def main() -> int:
    args = parse_args()
    for path in (DATA / "names.txt", DATA / "tinyshakespeare.txt"):
        if not path.is_file():
            print(f"bench/complete.py: {path} is missing", file=sys.stderr)
            return 2
    work = Path(args.work) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    default = ModelConfig()
    steps = None
    if args.quick:
        default = ModelConfig(kind=default.kind, hidden_size=64, num_layers=1, embedding_size=16)
        steps, args.test_lines, args.names_test, args.latency_keys = 30, 20, 30, 10

    names_train, names_test = names_split(DATA / "names.txt")
    lines_train, lines_test = shakespeare_split(DATA / "tinyshakespeare.txt", args.test_lines)
    if args.quick:
        names_train, lines_train = names_train[:3000], lines_train[:3000]
    names_test = names_test[: args.names_test]

    torch.set_num_threads(2)  # training: both cores
    models = get_models(args, names_train, lines_train, default, steps, work)
    torch.set_num_threads(1)  # a keystroke's small batches: one thread (see docs/autocomplete.md)
    results = [
        evaluate_corpus(
            "names", names_train, names_test, models["names-model"], models["names-window"], ["line"], args
        ),
        evaluate_corpus(
            "Tiny Shakespeare lines",
            lines_train,
            lines_test,
            models["lines-model"],
            models["lines-window"],
            ["line", "word", "next-word"],
            args,
        ),
    ]
    atomic_write_json(work / "results.json", results)
    print(markdown(results, args.k))
    print(f"\nprecision of the searches: {args.precision}")
    print_goals(results, args.k, args.deadline_ms)
    print(f"\nresults: {work / 'results.json'}", file=sys.stderr)
    record = {
        "corpora": results,
        "k": args.k,
        "precision": args.precision,
        "deadline_ms": args.deadline_ms,
        "quick": args.quick,
        "models": {flag: str(path) for flag, path in models.items()},
    }
    print(f"results: {write_result('complete', record)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
