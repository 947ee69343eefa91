"""The `nextchar` command: the parser of every command family, and the one place errors are printed.

Each family lives in its own module and adds its sub-commands with `add_parser(sub)`:

    train.py      train
    evaluate.py   eval
    sample.py     sample, predict
    prepare.py    prepare
    complete.py   complete, type, eval-complete
    serve.py      serve
    lecture.py    lecture table|weights|gradcheck|train|load

Every command that uses a model takes it as -m/--model DIR and defaults to the bundled
model. User mistakes raise UserError, printed here as one line with exit status 2. Each
family imports what a command runs on inside the function that runs it, so that building
the parser (--help) loads as little as it can.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from nextchar.errors import MissingExtra, UserError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's status for a SIGINT


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (not the whole usage block) and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Every family's sub-commands, in the order `nextchar --help` lists them."""
    from nextchar.cli import complete, evaluate, lecture, prepare, sample, serve, train

    train.add_parser(sub)
    evaluate.add_parser(sub)
    sample.add_parser(sub)  # sample, predict
    prepare.add_parser(sub)
    complete.add_parser(sub)  # complete, type, eval-complete
    serve.add_parser(sub)
    lecture.add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    from nextchar import __version__

    parser = _Parser(
        prog="nextchar",
        description="Character-level recurrent models for autocomplete (after MIT 6.036's lecture on RNNs).",
    )
    parser.add_argument("--version", action="version", version=f"nextchar {__version__}")
    # Typed as the plain parser's action: the families build their parsers with argparse's API only.
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser
    )
    _add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.run(args) or 0)
    except MissingExtra as exc:  # its message is already the whole line, naming the command
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except UserError as exc:
        print(f"nextchar: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nextchar: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
