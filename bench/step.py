"""Benchmark: the cost of ONE model step as a function of how many hypotheses share it.

Completion pays one model step per character for every live hypothesis of a beam (8 by
default). This measures, on the same random weights in one process, a step for B hypotheses
with fp32 weights and with bf16 weights (the serving default on CPUs with bf16 units), as
time per step and per hypothesis: the case for batching concurrent requests together
(`nextchar.beam.drive_together`) and for bf16 inference. Median of --rounds rounds of
--steps steps, 1 torch thread (what each serving worker uses).

    python bench/step.py                          # the default LSTM size
    python bench/step.py --kind gru --layers 2 --hidden 384
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nextchar.models import ModelConfig, build_model
from nextchar.stepper import run_model


def per_step_ms(fn, steps: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(steps):
            fn()
        times.append((time.perf_counter() - started) / steps * 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default=ModelConfig.kind, choices=("lstm", "gru", "rnn"))
    parser.add_argument("--hidden", type=int, default=ModelConfig.hidden_size)
    parser.add_argument("--layers", type=int, default=ModelConfig.num_layers)
    parser.add_argument("--batches", default="1,8,16,32,64,128")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=args.kind, vocab_size=100, hidden_size=args.hidden,
                                    num_layers=args.layers)).eval()
    half = copy.deepcopy(model).to(torch.bfloat16)
    print(f"one step of a {args.layers}×{args.hidden} {args.kind} (vocabulary 100), 1 thread, "
          f"median of {args.rounds}×{args.steps} steps")
    print(f"{'hypotheses':>10}  {'fp32 step':>10}  {'per hyp.':>9}  {'bf16 step':>10}  {'per hyp.':>9}  "
          f"{'bf16 per hyp. vs fp32 at 8':>27}")
    base = None
    with torch.inference_mode():
        for batch in (int(b) for b in args.batches.split(",")):
            idx = torch.randint(3, 100, (batch, 1))
            state = model.initial_state(batch)
            fp32 = per_step_ms(lambda m=model, i=idx, s=state: run_model(m, i, s), args.steps, args.rounds)
            bf16 = per_step_ms(lambda m=half, i=idx, s=state: run_model(m, i, s), args.steps, args.rounds)
            if batch == 8:
                base = fp32 / 8
            ratio = f"{base / (bf16 / batch):.2f}×" if base else ""
            print(f"{batch:>10}  {fp32:>7.3f} ms  {1e3 * fp32 / batch:>6.0f} µs  {bf16:>7.3f} ms  "
                  f"{1e3 * bf16 / batch:>6.0f} µs  {ratio:>27}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
