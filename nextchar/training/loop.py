"""Training: minibatch optimisation of J with truncated BPTT, schedules, evaluation, resuming.

`train` does the whole job: it builds the vocabulary from the training split, encodes both
splits, optimises (AdamW or SGD, warm-up + cosine learning rate, gradient-norm clipping),
evaluates on the validation text every `eval_interval` steps, and in a time-budgeted run also by
the clock (the weights, or with `ema` their moving average; see config.py), keeps the best
checkpoint by validation BPC in `out`, and keeps the latest full training state in
`out/resume/` so that `resume=True` continues exactly where the run stopped.

The run is a `TrainState` (model, optimizer, average, position, carried state, clocks) that
`TrainState.build` sets up and small methods advance: `step` (one optimiser step), `evaluate`,
`checkpoint` (the resume state), `finished`; `train` only strings them together.

A time budget covers the whole call, setup and final evaluation included: the run stops when one
more step and that evaluation would not fit, its cost foreseen from a timed slice of the
validation text until evaluations (with their saves) have been timed.

What one step computes is in optimisation.py.

Output directory:
    config.json + model-*.safetensors    best checkpoint (usable as `-m out`)
    resume/state.json + state-*.safetensors   weights (and their average), optimizer, RNG,
                                              carried state, position (see resume.py)
    metrics.jsonl                        one JSON object per evaluation
    bpc.png                              train/validation BPC over steps (see plot.py)
"""

