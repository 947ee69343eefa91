"""`nextchar train`: train a model on a text file, a prepared directory or the embedded corpus.

The parser is built from the configs' own defaults (ModelConfig, TrainConfig), so that its help
text and the library never disagree, and the run is nextchar.training.run's, as `nextchar.train`'s
is: the flags become its settings, then the output directory is checked (before any corpus is
read), the corpus read and split, and the model trained. `run` is also what each process that torchrun starts runs
(nextchar.training.distributed): failures that concern one rank are named by rank, and a lost
process becomes a one-line hint to resume.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nextchar.cli.options import THREADS_HELP, add_threads_option, map_parameters, positive_float, positive_int
from nextchar.errors import UserError

EXIT_TERMINATED = 128 + 15  # the shell's status for a SIGTERM: the run stopped early, saved

# Measured on 1.9 M characters of Chinese news (docs/tuning.md#large-alphabets).
LARGE_ALPHABET_GUIDE = (
    "on 1.9 M characters of Chinese the default model beat counting by 2.5 bits after 90 s and by 3.7 "
    "after 10 minutes, still improving: give such a corpus --time-budget 1800 or more "
    "(docs/tuning.md#large-alphabets)"
)

if TYPE_CHECKING:  # the command imports what it needs when it runs (a fast --help)
    from collections.abc import Callable

    from nextchar.models import ModelConfig
    from nextchar.training.config import TrainConfig, TrainResult
    from nextchar.training.run import TrainingData


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
    p.add_argument(
        "--overwrite", action="store_true", help="start a new run in --out even if it holds another (replacing it)"
    )
    _add_data_options(p.add_argument_group("data"))
    _add_model_options(p.add_argument_group("model"))
    _add_optimisation_options(p.add_argument_group("optimisation"))
    _add_duration_options(p.add_argument_group("duration and system"))
    p.set_defaults(run=run)
    # train() takes the validation text itself; a stale prepared directory needs prepare's flag;
    # the configs' fields whose flags are spelled shorter.
    map_parameters(
        p,
        {
            "val_text": "--val FILE",
            "vocab_from": "--vocab-from",
            "hidden_size": "--hidden",
            "num_layers": "--layers",
            "embedding_size": "--embedding",
            "warmup_steps": "--warmup",
            "grad_clip": "--clip",
        },
    )


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
    g.add_argument(
        "--verify",
        action="store_true",
        help="prepared directory: recompute its tokens' checksum before training (every open already "
        "checks each token and line offset)",
    )


def _add_model_options(g: argparse._ArgumentGroup) -> None:
    from nextchar.models import KINDS, OUTPUTS, TIED_FROM, ModelConfig

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
    g.add_argument(
        "--output",
        choices=OUTPUTS,
        default=m.output,
        help=f"lstm/gru output layer: full (m×V), tied (m→e, then the input embedding: e·V), "
        f"auto: tied from {TIED_FROM:,} symbols (default {m.output})",
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
    g.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the memory index of the training text built at the end (`nextchar index` adds it later)",
    )
    add_threads_option(
        g, help_text=f"{THREADS_HELP}; without it, train on the CPU first checks that they beat 1 thread"
    )
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


def _train_configs(args: argparse.Namespace) -> tuple[TrainConfig, ModelConfig]:
    """The run's settings from the flags (nextchar.training.run.settings checks them)."""
    from nextchar.training.run import settings

    options = {
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "warmup_steps": args.warmup,
        "weight_decay": args.weight_decay,
        "min_lr_ratio": args.min_lr_ratio,
        "ema": args.ema,
        "grad_clip": args.clip,
        "steps": args.steps,
        "eval_interval": args.eval_interval,
        "seed": args.seed,
        "precision": args.precision,
        "device": args.device,
        "compile": args.compile,
        "memory": args.memory,
        "kind": args.kind,
        "hidden_size": args.hidden,
        "num_layers": args.layers,
        "embedding_size": args.embedding,
        "dropout": args.dropout,
        "embedding_dropout": args.embedding_dropout,
        "weight_drop": args.weight_drop,
        "context": args.context,
        "nonlinearity": args.nonlinearity,
        "output": args.output,
    }
    if args.time_budget is not None:  # not given: the default, or none with --steps or --resume (settings)
        options["time_budget"] = args.time_budget
    return settings(options, resume=bool(args.resume))


