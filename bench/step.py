"""Benchmark: the cost of ONE model step as a function of how many hypotheses share it.

Completion pays one model step per character for every live hypothesis of a beam (8 by
default). This measures, on the same random weights in one process, a one-character step for
B hypotheses through the model's own forward (`stepper.run_model`, the baseline) and through
`stepper.Stepper` at each precision of its products (fp32: the same function; bf16; int8),
as time per step and per hypothesis: the case for the stepper, for low-precision products,
and for batching concurrent requests together (`nextchar.completion.lockstep.drive_together`). Median of
--rounds rounds of --steps steps, 1 torch thread (what each serving worker uses).

    python -m bench.step                          # the default LSTM size
    python -m bench.step --kind gru --layers 2 --hidden 384

The results go to bench/results/ with the command, commit and machine (bench.record).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bench.record import write_result
from nextchar.models import ModelConfig, build_model
from nextchar.stepper import Stepper, run_model

PRECISIONS = ("fp32", "bf16", "int8")


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
    parser.add_argument("--kind", default=ModelConfig.kind, choices=("lstm", "gru"))
    parser.add_argument("--hidden", type=int, default=ModelConfig.hidden_size)
    parser.add_argument("--layers", type=int, default=ModelConfig.num_layers)
    parser.add_argument("--batches", default="1,8,16,32,64,128")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(kind=args.kind, vocab_size=100, hidden_size=args.hidden, num_layers=args.layers)
    ).eval()
    steppers = {p: Stepper(model, p) for p in PRECISIONS}
    print(
        f"one step of a {args.layers}×{args.hidden} {args.kind} (vocabulary 100), 1 thread, "
        f"median of {args.rounds}×{args.steps} steps; ms per step (µs per hypothesis), "
        "and the speed-up over the model's forward\n"
    )
    print("| hypotheses | model forward (fp32) | " + " | ".join(f"stepper {p}" for p in PRECISIONS) + " |")
    print("|--:|--:|" + "--:|" * len(PRECISIONS))
    rows = []
    with torch.inference_mode():
        for batch in (int(b) for b in args.batches.split(",")):
            idx = torch.randint(3, 100, (batch, 1))
            state = tuple(torch.randn_like(s) * 0.5 for s in model.initial_state(batch))
            base = per_step_ms(lambda i=idx, s=state: run_model(model, i, s), args.steps, args.rounds)
            cells = [f"{base:.3f} ({1e3 * base / batch:.0f})"]
            stepper_ms = {}
            for precision, stepper in steppers.items():
                ms = per_step_ms(lambda f=stepper, i=idx, s=state: f(i, s), args.steps, args.rounds)
                cells.append(f"{ms:.3f} ({1e3 * ms / batch:.0f}) {base / ms:.2f}×")
                stepper_ms[precision] = ms
            print(f"| {batch} | " + " | ".join(cells) + " |")
            rows.append({"hypotheses": batch, "model_forward_ms": base, "stepper_ms": stepper_ms})
    settings = {
        "kind": args.kind,
        "hidden": args.hidden,
        "layers": args.layers,
        "vocabulary": 100,
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": 1,
    }
    print(f"results: {write_result('step', {'settings': settings, 'rows': rows})}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
