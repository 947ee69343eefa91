"""The exact state a stopped run continues from: `out/resume/`.

A resumed run must take the very steps the uninterrupted one would have taken, bit for bit. So
beyond the weights the state keeps everything a step reads: the optimizer's moments, the
random-number generator (dropout), the moving average of the weights, the state carried from
one truncated-BPTT window to the next, and where the run stands (step, clock, best score, the
evaluations so far). It is one bundle (nextchar.checkpoint's format):

    state.json                   step, elapsed, best_val_bpc, history, warmup_from, the run's
                                 settings, model, format, vocabulary, the training text's digest,
                                 the optimizer's param groups and scalar slots
    state-<sha256>.safetensors   model.*  the weights          optim.<param>.<slot>  its moments
                                 ema.*    their average        carry.<i>             carried state
                                 rng.torch                     torch's CPU generator

The carried state is saved for the global batch, so a run may resume on another number of
processes (each rank takes its own rows of it).

What a run is, fresh or restored, is a `RunSpec` (settings, model, format, vocabulary);
`training_data` gives the data it reads.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from nextchar.checkpoint import FORMAT_VERSION, read_bundle, write_bundle
from nextchar.data.batches import Encoded, LineBatches, StreamBatches, count_targets, encode_corpus
from nextchar.data.prepared import MemmapLineBatches, MemmapStreamBatches, PreparedSplit
from nextchar.errors import UserError
from nextchar.models import CharModel, ModelConfig, State
from nextchar.text import Vocabulary
from nextchar.training.config import TrainConfig

RESUME_DIR = "resume"
STATE_NAME = "state.json"
STATE_STEM = "state"

# Prefixes of the tensors' names in the bundle.
MODEL, OPTIMIZER, AVERAGE, CARRY = "model.", "optim.", "ema.", "carry."
RNG = "rng.torch"

Batches = StreamBatches | LineBatches | MemmapStreamBatches | MemmapLineBatches


def text_digest(text: str) -> str:
    """The identity of a training text: a resumed run must read the same one."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class RunSpec:
    """What a run is: fixed when it starts, recorded in its resume state, restored on resume."""

    config: TrainConfig  # resolved for the model's kind (TrainConfig.for_kind)
    model_config: ModelConfig
    corpus_format: str  # text | lines
    vocab: Vocabulary
    alphabet: str  # recorded in the checkpoint's training record
    train_digest: str  # text_digest of the training text, or the prepared split's digest


def fresh_spec(
    config: TrainConfig | None,
    model_config: ModelConfig | None,
    corpus_format: str,
    alphabet: str,
    train_text: str,
    prepared: PreparedSplit | None,
) -> RunSpec:
    """A new run's settings (the kind's optimiser defaults filled in) and its vocabulary: the
    prepared corpus's, or every character of the training text (after the alphabet's mapping)."""
    model_config = model_config or ModelConfig()
    config = (config or TrainConfig()).for_kind(model_config.kind)
    if prepared is not None:
        vocab = prepared.corpus.vocab
        return RunSpec(config, model_config, prepared.corpus.format, vocab, vocab.alphabet, prepared.digest)
    vocab = Vocabulary.of_corpus(train_text, alphabet)
    return RunSpec(config, model_config, corpus_format, vocab, alphabet, text_digest(train_text))


def _require_validation(val_data: Encoded) -> None:
    if count_targets(val_data) == 0:
        raise UserError(
            "the validation text is empty; give val_text or a larger val_fraction",
            parameter=("val_text", "val_fraction"),
        )


def training_data(
    spec: RunSpec, train_text: str, val_text: str, prepared: PreparedSplit | None, rank: int, world: int
) -> tuple[Encoded, Batches]:
    """The encoded validation data and the training batches (the memory-mapped ones read only
    this rank's rows; the others are cut to them at each step)."""
    config = spec.config
    batches: Batches
    if prepared is not None:
        val_data = prepared.val
        _require_validation(val_data)
        batches = prepared.batches(config.batch_size, config.seq_len, config.max_line_len, config.seed, rank, world)
    else:
        train_data = encode_corpus(train_text, spec.vocab, spec.corpus_format)
        val_data = encode_corpus(val_text, spec.vocab, spec.corpus_format)
        _require_validation(val_data)
        if isinstance(train_data, torch.Tensor):  # the text format: one stream
            batches = StreamBatches(train_data, config.batch_size, config.seq_len)
        else:
            batches = LineBatches(train_data, config.batch_size, config.max_line_len, config.seed)
    if batches.batch_size < world:
        row = f"a stream of seq_len={config.seq_len} windows" if spec.corpus_format == "text" else "a line"
        raise UserError(
            f"{world} processes, but the training data fills only {batches.batch_size} of the "
            f"{config.batch_size} rows of a batch (each row is {row}), so some processes would have "
            f"nothing to read; start at most {batches.batch_size} (torchrun --nproc_per_node) or give "
            "more data",
            parameter="seq_len",
        )
    return val_data, batches


