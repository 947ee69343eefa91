"""The autocomplete commands: `complete`, `type` and `eval-complete` (see docs/autocomplete.md)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nextchar.cli.options import (
    add_memory_option,
    add_model_option,
    add_search_options,
    add_threads_option,
    require_extra,
)
from nextchar.cli.options import finite_number as _number
from nextchar.cli.options import whole_number as _int
from nextchar.collector import tune_for_latency
from nextchar.completion.config import DEFAULTS, K_MAX, MODES, SERVING_DEADLINE_MS, CompleterConfig, check_k
from nextchar.errors import UserError

if TYPE_CHECKING:
    from nextchar.checkpoint import Checkpoint
    from nextchar.completion.completer import Completer
    from nextchar.evaluation.keystrokes import CompleteEvalResult, Predictor


def _completer_options(
    p: argparse.ArgumentParser, k_default: int = 5, deadline_ms: float = 0.0, modes: tuple[str, ...] = MODES
) -> None:
    add_model_option(p)
    add_memory_option(p)
    p.add_argument(
        "-k",
        type=_int,
        default=k_default,
        help=f"number of suggestions (default {k_default}; at least 1, more than {K_MAX} is clamped to {K_MAX})",
    )
    p.add_argument(
        "--mode",
        choices=modes,
        default="line",
        help="word: the rest of the word; line: to the end of the line; phrase: up to --max-words words"
        + ("; next-word: word, and the next word before it is begun" if "next-word" in modes else "")
        + " (default line)",
    )
    p.add_argument(
        "--lexicon",
        metavar="FILE",
        help="suggest only entries of FILE (one per line, optional tab + weight) that extend the text",
    )
    p.add_argument(
        "--lexicon-weight",
        type=_number,
        default=DEFAULTS.lexicon_weight,
        metavar="B",
        help=f"add B·ln(weight) of a lexicon entry to its score (default {DEFAULTS.lexicon_weight:g}: "
        "the model alone ranks)",
    )
    g = add_search_options(p, deadline_ms)  # --beam, --max-chars, --max-words, --precision, --deadline-ms
    g.add_argument(
        "--alpha",
        type=_number,
        default=DEFAULTS.length_alpha,
        help=f"length normalisation: score = logprob / symbols^alpha (default {DEFAULTS.length_alpha:g})",
    )
    g.add_argument(
        "--min-chars",
        type=_int,
        default=DEFAULTS.min_chars,
        metavar="N",
        help=f"shortest completion offered, in characters (default {DEFAULTS.min_chars})",
    )
    add_threads_option(
        g, default=1, help_text="torch threads (default 1: a keystroke's small batches run fastest on one)"
    )


def _typo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--typos",
        action="store_true",
        help="also complete texts within one edit (substitution, insertion, deletion, transposition)",
    )
    p.add_argument(
        "--typo-penalty",
        type=_number,
        default=DEFAULTS.typo_penalty,
        metavar="NATS",
        help=f"score cost of a correction (default {DEFAULTS.typo_penalty:g} nats)",
    )


def completer_config(args: argparse.Namespace) -> CompleterConfig:
    """The CompleterConfig the common options ask for (validated: a bad value is a UserError)."""
    return CompleterConfig(
        beam_width=args.beam,
        max_chars=args.max_chars,
        max_words=args.max_words,
        length_alpha=args.alpha,
        min_chars=args.min_chars,
        lexicon_weight=args.lexicon_weight,
        typo_penalty=args.typo_penalty,
        precision=args.precision,
        deadline_ms=args.deadline_ms,
    )


def build_completer(args: argparse.Namespace) -> Completer:
    """A Completer from the common options (loads the model and the lexicon; nextchar.cli.main has
    set the threads)."""
    from nextchar.checkpoint import load_checkpoint
    from nextchar.completion.completer import Completer
    from nextchar.completion.lexicon import Lexicon

    ckpt = load_checkpoint(args.model)
    lexicon = Lexicon.load(args.lexicon) if args.lexicon else None
    return Completer(ckpt, lexicon=lexicon, config=completer_config(args), memory=args.memory)


# ---------------------------------------------------------------------------------- complete


def _visible(text: str) -> str:
    return text.replace("\n", "⏎").replace("\t", "⇥")


def _run_complete(args: argparse.Namespace) -> int:
    check_k(args.k)
    completer = build_completer(args)
    suggestions = completer.suggest(args.text, args.k, args.mode, typos=args.typos)
    if args.json:
        print(
            json.dumps(
                {
                    "text": args.text,
                    "mode": args.mode,
                    "k": min(args.k, K_MAX),
                    "suggestions": [s.to_json() for s in suggestions],
                },
                ensure_ascii=False,
            )
        )
        return 0
    if not suggestions:
        print("(no suggestions)")
    width = max((len(s.text) for s in suggestions), default=0)
    for rank, s in enumerate(suggestions, 1):
        label = "  (corrected)" if s.corrected else ""
        print(f"{rank:>2}  {_visible(s.text):<{width}}  p={math.exp(s.logprob):.4f}  score {s.score:7.3f}{label}")
    return 0


# ---------------------------------------------------------------------------------- type


def _run_type(args: argparse.Namespace) -> int:
    require_extra("type", "prompt_toolkit")
    from nextchar.cli.terminal import run_terminal

    check_k(args.k)
    completer = build_completer(args)
    tune_for_latency()  # a keystroke's latency, as in `serve`
    run_terminal(completer, k=args.k, mode=args.mode, typos=args.typos)
    return 0


# ---------------------------------------------------------------------------------- eval-complete


def training_lines(ckpt: Checkpoint) -> list[str] | None:
    """The training split's lines of a checkpoint, rebuilt from what it recorded (None if unknown)."""
    from nextchar.data.batches import split_validation
    from nextchar.text import embedded_corpus, read_corpus, split_lines

    source = ckpt.meta.get("training", {}).get("source", {}) if isinstance(ckpt.meta, dict) else {}
    corpus = source.get("corpus")
    if not corpus:
        return None
    if corpus.startswith("embedded:"):
        text = embedded_corpus()
    elif Path(corpus).is_file():
        text = read_corpus(corpus, source.get("encoding_errors", "strict"))
    else:
        return None
    if not source.get("val"):
        text = split_validation(text, source.get("format", ckpt.format), source.get("val_fraction", 0.1))[0]
    return split_lines(ckpt.vocab.prepare(text))


