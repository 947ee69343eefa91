"""Benchmark: validation BPC per model kind under one wall-clock budget, against baselines.

On Tiny Shakespeare with its standard split (train = first 90%, validation = the rest):
  1. each model kind trained by nextchar with its default settings for --budget seconds;
  2. a minimal plain-PyTorch loop of the default model's exact architecture, batch, window,
     optimizer and precision, alternated with nextchar's own training loop in short rounds
     in this same process: the median chars/s ratio shows what the framework costs;
  3. compressors conditioned on the training text (bz2, lzma, PPMd);
  4. the machine's fp32 matrix-multiply peak, measured here, for MFU.

    python -m bench.quality                      # 10 minutes per kind (about 45 minutes)
    python -m bench.quality --budget 60 --kinds lstm   # a quick look

The results go to bench/results/ (or --json FILE) with the command, commit and machine (bench.record).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.compressors import compressors, conditional_bpc
from bench.record import write_result
from nextchar.data.batches import StreamBatches, encode_corpus
from nextchar.models import ModelConfig, build_model
from nextchar.text import Vocabulary
from nextchar.training.config import TrainConfig, use_bf16
from nextchar.training.loop import train
from nextchar.training.optimisation import sequence_loss

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """Median fp32 GFLOP/s of a size×size matrix product on all threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        rates.append(2 * size**3 / (time.perf_counter() - started) / 1e9)
    return statistics.median(rates)


class PlainModel(nn.Module):
    """The default model written the way a PyTorch tutorial would: no nextchar code at all."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cell = nn.LSTM if cfg.kind == "lstm" else nn.GRU
        self.emb = nn.Embedding(cfg.vocab_size, cfg.embedding_size)
        self.rnn = cell(
            cfg.embedding_size,
            cfg.hidden_size,
            cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.drop_emb = nn.Dropout(cfg.embedding_dropout)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, x, h):
        out, h = self.rnn(self.drop_emb(self.emb(x)), h)
        return self.head(self.drop(out)), h


def plain_loop_rate(data: torch.Tensor, cfg: ModelConfig, tcfg: TrainConfig, steps: int, bf16: bool) -> float:
    torch.manual_seed(0)
    model = PlainModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    B, T = tcfg.batch_size, tcfg.seq_len
    n = (len(data) - 1) // B
    streams = data[: B * n].view(B, n)
    h = None
    started, chars = time.perf_counter(), 0
    for step in range(steps):
        i = (step * T) % (n - T - 1)
        x, y = streams[:, i : i + T], streams[:, i + 1 : i + T + 1]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, h = model(x, h)
        loss = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        h = tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()
        chars += B * T
    return chars / (time.perf_counter() - started)


def nextchar_loop_rate(data: torch.Tensor, cfg: ModelConfig, tcfg: TrainConfig, steps: int, bf16: bool) -> float:
    """nextchar's own training step (batches, model, loss, clipping, schedule, weight average)
    without evaluation."""
    from nextchar.training.config import learning_rate
    from nextchar.training.optimisation import make_optimizer, moving_average

    torch.manual_seed(0)
    model = build_model(cfg)
    opt = make_optimizer(model, tcfg)
    averaged = moving_average(model, tcfg.ema) if tcfg.ema else None
    batches = StreamBatches(data, tcfg.batch_size, tcfg.seq_len)
    carry = None
    started, chars = time.perf_counter(), 0
    for step in range(steps):
        batch = batches(step)
        if batch.reset or carry is None:
            carry = model.initial_state(batch.x.shape[0])
        for group in opt.param_groups:
            group["lr"] = learning_rate(tcfg, step, 0.0)
        loss, state = sequence_loss(model, batch.x, batch.y, carry, bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        if averaged is not None:
            averaged.update_parameters(model)
        carry = tuple(s.detach() for s in state)
        chars += batch.x.numel()
    return chars / (time.perf_counter() - started)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training per kind (default 600)")
    parser.add_argument("--kinds", default="lstm,gru,rnn,window", help="comma-separated kinds (default all)")
    parser.add_argument("--overhead-rounds", type=int, default=5, help="alternating rounds of the overhead check")
    parser.add_argument("--overhead-steps", type=int, default=30, help="steps per round of the overhead check")
    parser.add_argument("--json", type=Path, help="write the results here (default: a new file in bench/results/)")
    parser.add_argument("--keep", type=Path, help="keep each trained checkpoint in KEEP/<kind> (for bench/adapt.py)")
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: not found (the benchmark needs ../shared/data)")
    return args


def train_kind(
    args: argparse.Namespace, kind: str, train_text: str, val_text: str, vocab: Vocabulary, peak: float
) -> dict:
    """Train `kind` with its defaults for --budget seconds: its size, speed, MFU and validation BPC."""
    model_config = ModelConfig(kind=kind)
    config = TrainConfig(time_budget=args.budget)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.keep / kind if args.keep else Path(scratch)
        started = time.perf_counter()
        result = train(
            train_text,
            val_text,
            out,
            config,
            model_config,
            "text",
            progress=sys.stderr.isatty(),
            source={"corpus": str(args.data.resolve()), "format": "text", "val_fraction": 0.1},
            overwrite=True,  # --keep: a kept run of an earlier benchmark is replaced
        )
        wall = time.perf_counter() - started
        best = json.loads((out / "config.json").read_text())["metrics"]
    sized = build_model(ModelConfig(**{**model_config.to_json(), "vocab_size": len(vocab)}))
    params, flops = sized.num_parameters(), sized.flops_per_char()
    mfu = 3 * flops * result.chars_per_second / (peak * 1e9)
    return {
        "kind": kind,
        "params": params,
        "chars_per_s": result.chars_per_second,
        "val_bpc": result.best_val.bpc if result.best_val else math.nan,
        "best_step": best["step"],
        "steps": result.steps,
        "wall_s": wall,
        "mfu": mfu,
    }


def overhead(args: argparse.Namespace, train_text: str, vocab: Vocabulary) -> dict:
    """nextchar's loop vs a plain loop, same architecture/batch/window/optimizer/precision, alternated."""
    default_model = ModelConfig()
    default_train = TrainConfig().for_kind(default_model.kind)
    data = encode_corpus(train_text, vocab, "text")
    cfg = ModelConfig(**{**default_model.to_json(), "vocab_size": len(vocab)})
    bf16 = use_bf16(default_train.precision, torch.device("cpu"))
    ratios, plain_rates, ours_rates = [], [], []
    for _ in range(args.overhead_rounds):
        plain = plain_loop_rate(data, cfg, default_train, args.overhead_steps, bf16)
        ours = nextchar_loop_rate(data, cfg, default_train, args.overhead_steps, bf16)
        plain_rates.append(plain)
        ours_rates.append(ours)
        ratios.append(ours / plain)
    return {
        "plain_chars_per_s": statistics.median(plain_rates),
        "nextchar_chars_per_s": statistics.median(ours_rates),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
    }


def print_table(args: argparse.Namespace, results: dict) -> None:
    print()
    print(
        f"Tiny Shakespeare, standard split; {args.budget:.0f} s of training per model on "
        f"{torch.get_num_threads()} CPU threads; {results['date']}"
    )
    print()
    print("| model | parameters | chars/s | MFU | validation BPC |")
    print("|---|---:|---:|---:|---:|")
    for run in results["runs"]:
        print(
            f"| nextchar `{run['kind']}` (defaults) | {run['params']:,} | {run['chars_per_s']:,.0f} | "
            f"{run['mfu']:.1%} | {run['val_bpc']:.3f} |"
        )
    o = results["overhead"]
    print(f"| plain PyTorch loop, default architecture (throughput only) | | {o['plain_chars_per_s']:,.0f} | | — |")
    for name, bpc in results["compressors"].items():
        print(f"| {name}, conditional on the training text | | | | {bpc:.3f} |")
    print()
    ratios = o["ratios"]
    print(
        f"nextchar / plain loop chars/s: median {o['ratio_median']:.3f} over {len(ratios)} alternating rounds "
        f"of {args.overhead_steps} steps ({', '.join(f'{r:.3f}' for r in ratios)})"
    )
    print(f"matmul peak {results['matmul_peak_gflops']:.0f} GFLOP/s; MFU = 3 × forward FLOPs/char × chars/s ÷ peak")


def main() -> None:
    args = parse_args()
    text = args.data.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    train_text, val_text = text[:cut], text[cut:]
    results: dict = {"budget_s": args.budget, "date": time.strftime("%Y-%m-%d"), "runs": []}

    peak = matmul_peak()
    results["matmul_peak_gflops"] = peak
    print(f"fp32 matmul peak (2048², torch, {torch.get_num_threads()} threads): {peak:.0f} GFLOP/s", flush=True)

    vocab = Vocabulary.from_text(train_text)
    for kind in args.kinds.split(","):
        run = train_kind(args, kind, train_text, val_text, vocab, peak)
        results["runs"].append(run)
        print(f"{kind}: {run}", flush=True)

    results["overhead"] = overhead(args, train_text, vocab)
    results["compressors"] = {name: conditional_bpc(fn, train_text, val_text) for name, fn in compressors().items()}
    print_table(args, results)
    print(f"results: {write_result('quality', results, args.json)}", file=sys.stderr)


if __name__ == "__main__":
    main()
