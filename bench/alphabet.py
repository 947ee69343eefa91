"""Benchmark: large alphabets — the output layer's cost and what each layer reaches in a budget.

A character model's output layer has one row per symbol: m·V multiply-adds a character, which
outgrow the recurrence itself once V is in the thousands (Chinese, Japanese). For each output
layer of nextchar.models.GatedRNN (`full`, the baseline, and `tied`), in one process:

  step    the median time of one training step (forward, loss, backward; the default LSTM,
          B × T = 32 × 128, the precision `train` uses here) at vocabulary size --symbols, on
          random data: what the layer costs, without a corpus;
  train   with --corpus, `nextchar.train` for --budget seconds on it with each layer (the
          defaults otherwise), and the best validation BPC, steps and chars/s it reached, beside
          the BPC of counting characters (evaluation.bpc.unigram_bpc).

    python -m bench.alphabet --symbols 4618                         # seconds: step times only
    python -m bench.alphabet --corpus zh.txt --budget 120,300       # + 2 × (120 + 300) s of training

The results go to bench/results/ with the command, commit and machine (bench.record).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import nextchar
from bench.record import write_result
from nextchar.data.batches import split_validation
from nextchar.evaluation.bpc import unigram_bpc
from nextchar.models import ModelConfig, build_model
from nextchar.text import choose_format, read_corpus
from nextchar.training.config import TrainConfig, cpu_has_bf16
from nextchar.training.optimisation import sequence_loss

OUTPUTS = ("full", "tied")


def step_ms(output: str, symbols: int, bf16: bool, rounds: int) -> float:
    """Median ms of one forward + loss + backward of the default LSTM with this output layer."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=symbols, output=output)).train()
    shape = (TrainConfig.batch_size, TrainConfig.seq_len)
    x, y = torch.randint(3, symbols, shape), torch.randint(3, symbols, shape)
    times = []
    for _ in range(rounds + 1):  # the first round warms up
        started = time.perf_counter()
        loss, _ = sequence_loss(model, x, y, None, bf16)
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(1e3 * (time.perf_counter() - started))
    return statistics.median(times[1:])


def trained(corpus: Path, output: str, budget: float) -> dict[str, float | str]:
    """One `nextchar.train` run of `budget` seconds with this output layer, the defaults otherwise."""
    with tempfile.TemporaryDirectory() as out:
        nextchar.train(corpus, out, output=output, time_budget=budget, progress=False)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line]
    return {
        "output": output,
        "budget_s": budget,
        "steps": records[-1]["step"],
        "chars_per_s": records[-1]["chars_per_s"],
        "best_val_bpc": min(r["val_bpc"] for r in records),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=4618, help="vocabulary size of the step timing (default 4618)")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per layer (default 5)")
    parser.add_argument("--corpus", type=Path, help="also train on this corpus with each layer")
    parser.add_argument("--budget", default="120", help="seconds of each training run, comma-separated (default 120)")
    args = parser.parse_args()
    bf16 = cpu_has_bf16()  # what `train --precision auto` does on this CPU
    threads = torch.get_num_threads()
    print(
        f"one training step of the default LSTM, B×T = 32×128, V = {args.symbols:,}, {threads} threads, "
        f"{'bf16 autocast' if bf16 else 'fp32'}; median of {args.rounds}\n"
    )
    print("| output layer | ms per step | ratio to full |")
    print("|---|--:|--:|")
    steps = {output: step_ms(output, args.symbols, bf16, args.rounds) for output in OUTPUTS}
    for output, ms in steps.items():
        print(f"| {output} | {ms:.0f} | {ms / steps['full']:.2f} |")
    results: dict[str, object] = {"step_ms": steps}
    if args.corpus is not None:
        text = read_corpus(args.corpus)
        train_text, val_text = split_validation(text, choose_format(text), 0.1)
        counting = unigram_bpc(train_text, val_text)
        print(f"\n{args.corpus.name}: counting characters gives {counting:.3f} BPC on its validation split\n")
        print("| output layer | budget s | steps | chars/s | best validation BPC |")
        print("|---|--:|--:|--:|--:|")
        rows = []
        for budget in (float(b) for b in args.budget.split(",")):
            for output in OUTPUTS:
                row = trained(args.corpus, output, budget)
                rows.append(row)
                print(
                    f"| {output} | {budget:.0f} | {row['steps']} | {row['chars_per_s']:,.0f} | "
                    f"{row['best_val_bpc']:.3f} |",
                    flush=True,
                )
        results.update(corpus=str(args.corpus), counting_bpc=counting, runs=rows)
    settings = {"symbols": args.symbols, "rounds": args.rounds, "bf16": bf16, "threads": threads}
    print(f"results: {write_result('alphabet', {'settings': settings, **results})}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
