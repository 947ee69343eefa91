"""Training: minibatch optimisation of J with truncated BPTT, schedules, evaluation, resuming.

`train` does the whole job: it builds the vocabulary from the training split, encodes both
splits, optimises (AdamW or SGD, warm-up + cosine learning rate, gradient-norm clipping),
evaluates on the validation text every `eval_interval` steps (the weights, or with `ema` their
moving average), keeps the best checkpoint by validation BPC in `out`, and keeps the latest full
training state in `out/resume/` so that `resume=True` continues exactly where the run stopped.

The run is a `TrainState` (model, optimizer, average, position, carried state, clocks) that
`TrainState.build` sets up and small methods advance: `step` (one optimiser step), `evaluate`,
`checkpoint` (the resume state), `finished`; `train` only strings them together.

What one step computes is in optimisation.py.

Output directory:
    config.json + model-*.safetensors    best checkpoint (usable as `-m out`)
    resume/state.json + state-*.safetensors   weights (and their average), optimizer, RNG,
                                              carried state, position (see resume.py)
    metrics.jsonl                        one JSON object per evaluation
    bpc.png                              train/validation BPC over steps (see plot.py)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch.optim.swa_utils import AveragedModel

from nextchar.checkpoint import save_checkpoint
from nextchar.data.batches import IGNORE, Batch, Encoded, LineBatches, StreamBatches, count_targets, encode_corpus
from nextchar.data.prepared import MemmapLineBatches, MemmapStreamBatches, PreparedSplit
from nextchar.errors import UserError
from nextchar.evaluation.bpc import EvalResult, evaluate_encoded
from nextchar.models import CharModel, ModelConfig, State, build_model, detach_state
from nextchar.text import Vocabulary
from nextchar.training import distributed
from nextchar.training.config import TrainConfig, TrainResult, learning_rate, resolved, use_bf16
from nextchar.training.optimisation import Forward, make_optimizer, moving_average, sequence_loss, training_forward
from nextchar.training.plot import write_bpc_plot
from nextchar.training.resume import Position, ResumeState, RunSpec, text_digest, write_resume_state

METRICS_NAME = "metrics.jsonl"

Batches = StreamBatches | LineBatches | MemmapStreamBatches | MemmapLineBatches


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
    vocab = Vocabulary.from_text(Vocabulary.from_text("", alphabet).prepare(train_text), alphabet)
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
class Window:
    """The steps since the last evaluation: their mean loss is the train BPC it reports."""

    loss: float = 0.0  # sum of the steps' losses (nats; in DDP each rank's share of the global mean)
    steps: int = 0
    chars: int = 0  # predicted positions (of the global batch)
    seconds: float = 0.0  # spent in the steps, evaluation excluded


@dataclass
class StepReport:
    """What one step did, for the progress bar."""

    loss: float  # the loss backpropagated (in DDP scaled by `share`)
    share: float  # this rank's weight in the global mean loss (1 in one process)
    chars: int  # predicted positions of the global batch
    seconds: float


@dataclass(eq=False)
class TrainState:
    """A run in progress: everything the steps, evaluations and checkpoints read and change."""

    out: Path
    spec: RunSpec
    source: dict[str, Any]  # recorded in the checkpoint (e.g. the corpus paths)
    rank: int
    world: int
    device: torch.device
    bf16: bool  # autocast the forward pass to bf16
    val_data: Encoded
    batches: Batches
    model: CharModel
    optimizer: torch.optim.Optimizer
    averaged: AveragedModel | None  # the moving average of the weights (config.ema > 0)
    forward: Forward
    position: Position
    carry: State | None = None  # the state carried into the next window (this rank's rows)
    window: Window = field(default_factory=Window)
    best_val: EvalResult | None = None
    last_val: EvalResult | None = None
    eval_seconds: float = 0.0  # how long the last evaluation took (the time budget keeps room for one)
    evaluations: int = 0
    total_chars: int = 0  # of all steps of this call, for its chars_per_second
    total_time: float = 0.0
    stop: distributed.StopRequest = field(default_factory=distributed.StopRequest)

    @classmethod
    def build(
        cls,
        train_text: str,
        val_text: str,
        out: Path,
        config: TrainConfig | None,
        model_config: ModelConfig | None,
        corpus_format: str,
        alphabet: str,
        resume: bool,
        source: dict[str, Any] | None,
        prepared: PreparedSplit | None,
    ) -> TrainState:
        """Settings, data, model, optimizer and average: new, or restored from `out/resume/`."""
        rank, world = distributed.rank(), distributed.world_size()
        saved = ResumeState.read(out) if resume else None
        if saved is not None:
            spec = saved.spec(out, config, prepared, train_text)
        else:
            spec = fresh_spec(config, model_config, corpus_format, alphabet, train_text, prepared)
        config = spec.config
        if not config.steps and not config.time_budget:
            raise UserError(
                "give steps or time_budget (or both) so that training ends", parameter=("steps", "time_budget")
            )
        device = distributed.resolve_device(config.device)
        val_data, batches = training_data(spec, train_text, val_text, prepared, rank, world)

        spec.model_config.vocab_size = len(spec.vocab)
        torch.manual_seed(config.seed)
        model = build_model(spec.model_config).to(device)
        optimizer = make_optimizer(model, config)
        bf16 = use_bf16(config.precision, device)
        position = Position()
        carry: State | None = None
        if saved is not None:
            position, carry = saved.restore_training(model, optimizer, rank, world, device)
        elif rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / METRICS_NAME).write_text("")
        ema = resolved(config.ema, "ema")
        averaged = moving_average(model, ema) if ema > 0 else None
        if averaged is not None and saved is not None:
            saved.restore_average(averaged)
        forward = training_forward(model, config, device, rank, world, position.step)
        return cls(
            out=out,
            spec=spec,
            source=source or {},
            rank=rank,
            world=world,
            device=device,
            bf16=bf16,
            val_data=val_data,
            batches=batches,
            model=model,
            optimizer=optimizer,
            averaged=averaged,
            forward=forward,
            position=position,
            carry=carry,
        )

    @property
    def config(self) -> TrainConfig:
        return self.spec.config

    @property
    def evaluated(self) -> CharModel:
        """What evaluations score and checkpoints save: the weights, or their moving average."""
        if self.averaged is None:
            return self.model
        return cast(CharModel, self.averaged.module)  # AveragedModel averages a copy of the model

    def finished(self) -> bool:
        """The run has taken its steps, or the next evaluation would overrun its time budget."""
        if self.config.steps and self.position.step >= self.config.steps:
            return True
        # Stop early enough that the final evaluation also fits in the budget.
        return bool(self.config.time_budget and self.position.elapsed + self.eval_seconds >= self.config.time_budget)

    def _local_batch(self) -> Batch:
        """This rank's rows of the batch of the current step."""
        batch = self.batches(self.position.step)
        if self.world > 1 and not isinstance(self.batches, MemmapStreamBatches | MemmapLineBatches):
            batch = Batch(batch.x[self.rank :: self.world], batch.y[self.rank :: self.world], batch.reset)
        return batch

    def _agree(self, chars: int) -> tuple[float, int] | None:
        """One small all-reduce a step: all ranks stop together (None), share rank 0's clock (time
        budget, learning rate) and count the targets of the global batch.

        Returns this rank's share of the global mean loss and the global batch's targets. DDP
        averages the ranks' gradients; scaling each rank's mean loss by W·(its targets)/(all
        targets) makes that average the gradient of the mean loss over the global batch, as one
        process computes it.
        """
        stopping = self.finished() or self.stop.requested or distributed.termination_requested()
        done, self.position.elapsed, global_chars = distributed.sum_across_ranks(
            [float(stopping), self.position.elapsed if self.rank == 0 else 0.0, chars], self.device
        )
        if done:
            return None
        return chars * self.world / global_chars, int(global_chars)

    def _optimise(self, x: torch.Tensor, y: torch.Tensor, reset: bool, share: float) -> torch.Tensor:
        """Forward, backward, clip, update the weights and their average; returns the loss."""
        if reset or self.carry is None:
            self.carry = self.model.initial_state(x.shape[0], self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.position.step, self.position.elapsed)
        loss, new_state = sequence_loss(self.forward, x, y, self.carry, self.bf16)
        if self.world > 1:
            loss = loss * share
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        self.carry = detach_state(new_state)
        return loss

    def step(self) -> StepReport | None:
        """One optimiser step, timed; None when the ranks agreed to stop before it."""
        started = time.perf_counter()
        batch = self._local_batch()
        x, y = batch.x.to(self.device), batch.y.to(self.device)
        chars = int((batch.y != IGNORE).sum())
        share = 1.0
        if self.world > 1:
            agreed = self._agree(chars)
            if agreed is None:
                return None
            share, chars = agreed
        loss = self._optimise(x, y, batch.reset, share)
        self.position.step += 1
        spent = time.perf_counter() - started
        self.position.elapsed += spent
        loss_value = loss.item()
        self.window.loss += loss_value
        self.window.steps += 1
        self.window.chars += chars
        self.window.seconds += spent
        self.total_chars += chars
        self.total_time += spent
        return StepReport(loss_value, share, chars, spent)

    def evaluate(self) -> None:
        """Score the validation text (rank 0), log it, keep the best checkpoint, redraw the plot;
        a new window of steps begins."""
        self.evaluations += 1
        if self.world > 1:  # each rank's loss is its share of the global mean (see _agree)
            self.window.loss = distributed.sum_across_ranks([self.window.loss], self.device)[0] / self.world
            if self.rank != 0:
                self.window = Window()
                return
        started = time.perf_counter()
        val = self.last_val = evaluate_encoded(self.evaluated, self.val_data)
        self.eval_seconds = time.perf_counter() - started
        position, window = self.position, self.window
        record = {
            "step": position.step,
            "elapsed": round(position.elapsed + self.eval_seconds, 3),
            "train_bpc": window.loss / max(window.steps, 1) / math.log(2),
            "val_bpc": val.bpc,
            "val_top1": val.top1,
            "lr": learning_rate(self.config, max(position.step - 1, 0), position.elapsed),
            "chars_per_s": window.chars / window.seconds if window.seconds > 0 else 0.0,
        }
        position.history.append(record)
        with open(self.out / METRICS_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if val.bpc < position.best_bpc:
            position.best_bpc, self.best_val = val.bpc, val
            save_checkpoint(
                self.out,
                self.evaluated,
                self.spec.vocab,
                self.spec.corpus_format,
                self.training_record(),
                {"val": val.to_json(), "step": position.step, "elapsed": record["elapsed"]},
            )
        write_bpc_plot(self.out, position.history)
        self.window = Window()

    def training_record(self) -> dict[str, Any]:
        """How the checkpoint was trained: the settings, the data's source, the alphabet, processes."""
        return {
            "config": self.config.to_json(),
            "source": self.source,
            "alphabet": self.spec.alphabet,
            "processes": self.world,
        }

    def checkpoint(self) -> None:
        """Write the resume state (every rank takes part in gathering the carried state; rank 0 writes)."""
        whole_carry = self.carry
        if self.world > 1 and self.carry is not None:
            whole_carry = distributed.gather_rows(self.carry, self.batches.batch_size)
        if self.rank != 0:
            return
        write_resume_state(
            self.out, self.spec, self.position, self.model, self.optimizer, self.averaged, whole_carry, self.source
        )

    def on_the_clock(self, *actions: Callable[[], None]) -> None:
        """Run `actions`, counting their time in the run's elapsed time (the time budget's clock)."""
        before = time.perf_counter()
        for action in actions:
            action()
        self.position.elapsed += time.perf_counter() - before

    def after_step(self) -> None:
        """Every eval_interval steps: evaluate and save the resume state."""
        if self.position.step % self.config.eval_interval == 0:
            self.on_the_clock(self.evaluate, self.checkpoint)

    def finish(self) -> TrainResult:
        """The end of a run (or an interruption) always leaves an evaluated, resumable state."""
        if self.window.steps or not (self.position.history or self.evaluations):
            self.on_the_clock(self.evaluate)
        self.checkpoint()
        distributed.barrier()  # rank 0 has written everything: all ranks leave together
        return TrainResult(
            self.out,
            self.position.step,
            self.position.elapsed,
            self.best_val,
            self.last_val,
            self.total_chars / self.total_time if self.total_time > 0 else 0.0,
            self.model,
        )


class ProgressBar:
    """Rank 0's tqdm bar: steps (or seconds of the time budget) done, the last step's BPC and
    speed, the best validation BPC."""

    def __init__(self, config: TrainConfig, position: Position) -> None:
        from tqdm import tqdm

        self.by_steps = bool(config.steps)
        self.total = config.steps if config.steps else int(config.time_budget or 0)
        self.bar = tqdm(
            total=self.total,
            initial=min(self._done(position), self.total),
            unit="step" if self.by_steps else "s",
            dynamic_ncols=True,
            leave=True,
            mininterval=0.5,
        )

    def _done(self, position: Position) -> int:
        return position.step if self.by_steps else int(position.elapsed)

    def show(self, position: Position, report: StepReport) -> None:
        done = min(self._done(position), self.total)
        self.bar.set_postfix(
            bpc=f"{report.loss / report.share / math.log(2):.3f}",
            val=f"{position.best_bpc:.3f}",
            chars_s=f"{report.chars / report.seconds:,.0f}",
            refresh=False,
        )
        self.bar.update(done - self.bar.n)  # redraws at most every bar.mininterval seconds

    def close(self) -> None:
        self.bar.close()


def run_steps(state: TrainState, bar: ProgressBar | None, should_stop: Callable[[int], bool] | None) -> None:
    """Step until the run is finished, `should_stop` or Ctrl-C says so, or (DDP) any rank stops.

    In one process Ctrl-C interrupts at once; across processes the first Ctrl-C becomes a request
    that all ranks act on at the next step, and a second one propagates (the ranks are then no
    longer in step, so there is no final save).
    """
    state.model.train()
    try:
        with distributed.stop_on_ctrl_c(state.stop) if state.world > 1 else nullcontext(state.stop):
            while state.world > 1 or not state.finished():
                report = state.step()
                if report is None:
                    break
                state.after_step()
                if bar is not None:
                    bar.show(state.position, report)
                if should_stop is not None and should_stop(state.position.step):
                    if state.world == 1:
                        raise KeyboardInterrupt
                    state.stop.requested = True  # every rank stops at the next step
    except KeyboardInterrupt:
        if state.world > 1:
            raise


def train(
    train_text: str,
    val_text: str,
    out: str | Path,
    config: TrainConfig | None = None,
    model_config: ModelConfig | None = None,
    corpus_format: str = "text",
    alphabet: str = "corpus",
    resume: bool = False,
    source: dict[str, Any] | None = None,
    progress: bool = True,
    should_stop: Callable[[int], bool] | None = None,
    prepared: PreparedSplit | None = None,
) -> TrainResult:
    """Train a model on `train_text`, validating on `val_text`, into directory `out`.

    With `resume=True`, `out/resume/` supplies the model, optimizer, RNG, data position and
    carried state; `config` may then change only how long to go on (steps, time_budget) and
    on what hardware (device, compile, number of processes).
    `should_stop(step)` is polled after every step (a test's stand-in for Ctrl-C).
    `source` (e.g. corpus paths) is recorded in the checkpoint for reproducibility.
    `prepared` (a split of a prepared directory) replaces the two texts, its vocabulary and
    format replace `alphabet` and `corpus_format`.

    Inside a process group (`nextchar.training.distributed.init`, under torchrun) the model is wrapped
    in DistributedDataParallel: rank r trains on rows r, r+W, … of every global batch of
    `batch_size` rows, so W ranks take the same steps as one process with the same batch.
    """
    state = TrainState.build(
        train_text, val_text, Path(out), config, model_config, corpus_format, alphabet, resume, source, prepared
    )
    bar = ProgressBar(state.config, state.position) if progress and state.rank == 0 else None
    run_steps(state, bar, should_stop)
    if bar is not None:
        bar.close()
    return state.finish()
