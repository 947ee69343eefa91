"""What the commands' parsers share: number types checked with a one-line message, -m/--model,
--no-memory (and loaded_memory, which applies it), --threads (and command_threads, which
applies it), the search options of the commands that complete (their defaults
nextchar.completion.config's), and the mapping from library parameters to a command's flags
(map_parameters)."""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from nextchar.completion.config import DEFAULTS, PRECISION_HELP, PRECISIONS, SERVING_PRECISION
from nextchar.errors import MissingExtra

if TYPE_CHECKING:  # the commands import torch when they run, not for --help
    from nextchar.checkpoint import Checkpoint
    from nextchar.recall.estimator import Memory
    from nextchar.recall.mixer import Mixer

# The parsed arguments' attribute that holds a command's map_parameters (read by nextchar.cli.main).
PARAMETER_FLAGS = "parameter_flags"


def map_parameters(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    """Spell these library parameters (as UserError names them) as these flags in this command's
    errors: for a parameter named unlike the option's dest (`AdaptConfig.lr` → `--adapt-lr`), or
    for a hint that names another command's flag (`vocab_from` → `--vocab-from`, of prepare). An
    option whose dest is the parameter needs no entry. Adds to what the parser maps already."""
    parser.set_defaults(**{PARAMETER_FLAGS: {**(parser.get_default(PARAMETER_FLAGS) or {}), **flags}})


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
    parser.add_argument(
        "-m", "--model", metavar="DIR", default=None, help="checkpoint directory (default: the bundled model)"
    )


MEMORY_HELP = (
    "use the model alone: leave out its memory of the training text (the checkpoint's memory index "
    "and the mixer that combines it with the model; `nextchar index` adds one). Without this, a "
    "checkpoint that has a memory predicts with the mixture"
)


def add_memory_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--no-memory, of every command that predicts with a checkpoint (see `loaded_memory`)."""
    parser.add_argument("--no-memory", dest="memory", action="store_false", help=MEMORY_HELP)


def loaded_memory(ckpt: Checkpoint, args: argparse.Namespace) -> tuple[Memory, Mixer] | None:
    """The checkpoint's memory and mixer, unless --no-memory or it has none."""
    if not getattr(args, "memory", True):
        return None
    from nextchar.checkpoint import read_memory
    from nextchar.recall.estimator import Memory

    found = read_memory(ckpt)
    if found is None:
        return None
    indexes, mixer = found
    return Memory(indexes, len(ckpt.vocab)), mixer


THREADS_HELP = (
    "CPU threads to compute with (default: the cores this process may use, less those that other "
    "jobs keep busy; OMP_NUM_THREADS if set)"
)


def add_threads_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: int | None = None, help_text: str = THREADS_HELP
) -> None:
    """--threads N (at least 1), of every command that computes with torch; nextchar.cli.main
    applies it (command_threads) before the command runs. `default` None: choose by the machine
    (nextchar.threads.default_threads); the completing commands keep 1, their fastest."""
    parser.add_argument("--threads", type=positive_int, default=default, help=help_text)


@contextmanager
def command_threads(args: argparse.Namespace) -> Iterator[None]:
    """The parsed command runs with the torch threads it asks for (--threads, else the default
    of nextchar.threads), and the process's count is put back after it; a command without
    --threads runs as it is."""
    if "threads" not in vars(args):
        yield
        return
    from nextchar.threads import computing_with, default_threads

    with computing_with(args.threads or default_threads()):
        yield


def add_search_options(parser: argparse.ArgumentParser, deadline_ms: float = 0.0) -> argparse._ArgumentGroup:
    """The "search" group of `complete`, `type`, `eval-complete` and `serve`: --beam, --max-chars,
    --max-words, --precision and --deadline-ms, with the completer's defaults (torch-free: read
    for --help; `deadline_ms`: this command's). Returns the group, for a command's own options."""
    group = parser.add_argument_group("search")
    group.add_argument(
        "--deadline-ms",
        type=finite_number,
        default=deadline_ms,
        metavar="MS",
        help=f"a search returns its best so far after MS milliseconds (default {deadline_ms:g}; 0: none, exact)",
    )
    group.add_argument(
        "--beam",
        type=whole_number,
        default=DEFAULTS.beam_width,
        metavar="N",
        help=f"beam width (default {DEFAULTS.beam_width}; at least k)",
    )
    group.add_argument(
        "--max-chars",
        type=whole_number,
        default=DEFAULTS.max_chars,
        metavar="N",
        help=f"longest completion (default {DEFAULTS.max_chars})",
    )
    group.add_argument(
        "--max-words",
        type=whole_number,
        default=DEFAULTS.max_words,
        metavar="N",
        help=f"words per phrase (default {DEFAULTS.max_words})",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=SERVING_PRECISION,
        help=f"{PRECISION_HELP} (default {SERVING_PRECISION})",
    )
    return group


def require_extra(extra: str, *modules: str, command: str | None = None) -> None:
    """Import `modules`, the optional dependencies of `extra`, or raise MissingExtra naming the extra.

    Called first thing by the commands that need an extra (serve, type), so that a plain
    `pip install nextchar` gets one line saying what to install rather than an ImportError
    traceback. `command` is the command's name when it differs from the extra's.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtra(command or extra, extra, module) from None
