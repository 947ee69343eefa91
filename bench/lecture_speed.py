"""Benchmark: training speed of the lecture's NumPy engine against nextchar's PyTorch `rnn` model.

Both train the lecture's RNN at the same size (m = 128 by default, ℓ = v = 30: the lecture's
alphabet) on the same batches (B = 32 windows of T = 64 characters of the embedded corpus),
in this same process, on the CPU, with the same number of threads:

  - numpy float64 / float32: `nextchar.lecture` — hand-written forward and backward
    (rnn.loss_and_gradients), gradient clipping, and the SGD update;
  - torch rnn + SGD / AdamW: the foundation's `LectureRNN` (fused torch.rnn_tanh kernel),
    its training loss (`training.sequence_loss`), autograd, clipping and the optimizer step.

Rounds alternate the engines so that a busy machine slows them alike; the table gives the
median chars/s over rounds and the ratio baseline (torch + AdamW) / engine.

    python -m bench.lecture_speed            # 10 rounds of 20 steps each (about a minute)
    python -m bench.lecture_speed --quick    # a few seconds

The results go to bench/results/ with the command, commit and machine (bench.record).
"""

from __future__ import annotations

import os
import sys

# NumPy reads its BLAS thread count when it is first imported, so fix it before any import;
# only when run, not when imported (a test importing this module keeps its environment).
if __name__ == "__main__":
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.record import write_result
from nextchar.lecture.rnn import init_params, loss_and_gradients, make_batch
from nextchar.lecture.sgd import clip_gradients, sgd_step
from nextchar.models import ModelConfig, build_model
from nextchar.text import Vocabulary, embedded_corpus
from nextchar.training.optimisation import sequence_loss


def batches(count: int, batch_size: int, seq_len: int, seed: int = 0) -> list[np.ndarray]:
    """`count` batches of (B, T+1) indices: random windows of the embedded corpus, lecture alphabet."""
    vocab = Vocabulary.from_text("", alphabet="lecture")
    text = vocab.prepare(embedded_corpus()).replace("\n", " ")
    data = np.array(vocab.encode(text), dtype=np.int64)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(data) - seq_len - 1, size=(count, batch_size))
    return [np.stack([data[s : s + seq_len + 1] for s in row]) for row in starts]


def numpy_step(hidden: int, v: int, dtype: type) -> Callable[[np.ndarray], None]:
    params = init_params(hidden, v, v, seed=0, dtype=dtype)

    def step(windows: np.ndarray) -> None:
        batch = make_batch(windows[:, :-1], windows[:, 1:], v, v, dtype)
        _, grads = loss_and_gradients(params, batch, "tanh")
        for _, g in grads.items():
            g /= len(windows)
        clip_gradients(grads, 1.0)
        sgd_step(params, grads, 0.1)

    return step


def torch_step(hidden: int, v: int, optimizer: str) -> Callable[[np.ndarray], None]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="rnn", vocab_size=v, hidden_size=hidden)).train()
    opt = (
        torch.optim.AdamW(model.parameters(), lr=1e-3)
        if optimizer == "adamw"
        else torch.optim.SGD(model.parameters(), lr=0.1)
    )

    def step(windows: np.ndarray) -> None:
        w = torch.from_numpy(windows)
        loss, _ = sequence_loss(model, w[:, :-1], w[:, 1:], None, bf16=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=128, help="state size m (default 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="B (default 32)")
    parser.add_argument("--seq-len", type=int, default=64, help="T (default 64)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds (default 10)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per engine per round (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for NumPy's BLAS and torch (default 1)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 5 steps")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 3, 5
    torch.set_num_threads(args.threads)
    v = len(Vocabulary.from_text("", alphabet="lecture"))
    engines = {
        "torch rnn + AdamW (baseline)": torch_step(args.hidden, v, "adamw"),
        "torch rnn + SGD": torch_step(args.hidden, v, "sgd"),
        "numpy float64 + SGD": numpy_step(args.hidden, v, np.float64),
        "numpy float32 + SGD": numpy_step(args.hidden, v, np.float32),
    }
    data = batches(args.steps + 1, args.batch_size, args.seq_len)
    for step in engines.values():  # warm-up: allocations, kernel selection
        step(data[-1])
    rates: dict[str, list[float]] = {name: [] for name in engines}
    chars = args.batch_size * args.seq_len * args.steps
    for _ in range(args.rounds):
        for name, step in engines.items():
            started = time.perf_counter()
            for windows in data[: args.steps]:
                step(windows)
            rates[name].append(chars / (time.perf_counter() - started))
    median = {name: statistics.median(r) for name, r in rates.items()}
    baseline = median["torch rnn + AdamW (baseline)"]
    print(
        f"lecture RNN training step on CPU: m = {args.hidden}, ℓ = v = {v}, B = {args.batch_size}, "
        f"T = {args.seq_len}, {args.threads} thread(s); median of {args.rounds} rounds × {args.steps} steps"
    )
    print(f"{'engine':<30} {'chars/s':>10} {'ratio':>7}")
    for name, rate in median.items():
        print(f"{name:<30} {rate:>10,.0f} {baseline / rate:>6.2f}×")
    print("ratio = baseline chars/s ÷ engine chars/s (above 1: slower than the baseline)")
    settings = {
        "hidden": args.hidden,
        "vocabulary": v,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "rounds": args.rounds,
        "steps": args.steps,
        "threads": args.threads,
        "quick": args.quick,
    }
    engines_out = {
        name: {
            "median_chars_per_s": median[name],
            "ratio": baseline / median[name],
            "chars_per_s_by_round": rates[name],
        }
        for name in median
    }
    path = write_result("lecture_speed", {"settings": settings, "engines": engines_out})
    print(f"results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
