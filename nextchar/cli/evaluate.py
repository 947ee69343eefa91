"""`nextchar eval`: bits per character, top-1 and top-5 accuracy of a model on a corpus.

A text file is encoded in the model's own framing (or --format); a directory made by
`nextchar prepare` is read from its memory map a batch at a time, its vocabulary mapped onto
the model's. --adapt adds dynamic evaluation beside the static figures (nextchar.cli.adapt).
A checkpoint with a memory is scored by the mixture of the model and its memory
(nextchar.evaluation.mixture), the model's and the memory's own figures beside it; --no-memory
scores the model alone, as before the memory existed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nextchar.cli.options import add_memory_option, add_model_option, add_threads_option, loaded_memory, map_parameters
from nextchar.errors import UserError

if TYPE_CHECKING:  # the command imports what it needs when it runs (a fast --help)
    from nextchar.checkpoint import Checkpoint
    from nextchar.evaluation.bpc import EvalResult


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        help="bits per character and accuracy on a corpus",
        description="Evaluate a model on a corpus: bits per character (BPC), top-1 and top-5 "
        "next-character accuracy, and the number of predicted characters.",
    )
    p.add_argument("corpus", metavar="CORPUS", help="UTF-8 text file, or a directory made by `nextchar prepare`")
    add_model_option(p)
    p.add_argument(
        "--format",
        choices=("text", "lines"),
        default=None,
        help="how to frame the corpus (default: as the model was trained; a prepared directory's own)",
    )
    p.add_argument("--encoding-errors", choices=("strict", "replace"), default="strict")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_memory_option(p)
    add_threads_option(p)
    from nextchar.cli.adapt import add_eval_options  # --adapt and its settings

    add_eval_options(p)
    p.set_defaults(run=run)
    map_parameters(p, {"vocab_from": "--vocab-from"})  # a prepared directory of another alphabet: prepare's flag


def run(args: argparse.Namespace) -> int:
    from nextchar.checkpoint import load_checkpoint
    from nextchar.data.batches import count_targets, encode_corpus
    from nextchar.data.prepared import is_prepared
    from nextchar.evaluation.bpc import evaluate_encoded
    from nextchar.text import read_corpus

    ckpt = load_checkpoint(args.model)
    if is_prepared(args.corpus):
        return _eval_prepared(args, ckpt)
    text = read_corpus(args.corpus, args.encoding_errors)
    encoded = encode_corpus(text, ckpt.vocab, args.format or ckpt.format)
    if count_targets(encoded) == 0:
        raise UserError(f"{args.corpus}: nothing to evaluate after mapping onto the model's alphabet")
    if args.adapt:  # dynamic evaluation, printed beside the static figures
        from nextchar.cli.adapt import run_adapted_eval

        return run_adapted_eval(args, ckpt, encoded, args.format or ckpt.format)
    memory = loaded_memory(ckpt, args)
    if memory is None:
        _print_eval(evaluate_encoded(ckpt.model, encoded), args.json)
        return 0
    from nextchar.evaluation.mixture import evaluate_mixture

    mixed = evaluate_mixture(ckpt.model, encoded, *memory)
    if args.json:
        print(json.dumps({**mixed.mixture.to_json(), "rnn": mixed.rnn.to_json(), "memory": mixed.memory.to_json()}))
    else:
        _print_eval(mixed.mixture, False)
        print(
            f"the model alone {mixed.rnn.bpc:.4f} bpc, the memory alone {mixed.memory.bpc:.4f} "
            "(--no-memory: the model alone)"
        )
    return 0


def _eval_prepared(args: argparse.Namespace, ckpt: Checkpoint) -> int:
    """`eval DIR`: the whole prepared corpus, read from its memory map a batch at a time."""
    from nextchar.checkpoint import MEMORY_KEY
    from nextchar.data.prepared import PreparedCorpus, PreparedLines, vocabulary_mapping
    from nextchar.evaluation.bpc import evaluate_lines, evaluate_stream

    directory = Path(args.corpus)
    corpus = PreparedCorpus.open(directory)
    if args.format and args.format != corpus.format:
        raise UserError(
            f"{directory}: was prepared in {corpus.format} format, not {args.format}; "
            "prepare it again with --format or leave --format out"
        )
    if args.adapt:
        raise UserError(f"{directory}: --adapt reads a text file, not a prepared directory; give the text file")
    if args.memory and ckpt.meta.get(MEMORY_KEY) is not None:
        print(
            f"nextchar eval: note: {directory} is scored by the model alone, all of it: with the memory, about 30 µs "
            "more per character at 1 GB, hours for a corpus larger than memory; give a text file to score the mixture",
            file=sys.stderr,
        )
    mapping = vocabulary_mapping(corpus.vocab, ckpt.vocab, directory)
    if corpus.format == "text":
        if len(corpus.tokens) < 2:
            raise UserError(f"{directory}: nothing to evaluate (no characters)")
        result = evaluate_stream(ckpt.model, corpus.tokens, mapping=mapping)
    else:
        if corpus.n_lines == 0:
            raise UserError(f"{directory}: nothing to evaluate (no lines)")
        lines = PreparedLines(corpus, mapping)
        result = evaluate_lines(ckpt.model, lines, lengths=lines.lengths())
    _print_eval(result, args.json)
    return 0


def _print_eval(result: EvalResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_json()))
    else:
        print(f"bpc   {result.bpc:.4f}\ntop1  {result.top1:.4f}\ntop5  {result.top5:.4f}\nchars {result.chars}")
