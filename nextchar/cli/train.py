"""`nextchar train`: train a model on a text file, a prepared directory or the embedded corpus.

The parser is built from the configs' own defaults (ModelConfig, TrainConfig), so that its help
text and the library never disagree. `run` is also what each process that torchrun starts runs
(nextchar.training.distributed): failures that concern one rank are named by rank, and a lost
process becomes a one-line hint to resume.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nextchar.cli.options import map_parameters, positive_float, positive_int
from nextchar.errors import UserError

if TYPE_CHECKING:  # the command imports what it needs when it runs (a fast --help)
    from nextchar.models import ModelConfig
    from nextchar.training.config import TrainConfig, TrainResult


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a corpus",
        description="Train a character-level model. With no CORPUS, trains on the embedded "
        "default corpus (CPython's pydoc topics). Defaults are the measured best "
        "for a 2-core CPU and 10 minutes (see README). Launched by torchrun "
        "(torchrun --nproc_per_node N -m nextchar train ...), trains on N processes "
        "with DistributedDataParallel (see docs/scaling.md).",
    )
    p.add_argument(
        "corpus",
        nargs="?",
        metavar="CORPUS",
        help="UTF-8 text file, or a directory made by `nextchar prepare` (default: embedded corpus)",
    )
    p.add_argument("--out", metavar="DIR", default="model", help="output directory (default: ./model)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped")
    _add_data_options(p.add_argument_group("data"))
    _add_model_options(p.add_argument_group("model"))
    _add_optimisation_options(p.add_argument_group("optimisation"))
    _add_duration_options(p.add_argument_group("duration and system"))
    p.set_defaults(run=run)
    # train() takes the validation text itself; a stale prepared directory needs prepare's flag.
    map_parameters(p, {"val_text": "--val FILE", "vocab_from": "--vocab-from"})


def _add_data_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--val", metavar="FILE", help="validation corpus (default: last --val-fraction of CORPUS)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="held-out tail of CORPUS (default 0.1)")
    g.add_argument(
        "--format",
        choices=("auto", "text", "lines"),
        default="auto",
        help="text: one stream; lines: each line a sequence; auto: lines for lists "
        "(no blank lines, short lines), else text (default auto)",
    )
    g.add_argument(
        "--alphabet",
        choices=("corpus", "lecture"),
        default="corpus",
        help="corpus: every character seen; lecture: a-z and space (default corpus)",
    )
    g.add_argument(
        "--encoding-errors",
        choices=("strict", "replace"),
        default="strict",
        help="on invalid UTF-8: stop (strict) or use U+FFFD (replace)",
    )
    g.add_argument(
        "--max-val-chars",
        type=positive_int,
        default=1_000_000,
        metavar="N",
        help="prepared directory: at most N characters of its tail for validation (default 1,000,000)",
    )


def _add_model_options(g: argparse._ArgumentGroup) -> None:
    from nextchar.models import KINDS, ModelConfig

    m = ModelConfig()
    g.add_argument("--kind", choices=KINDS, default=m.kind, help=f"model kind (default {m.kind})")
    g.add_argument("--hidden", type=positive_int, default=m.hidden_size, help=f"state size m (default {m.hidden_size})")
    g.add_argument(
        "--layers", type=positive_int, default=m.num_layers, help=f"lstm/gru layers (default {m.num_layers})"
    )
    g.add_argument(
        "--embedding",
        type=positive_int,
        default=m.embedding_size,
        help=f"lstm/gru embedding size (default {m.embedding_size})",
    )
    g.add_argument("--dropout", type=float, default=m.dropout, help=f"lstm/gru dropout (default {m.dropout})")
    g.add_argument(
        "--embedding-dropout",
        type=float,
        default=m.embedding_dropout,
        help=f"lstm/gru dropout on the input embeddings (default {m.embedding_dropout})",
    )
    g.add_argument(
        "--weight-drop",
        type=float,
        default=m.weight_drop,
        help=f"lstm/gru DropConnect on the recurrent weights while training (default {m.weight_drop})",
    )
    g.add_argument(
        "--context",
        type=positive_int,
        default=m.context,
        help=f"window model: characters of context c (default {m.context})",
    )
    g.add_argument(
        "--nonlinearity", choices=("tanh", "relu"), default=m.nonlinearity, help="rnn model: f1 (default tanh)"
    )


def _optimiser_default(name: str) -> str:
    """The help text's default of an optimiser setting that depends on the kind, e.g.
    "default 0.04 for lstm, 0.003 for the other kinds"."""
    from nextchar.training.config import BASE_OPTIMISER_DEFAULTS, KIND_OPTIMISER_DEFAULTS

    special = [f"{values[name]:g} for {kind}" for kind, values in KIND_OPTIMISER_DEFAULTS.items() if name in values]
    base = f"{BASE_OPTIMISER_DEFAULTS[name]:g}"
    return f"default {', '.join(special)}, {base} for the other kinds" if special else f"default {base}"


def _add_optimisation_options(g: argparse._ArgumentGroup) -> None:
    from nextchar.training.config import TrainConfig

    t = TrainConfig()
    g.add_argument("--batch-size", type=positive_int, default=t.batch_size, help=f"B (default {t.batch_size})")
    g.add_argument("--seq-len", type=positive_int, default=t.seq_len, help=f"BPTT window T (default {t.seq_len})")
    g.add_argument("--optimizer", choices=("adamw", "sgd"), default=t.optimizer, help="default adamw")
    g.add_argument("--lr", type=positive_float, help=f"peak learning rate ({_optimiser_default('lr')})")
    g.add_argument("--warmup", type=int, help=f"warm-up steps ({_optimiser_default('warmup_steps')})")
    g.add_argument("--weight-decay", type=float, help=f"AdamW decay ({_optimiser_default('weight_decay')})")
    g.add_argument(
        "--min-lr-ratio",
        type=float,
        metavar="R",
        help=f"the cosine decays the learning rate to lr × R ({_optimiser_default('min_lr_ratio')})",
    )
    g.add_argument(
        "--ema",
        type=float,
        metavar="DECAY",
        help="evaluate and save a moving average of the weights with this decay a step, "
        f"0 = the trained weights themselves ({_optimiser_default('ema')})",
    )
    g.add_argument(
        "--clip", type=float, default=t.grad_clip, help=f"gradient-norm clip, 0 = off (default {t.grad_clip})"
    )


def _add_duration_options(g: argparse._ArgumentGroup) -> None:
    from nextchar.training.config import TrainConfig

    t = TrainConfig()
    g.add_argument("--steps", type=positive_int, default=None, help="stop after N steps")
    g.add_argument(
        "--time-budget",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help=f"stop after this wall-clock time, evaluation included (default {t.time_budget:.0f} "
        "when --steps is not given)",
    )
    g.add_argument(
        "--eval-interval",
        type=positive_int,
        default=t.eval_interval,
        help=f"evaluate every N steps (default {t.eval_interval})",
    )
    g.add_argument("--seed", type=int, default=t.seed, help=f"random seed (default {t.seed})")
    g.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default=t.precision,
        help="auto: bf16 autocast on CUDA and where the CPU has bf16 units (default auto)",
    )
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        default=t.device,
        help="auto: cuda if available, else mps, else cpu (default auto)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the training step")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """The train command, alone or as one of the processes torchrun started (nextchar.training.distributed)."""
    from nextchar.training import distributed

    try:
        distributed.init(distributed.resolve_device(args.device))
    except RuntimeError as exc:
        if not distributed.is_restart():
            raise
        raise UserError(
            f"the restarted processes could not connect ({distributed.describe(exc)}); torchrun "
            "shares its rendezvous store with them and they can read stale addresses: start torchrun "
            "with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (pytorch/pytorch#135712)"
        ) from None
    rank, world = distributed.rank(), distributed.world_size()
    if rank == 0 and (caveat := distributed.restart_caveat()):
        print(f"nextchar: note: {caveat}", file=sys.stderr)
    try:
        return _train(args, rank)
    except UserError as exc:
        if world > 1 and rank != 0:
            raise UserError(f"rank {rank}: {exc}", exc.parameter) from None
        raise
    except RuntimeError as exc:
        if world > 1 and distributed.is_communication_error(exc):
            out = args.resume or args.out
            raise UserError(
                f"rank {rank} lost contact with the other processes ({distributed.describe(exc)}); "
                f"the last checkpoint in {out} is intact: resume with --resume {out}"
            ) from None
        raise
    finally:
        distributed.teardown()


def _load_corpus(path: str | None, encoding_errors: str) -> tuple[str, str]:
    """The corpus's text and the name the run records for it."""
    from nextchar.text import embedded_corpus, read_corpus

    if path is None:
        return embedded_corpus(), "embedded:pydoc_data.topics"
    return read_corpus(path, encoding_errors), str(Path(path).resolve())


