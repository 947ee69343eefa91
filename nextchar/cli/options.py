"""What every command's parser shares: number types checked with a one-line message, and -m/--model."""

from __future__ import annotations

import argparse
import math

# --precision of the commands that search (nextchar.stepper.PRECISIONS; spelled out here so
# that building a parser does not import torch).
PRECISIONS = ("auto", "fp32", "bf16", "int8")
PRECISION_HELP = ("of the search's matrix products: fp32 (exact), bf16, int8 (suggestions can differ in near "
                  "ties), or auto = int8 for lstm/gru models where PyTorch has x86 int8 kernels (default auto)")


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def finite_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = finite_number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """-m/--model DIR, which every command that uses a model takes (None: the bundled model)."""
    parser.add_argument("-m", "--model", metavar="DIR", default=None,
                        help="checkpoint directory (default: the bundled model)")