def _train(args: argparse.Namespace, rank: int) -> int:
    """Settings, then the output directory, then the corpus: each mistake is found before the
    slower work after it (nextchar.training.run does each)."""
    from nextchar.training import distributed
    from nextchar.training.resume import RESUME_DIR, STATE_NAME
    from nextchar.training.run import check_out, load_data, train_on

    if not args.resume and distributed.is_restart() and (Path(args.out) / RESUME_DIR / STATE_NAME).is_file():
        args.resume = args.out  # torchrun restarted the processes after a failure: continue the run
    config, model_config = _train_configs(args)
    check_out(args.resume or args.out, "resume" if args.resume else "out")
    data = load_data(
        args.corpus,
        args.out,
        val=args.val,
        val_fraction=args.val_fraction,
        format=args.format,
        alphabet=args.alphabet,
        encoding_errors=args.encoding_errors,
        max_val_chars=args.max_val_chars,
        resume=args.resume,
    )
    data.overwrite = args.overwrite
    if args.verify:
        if data.prepared is None:
            raise UserError("--verify checks a prepared directory (`nextchar prepare`); CORPUS is not one")
        data.prepared.corpus.verify()
    model_shape, run_settings = _run_shape(model_config, config, data)
    counting = _counting_bpc(model_shape, data) if rank == 0 else None
    if rank == 0:
        print(data.summary, file=sys.stderr)
        if counting is not None:
            print(f"nextchar train: {_large_alphabet_note(model_shape, counting)}", file=sys.stderr)
    watch = _threads_and_speed(args, config, model_shape, run_settings, data)
    result = train_on(data, config, model_config, progress=not args.quiet, on_evaluation=watch)
    return _report_training(result, data.out, rank, counting)


def _run_shape(
    model_config: ModelConfig, config: TrainConfig, data: TrainingData
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model this run trains, as its checkpoint will record it (the vocabulary's size and
    the output layer resolved), and its TrainConfig as JSON: on resume, the run's own, not the
    flags' defaults."""
    import json
    from dataclasses import replace

    from nextchar.models import resolved_output
    from nextchar.text import Vocabulary
    from nextchar.training.resume import RESUME_DIR, STATE_NAME

    if data.resume:  # load_data has read this file
        saved = json.loads((data.out / RESUME_DIR / STATE_NAME).read_text(encoding="utf-8"))
        return dict(saved["model"]), dict(saved["train_config"])
    if data.prepared is not None:
        symbols = len(data.prepared.corpus.vocab)
    else:
        symbols = len(Vocabulary.of_corpus(data.train_text, data.alphabet))
    shape = replace(model_config, vocab_size=symbols)
    shape.output = resolved_output(shape)
    return shape.to_json(), config.to_json()


def _counting_bpc(model_shape: dict[str, Any], data: TrainingData) -> float | None:
    """For a large alphabet (TIED_FROM symbols or more) read as text: the BPC of counting
    characters on the validation text (evaluation.bpc.unigram_bpc); else None."""
    from nextchar.evaluation.bpc import unigram_bpc
    from nextchar.models import TIED_FROM

    if model_shape["vocab_size"] < TIED_FROM or not data.val_text:
        return None
    return unigram_bpc(data.train_text, data.val_text)


def _large_alphabet_note(model_shape: dict[str, Any], counting: float) -> str:
    layer = "tied to the input embedding" if model_shape.get("output") == "tied" else "full (--output)"
    return (
        f"a large alphabet, {model_shape['vocab_size'] - 3:,} characters (output layer {layer}): "
        f"counting them gives {counting:.2f} BPC; {LARGE_ALPHABET_GUIDE}"
    )


def _threads_and_speed(
    args: argparse.Namespace, config: TrainConfig, model: dict[str, Any], run: dict[str, Any], data: TrainingData
) -> Callable[[dict[str, Any]], None] | None:
    """On the CPU in one process: check that the threads beat one (unless --threads or
    OMP_NUM_THREADS chose them), and watch the run's chars/s against the best this machine has
    recorded for the same settings (nextchar.threads); None elsewhere."""
    import torch

    from nextchar import threads
    from nextchar.training import distributed

    if distributed.world_size() > 1 or distributed.resolve_device(config.device).type != "cpu":
        return None
    count = torch.get_num_threads()  # what nextchar.cli.main set
    if args.threads is None and threads.threads_from_environment() is None:
        count = threads.probe_training_threads(count, run["batch_size"], model["hidden_size"])
    settings = threads.training_settings(
        model, run["batch_size"], run["seq_len"], data.corpus_format, run["precision"], config.compile, count
    )
    return threads.SpeedWatch(settings).on_evaluation


def _report_training(result: TrainResult, out: Path, rank: int, counting: float | None = None) -> int:
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
    if best and counting is not None:
        print(f"counting characters gives {counting:.2f} BPC here: the model is {counting - best.bpc:.2f} bits better")
    if result.memory_symbols:
        print(
            f"memory: {result.memory_symbols:,} symbols of training text indexed, the mixer fitted on "
            f"{result.mixer_positions:,} positions ({result.memory_seconds:.1f} s; --no-memory skips this)"
        )
    print(f"checkpoint: {out}  (metrics: {out / 'metrics.jsonl'}, plot: {out / 'bpc.png'})")
    if result.terminated:
        print(f"nextchar train: stopped by SIGTERM at step {result.steps}; `--resume {out}` goes on", file=sys.stderr)
        return EXIT_TERMINATED
    return 0
