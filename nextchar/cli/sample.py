"""`nextchar sample` and `nextchar predict`: text from a model, and its next-character distribution.

Both read a checkpoint (the bundled model by default) and hand the work to nextchar.sampling;
this module only parses the flags and prints.
"""

from __future__ import annotations

import argparse
import json

from nextchar.cli.options import (
    add_memory_option,
    add_model_option,
    add_threads_option,
    loaded_memory,
    positive_float,
    positive_int,
)

# How predict shows characters that print as nothing (space, newline, tab).
VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The sample command, then the predict command (the order of `nextchar --help`)."""
    _add_sample(sub)
    _add_predict(sub)


def _add_sample(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sample", help="generate text from a model", description="Generate text by sampling one character at a time."
    )
    add_model_option(p)
    add_memory_option(p)
    p.add_argument("--prefix", default="", help="text to continue (default: none)")
    p.add_argument("--length", type=int, default=300, help="characters to generate (default 300)")
    p.add_argument("--temperature", type=positive_float, default=0.8, help="softmax temperature (default 0.8)")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample only among the k most likely")
    p.add_argument("--seed", type=int, default=None, help="random seed for repeatable samples")
    p.add_argument("-n", "--num", type=positive_int, default=1, help="number of samples (default 1)")
    add_threads_option(p)
    p.set_defaults(run=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from nextchar.checkpoint import load_checkpoint
    from nextchar.sampling import sample

    ckpt = load_checkpoint(args.model)
    recall = loaded_memory(ckpt, args)
    for i in range(args.num):
        seed = None if args.seed is None else args.seed + i
        print(args.prefix + sample(ckpt, args.prefix, args.length, args.temperature, args.top_k, seed, recall))
    return 0


def _add_predict(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "predict",
        help="the next-character distribution after a text",
        description="Print the k most likely next characters after TEXT with their "
        "probabilities ($ is the end of a line, ␣ a space, ⏎ a newline).",
    )
    p.add_argument("text", metavar="TEXT", help="what has been typed so far (may be empty)")
    add_model_option(p)
    add_memory_option(p)
    p.add_argument("-k", type=positive_int, default=10, help="how many characters (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON: [{char, prob}, ...]")
    add_threads_option(p)
    p.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from nextchar.checkpoint import load_checkpoint
    from nextchar.sampling import predict

    ckpt = load_checkpoint(args.model)
    top = predict(ckpt, args.text, args.k, loaded_memory(ckpt, args))
    if args.json:
        print(json.dumps([{"char": c, "prob": p} for c, p in top], ensure_ascii=False))
    else:
        for char, prob in top:
            print(f"{VISIBLE.get(char, char)!s:>3}  {prob:6.3f}  {'█' * round(prob * 40)}")
    return 0