from __future__ import annotations

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
from nextchar.data.batches import IGNORE, Batch, Encoded
from nextchar.data.prepared import MemmapLineBatches, MemmapStreamBatches, PreparedSplit
from nextchar.errors import UserError
from nextchar.evaluation.bpc import EvalResult, evaluate_encoded
from nextchar.models import CharModel, ModelConfig, State, build_model, detach_state, resolved_output
from nextchar.training import distributed
from nextchar.training.budget import foreseen_seconds
from nextchar.training.config import (
    EVALUATION_SHARE,
    EVALUATIONS_PER_BUDGET,
    TrainConfig,
    TrainResult,
    learning_rate,
    resolved,
    use_bf16,
)
from nextchar.training.optimisation import Forward, make_optimizer, moving_average, sequence_loss, training_forward
from nextchar.training.plot import ProgressBar, import_pyplot, write_bpc_plot
from nextchar.training.resume import (
    Batches,
    Position,
    ResumeState,
    RunSpec,
    fresh_spec,
    training_data,
    write_resume_state,
)
from nextchar.training.rundir import append_metrics, diverged, one_writer, refuse_another_run, write_metrics


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
    eval_seconds: float = 0.0  # the final evaluation and save, foreseen, then as recent ones took
    step_seconds: float = 0.0  # how long the last step took (the time budget keeps room for one more)
    last_eval_at: float = 0.0  # the run's elapsed time when the last evaluation ended
    due_by_clock: bool = False  # (several processes) rank 0's clock says to evaluate after this step
    resumed: bool = False
    foreseen_again: bool = False  # the final evaluation's cost was foreseen again near the end
    evaluations: int = 0
    total_chars: int = 0  # of all steps of this call, for its chars_per_second
    total_time: float = 0.0
    stop: distributed.StopRequest = field(default_factory=distributed.StopRequest)
    on_evaluation: Callable[[dict[str, Any]], None] = lambda record: None  # told each metrics record

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
        spec.model_config.output = resolved_output(spec.model_config)  # the checkpoint says which
        torch.manual_seed(config.seed)
        model = build_model(spec.model_config).to(device)
        optimizer = make_optimizer(model, config)
        bf16 = use_bf16(config.precision, device)
        position = Position()
        carry: State | None = None
        if saved is not None:
            position, carry = saved.restore_training(model, optimizer, rank, world, device)
            if rank == 0:  # the evaluations after the state was saved are taken again: not twice
                write_metrics(out, position.history)
        elif rank == 0:
            write_metrics(out, [])
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
            last_eval_at=position.history[-1]["elapsed"] if position.history else 0.0,
            resumed=saved is not None,
        )

    def begin(self, started: float) -> None:
        """With a time budget: refuse to resume a spent one, foresee the final evaluation's cost,
        import the plotting, and put all the setup since `started` (perf_counter) on the clock."""
        budget = self.config.time_budget
        if not budget:
            return
        if self.resumed and self.position.elapsed >= budget:
            self._refuse(f"has used its whole time_budget ({budget:g} s)")
        self.eval_seconds = foreseen_seconds(self.evaluated, self.val_data)
        import_pyplot()
        self.position.elapsed += time.perf_counter() - started
        if not self.resumed:  # the warm-up's clock starts with the first step
            self.position.warmup_from = self.position.elapsed
        # The estimates differ between processes; only one process can refuse on them.
        if self.resumed and self.world == 1 and self.finished() and not self._steps_done():
            left = max(budget - self.position.elapsed, 0.0)
            self._refuse(
                f"has {left:.1f} s of its time_budget ({budget:g} s) left, too few for a step and an evaluation"
            )

    def _refuse(self, what: str) -> None:
        raise UserError(f"the run in {self.out} {what}; give a larger time_budget to go on", parameter="time_budget")

    @property
    def config(self) -> TrainConfig:
        return self.spec.config

    @property
    def evaluated(self) -> CharModel:
        """What evaluations score and checkpoints save: the weights, or their moving average."""
        if self.averaged is None:
            return self.model
        return cast(CharModel, self.averaged.module)  # AveragedModel averages a copy of the model

    def _steps_done(self) -> bool:
        return bool(self.config.steps and self.position.step >= self.config.steps)

    def finished(self) -> bool:
        """The run has taken its steps, or another step and the final evaluation would overrun
        its time budget. Where that evaluation's cost is still foreseen, not timed, it is foreseen
        again before the run stops on it: the machine's load may have changed since the start."""
        budget = self.config.time_budget
        if self._steps_done() or not budget:
            return self._steps_done()
        over = self.position.elapsed + self.step_seconds + self.eval_seconds >= budget
        if over and not self.evaluations and not self.foreseen_again and self.total_time > 0:
            self.foreseen_again = True
            self.on_the_clock(lambda: setattr(self, "eval_seconds", foreseen_seconds(self.evaluated, self.val_data)))
            return self.finished()
        return over

    def clock_says_evaluate(self) -> bool:
        """A run that only has a time budget evaluates every budget / EVALUATIONS_PER_BUDGET
        seconds too, but at least 1 / EVALUATION_SHARE times its evaluation's cost apart."""
        budget = self.config.time_budget
        if self.config.steps or not budget:
            return False
        gap = max(budget / EVALUATIONS_PER_BUDGET, self.eval_seconds / EVALUATION_SHARE)
        return self.position.elapsed - self.last_eval_at >= gap

    def _local_batch(self) -> Batch:
        """This rank's rows of the batch of the current step."""
        batch = self.batches(self.position.step)
        if self.world > 1 and not isinstance(self.batches, MemmapStreamBatches | MemmapLineBatches):
            batch = Batch(batch.x[self.rank :: self.world], batch.y[self.rank :: self.world], batch.reset)
        return batch

    def _agree(self, chars: int) -> tuple[float, int] | None:
        """One small all-reduce a step: all ranks stop together (None), share rank 0's clock (time
        budget, learning rate, evaluations by the clock) and count the targets of the global batch.

        Returns this rank's share of the global mean loss and the global batch's targets. DDP
        averages the ranks' gradients; scaling each rank's mean loss by W·(its targets)/(all
        targets) makes that average the gradient of the mean loss over the global batch, as one
        process computes it.
        """
        stopping = self.finished() or self.stop.requested or distributed.termination_requested()
        due = self.rank == 0 and self.clock_says_evaluate()
        done, self.position.elapsed, global_chars, due_anywhere = distributed.sum_across_ranks(
            [float(stopping), self.position.elapsed if self.rank == 0 else 0.0, chars, float(due)], self.device
        )
        if done:
            return None
        self.due_by_clock = due_anywhere > 0
        return chars * self.world / global_chars, int(global_chars)

    def _optimise(self, x: torch.Tensor, y: torch.Tensor, reset: bool, share: float) -> torch.Tensor:
        """Forward, backward, clip, update the weights and their average; returns the loss."""
        if reset or self.carry is None:
            self.carry = self.model.initial_state(x.shape[0], self.device)
        at = self.position
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, at.step, at.elapsed, at.warmup_from)
        loss, new_state = sequence_loss(self.forward, x, y, self.carry, self.bf16)
        if self.world == 1 and not math.isfinite(value := loss.item()):  # before the weights take it in
            raise diverged(self.out, self.position.step + 1, f"training loss is {value}")
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
        spent = self.step_seconds = time.perf_counter() - started
        self.position.elapsed += spent
        loss_value = loss.item()
        if not math.isfinite(loss_value):  # several processes: found after the step (every rank checks)
            raise diverged(self.out, self.position.step + 1, f"training loss is {loss_value}")
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
        if not math.isfinite(val.bpc):
            raise diverged(self.out, self.position.step, f"validation BPC is {val.bpc}")
        scored = time.perf_counter() - started
        position, window = self.position, self.window
        record = {
            "step": position.step,
            "elapsed": round(position.elapsed + scored, 3),
            "train_bpc": window.loss / max(window.steps, 1) / math.log(2),
            "val_bpc": val.bpc,
            "val_top1": val.top1,
            "lr": learning_rate(self.config, max(position.step - 1, 0), position.elapsed, position.warmup_from),
            "chars_per_s": window.chars / window.seconds if window.seconds > 0 else 0.0,
        }
        position.history.append(record)
        self.on_evaluation(record)
        append_metrics(self.out, record)
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

    def evaluate_on_the_clock(self, *then: Callable[[], None]) -> None:
        """Evaluate (and do `then`) on the clock; expect the cost again, or half the previous
        expectation if more: one-offs fade out, a save only some evaluations make stays covered."""
        before = time.perf_counter()
        self.on_the_clock(self.evaluate, *then)
        self.eval_seconds = max(time.perf_counter() - before, self.eval_seconds / 2)
        self.last_eval_at = self.position.elapsed

    def after_step(self) -> None:
        """Every eval_interval steps, or when the clock says so: evaluate and save the resume state."""
        due = self.due_by_clock if self.world > 1 else self.clock_says_evaluate()
        if self.position.step % self.config.eval_interval == 0 or due:
            self.evaluate_on_the_clock(self.checkpoint)

    def finish(self) -> TrainResult:
        """The end of a run (or an interruption) always leaves an evaluated, resumable state."""
        if self.window.steps or not (self.position.history or self.evaluations):
            self.evaluate_on_the_clock()
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
            terminated=distributed.termination_requested(),
        )


