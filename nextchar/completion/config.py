"""What a completer can be asked for, and every default it has, written down once (torch-free).

The CLI (`complete`, `type`, `eval-complete`, `serve`), the service's settings and the Python API
all read their defaults from `CompleterConfig` and their choices from the tuples here, so that a
default changed here changes everywhere, and building a command's parser imports no torch.

    config = CompleterConfig(beam_width=16)        # every other field keeps its default
    Completer(ckpt, config=config)                 # or Completer(ckpt, beam_width=16)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypedDict, get_args

from nextchar.errors import UserError

Mode = Literal["word", "line", "phrase"]  # the rest of the word / of the line / up to max_words words
MODES: tuple[str, ...] = get_args(Mode)
PRECISIONS = ("auto", "fp32", "bf16", "int8")  # of a search's matrix products (nextchar.stepper)
PRECISION_HELP = (
    "of the search's matrix products: fp32 (exact), bf16, int8 (suggestions can differ in near "
    "ties), or auto = int8 for lstm/gru models where PyTorch has x86 int8 kernels"
)
# The commands and the service serve in "auto" (int8 where it is fast: p99 7.1 ms a keystroke
# against 11.7 in fp32, nextchar.stepper.auto_precision). The Python API stays exact
# (CompleterConfig.precision, fp32) unless asked, because results are compared and reproduced
# there and int8 can swap near ties; Completer(ckpt, precision="auto") serves as the commands do.
SERVING_PRECISION = "auto"
K_MAX = 50  # larger k is clamped: a drop-down longer than this is not a drop-down
BEAM_MAX = 256  # wider beams are clamped: past this a search costs more than it finds
DEFAULT_K = 8  # suggestions shown when k is not given (a search box's drop-down)
# What `serve` and `type` give a search before it returns its best so far; the Python API and
# `complete` stay exact (deadline 0). Measured in docs/results.md#the-memory.
SERVING_DEADLINE_MS = 8.0


@dataclass(frozen=True)
class CompleterConfig:
    """The settings of a `Completer`: how widely it searches and what a suggestion may be."""

    beam_width: int = 8  # hypotheses kept per search step (at least k; clamped to BEAM_MAX)
    max_chars: int = 48  # longest completion in characters
    max_words: int = 3  # words per suggestion in `phrase` mode
    length_alpha: float = 0.0  # length normalisation: rank by log p / len^alpha (0: plain log p)
    min_chars: int = 2  # shortest completion offered (trailing whitespace not counted; corrections exempt)
    lexicon_weight: float = 0.0  # with a lexicon: weight of log(entry weight) beside the model's log p
    typo_penalty: float = 4.0  # nats a correction costs against an exact completion
    typo_window: int = 8  # last characters of the text where a typo is looked for
    cjk_word_chars: int = 2  # a "word" in scripts written without spaces: this many characters
    max_context: int = 2048  # characters of context the model reads (older ones are dropped)
    max_stack: int = 8192  # states kept along one typed text (a session's undo stack)
    cache_size: int = 4096  # model states cached across texts (LRU); 0: none
    reuse: bool = True  # continue from cached states instead of reading every text from the start
    precision: str = "fp32"  # of the search's matrix products: one of PRECISIONS
    deadline_ms: float = 0.0  # a search returns its best so far after this long (0: none, exact)

    def __post_init__(self) -> None:
        lows = {
            "beam_width": 1,
            "max_chars": 1,
            "max_words": 1,
            "min_chars": 1,
            "typo_window": 1,
            "cjk_word_chars": 1,
            "max_context": 1,
            "max_stack": 64,
            "cache_size": 0,
        }
        for name, low in lows.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{name} must be a whole number ≥ {low}, not {value!r}")
        for name in ("length_alpha", "lexicon_weight", "typo_penalty", "deadline_ms"):
            number = getattr(self, name)
            if isinstance(number, bool) or not (
                isinstance(number, int | float) and math.isfinite(number) and number >= 0
            ):
                raise UserError(f"{name} must be a finite number ≥ 0, not {number!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be {', '.join(PRECISIONS)}, not {self.precision!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


DEFAULTS = CompleterConfig()  # read by parsers and settings for their defaults


class ConfigOverrides(TypedDict, total=False):
    """Keyword arguments that override fields of a CompleterConfig: `Completer(ckpt, beam_width=16)`.

    The same names and types as CompleterConfig's fields (tests/completion/test_completer.py
    checks they agree); no defaults here, those are CompleterConfig's.
    """

    beam_width: int
    max_chars: int
    max_words: int
    length_alpha: float
    min_chars: int
    lexicon_weight: float
    typo_penalty: float
    typo_window: int
    cjk_word_chars: int
    max_context: int
    max_stack: int
    cache_size: int
    reuse: bool
    precision: str
    deadline_ms: float


def check_k(k: int) -> int:
    """k as given, clamped to K_MAX; k ≤ 0 or not a whole number is a UserError."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise UserError(f"k must be a whole number, not {k!r}")
    if k < 1:
        raise UserError(f"k must be at least 1, not {k}")
    return min(k, K_MAX)


def check_mode(mode: str) -> str:
    """`mode` if it is one of MODES, else a UserError naming the choices."""
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode
