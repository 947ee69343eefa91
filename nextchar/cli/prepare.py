"""`nextchar prepare`: the command that streams corpora into a prepared directory; `nextchar
index`: the memory index of a model's training text, added to its checkpoint.

The streaming itself is `nextchar.data.prepare`; this module adds what a command needs and the
data layer must not know: the options, the report, and --vocab-from, which may name a model
(a checkpoint) as well as a prepared directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nextchar.cli.options import map_parameters, positive_int
from nextchar.text import Vocabulary


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "prepare",
        help="stream corpora into a memory-mapped directory for `train DIR`",
        description="Encode any number of UTF-8 corpora (- for standard input) into DIR: a memory-mapped "
        "token array plus the vocabulary, in constant memory. `nextchar train DIR` then trains "
        "on corpora larger than RAM.",
    )
    p.add_argument("corpus", nargs="+", metavar="CORPUS", help="UTF-8 text files, or - for standard input")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory")
    p.add_argument(
        "--format",
        choices=("auto", "text", "lines"),
        default="auto",
        help="as for `train` (default auto; with --vocab-from, that directory's format)",
    )
    p.add_argument(
        "--alphabet",
        choices=("corpus", "lecture"),
        default="corpus",
        help="corpus: every character seen; lecture: a-z and space (default corpus)",
    )
    p.add_argument(
        "--vocab-from",
        metavar="DIR",
        help="reuse the vocabulary of a prepared directory or a checkpoint (new characters → <unk>)",
    )
    p.add_argument(
        "--encoding-errors",
        choices=("strict", "replace"),
        default="strict",
        help="on invalid UTF-8: stop (strict) or use U+FFFD (replace)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_prepare)
    map_parameters(p, {"corpus_format": "--format"})

    q = sub.add_parser(
        "index",
        help="add the memory of a model's training text (index and mixer) to its checkpoint",
        description="Index CORPUS, the text MODEL was trained on, for exact recall (a suffix array over its "
        "symbols, nextchar.data.memory), fit the mixer that combines it with the model on the validation "
        "split (nextchar.recall.mixer), and add both to MODEL's directory. Only the training split is "
        "indexed, cut as `train` cut it, so that the validation text stays unseen. With --whole the "
        "mixer learns from the training text with leave-one-out counts. `train` does this itself at "
        "the end unless --no-memory.",
    )
    q.add_argument(
        "corpus",
        nargs="?",
        metavar="CORPUS",
        help="the model's training corpus: UTF-8 text, or a directory made by `nextchar prepare` "
        "(default: the embedded corpus)",
    )
    q.add_argument("-m", "--model", metavar="DIR", required=True, help="the checkpoint directory to add the index to")
    q.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="the tail left out as validation (default: the fraction the model recorded, or 0.1)",
    )
    q.add_argument("--whole", action="store_true", help="index all of CORPUS (the model was validated on another file)")
    q.add_argument(
        "--shard-symbols",
        type=positive_int,
        metavar="N",
        help="a prepared CORPUS is indexed in shards of at most N symbols: what building needs is bounded by one, "
        "and one index answers faster than shards of it (default 2^30 when the vocabulary fits a byte, building "
        "with about 5.3 GB; else 2^28, about 5.4 GB)",
    )
    q.add_argument("--encoding-errors", choices=("strict", "replace"), default="strict", help="as for `train`")
    q.set_defaults(run=_run_index)


def given_vocabulary(directory: Path) -> tuple[Vocabulary, str]:
    """The vocabulary and format of a prepared directory or a checkpoint (for --vocab-from)."""
    from nextchar.checkpoint import CONFIG_NAME, load_checkpoint
    from nextchar.data.prepared import PREPARED_NAME, is_prepared, read_prepared_meta
    from nextchar.errors import UserError

    if is_prepared(directory):
        meta = read_prepared_meta(directory)
        return Vocabulary.from_json(meta["vocabulary"]), meta["format"]
    if directory.is_dir() and not (directory / CONFIG_NAME).exists():
        raise UserError(
            f"{directory}: neither a prepared directory (no {PREPARED_NAME}) nor a checkpoint "
            f"(no {CONFIG_NAME}); check --vocab-from"
        )
    ckpt = load_checkpoint(directory)
    return ckpt.vocab, ckpt.format


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _run_prepare(args: argparse.Namespace) -> int:
    from nextchar.data.memory import token_dtype
    from nextchar.data.prepare import check_arguments, prepare

    # The arguments first, then --vocab-from: the first problem named is the one prepare names.
    check_arguments(args.corpus, args.out, args.format, args.alphabet, args.encoding_errors)
    vocab: Vocabulary | None = None
    corpus_format = args.format
    if args.vocab_from is not None:
        vocab, given_format = given_vocabulary(Path(args.vocab_from))
        if corpus_format == "auto":  # a directory's corpora share one format, as they share indices
            corpus_format = given_format
    result = prepare(
        args.corpus, args.out, corpus_format, args.alphabet, vocab, args.encoding_errors, progress=not args.quiet
    )
    megabytes = result.bytes_read / 1e6
    lines = f", {_plural(result.lines, 'line')}" if result.lines is not None else ""
    print(
        f"prepared {_plural(result.characters, 'character')}{lines} in {result.out} (format {result.format}, "
        f"{len(result.vocab)} symbols, {token_dtype(len(result.vocab)).name}): "
        f"{megabytes:,.1f} MB in {result.seconds:.1f} s ({megabytes / max(result.seconds, 1e-9):,.1f} MB/s)"
    )
    if result.unknown:
        print(
            f"note: {_plural(result.unknown, 'character')} ({result.unknown / max(result.characters, 1):.2%}) "
            "not in the vocabulary were stored as <unk>",
            file=sys.stderr,
        )
    return 0


def _run_index(args: argparse.Namespace) -> int:
    from nextchar.checkpoint import BUNDLED_DIR
    from nextchar.data.prepared import is_prepared
    from nextchar.errors import UserError
    from nextchar.training.rundir import one_writer

    directory = Path(args.model)
    if directory.resolve() == BUNDLED_DIR.resolve():
        raise UserError(f"{directory} is the bundled model, part of the installed package; copy it and index the copy")
    if is_prepared(directory):
        raise UserError(f"{directory} is a prepared corpus, not a model; give -m the directory `train` wrote")
    if not directory.is_dir():
        from nextchar.checkpoint import load_checkpoint

        load_checkpoint(directory)  # one line saying what is wrong with the path (the lock would make it)
    with one_writer(directory):  # not while a `train` (or another `index`) writes the directory
        return _index(args, directory)


def _index(args: argparse.Namespace, directory: Path) -> int:
    import time

    from nextchar.checkpoint import load_checkpoint
    from nextchar.data.batches import split_validation
    from nextchar.data.prepared import is_prepared
    from nextchar.text import embedded_corpus, read_corpus
    from nextchar.training.memory import remember

    ckpt = load_checkpoint(directory)  # a whole checkpoint, or one line saying what is wrong with it
    source = ckpt.meta.get("training", {}).get("source", {})
    fraction = args.val_fraction if args.val_fraction is not None else source.get("val_fraction") or 0.1
    started = time.perf_counter()
    if args.corpus is not None and is_prepared(args.corpus):  # in shards, cut as training cut it
        from nextchar.data.prepared import PreparedCorpus
        from nextchar.training.memory import remember_prepared

        split = PreparedCorpus.open(args.corpus).split(fraction, int(source.get("max_val_chars") or 1_000_000))
        done = remember_prepared(directory, split, args.shard_symbols)
    else:
        text = read_corpus(args.corpus, args.encoding_errors) if args.corpus is not None else embedded_corpus()
        held_out = ""
        if not args.whole:
            text, held_out = split_validation(text, ckpt.format, fraction)
        done = remember(directory, text, held_out)
    fitted = "the validation split" if done.held_out else "the training text, leave-one-out"
    shards = f" in {len(done.indexes)} shards" if len(done.indexes) > 1 else ""
    print(
        f"indexed {done.symbols:,} symbols of {args.corpus or 'the embedded corpus'} into {directory}{shards} "
        f"({done.nbytes / 1e6:,.1f} MB); mixer fitted on {done.mixer.positions:,} positions of {fitted} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return 0