def _train_configs(args: argparse.Namespace) -> tuple[TrainConfig, ModelConfig]:
    from nextchar.models import ModelConfig
    from nextchar.training.config import TrainConfig

    for flag, value in (
        ("--dropout", args.dropout),
        ("--embedding-dropout", args.embedding_dropout),
        ("--weight-drop", args.weight_drop),
    ):
        if not 0 <= value < 1:
            raise UserError(f"{flag} must be in [0, 1), not {value}")
    if args.min_lr_ratio is not None and not 0 <= args.min_lr_ratio <= 1:
        raise UserError(f"--min-lr-ratio must be in [0, 1], not {args.min_lr_ratio}")
    if args.ema is not None and not 0 <= args.ema < 1:
        raise UserError(f"--ema must be in [0, 1), not {args.ema}")
    config = TrainConfig(
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        optimizer=args.optimizer,
        lr=args.lr,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        min_lr_ratio=args.min_lr_ratio,
        ema=args.ema,
        grad_clip=args.clip,
        steps=args.steps,
        # On --resume without a new duration, None keeps the run's own (see train()).
        time_budget=args.time_budget if (args.time_budget or args.steps or args.resume) else TrainConfig.time_budget,
        eval_interval=args.eval_interval,
        seed=args.seed,
        precision=args.precision,
        device=args.device,
        compile=args.compile,
    )
    model_config = ModelConfig(
        kind=args.kind,
        hidden_size=args.hidden,
        num_layers=args.layers,
        embedding_size=args.embedding,
        dropout=args.dropout,
        embedding_dropout=args.embedding_dropout,
        weight_drop=args.weight_drop,
        context=args.context,
        nonlinearity=args.nonlinearity,
    )
    return config, model_config


