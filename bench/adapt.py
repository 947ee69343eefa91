"""Benchmark: dynamic evaluation (online adaptation) on Tiny Shakespeare's validation text.

Standard split (train = first 90%, validation = the rest). For one model:
  1. static validation BPC (the trained weights), read as one stream as dynamic evaluation is;
  2. adapted BPC for a few settings (rule, η, window T, λ), each with its cost: seconds of
     adaptation (backward pass + update) per window and per character, and the ratio of the
     whole adapted evaluation's time to the static evaluation's;
  3. PPMd (order 6, variant H, pyppmd) conditional on the training text:
     8·(C(train + val) − C(train)) / len(val);
  4. personalisation: eval-complete (line mode, k = 5) on the validation text's speaker-name
     lines ("PROSPERO:"), typed in order, by the model and by the same model learning each line
     once it is typed (nextchar.completion.personal's defaults): keystroke savings, MRR, per-keystroke
     latency (one torch thread, as the CLI), and the time learning takes per line.

    python -m bench.adapt -m DIR        # a checkpoint trained on the split (e.g. by bench/quality.py)
    python -m bench.adapt               # trains the default model for --budget seconds first
    python -m bench.adapt --quick       # a seconds-long check: tiny model, 4,000 validation chars

The results go to bench/results/ (or --json FILE) with the command, commit and machine (bench.record).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.compressors import compressors, conditional_bpc
from bench.record import write_result
from nextchar.adapt import AdaptConfig, gradient_statistics
from nextchar.checkpoint import Checkpoint, load_checkpoint
from nextchar.completion.completer import Completer
from nextchar.completion.personal import PersonalCompleter
from nextchar.data.batches import encode_corpus
from nextchar.evaluation.bpc import evaluate_encoded
from nextchar.evaluation.dynamic import dynamic_evaluate
from nextchar.evaluation.keystrokes import CompleterPredictor, PersonalPredictor, evaluate_completion
from nextchar.models import ModelConfig
from nextchar.training.config import TrainConfig
from nextchar.training.loop import train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"
PPMD = "PPMd order 6 (var. H)"
# rule:lr:window:decay[:params]: the default, the same with shorter windows (more steps, more
# time), and the output layer alone (what personalisation adapts; cheap). Chosen on a 4-minute
# 256-state LSTM (docs/adaptation.md). Picking the best of the three costs at most log2(3) bits
# in all (a two-part code), nothing per character.
GRID = "rms:1e-4:50:2e-3,rms:1e-4:20:2e-3,rms:3e-4:50:2e-3:output"

# What encode_corpus returns: one `text` stream, or the lines of a `lines` corpus.
Encoded = torch.Tensor | list[torch.Tensor]


def parse_grid(text: str) -> list[AdaptConfig]:
    configs = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) not in (4, 5):
            raise SystemExit(f"--grid item {item!r}: expected rule:lr:window:decay[:params]")
        rule, lr, window, decay = parts[0], float(parts[1]), int(parts[2]), float(parts[3])
        params = parts[4] if len(parts) == 5 else "all"
        configs.append(AdaptConfig(rule=rule, lr=lr, window=window, decay=decay, params=params))
    return configs


SPEAKER = r"^[A-Za-z][A-Za-z ]*:$"  # a line that names who speaks next ("PROSPERO:")


def personalisation(ckpt: Checkpoint, train_text: str, val_text: str, limit: int | None) -> dict:
    """eval-complete on the validation speaker names: the model, and the model learning each line."""
    seen = set(re.findall(SPEAKER, train_text, flags=re.M))
    lines = re.findall(SPEAKER, val_text, flags=re.M)[:limit]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a keystroke's batches are small: one thread is fastest (docs/autocomplete.md)
    try:
        base = Completer(ckpt)
        kind = ckpt.model.config.kind
        static = CompleterPredictor(base, "line", 5, name=f"model ({kind})")
        adapted = PersonalPredictor(PersonalCompleter(base), "line", 5, name=f"model ({kind}), learning each line")
        rows = []
        for predictor in (static, adapted):
            row = evaluate_completion(lines, predictor, "line", 5).to_json()
            if predictor is adapted:
                row["learning"] = adapted.cost()
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    return {"lines": len(lines), "unseen": sum(line not in seen for line in lines), "rows": rows}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", type=Path, help="checkpoint trained on the split (default: train one)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds to train when no -m (default 600)")
    parser.add_argument("--grid", default=GRID, help=f"settings rule:lr:window:decay[:params],… (default {GRID})")
    parser.add_argument("--val-chars", type=int, default=None, help="evaluate only the first N validation chars")
    parser.add_argument(
        "--stat-windows", type=int, default=AdaptConfig.stat_windows, help="training windows for the rms statistics"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--names", type=int, default=None, help="personalisation: first N speaker-name lines")
    parser.add_argument("--quick", action="store_true", help="seconds: tiny model, 4,000 validation chars")
    parser.add_argument("--json", type=Path, help="write the results here (default: a new file in bench/results/)")
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: not found (the benchmark needs ../shared/data)")
    if args.quick:
        args.budget, args.val_chars, args.stat_windows = 15.0, args.val_chars or 4000, 20
        args.names = args.names or 60
        args.threads = args.threads or 1
    return args


def trained_model(args: argparse.Namespace, train_text: str, val_text: str) -> Checkpoint:
    """The checkpoint given by -m, or the default (--quick: tiny) model trained here for --budget seconds."""
    with tempfile.TemporaryDirectory() as scratch:
        if args.model is None:
            model_config = ModelConfig(hidden_size=64, embedding_size=32) if args.quick else ModelConfig()
            print(
                f"training the {'tiny' if args.quick else 'default'} model for {args.budget:.0f} s …",
                file=sys.stderr,
                flush=True,
            )
            train(
                train_text,
                val_text,
                scratch,
                TrainConfig(time_budget=args.budget),
                model_config,
                "text",
                progress=sys.stderr.isatty(),
            )
            model_dir = Path(scratch)
        else:
            model_dir = args.model
        ckpt = load_checkpoint(model_dir)
    if ckpt.format != "text":
        raise SystemExit(f"{model_dir}: a {ckpt.format}-format model; this benchmark reads Tiny Shakespeare as text")
    return ckpt


def adapt_grid(
    ckpt: Checkpoint, val: Encoded, train_data: Encoded, args: argparse.Namespace
) -> tuple[list[dict], dict, dict[tuple, object]]:
    """Dynamic evaluation for each --grid setting: their entries, the one static run, the statistics used."""
    settings = []
    stats_cache: dict[tuple, object] = {}
    static = None
    for config in parse_grid(args.grid):
        config.stat_windows = args.stat_windows
        stats = None
        if config.rule == "rms":
            key = (config.window, config.params)
            if key not in stats_cache:
                stats_cache[key] = gradient_statistics(ckpt.model, train_data, config)
            stats = stats_cache[key]
        print(
            f"dynamic evaluation: {config.rule} lr {config.lr:g} window {config.window} decay {config.decay:g} "
            f"({config.params}) …",
            file=sys.stderr,
            flush=True,
        )
        result = dynamic_evaluate(ckpt.model, val, config, stats, static=static is None, progress=sys.stderr.isatty())
        if static is None:
            assert result.static is not None
            static = {"bpc": result.static.bpc, "seconds": result.static_seconds}
        result.static_seconds = static["seconds"]  # the cost ratio of every setting against the one static run
        entry = result.to_json()
        entry["stats_seconds"] = stats.seconds if stats is not None else 0.0
        settings.append(entry)
        print(
            f"  adapted BPC {result.adapted.bpc:.4f} (static {static['bpc']:.4f}); "
            f"{result.adapt_seconds_per_window * 1e3:.1f} ms/window",
            file=sys.stderr,
            flush=True,
        )
    assert static is not None
    return settings, static, stats_cache


def print_adaptation(results: dict, ckpt: Checkpoint, stats_cache: dict[tuple, object]) -> None:
    """The dynamic-evaluation table and the lines under it."""
    static = results["static"]
    print()
    print(
        f"Tiny Shakespeare, standard split, first {results['val_chars']:,} validation characters; model "
        f"{ckpt.model.config.kind} m={ckpt.model.config.hidden_size} ({ckpt.model.num_parameters():,} parameters), "
        f"trained {results['model']['training_seconds'] or '?'} s; {torch.get_num_threads()} CPU threads; "
        f"{results['date']}"
    )
    print()
    print("| evaluation | BPC | Δ vs static | adaptation s/window | adaptation µs/char | time × static | rollbacks |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| static (trained weights), one stream | {static['bpc']:.3f} | — | — | — | 1.0 | — |")
    for entry in results["settings"]:
        c = entry["config"]
        name = f"adapted: {c['rule']}, η {c['lr']:g}, T {c['window']}, λ {c['decay']:g}" + (
            f", {c['params']} weights" if c["params"] != "all" else ""
        )
        bpc = entry["adapted"]["bpc"]
        print(
            f"| {name} | {bpc:.3f} | {bpc - static['bpc']:+.3f} | {entry['adapt_seconds_per_window']:.4f} | "
            f"{entry['adapt_seconds_per_char'] * 1e6:.0f} | {entry['cost_ratio']:.1f} | {entry['rollbacks']} |"
        )
    if results["ppmd_bpc"] is not None:
        print(
            f"| {PPMD}, conditional on the training text | {results['ppmd_bpc']:.3f} | "
            f"{results['ppmd_bpc'] - static['bpc']:+.3f} | | | | |"
        )
    else:
        print("| PPMd: pyppmd is not installed | | | | | | |")
    print()
    print(
        f"static BPC read as 16 streams (nextchar eval): {results['static_16_streams']:.3f}; static one-stream "
        f"evaluation took {static['seconds']:.2f} s; gradient statistics "
        + ", ".join(
            f"{s.windows}×{s.batch}×{s.window} windows in {s.seconds:.1f} s"  # type: ignore[attr-defined]
            for s in stats_cache.values()
        )
    )
    best = min(results["settings"], key=lambda e: e["adapted"]["bpc"])
    gain = static["bpc"] - best["adapted"]["bpc"]
    versus = ""
    if results["ppmd_bpc"] is not None:
        versus = f"; PPMd − adapted = {results['ppmd_bpc'] - best['adapted']['bpc']:+.3f}"
    print(f"best adapted BPC {best['adapted']['bpc']:.3f}: static − adapted = {gain:+.3f}{versus}")


def print_personalisation(p: dict) -> None:
    """The personalisation table and the line above it."""
    print()
    print(
        f"Personalisation: the validation text's {p['lines']} speaker-name lines typed in order (line mode, "
        f"k = 5); {p['unseen']} of them name speakers never seen in training"
    )
    print()
    print("| system | KSR | MRR | keystroke p50 ms | p99 ms | learning ms/line p50 | p99 | learning µs/char |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in p["rows"]:
        learn = row.get("learning")
        tail = (
            f"{learn['ms_per_line_p50']:.2f} | {learn['ms_per_line_p99']:.2f} | {learn['us_per_char']:.0f}"
            if learn
            else "— | — | —"
        )
        print(
            f"| {row['name']} | {row['ksr']:.3f} | {row['mrr']:.3f} | {row['latency_ms']['p50']:.2f} | "
            f"{row['latency_ms']['p99']:.2f} | {tail} |"
        )


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    text = args.data.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    train_text, val_text = text[:cut], text[cut:]
    if args.val_chars:
        val_text = val_text[: args.val_chars]
    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "threads": torch.get_num_threads(),
        "val_chars": len(val_text),
        "settings": [],
    }

    ckpt = trained_model(args, train_text, text[cut:])
    meta = ckpt.meta
    results["model"] = {
        "path": str(args.model or "trained here"),
        "config": meta.get("model"),
        "training_seconds": meta.get("metrics", {}).get("elapsed"),
        "training_source": meta.get("training", {}).get("source", {}).get("corpus"),
    }
    print(
        f"model: {results['model']['config']}, trained {results['model']['training_seconds']} s "
        f"on {results['model']['training_source']}",
        file=sys.stderr,
        flush=True,
    )

    val = encode_corpus(val_text, ckpt.vocab, "text")
    train_data = encode_corpus(train_text, ckpt.vocab, "text")
    results["static_16_streams"] = evaluate_encoded(ckpt.model, val).bpc  # nextchar eval's own layout
    results["settings"], results["static"], stats_cache = adapt_grid(ckpt, val, train_data, args)

    ppmd = compressors().get(PPMD)
    results["ppmd_bpc"] = conditional_bpc(ppmd, train_text, val_text) if ppmd else None

    results["personal"] = personalisation(ckpt, train_text, text[cut:], args.names)

    print_adaptation(results, ckpt, stats_cache)
    print_personalisation(results["personal"])
    print(f"results: {write_result('adapt', results, args.json)}", file=sys.stderr)
    if any(not math.isfinite(e["adapted"]["bpc"]) for e in results["settings"]):
        raise SystemExit("a setting gave a non-finite BPC")


if __name__ == "__main__":
    main()