def _run_eval_complete(args: argparse.Namespace) -> int:
    from nextchar.evaluation.keystrokes import evaluate_completion, format_table
    from nextchar.text import read_corpus, split_lines

    k = check_k(args.k)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, not {args.limit}")
    completer = build_completer(args)
    tune_for_latency()  # as `serve` has it: the latency measured is the service's
    lines = split_lines(completer.vocab.prepare(read_corpus(args.file)))[: args.limit]
    if not lines:
        raise UserError(f"{args.file}: no lines to evaluate")
    predictors, notes, train_lines = _predictors(args, completer, k)
    seen = set(train_lines) if train_lines else None
    personal = None
    if args.adapt:  # the same model learning each line once it is typed (personalisation)
        from nextchar.cli.adapt import personal_predictor

        personal = personal_predictor(args, completer, k)
        predictors.insert(1, personal)
    progress = not args.json and sys.stderr.isatty()
    results = [evaluate_completion(lines, p, args.mode, k, args.max_words, progress, seen) for p in predictors]
    expired = _expired_searches(predictors)
    if args.deadline_ms:
        notes += [
            f"{name}: {e:,} of {n:,} searches stopped at the {args.deadline_ms:g} ms deadline"
            for name, (e, n) in expired.items()
        ]
    main = results[0]
    baselines = [r for p, r in zip(predictors[1:], results[1:], strict=True) if p is not personal]
    if args.json:
        out = main.to_json()
        out["baselines"] = {
            ("trie" if r.name == "trie" else "window" if "window" in r.name else r.name): r.to_json() for r in baselines
        }
        if personal is not None:
            out["adapted"] = {**results[1].to_json(), "learning": personal.cost()}
        out["deadline"] = {
            "ms": args.deadline_ms,
            "expired": {name: {"expired": e, "searches": n} for name, (e, n) in expired.items()},
        }
        print(json.dumps(out))
        return 0
    print(
        f"eval-complete {args.file}: mode {args.mode}, k {k}, {main.lines:,} lines, {main.targets:,} targets, "
        f"{main.chars:,} characters"
    )
    print(format_table(results))
    if seen is not None:
        print(_groups_table(results))
    if personal is not None:
        from nextchar.cli.adapt import describe_learning

        print(describe_learning(personal))
    for note in notes:
        print(f"note: {note}")
    return 0


def _groups_table(results: list[CompleteEvalResult]) -> str:
    """KSR of the targets seen in training and of the others, per system."""
    seen, unseen = results[0].groups["seen"], results[0].groups["unseen"]
    what = "lines" if results[0].mode == "line" else "words" if results[0].mode != "phrase" else "phrases"
    out = [f"{'KSR of the ' + what:24}{'seen in training':>18}{'unseen':>10}"]
    out += [f"{r.name:24}{r.groups['seen']['ksr']:18.3f}{r.groups['unseen']['ksr']:10.3f}" for r in results]
    out.append(f"{what:24}{int(seen['targets']):18,}{int(unseen['targets']):10,}")
    return "\n".join(out)