def _saved_source(run: str) -> dict[str, Any]:
    """What the run in directory `run` trained on: the "source" its resume state recorded."""
    from nextchar.training.resume import RESUME_DIR, STATE_NAME

    state_file = Path(run) / RESUME_DIR / STATE_NAME
    if not state_file.is_file():
        raise UserError(f"{run}: nothing to resume (no {RESUME_DIR}/{STATE_NAME}); check the path")
    try:
        source: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8")).get("source", {})
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{state_file}: damaged resume state; start a new run") from None
    return source


def _train(args: argparse.Namespace, rank: int) -> int:
    from nextchar.data.batches import split_validation
    from nextchar.text import choose_format, read_corpus
    from nextchar.training import distributed
    from nextchar.training.loop import train
    from nextchar.training.resume import RESUME_DIR, STATE_NAME

    if not args.resume and distributed.is_restart() and (Path(args.out) / RESUME_DIR / STATE_NAME).is_file():
        args.resume = args.out  # torchrun restarted the processes after a failure: continue the run
    if args.resume:
        source = _saved_source(args.resume)
        corpus = args.corpus or (None if source.get("corpus", "").startswith("embedded:") else source.get("corpus"))
        if corpus and Path(corpus).is_dir():
            return _train_prepared(args, Path(corpus), Path(args.resume), source, rank)
        val = args.val or source.get("val")
        text, name = _load_corpus(corpus, source.get("encoding_errors", args.encoding_errors))
        corpus_format, val_fraction = source.get("format", "text"), source.get("val_fraction", 0.1)
        out = Path(args.resume)
    else:
        if args.corpus and Path(args.corpus).is_dir():
            return _train_prepared(args, Path(args.corpus), Path(args.out), None, rank)
        text, name = _load_corpus(args.corpus, args.encoding_errors)
        corpus_format = choose_format(text) if args.format == "auto" else args.format
        val, val_fraction, out = args.val, args.val_fraction, Path(args.out)
    if val:
        train_text, val_text = text, read_corpus(val, args.encoding_errors)
    else:
        train_text, val_text = split_validation(text, corpus_format, val_fraction)
    config, model_config = _train_configs(args)
    source = {
        "corpus": name,
        "val": str(Path(val).resolve()) if val else None,
        "format": corpus_format,
        "val_fraction": val_fraction,
        "encoding_errors": args.encoding_errors,
    }
    if rank == 0:
        print(
            f"corpus {name}: {len(train_text):,} training and {len(val_text):,} validation characters, "
            f"format {corpus_format}",
            file=sys.stderr,
        )
    result = train(
        train_text,
        val_text,
        out,
        config,
        model_config,
        corpus_format,
        args.alphabet,
        resume=bool(args.resume),
        source=source,
        progress=not args.quiet,
    )
    return _report_training(result, out, rank)