def run_steps(state: TrainState, bar: ProgressBar | None, should_stop: Callable[[int], bool] | None) -> None:
    """Step until the run is finished, `should_stop` or Ctrl-C says so, or (DDP) any rank stops.

    In one process Ctrl-C interrupts at once; across processes the first Ctrl-C becomes a request
    that all ranks act on at the next step, and a second one propagates (the ranks are then no
    longer in step, so there is no final save). SIGTERM stops a run after its step (`train`).
    """
    state.model.train()
    try:
        with distributed.stop_on_ctrl_c(state.stop) if state.world > 1 else nullcontext(state.stop):
            while state.world > 1 or not (state.finished() or distributed.termination_requested()):
                report = state.step()
                if report is None:
                    break
                state.after_step()
                if bar is not None:
                    bar.show(state.position, report.loss / report.share / math.log(2), report.chars / report.seconds)
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
    on_evaluation: Callable[[dict[str, Any]], None] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train a model on `train_text`, validating on `val_text`, into directory `out`.

    With `resume=True`, `out/resume/` supplies the model, optimizer, RNG, data position and
    carried state; `config` may then change only how long to go on (steps, time_budget) and
    on what hardware (device, compile, number of processes).
    `should_stop(step)` is polled after every step (a test's stand-in for Ctrl-C); `on_evaluation` gets each record.
    `source` (e.g. corpus paths) is recorded in the checkpoint for reproducibility.
    `prepared` (a split of a prepared directory) replaces the two texts, its vocabulary and
    format replace `alphabet` and `corpus_format`. A new run refuses a directory that holds
    another run unless `overwrite` (then it replaces it).

    Inside a process group (`nextchar.training.distributed.init`, under torchrun) the model is wrapped
    in DistributedDataParallel: rank r trains on rows r, r+W, … of every global batch of
    `batch_size` rows, so W ranks take the same steps as one process with the same batch.
    """
    started = time.perf_counter()
    with one_writer(Path(out)):
        if not resume and not overwrite:
            refuse_another_run(Path(out))
        state = TrainState.build(
            train_text, val_text, Path(out), config, model_config, corpus_format, alphabet, resume, source, prepared
        )
        state.begin(started)
        state.on_evaluation = on_evaluation or state.on_evaluation
        bar = ProgressBar(state.config, state.position) if progress and state.rank == 0 else None
        # SIGTERM in one process: stop after the step it arrives in, and finish (evaluate, save) whole
        with distributed.stop_on_sigterm() if state.world == 1 else nullcontext():
            run_steps(state, bar, should_stop)
            if bar is not None:
                bar.close()
            return state.finish()
