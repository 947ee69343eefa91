"""The `nextchar` command: the parser of every command family, and the one place errors are printed.

Each family lives in its own module and adds its sub-commands with `add_parser(sub)`:

    train.py      train
    evaluate.py   eval
    sample.py     sample, predict
    prepare.py    prepare, index
    complete.py   complete, type, eval-complete
    serve.py      serve
    lecture.py    lecture table|weights|gradcheck|train|load

Every command that uses a model takes it as -m/--model DIR and defaults to the bundled
model. User mistakes raise UserError, printed here as one line with exit status 2, in the
one form of every error, argparse's usage errors included (error_line):
`nextchar: error: COMMAND: MESSAGE`. Each
family imports what a command runs on inside the function that runs it, so that building
the parser (--help) loads as little as it can.
Every command that computes takes --threads N, applied here before it runs (the default:
nextchar.threads.default_threads; see nextchar.cli.options.command_threads).

A UserError from the library names Python parameters (`seq_len`, `encoding_errors="replace"`)
and lists them in `exc.parameters`; before printing, each becomes the flag that the command
that ran spells it with: the option whose dest is the parameter (`--seq-len`), or what the
command maps it to (nextchar.cli.options.map_parameters: `AdaptConfig.lr` → `--adapt-lr`);
a keyword, `name="value"` or `name=value`, becomes `--flag value`. A parameter the command has
no flag for stays as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from nextchar.cli.options import PARAMETER_FLAGS, command_threads
from nextchar.errors import UserError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's status for a SIGINT


def error_line(command: str, message: str, usage: bool = False) -> str:
    """The one line every error is printed as: `nextchar: error: COMMAND: MESSAGE`, and for a
    usage error (argparse's) where to read the command's usage.

        nextchar: error: train: argument --steps: expected a number ≥ 1, got '0' (see nextchar train --help)
        nextchar: error: train: corpus.txt: the file is empty
        nextchar: error: serve: needs the [serve] extra: pip install 'nextchar[serve]'
    """
    where = f"{command}: " if command else ""
    hint = f" (see {' '.join(('nextchar', command)).strip()} --help)" if usage else ""
    return f"nextchar: error: {where}{message}{hint}"


def command_name(parser: argparse.ArgumentParser) -> str:
    """The command a parser parses, without the program's name: "train", "lecture table", ""."""
    return parser.prog.removeprefix("nextchar").strip()


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (not the whole usage block, see error_line) and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(error_line(command_name(self), message, usage=True), file=sys.stderr)
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


def command_parsers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[argparse.ArgumentParser]:
    """The parsers from `parser` down to that of the command that `args` ran."""
    chain = [parser]
    while True:
        below = None
        for action in chain[-1]._actions:  # argparse keeps its sub-parsers only here
            if isinstance(action, argparse._SubParsersAction):
                below = action.choices.get(getattr(args, action.dest, None) or "")
        if below is None:
            return chain
        chain.append(below)


def command_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """Parameter → the flag that means it, for the command that ran: the dest of each option of
    the parsers from `parser` down to that command's (a sub-command's own option wins), then the
    command's own mapping (map_parameters). An option is named by its long flag (-k when it has none)."""
    flags: dict[str, str] = {}
    for current in command_parsers(parser, args):
        for action in current._actions:  # argparse keeps dest → option strings only here
            if action.option_strings and not isinstance(action, argparse._SubParsersAction):
                long = [option for option in action.option_strings if option.startswith("--")]
                flags[action.dest] = (long or action.option_strings)[0]
    flags.update(getattr(args, PARAMETER_FLAGS, None) or {})
    return flags


def as_flags(message: str, parameters: Sequence[str], flags: dict[str, str]) -> str:
    """`message` with each of `parameters` that `flags` knows replaced by its flag, as a whole word
    (not inside a longer name or a path): `seq_len` → `--seq-len`, `encoding_errors="replace"` →
    `--encoding-errors replace`, `vocab_from=run` → `--vocab-from run`."""
    for name in parameters:
        flag = flags.get(name)
        if flag is None:
            continue
        pattern = re.compile(
            rf"(?<![\w./\\-]){re.escape(name)}"
            r"""(?:=(?:"(?P<double>[^"]*)"|'(?P<single>[^']*)'|(?P<bare>))|(?![\w/\\-]))"""
        )

        def spelled(match: re.Match[str], flag: str = flag) -> str:
            value = next((v for v in match.group("double", "single", "bare") if v is not None), None)
            return flag if value is None else f"{flag} {value}"

        message = pattern.sub(spelled, message)
    return message


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's own parser, which names the command (argparse's, the top one)
        command_parsers(parser, args)[-1].error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        with command_threads(args):  # --threads, or the machine's choice (nextchar.threads)
            return int(args.run(args) or 0)
    except UserError as exc:  # MissingExtra too: its message names the extra to install
        message = as_flags(str(exc), exc.parameters, command_flags(parser, args))
        print(error_line(command_name(command_parsers(parser, args)[-1]), message), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nextchar: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