def _train_prepared(
    args: argparse.Namespace, directory: Path, out: Path, source: dict[str, Any] | None, rank: int
) -> int:
    """Train from a directory made by `nextchar prepare` (memory-mapped; see nextchar.data.prepared)."""
    from nextchar.data.prepared import PreparedCorpus
    from nextchar.text import read_corpus
    from nextchar.training.loop import train

    corpus = PreparedCorpus.open(directory)
    if source is None and args.format != "auto" and args.format != corpus.format:
        raise UserError(
            f"{directory}: was prepared in {corpus.format} format, not {args.format}; "
            f"run `nextchar prepare --format {args.format}` or drop --format"
        )
    saved = source or {}
    val = args.val or saved.get("val")
    encoding_errors = saved.get("encoding_errors", args.encoding_errors)
    val_fraction = saved.get("val_fraction", args.val_fraction)
    max_val_chars = saved.get("max_val_chars", args.max_val_chars)
    split = corpus.split(val_fraction, max_val_chars, read_corpus(val, encoding_errors) if val else None)
    config, model_config = _train_configs(args)
    source = {
        "corpus": str(directory.resolve()),
        "prepared": True,
        "val": str(Path(val).resolve()) if val else None,
        "format": corpus.format,
        "val_fraction": val_fraction,
        "max_val_chars": max_val_chars,
        "encoding_errors": encoding_errors,
    }
    if rank == 0:
        print(
            f"prepared corpus {directory}: {split.train_characters:,} training characters (memory-mapped), "
            f"validation {'from ' + val if val else 'its tail'}, format {corpus.format}",
            file=sys.stderr,
        )
    result = train(
        "",
        "",
        out,
        config,
        model_config,
        corpus.format,
        corpus.vocab.alphabet,
        resume=bool(args.resume),
        source=source,
        progress=not args.quiet,
        prepared=split,
    )
    return _report_training(result, out, rank)


def _report_training(result: TrainResult, out: Path, rank: int) -> int:
    from nextchar.training import distributed

    if rank != 0:
        return 0
    best, world = result.best_val, distributed.world_size()
    on = f" on {world} processes" if world > 1 else ""
    print(
        f"trained {result.steps} steps in {result.elapsed:.0f} s ({result.chars_per_second:,.0f} chars/s{on}); "
        f"best validation BPC {best.bpc:.4f}"
        if best
        else f"trained {result.steps} steps"
    )
    print(f"checkpoint: {out}  (metrics: {out / 'metrics.jsonl'}, plot: {out / 'bpc.png'})")
    return 0