def _predictors(
    args: argparse.Namespace, completer: Completer, k: int
) -> tuple[list[Predictor], list[str], list[str] | None]:
    """The model (mixed with its memory if it has one), then the baselines eval-complete compares
    it with: the model alone, the trie of its training lines, a window model; notes; and the
    training lines, where they are known."""
    from nextchar.checkpoint import load_checkpoint
    from nextchar.completion.completer import Completer
    from nextchar.evaluation.keystrokes import CompleterPredictor, MemoryPredictor, TriePredictor, search_mode
    from nextchar.text import read_corpus, split_lines

    kind = completer.ckpt.model.config.kind
    name = f"model ({kind}) + memory" if completer.recall is not None else f"model ({kind})"
    predictors: list[Predictor] = [CompleterPredictor(completer, args.mode, k, name=name, typos=args.typos)]
    notes = []
    train_lines: list[str] | None = None
    if not args.no_baselines and completer.recall is not None:  # what each half adds, side by side
        alone = Completer(completer.ckpt, lexicon=completer.lexicon, config=completer.config, memory=False)
        predictors.append(CompleterPredictor(alone, args.mode, k, name=f"model ({kind}) alone", typos=args.typos))
        if search_mode(args.mode) == "phrase":
            notes.append("memory-alone baseline skipped: it suggests words and lines, not phrases")
        else:
            predictors.append(MemoryPredictor(completer, args.mode, k))
    if not args.no_baselines:
        if args.baseline_trie:
            train_lines = split_lines(completer.vocab.prepare(read_corpus(args.baseline_trie)))
        else:
            train_lines = training_lines(completer.ckpt)
        if train_lines:
            predictors.append(TriePredictor.from_lines(train_lines, args.mode, k, args.max_words))
        else:
            notes.append("trie baseline skipped: the model's training corpus is unknown (give --baseline-trie FILE)")
        if args.baseline_window:
            window_ckpt = load_checkpoint(args.baseline_window)
            window = Completer(window_ckpt, lexicon=completer.lexicon, config=completer.config, memory=args.memory)
            predictors.append(
                CompleterPredictor(window, args.mode, k, name=f"baseline ({window_ckpt.model.config.kind})")
            )
    return predictors, notes, train_lines


def _expired_searches(predictors: list[Predictor]) -> dict[str, tuple[int, int]]:
    """For each model predictor: how many of its searches stopped at the deadline, of how many."""
    out = {}
    for predictor in predictors:
        completer = getattr(predictor, "completer", None)
        if completer is not None:
            stats = completer.search_stats
            out[predictor.name] = (stats["expired"], stats["searches"])
    return out


# ---------------------------------------------------------------------------------- parsers


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register complete, type and eval-complete."""
    p = sub.add_parser(
        "complete",
        help="ranked completions of a text",
        description="Print the k best completions of TEXT with their probabilities. "
        f"(k ≤ 0 is an error; k > {K_MAX} is clamped to {K_MAX}.)",
    )
    p.add_argument("text", metavar="TEXT", help="what has been typed so far (may be empty)")
    _completer_options(p)
    _typo_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_run_complete)

    p = sub.add_parser(
        "type",
        help="type with live suggestions (interactive)",
        description="An interactive prompt with a live drop-down and grey ghost text: "
        "Tab accepts, Up/Down choose, Esc dismisses, Enter ends the line, "
        "Ctrl-D quits.",
    )
    _completer_options(p, deadline_ms=SERVING_DEADLINE_MS)
    _typo_options(p)
    p.set_defaults(run=_run_type)

    p = sub.add_parser(
        "eval-complete",
        help="keystroke savings of autocomplete on a file of lines",
        description="Simulate a person typing each line of FILE who takes the target as soon "
        "as it is among the k suggestions; report keystroke savings, MRR, success@1/@k "
        "by prefix length and per-keystroke latency, next to baselines (a "
        "frequency-ranked prefix trie of the training lines, and a window model). "
        "See docs/autocomplete.md for the exact definitions.",
    )
    p.add_argument("file", metavar="FILE", help="UTF-8 file, one target per line")
    _completer_options(p, modes=(*MODES, "next-word"))  # nextchar.evaluation.keystrokes.NEXT_WORD (torch-free here)
    _typo_options(p)
    p.add_argument(
        "--baseline-trie",
        metavar="FILE",
        help="training lines for the trie baseline (default: the model's recorded training split)",
    )
    p.add_argument("--baseline-window", metavar="DIR", help="a window-model checkpoint to compare")
    p.add_argument("--no-baselines", action="store_true", help="evaluate the model alone")
    p.add_argument("--limit", type=_int, default=None, metavar="N", help="only the first N lines")
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON: ksr, mrr, success_at_1, success_at_k, latency_ms {p50,p95,p99}, targets, "
        "… and baselines {trie, window}",
    )
    from nextchar.cli.adapt import add_personal_options  # --adapt: personalisation

    add_personal_options(p)
    p.set_defaults(run=_run_eval_complete)
