"""Compression baselines for bits per character, conditional on the training text.

A compressor that has read the training text "knows" it; what it needs in addition for the
validation text is 8·(C(train + val) − C(train)) bits, divided by the validation length.
bz2 and lzma come with Python; PPMd (order 6, variant H) comes from `pyppmd` if installed.
"""

from __future__ import annotations

import bz2
import lzma
from collections.abc import Callable


def _ppmd(data: bytes) -> bytes:
    import pyppmd

    encoder = pyppmd.Ppmd7Encoder(6, 256 << 20)  # Ppmd7 = variant H; order 6; 256 MiB model memory
    return encoder.encode(data) + encoder.flush()


def compressors() -> dict[str, Callable[[bytes], bytes]]:
    found: dict[str, Callable[[bytes], bytes]] = {
        "bz2 -9": lambda b: bz2.compress(b, 9),
        "lzma -9e": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
    }
    try:
        import pyppmd  # noqa: F401

        found["PPMd order 6 (var. H)"] = _ppmd
    except ImportError:
        pass
    return found


def conditional_bpc(compress: Callable[[bytes], bytes], train: str, val: str) -> float:
    """8·(C(train+val) − C(train)) / len(val), lengths in characters."""
    a = len(compress(train.encode("utf-8")))
    b = len(compress((train + val).encode("utf-8")))
    return 8.0 * (b - a) / len(val)
