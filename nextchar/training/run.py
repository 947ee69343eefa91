"""A training run from a corpus: `train`, the Python API of `nextchar train`, and its parts.

    import nextchar
    ckpt = nextchar.train("tinyshakespeare.txt", "runs/a", time_budget=60, hidden_size=256)

`nextchar train` (nextchar.cli.train) runs the same parts between parsing its flags and
training, so that a corpus is read, framed and split one way in both:

    settings(options)   the TrainConfig and ModelConfig of the options (field names), checked
    check_out(out)      the output directory can be written: checked before the corpus is read
    load_data(...)      the corpus read (a file, a prepared directory, `text`, or the embedded
                        corpus), its format chosen, split into training and validation text
    train_on(data, …)   nextchar.training.loop.train on that data

A text file's validation text is its last `val_fraction` (of characters, or of lines for the
`lines` format), unless `val` names a file; a prepared directory's is its tail, at most
`max_val_chars` characters. On `resume`, the corpus, format and split the run recorded are used
again unless given.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from nextchar.checkpoint import CONFIG_NAME, Checkpoint, load_checkpoint
from nextchar.data.batches import split_validation
from nextchar.data.prepared import TOKENS_NAME, PreparedCorpus, PreparedSplit, is_prepared
from nextchar.errors import UserError
from nextchar.models import OUTPUTS, ModelConfig
from nextchar.text import check_encoding_errors, choose_format, embedded_corpus, read_corpus
from nextchar.training import distributed
from nextchar.training.config import TrainConfig, TrainResult
from nextchar.training.loop import train as train_loop
from nextchar.training.memory import remember, remember_prepared
from nextchar.training.resume import RESUME_DIR, STATE_NAME
from nextchar.training.rundir import one_writer

EMBEDDED = "embedded:pydoc_data.topics"  # the source a run on the embedded corpus records
GIVEN_TEXT = "text:python"  # … and one on `text`, which has no path to be read again from
FORMATS = ("auto", "text", "lines")
ALPHABETS = ("corpus", "lecture")
# The options `train` takes: every setting of a run and of its model (vocab_size is the corpus's).
TRAIN_OPTIONS = tuple(f.name for f in fields(TrainConfig))
MODEL_OPTIONS = tuple(f.name for f in fields(ModelConfig) if f.name != "vocab_size")


@dataclass
class TrainingData:
    """What a run trains and validates on, and what its checkpoint records about it."""

    out: Path  # the run's directory (on resume, the run's own)
    resume: bool
    train_text: str  # both empty for a prepared directory: `prepared` holds its split
    val_text: str
    corpus_format: str  # text | lines
    alphabet: str
    source: dict[str, Any]  # the corpus, the validation file, the split: recorded, and read on resume
    summary: str  # one line for the log: the corpus, the sizes of its split, the format
    prepared: PreparedSplit | None = None
    overwrite: bool = False  # a new run may replace another run in `out`


def train(
    corpus: str | Path | None = None,
    out: str | Path = "model",
    *,
    text: str | None = None,
    val: str | Path | None = None,
    val_fraction: float = 0.1,
    format: str = "auto",
    alphabet: str = "corpus",
    encoding_errors: str = "strict",
    max_val_chars: int = 1_000_000,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> Checkpoint:
    """Train a model as `nextchar train` does, into directory `out`; returns its best checkpoint.

    `corpus` is a UTF-8 text file or a directory made by `nextchar prepare`; or give the text
    itself as `text`; with neither, the embedded corpus. `val` is a validation file (default: the
    last `val_fraction` of the corpus). `format` is "text" (one stream), "lines" (each line a
    sequence) or "auto"; `alphabet` is "corpus" (every character seen) or "lecture" (a-z and
    space). `resume` is the directory of a run to continue where it stopped (`out` is then
    unused); a new run refuses an `out` that holds another run unless `overwrite`. `options`
    are the fields of TrainConfig and ModelConfig (`time_budget=60`, `steps=500`,
    `hidden_size=256`, `kind="gru"`, …); with `steps` and no `time_budget`, the steps alone
    decide when training ends. Mistakes raise UserError naming the parameter.
    """
    try:
        config, model_config = settings(options, resume=resume is not None)
        check_out(resume if resume is not None else out, "resume" if resume is not None else "out")
        data = load_data(
            corpus,
            out,
            text=text,
            val=val,
            val_fraction=val_fraction,
            format=format,
            alphabet=alphabet,
            encoding_errors=encoding_errors,
            max_val_chars=max_val_chars,
            resume=resume,
        )
        data.overwrite = overwrite
        train_on(data, config, model_config, progress=progress)
    except UserError as exc:
        if "val_text" not in exc.parameters:
            raise
        raise _renamed(exc, "val_text", "val") from None  # the training loop's name for what is `val` here
    return load_checkpoint(data.out)


def train_on(
    data: TrainingData,
    config: TrainConfig,
    model_config: ModelConfig,
    progress: bool = True,
    on_evaluation: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """nextchar.training.loop.train on `data` (its texts, or its prepared split), then, unless
    config.memory is off, the memory index of its training text (a prepared split's in shards)
    and its mixer, fitted on the validation text (nextchar.training.memory)."""
    result = train_loop(
        data.train_text,
        data.val_text,
        data.out,
        config,
        model_config,
        data.corpus_format,
        data.alphabet,
        resume=data.resume,
        source=data.source,
        progress=progress,
        prepared=data.prepared,
        on_evaluation=on_evaluation,
        overwrite=data.overwrite,
    )
    if result.terminated:  # the run goes on after --resume, and its memory is built at its end
        return result
    if config.memory and (data.train_text or data.prepared is not None) and distributed.rank() == 0:
        started = time.perf_counter()
        with one_writer(Path(data.out)):  # nobody else writes the checkpoint while its memory is added
            if data.prepared is not None:
                done = remember_prepared(data.out, data.prepared)
            else:
                done = remember(data.out, data.train_text, data.val_text)
        seconds = time.perf_counter() - started
        result = replace(
            result, memory_symbols=done.symbols, mixer_positions=done.mixer.positions, memory_seconds=seconds
        )
    return result


def _renamed(exc: UserError, old: str, new: str) -> UserError:
    message = re.sub(rf"(?<![\w.]){re.escape(old)}(?!\w)", new, str(exc))
    return UserError(message, tuple(new if name == old else name for name in exc.parameters))


# ----------------------------------------------------------------------------- settings


def settings(options: dict[str, Any], resume: bool = False) -> tuple[TrainConfig, ModelConfig]:
    """The TrainConfig and ModelConfig of `options` (their field names), checked.

    Without `time_budget`, a run given `steps` (or resumed) has no time limit of its own: the
    steps (or the resumed run's own duration) decide, as on the command line.
    """
    for name in options:
        if name not in TRAIN_OPTIONS and name not in MODEL_OPTIONS:
            valid = sorted(TRAIN_OPTIONS + MODEL_OPTIONS)
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(f"unknown option {name!r}; {hint}the options are {', '.join(valid)}", parameter=name)
    train_options = {name: value for name, value in options.items() if name in TRAIN_OPTIONS}
    if "time_budget" not in train_options and (train_options.get("steps") or resume):
        train_options["time_budget"] = None
    config = TrainConfig(**train_options)
    model_config = ModelConfig(**{name: value for name, value in options.items() if name in MODEL_OPTIONS})
    check_settings(config, model_config)
    return config, model_config


def check_settings(config: TrainConfig, model_config: ModelConfig) -> None:
    """The ranges the configs' fields must be in (before anything is read or written)."""
    if model_config.output not in OUTPUTS:
        raise UserError(f"output must be one of {', '.join(OUTPUTS)}, not {model_config.output!r}", parameter="output")
    for name in ("dropout", "embedding_dropout", "weight_drop"):
        value = getattr(model_config, name)
        if not 0 <= value < 1:
            raise UserError(f"{name} must be in [0, 1), not {value}", parameter=name)
    if config.min_lr_ratio is not None and not 0 <= config.min_lr_ratio <= 1:
        raise UserError(f"min_lr_ratio must be in [0, 1], not {config.min_lr_ratio}", parameter="min_lr_ratio")
    if config.ema is not None and not 0 <= config.ema < 1:
        raise UserError(f"ema must be in [0, 1), not {config.ema}", parameter="ema")


def check_out(out: str | Path, parameter: str = "out") -> Path:
    """`out` as a Path, if a run can be written there: a directory, or a path that can become one.

    Checked for real, before any corpus is read: a file is made (and removed at once) in the
    directory, or in its nearest existing parent when it does not exist yet.
    """
    path = Path(out)
    named = f'{parameter}="{path}"'
    wanted = "the directory of the run to continue" if parameter == "resume" else "a new or existing directory"
    if path.exists() and not path.is_dir():
        raise UserError(f"{named} is a file, not a directory; name {wanted} as {parameter}", parameter)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = existing.absolute()  # absolute, so that no part of it reads as the parameter's name
    if not existing.is_dir():
        raise UserError(
            f"{named} cannot be created: {where} is a file, not a directory; "
            f"name a directory outside it as {parameter}",
            parameter,
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(
            f"{named} cannot be written: making a file in {where} failed ({exc.strerror}); "
            f"name a directory you can write to as {parameter}",
            parameter,
        ) from None
    return path


# ----------------------------------------------------------------------------- the corpus


def load_data(
    corpus: str | Path | None,
    out: str | Path,
    *,
    text: str | None = None,
    val: str | Path | None = None,
    val_fraction: float = 0.1,
    format: str = "auto",
    alphabet: str = "corpus",
    encoding_errors: str = "strict",
    max_val_chars: int = 1_000_000,
    resume: str | Path | None = None,
) -> TrainingData:
    """The corpus read and split for a run into `out` (or, on `resume`, for the run there)."""
    if corpus is not None and text is not None:
        raise UserError("give corpus or text, not both", parameter=("corpus", "text"))
    if format not in FORMATS:
        raise UserError(f"format must be auto, text or lines, not {format!r}", parameter="format")
    if alphabet not in ALPHABETS:
        raise UserError(f"alphabet must be corpus or lecture, not {alphabet!r}", parameter="alphabet")
    check_encoding_errors(encoding_errors)
    split = _Split(val, val_fraction, max_val_chars, encoding_errors)
    if resume is not None:
        return _resumed(Path(resume), corpus, text, alphabet, split)
    if corpus is not None and Path(corpus).is_dir():
        return _prepared(Path(corpus), Path(out), None, format, split)
    body, name = _read(corpus, text, encoding_errors)
    corpus_format = choose_format(body) if format == "auto" else format
    return _split_text(body, name, Path(out), False, corpus_format, alphabet, split)


@dataclass
class _Split:
    """How the validation text is chosen, and how the files are decoded."""

    val: str | Path | None
    val_fraction: float
    max_val_chars: int
    encoding_errors: str

    def val_path(self) -> str | None:
        return str(Path(self.val).resolve()) if self.val else None


def saved_source(run: str | Path) -> dict[str, Any]:
    """What the run in directory `run` trained on: the "source" its resume state recorded."""
    state_file = Path(run) / RESUME_DIR / STATE_NAME
    if not state_file.is_file():
        raise UserError(f"{run}: nothing to resume (no {RESUME_DIR}/{STATE_NAME}); check the path")
    try:
        source: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8")).get("source", {})
    except (ValueError, AttributeError):  # JSON's errors, a huge integer, invalid UTF-8; not an object
        raise UserError(f"{state_file}: damaged resume state; start a new run") from None
    return source


def _resumed(run: Path, corpus: str | Path | None, text: str | None, alphabet: str, given: _Split) -> TrainingData:
    """The data of the run in `run`: what it recorded, unless `corpus`, `text` or a `val` file is
    given (the split and the decoding are always the run's own, as its digest of the text checks)."""
    source = saved_source(run)
    recorded = str(source.get("corpus", ""))
    if corpus is None and text is None:
        if recorded.startswith(GIVEN_TEXT):
            raise UserError(f"{run}: the run trained on text given in Python; give the same text again", "text")
        corpus = None if recorded.startswith(EMBEDDED) or not recorded else recorded
    split = _Split(
        given.val or source.get("val"),
        source.get("val_fraction", given.val_fraction),
        source.get("max_val_chars", given.max_val_chars),
        source.get("encoding_errors", given.encoding_errors),
    )
    if corpus is not None and Path(corpus).is_dir():
        return _prepared(Path(corpus), run, source, "auto", split)
    body, name = _read(corpus, text, split.encoding_errors)
    return _split_text(body, name, run, True, source.get("format", "text"), alphabet, split)


def _read(corpus: str | Path | None, text: str | None, encoding_errors: str) -> tuple[str, str]:
    """The corpus's text and the name the run records for it."""
    if text is not None:
        return text, GIVEN_TEXT
    if corpus is None:
        return embedded_corpus(), EMBEDDED
    return read_corpus(corpus, encoding_errors), str(Path(corpus).resolve())


def _split_text(
    body: str, name: str, out: Path, resume: bool, corpus_format: str, alphabet: str, split: _Split
) -> TrainingData:
    if split.val:
        train_text, val_text = body, read_corpus(split.val, split.encoding_errors)
    else:
        train_text, val_text = split_validation(body, corpus_format, split.val_fraction)
    source = {
        "corpus": name,
        "val": split.val_path(),
        "format": corpus_format,
        "val_fraction": split.val_fraction,
        "encoding_errors": split.encoding_errors,
    }
    shown = "(the text given)" if name == GIVEN_TEXT else name
    summary = (
        f"corpus {shown}: {len(train_text):,} training and {len(val_text):,} validation characters, "
        f"format {corpus_format}"
    )
    return TrainingData(out, resume, train_text, val_text, corpus_format, alphabet, source, summary)


def _prepared(directory: Path, out: Path, saved: dict[str, Any] | None, format: str, split: _Split) -> TrainingData:
    """A directory made by `nextchar prepare` (memory-mapped; see nextchar.data.prepared)."""
    if not is_prepared(directory) and not (directory / TOKENS_NAME).exists():
        raise not_a_corpus(directory)  # (a prepared directory that lost its description says so when opened)
    corpus = PreparedCorpus.open(directory)
    if saved is None and format != "auto" and format != corpus.format:
        raise UserError(
            f"{directory}: was prepared as {corpus.format}, not {format}; run `nextchar prepare "
            f'--format {format}` again or leave format="auto"',
            parameter="format",
        )
    val_text = read_corpus(split.val, split.encoding_errors) if split.val else None
    prepared = corpus.split(split.val_fraction, split.max_val_chars, val_text)
    source = {
        "corpus": str(directory.resolve()),
        "prepared": True,
        "val": split.val_path(),
        "format": corpus.format,
        "val_fraction": split.val_fraction,
        "max_val_chars": split.max_val_chars,
        "encoding_errors": split.encoding_errors,
    }
    summary = (
        f"prepared corpus {directory}: {prepared.train_characters:,} training characters (memory-mapped), "
        f"validation {'from ' + str(split.val) if split.val else 'its tail'}, format {corpus.format}"
    )
    alphabet = corpus.vocab.alphabet
    return TrainingData(out, saved is not None, "", "", corpus.format, alphabet, source, summary, prepared)


def not_a_corpus(directory: Path) -> UserError:
    """What a directory that is not a prepared corpus is, and what to give instead."""
    if (directory / RESUME_DIR / STATE_NAME).is_file():
        return UserError(
            f'{directory} is a checkpoint, not a corpus; to continue training it use resume="{directory}"', "resume"
        )
    if (directory / CONFIG_NAME).is_file():
        return UserError(
            f"{directory} is a checkpoint, not a corpus (and keeps no state to continue its training from); "
            "give a text file or a directory made by `nextchar prepare`"
        )
    texts = _text_files(directory)
    if not texts:
        return UserError(
            f"{directory} is a directory with no text files in it, not a corpus; "
            "give a text file or a directory made by `nextchar prepare`"
        )
    suffixes = {path.suffix for path in texts}
    pattern = f"*{suffixes.pop()}" if len(suffixes) == 1 else "*"
    return UserError(
        f"{directory} is a directory of text files, not a corpus: train on one of them, or encode them into "
        f"one corpus with `nextchar prepare {directory / pattern} --out DIR` and train on DIR"
    )


def _text_files(directory: Path, limit: int = 1000) -> list[Path]:
    """The visible files among the directory's first `limit` entries that look like text: their
    first KiB is UTF-8 (but for a character cut at its end) without control characters other than
    whitespace."""
    found = []
    for path in itertools.islice(directory.iterdir(), limit):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            with open(path, "rb") as f:
                head = f.read(1024)
        except OSError:
            continue
        if head and _looks_like_text(head):
            found.append(path)
    return found


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut by the end of the read
            return False
        text = head[: exc.start].decode("utf-8")
    return not any(ord(ch) < 32 and ch not in "\t\n\r\f" for ch in text)