@dataclass
class Position:
    """Where a run stands, besides its tensors."""

    step: int = 0  # optimiser steps taken
    elapsed: float = 0.0  # seconds of training and evaluation
    best_bpc: float = math.inf  # the best validation BPC so far (the checkpoint's)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per evaluation
    warmup_from: float = 0.0  # elapsed when the first step began: the warm-up's clock starts there


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The optimizer's state as JSON (param groups, scalar slots) and named tensors (the rest)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIMIZER}{pid}.{name}"] = value
            elif value is not None:
                scalars.setdefault(str(pid), {})[name] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}, tensors


def load_optimizer(optimizer: torch.optim.Optimizer, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Restore what `optimizer_tensors` took apart."""
    slots: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER):
            _, pid, name = key.split(".", 2)
            slots.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        slots.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})


def _tensors_under(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


@dataclass
class ResumeState:
    """A resume state as read from disk."""

    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @classmethod
    def read(cls, out: Path) -> ResumeState:
        meta, tensors = read_bundle(out / RESUME_DIR, json_name=STATE_NAME)
        return cls(meta, tensors)

    def spec(self, out: Path, config: TrainConfig | None, prepared: PreparedSplit | None, train_text: str) -> RunSpec:
        """The run's own settings, except that `config` may change only how long to go on (steps,
        time_budget) and on what hardware (device, compile); refuses a different training text."""
        saved = TrainConfig.from_json(self.meta["train_config"])
        if config is not None:
            if config.steps is not None or config.time_budget is not None:  # neither given: keep the run's
                saved.steps, saved.time_budget = config.steps, config.time_budget
            saved.device, saved.compile = config.device, config.compile
        model_config = ModelConfig.from_json(self.meta["model"])
        vocab = Vocabulary.from_json(self.meta["vocabulary"])
        if prepared is not None and prepared.corpus.vocab != vocab:
            raise UserError(
                f"{prepared.corpus.path}: its vocabulary ({len(prepared.corpus.vocab)} symbols) differs "
                f"from the one of the run in {out} ({len(vocab)} symbols); prepare the corpus again "
                f"with vocab_from={str(out)!r}",
                parameter="vocab_from",
            )
        train_digest = prepared.digest if prepared is not None else text_digest(train_text)
        if self.meta["train_sha256"] != train_digest:
            raise UserError(
                f"{out}: the training text differs from the one this run started on; resume with the same corpus"
            )
        # The alphabet is recorded in the checkpoint: the run's, not the caller's default.
        return RunSpec(
            saved.for_kind(model_config.kind), model_config, self.meta["format"], vocab, vocab.alphabet, train_digest
        )

    def restore_training(
        self, model: CharModel, optimizer: torch.optim.Optimizer, rank: int, world: int, device: torch.device
    ) -> tuple[Position, State | None]:
        """Weights, optimizer and RNG back in place; the position and this rank's carried state."""
        model.load_state_dict(_tensors_under(self.tensors, MODEL))
        load_optimizer(optimizer, self.meta["optimizer"], self.tensors)
        torch.set_rng_state(self.tensors[RNG])
        carry_keys = sorted(k for k in self.tensors if k.startswith(CARRY))
        # The carried state is saved for the global batch: this rank continues its own rows.
        carry = tuple(self.tensors[k][rank::world].to(device) for k in carry_keys) if carry_keys else None
        meta = self.meta
        position = Position(
            meta["step"], meta["elapsed"], meta["best_val_bpc"], meta["history"], meta.get("warmup_from", 0.0)
        )
        return position, carry

    def restore_average(self, averaged: AveragedModel) -> None:
        """The moving average goes on where it stopped (its weights and its count of updates)."""
        averaged.load_state_dict(_tensors_under(self.tensors, AVERAGE))


def write_resume_state(
    out: Path,
    spec: RunSpec,
    position: Position,
    model: CharModel,
    optimizer: torch.optim.Optimizer,
    averaged: AveragedModel | None,
    carry: State | None,
    source: dict[str, Any],
) -> None:
    """Write `out/resume/` (atomically); `carry` is the carried state of the global batch."""
    optim_meta, optim_tensors = optimizer_tensors(optimizer)
    tensors = {f"{MODEL}{k}": v for k, v in model.state_dict().items()}
    tensors.update(optim_tensors)
    tensors[RNG] = torch.get_rng_state()
    if averaged is not None:
        tensors.update({f"{AVERAGE}{k}": v for k, v in averaged.state_dict().items()})
    for i, part in enumerate(carry or ()):
        tensors[f"{CARRY}{i}"] = part
    meta = {
        "format_version": FORMAT_VERSION,
        "step": position.step,
        "elapsed": position.elapsed,
        "best_val_bpc": position.best_bpc,
        "warmup_from": position.warmup_from,
        "train_config": spec.config.to_json(),
        "model": spec.model_config.to_json(),
        "format": spec.corpus_format,
        "vocabulary": spec.vocab.to_json(),
        "train_sha256": spec.train_digest,
        "optimizer": optim_meta,
        "history": position.history,
        "source": source,
    }
    write_bundle(out / RESUME_DIR, meta, tensors, json_name=STATE_NAME, stem=STATE_STEM)
