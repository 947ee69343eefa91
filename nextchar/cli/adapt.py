"""The `--adapt` options of `nextchar eval` and `nextchar eval-complete`: adaptation beside the static figures.

The eval command (nextchar.cli.evaluate) calls `add_eval_options` on its parser and, when --adapt
is given, `run_adapted_eval` (dynamic evaluation, nextchar.evaluation.dynamic) instead of the
plain evaluation. eval-complete (nextchar.cli.complete) calls `add_personal_options`, and with
--adapt types the lines through `personal_predictor`, a typist whose completer learns each line
once it is typed (see docs/adaptation.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nextchar.adapt import PARAM_SETS, RULES, AdaptConfig, GradStats, gradient_statistics
from nextchar.checkpoint import Checkpoint
from nextchar.cli.options import finite_number as _float
from nextchar.cli.options import loaded_memory, map_parameters
from nextchar.cli.options import positive_int as _count
from nextchar.data.batches import Encoded, count_targets, encode_corpus, split_validation
from nextchar.errors import UserError
from nextchar.evaluation.dynamic import dynamic_evaluate

if TYPE_CHECKING:
    from nextchar.completion.completer import Completer
    from nextchar.evaluation.keystrokes import PersonalPredictor


# AdaptConfig's checks name its fields; these commands spell them --adapt-*.
ADAPT_FLAGS = {"AdaptConfig.lr": "--adapt-lr", "AdaptConfig.decay": "--adapt-decay"}


def add_eval_options(p: argparse.ArgumentParser) -> None:
    d = AdaptConfig()
    g = p.add_argument_group("online adaptation (dynamic evaluation; docs/adaptation.md)")
    g.add_argument(
        "--adapt",
        action="store_true",
        help="also report BPC with dynamic evaluation: after each window has been scored, one "
        "gradient step on it before the next window is predicted (with a memory, the memory "
        "also adds the window and the mixture's gate learns from it)",
    )
    g.add_argument("--adapt-lr", type=_float, default=d.lr, metavar="ETA", help=f"step size η (default {d.lr:g})")
    g.add_argument(
        "--adapt-window",
        type=_count,
        default=d.window,
        metavar="T",
        help=f"characters per window, one step per window (default {d.window})",
    )
    g.add_argument(
        "--adapt-decay",
        type=_float,
        default=d.decay,
        metavar="LAMBDA",
        help=f"pull towards the trained weights per step, 0 to 1 (default {d.decay:g})",
    )
    g.add_argument(
        "--adapt-rule",
        choices=RULES,
        default=d.rule,
        help=f"rms: Krause et al.'s update normalised by training-gradient RMS; sgd: plain steps (default {d.rule})",
    )
    g.add_argument(
        "--adapt-params",
        choices=PARAM_SETS,
        default=d.params,
        help=f"adapt all weights, or only the output layer W_o, W0_o (default {d.params})",
    )
    g.add_argument(
        "--adapt-train",
        metavar="FILE",
        help="rms: training text for the gradient statistics (default: the checkpoint's own training "
        "corpus, when it can be found, without its validation part)",
    )
    map_parameters(p, ADAPT_FLAGS)


def training_data(
    ckpt: Checkpoint, path: str | None, corpus_format: str, encoding_errors: str = "strict"
) -> tuple[Encoded, str]:
    """The text the rms rule measures gradient statistics on (`path`, else the checkpoint's
    recorded training corpus without its validation part), encoded, and where it came from."""
    from nextchar.text import embedded_corpus, read_corpus

    if path:
        text, name = read_corpus(path, encoding_errors), path
    else:
        source = ckpt.meta.get("training", {}).get("source", {}) or {}
        corpus = source.get("corpus") or ""
        hint = "give --adapt-train FILE (the model's training text) or use --adapt-rule sgd"
        if source.get("prepared"):
            raise UserError(f"the model was trained on a prepared directory ({corpus}); {hint}")
        if corpus.startswith("embedded:"):
            text, name = embedded_corpus(), corpus
        elif corpus and Path(corpus).is_file():
            text, name = read_corpus(corpus, source.get("encoding_errors", "strict")), corpus
        else:
            raise UserError(f"cannot find the model's training text ({corpus or 'not recorded'}); {hint}")
        if not source.get("val"):  # the validation tail was part of that file: leave it out
            text, _ = split_validation(text, source.get("format", corpus_format), source.get("val_fraction", 0.1))
    encoded = encode_corpus(text, ckpt.vocab, corpus_format)
    if count_targets(encoded) == 0:
        raise UserError(f"{name}: no training text left for gradient statistics; give --adapt-train FILE")
    return encoded, name


def adapt_config(args: argparse.Namespace) -> AdaptConfig:
    return AdaptConfig(
        rule=args.adapt_rule,
        lr=args.adapt_lr,
        window=args.adapt_window,
        decay=args.adapt_decay,
        params=args.adapt_params,
    )


def run_adapted_eval(args: argparse.Namespace, ckpt: Checkpoint, encoded: Encoded, corpus_format: str) -> int:
    """Print static and adapted figures side by side (or one JSON object)."""
    config = adapt_config(args)
    stats: GradStats | None = None
    stats_source = None
    if config.rule == "rms":
        train, stats_source = training_data(ckpt, args.adapt_train, corpus_format, args.encoding_errors)
        stats = gradient_statistics(ckpt.model, train, config)
    recall = loaded_memory(ckpt, args)
    progress = sys.stderr.isatty() and not args.json
    result = dynamic_evaluate(ckpt.model, encoded, config, stats, progress=progress, recall=recall)
    static_mixture = None
    if recall is not None:
        from nextchar.evaluation.mixture import evaluate_mixture

        static_mixture = evaluate_mixture(ckpt.model, encoded, *recall)
    if result.rollbacks:
        print(
            f"nextchar: warning: adaptation diverged {result.rollbacks} time(s) and was rolled back to the last "
            f"good weights{'; it stopped adapting' if result.stopped else ''}; try a smaller --adapt-lr",
            file=sys.stderr,
        )
    if args.json:
        out = result.to_json()
        out["stats"] = (
            None
            if stats is None
            else {"source": stats_source, "windows": stats.windows, "batch": stats.batch, "seconds": stats.seconds}
        )
        out["static_mixture"] = static_mixture.to_json() if static_mixture is not None else None
        print(json.dumps(out))
        return 0
    static, adapted = result.static, result.adapted
    assert static is not None
    print("         static   adapted")
    print(f"bpc    {static.bpc:8.4f}  {adapted.bpc:8.4f}")
    print(f"top1   {static.top1:8.4f}  {adapted.top1:8.4f}")
    print(f"top5   {static.top5:8.4f}  {adapted.top5:8.4f}")
    print(f"chars  {static.chars:8d}  {adapted.chars:8d}")
    print(
        f"adaptation: {config.rule}, lr {config.lr:g}, window {config.window}, decay {config.decay:g}, "
        f"{config.params} weights; {result.windows} windows, {result.adapt_seconds_per_window * 1e3:.2f} ms per "
        f"window ({result.adapt_seconds_per_char * 1e6:.0f} µs per character); {result.cost_ratio:.1f}× the "
        f"time of static evaluation; {result.rollbacks} rollbacks"
    )
    if static_mixture is not None and result.mixture is not None and result.memory is not None:
        print(
            f"with the memory: the mixture {static_mixture.mixture.bpc:.4f} static, {result.mixture.bpc:.4f} adapted "
            f"(the model adapted, the memory and the mixer learning each window once scored); the memory alone "
            f"{static_mixture.memory.bpc:.4f} static, {result.memory.bpc:.4f} online (--no-memory: the model alone)"
        )
    if stats is not None:
        print(
            f"gradient statistics: {stats.windows} windows of {stats.batch}×{stats.window} from {stats_source} "
            f"({stats.seconds:.1f} s)"
        )
    return 0


# ---------------------------------------------------------------------------------- eval-complete --adapt


def add_personal_options(p: argparse.ArgumentParser) -> None:
    from nextchar.completion.personal import PERSONAL_DEFAULTS as d

    g = p.add_argument_group("personalisation (docs/adaptation.md)")
    g.add_argument(
        "--adapt",
        action="store_true",
        help="also evaluate the model learning each line once it is typed (the person's own adapted "
        "weights), and report both",
    )
    g.add_argument("--adapt-lr", type=_float, default=d.lr, metavar="ETA", help=f"step size η (default {d.lr:g})")
    g.add_argument(
        "--adapt-window",
        type=_count,
        default=d.window,
        metavar="T",
        help=f"characters per step when learning a line (default {d.window})",
    )
    g.add_argument(
        "--adapt-decay",
        type=_float,
        default=d.decay,
        metavar="LAMBDA",
        help=f"pull towards the shared weights per step, 0 to 1 (default {d.decay:g})",
    )
    g.add_argument("--adapt-rule", choices=RULES, default=d.rule, help=f"update rule (default {d.rule})")
    g.add_argument(
        "--adapt-params",
        choices=PARAM_SETS,
        default=d.params,
        help=f"the person's own weights: the output layer W_o, W0_o, or all (default {d.params})",
    )
    g.add_argument(
        "--adapt-train",
        metavar="FILE",
        help="rms: training text for the gradient statistics (default: the checkpoint's own)",
    )
    map_parameters(p, ADAPT_FLAGS)


def personal_predictor(args: argparse.Namespace, completer: Completer, k: int) -> PersonalPredictor:
    """A typist whose completer learns each finished line (see nextchar.completion.personal)."""
    from nextchar.completion.personal import PersonalCompleter
    from nextchar.evaluation.keystrokes import PersonalPredictor

    config = adapt_config(args)
    stats = None
    if config.rule == "rms":
        train, _ = training_data(completer.ckpt, args.adapt_train, completer.format)
        stats = gradient_statistics(completer.model, train, config)
    person = PersonalCompleter(completer, config, stats)
    kind = completer.ckpt.model.config.kind
    return PersonalPredictor(person, args.mode, k, name=f"model ({kind}), adapted", typos=args.typos)


def describe_learning(predictor: PersonalPredictor) -> str:
    cost = predictor.cost()
    c = predictor.person.config
    return (
        f"adapted: {c.rule}, lr {c.lr:g}, decay {c.decay:g}, {c.params} weights, learning each line after it "
        f"is typed: {cost['ms_per_line_p50']:.1f} ms per line (p99 {cost['ms_per_line_p99']:.1f}), "
        f"{cost['us_per_char']:.0f} µs per character, not part of the keystroke latency; "
        f"{cost['rollbacks']} rollbacks"
    )
