"""Training: minibatch optimisation of J with truncated BPTT, schedules, evaluation, resuming.

One function, `train`, does the whole job: it builds the vocabulary from the training split,
encodes both splits, optimises (AdamW or SGD, warm-up + cosine learning rate, gradient-norm
clipping), evaluates on the validation text every `eval_interval` steps (the weights, or with
`ema` their moving average), keeps the best checkpoint by validation BPC in `out`, and keeps the
latest full training state in `out/resume/` so that `resume=True` continues exactly where the
run stopped.

Output directory:
    config.json + model-*.safetensors    best checkpoint (usable as `-m out`)
    resume/state.json + state-*.safetensors   weights (and their average), optimizer, RNG,
                                              carried state, position
    metrics.jsonl                        one JSON object per evaluation
    bpc.png                              train/validation BPC over steps
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from nextchar.checkpoint import FORMAT_VERSION, read_bundle, save_checkpoint, write_bundle
from nextchar.data.batches import IGNORE, Batch, LineBatches, StreamBatches, count_targets, encode_corpus
from nextchar.data.prepared import MemmapLineBatches, MemmapStreamBatches, PreparedSplit
from nextchar.errors import UserError
from nextchar.evaluation.bpc import EvalResult, evaluate_encoded
from nextchar.models import CharModel, ModelConfig, State, build_model, detach_state
from nextchar.text import Vocabulary
from nextchar.training import distributed

RESUME_DIR = "resume"


# The optimiser's defaults depend on the model kind. The LSTM's were measured in 10-minute runs
# of the default 1×512 model on Tiny Shakespeare (README: a peak learning rate 13× higher, with
# AdamW's decoupled decay, lr × weight_decay a step, as the regulariser that makes it pay; a
# cosine that ends at 1% of the peak, not 5%). No kind averages its weights by default: at the
# end of a run the average scored no better (README). The other kinds keep the values they were
# benchmarked with.
BASE_OPTIMISER_DEFAULTS: dict[str, float] = {"lr": 3e-3, "warmup_steps": 100, "weight_decay": 0.1,
                                             "min_lr_ratio": 0.05, "ema": 0.0}
KIND_OPTIMISER_DEFAULTS: dict[str, dict[str, float]] = {
    "lstm": {"lr": 4e-2, "warmup_steps": 300, "weight_decay": 0.2, "min_lr_ratio": 0.01},
}


def optimiser_default(kind: str, name: str) -> float:
    """The default of `name` (a key of BASE_OPTIMISER_DEFAULTS) for models of `kind`."""
    return KIND_OPTIMISER_DEFAULTS.get(kind, {}).get(name, BASE_OPTIMISER_DEFAULTS[name])


@dataclass
class TrainConfig:
    # data
    batch_size: int = 32  # B: parallel streams (text) or lines (lines) per step
    seq_len: int = 128  # T: characters per truncated-BPTT window (text format)
    max_line_len: int = 256  # lines longer than this are cut for training (lines format)
    # optimisation
    optimizer: str = "adamw"  # adamw | sgd
    lr: float | None = None  # peak learning rate (None: the model kind's default, see for_kind)
    min_lr_ratio: float | None = None  # the cosine ends at lr × this (None: the kind's default)
    warmup_steps: int | None = None  # linear warm-up from 0 (None: the kind's default)
    weight_decay: float | None = None  # AdamW's decoupled decay (None: the kind's default)
    momentum: float = 0.9  # SGD only
    grad_clip: float = 1.0  # max global gradient norm (exploding gradients); 0 disables
    # decay of the moving average of the weights that evaluations score and checkpoints keep;
    # 0: the trained weights themselves (None: the kind's default)
    ema: float | None = None
    # duration: whichever comes first
    steps: int | None = None  # stop after this many optimiser steps
    time_budget: float | None = 600.0  # seconds of wall clock, evaluation included
    eval_interval: int = 200  # evaluate on the validation text every this many steps
    # system
    seed: int = 1337
    precision: str = "auto"  # auto | bf16 | fp32 (bf16 autocast where the CPU has bf16 units)
    device: str = "auto"  # auto | cpu | cuda | mps (auto: cuda if available, else mps, else cpu)
    compile: bool = False  # torch.compile the training forward pass

    def for_kind(self, kind: str) -> TrainConfig:
        """This config with the defaults of models of `kind` where an optimiser setting
        (those of BASE_OPTIMISER_DEFAULTS) is unset."""
        unset = {name: optimiser_default(kind, name) for name in BASE_OPTIMISER_DEFAULTS if getattr(self, name) is None}
        return replace(self, **unset)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})


def cpu_has_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX), i.e. autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"--precision must be auto, bf16 or fp32, not {precision!r}")
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
    return precision == "bf16"


def learning_rate(config: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warm-up, then cosine decay to lr·min_lr_ratio over the run.

    Progress through the run is step/steps when --steps is set, else elapsed/time_budget
    (a time-budgeted run cannot know its step count in advance).
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.steps:
        progress = step / config.steps
    elif config.time_budget:
        progress = elapsed / config.time_budget
    else:
        progress = 0.0
    progress = min(max(progress, 0.0), 1.0)
    low = config.lr * config.min_lr_ratio
    return low + (config.lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: CharModel, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    raise UserError(f"--optimizer must be adamw or sgd, not {config.optimizer!r}")


def moving_average(model: CharModel, decay: float) -> AveragedModel:
    """An exponential moving average of `model`'s weights, updated by `update_parameters(model)`.

    The weights at a high learning rate jump around the minimum they are descending into; their
    average lies nearer it (Polyak averaging). Early on, the decay ramps up as
    min(decay, (1+n)/(10+n)) after n updates, so that the random initial weights are soon forgotten.
    """
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor | int) -> None:
        n = int(n)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1 + n) / (10 + n)))

    return AveragedModel(model, multi_avg_fn=update)


def sequence_loss(model: CharModel, x: torch.Tensor, y: torch.Tensor, state: State | None,
                  bf16: bool) -> tuple[torch.Tensor, State]:
    """Mean L_elt (cross-entropy, nats) over the predicted positions of a batch."""
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, new_state = model(x, state)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)
    return loss, new_state


@dataclass
class TrainResult:
    out: Path
    steps: int
    elapsed: float
    best_val: EvalResult | None
    final_val: EvalResult | None
    chars_per_second: float  # of the whole job: all ranks together
    model: CharModel | None = None  # the final trained weights (not necessarily the best checkpoint's,
    # nor the moving average that the evaluations use when config.ema > 0)


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value
            elif value is not None:
                scalars.setdefault(str(pid), {})[name] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}, tensors


def _load_optimizer(optimizer: torch.optim.Optimizer, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            slots.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        slots.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})


def _plot(out: Path, history: list[dict]) -> None:
    """bpc.png: train and validation BPC over steps (written atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nextchar.files import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["train_bpc"] for h in history], marker=".", label="train (mean since last point)")
    ax.plot(steps, [h["val_bpc"] for h in history], marker=".", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(out / "bpc.png", buffer.getvalue())


def train(
    train_text: str,
    val_text: str,
    out: str | Path,
    config: TrainConfig | None = None,
    model_config: ModelConfig | None = None,
    corpus_format: str = "text",
    alphabet: str = "corpus",
    resume: bool = False,
    source: dict | None = None,
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
    out = Path(out)
    rank, world = distributed.rank(), distributed.world_size()
    resume_meta: dict | None = None
    resume_tensors: dict[str, torch.Tensor] = {}
    if resume:
        resume_meta, resume_tensors = read_bundle(out / RESUME_DIR, json_name="state.json")
        saved = TrainConfig.from_json(resume_meta["train_config"])
        if config is not None:  # only the duration and the hardware may change on resume
            if config.steps is not None or config.time_budget is not None:  # neither given: keep the run's
                saved.steps, saved.time_budget = config.steps, config.time_budget
            saved.device, saved.compile = config.device, config.compile
        model_config = ModelConfig.from_json(resume_meta["model"])
        config = saved.for_kind(model_config.kind)
        corpus_format = resume_meta["format"]
        vocab = Vocabulary.from_json(resume_meta["vocabulary"])
        alphabet = vocab.alphabet  # recorded in the checkpoint: the run's, not this call's default
        if prepared is not None and prepared.corpus.vocab != vocab:
            raise UserError(f"{prepared.corpus.path}: its vocabulary ({len(prepared.corpus.vocab)} symbols) differs "
                            f"from the one of the run in {out} ({len(vocab)} symbols); prepare the corpus again "
                            f"with --vocab-from {out}")
        train_digest = prepared.digest if prepared is not None else _text_digest(train_text)
        if resume_meta["train_sha256"] != train_digest:
            raise UserError(f"{out}: the training text differs from the one this run started on; "
                            "resume with the same corpus")
    else:
        model_config = model_config or ModelConfig()
        config = (config or TrainConfig()).for_kind(model_config.kind)
        if prepared is not None:
            vocab, corpus_format = prepared.corpus.vocab, prepared.corpus.format
            alphabet, train_digest = vocab.alphabet, prepared.digest
        else:
            vocab = Vocabulary.from_text(Vocabulary.from_text("", alphabet).prepare(train_text), alphabet)
            train_digest = _text_digest(train_text)
    if not config.steps and not config.time_budget:
        raise UserError("give --steps or --time-budget (or both) so that training ends")
    device = distributed.resolve_device(config.device)

    batches: StreamBatches | LineBatches | MemmapStreamBatches | MemmapLineBatches
    if prepared is not None:  # the memory-mapped batches read only this rank's rows
        val_data = prepared.val
        if count_targets(val_data) == 0:
            raise UserError("the validation text is empty; give --val FILE or a larger --val-fraction")
        batches = prepared.batches(config.batch_size, config.seq_len, config.max_line_len, config.seed, rank, world)
    else:
        train_data = encode_corpus(train_text, vocab, corpus_format)
        val_data = encode_corpus(val_text, vocab, corpus_format)
        if count_targets(val_data) == 0:
            raise UserError("the validation text is empty; give --val FILE or a larger --val-fraction")
        if corpus_format == "text":
            batches = StreamBatches(train_data, config.batch_size, config.seq_len)
        else:
            batches = LineBatches(train_data, config.batch_size, config.max_line_len, config.seed)
    if batches.batch_size < world:
        row = f"a stream of --seq-len {config.seq_len} windows" if corpus_format == "text" else "a line"
        raise UserError(f"{world} processes, but the training data fills only {batches.batch_size} of the "
                        f"{config.batch_size} rows of a batch (each row is {row}), so some processes would have "
                        f"nothing to read; start at most {batches.batch_size} (torchrun --nproc_per_node) or give "
                        "more data")

    model_config.vocab_size = len(vocab)
    torch.manual_seed(config.seed)
    model = build_model(model_config).to(device)
    optimizer = make_optimizer(model, config)
    bf16 = use_bf16(config.precision, device)

    step, elapsed, best_bpc, history = 0, 0.0, math.inf, []
    carry: State | None = None
    if resume_meta is not None:
        model.load_state_dict({k[6:]: v for k, v in resume_tensors.items() if k.startswith("model.")})
        _load_optimizer(optimizer, resume_meta["optimizer"], resume_tensors)
        torch.set_rng_state(resume_tensors["rng.torch"])
        carry_keys = sorted(k for k in resume_tensors if k.startswith("carry."))
        # The carried state is saved for the global batch: this rank continues its own rows.
        carry = tuple(resume_tensors[k][rank::world].to(device) for k in carry_keys) if carry_keys else None
        step, elapsed, best_bpc = resume_meta["step"], resume_meta["elapsed"], resume_meta["best_val_bpc"]
        history = resume_meta["history"]
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text("")

    averaged = moving_average(model, config.ema) if config.ema > 0 else None
    if averaged is not None and resume_meta is not None:
        averaged.load_state_dict({k[4:]: v for k, v in resume_tensors.items() if k.startswith("ema.")})
    evaluated = averaged.module if averaged is not None else model  # what evaluations score and save

    forward: Callable = model  # what a training step calls: the model, or its DDP wrapper, compiled
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # The models' buffers are constants: no need to broadcast them before every forward pass.
        no_sync = ({"forward_sync_buffers": False}  # torch ≥ 2.13 deprecates broadcast_buffers
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          **no_sync)
        # Dropout masks must differ between ranks; seeding by step keeps a resumed run repeatable.
        torch.manual_seed(config.seed + 1_000_003 * (rank + 1) + step)
    if config.compile:
        forward = torch.compile(forward)

    training_record = {"config": config.to_json(), "source": source or {}, "alphabet": alphabet,
                       "processes": world}

    def save_resume_state() -> None:
        whole_carry = carry
        if world > 1 and carry is not None:  # every rank takes part; rank 0 writes
            whole_carry = distributed.gather_rows(carry, batches.batch_size)
        if rank != 0:
            return
        optim_meta, optim_tensors = _optimizer_tensors(optimizer)
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update(optim_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        if averaged is not None:
            tensors.update({f"ema.{k}": v for k, v in averaged.state_dict().items()})
        for i, part in enumerate(whole_carry or ()):
            tensors[f"carry.{i}"] = part
        meta = {
            "format_version": FORMAT_VERSION, "step": step, "elapsed": elapsed, "best_val_bpc": best_bpc,
            "train_config": config.to_json(), "model": model_config.to_json(), "format": corpus_format,
            "vocabulary": vocab.to_json(), "train_sha256": train_digest,
            "optimizer": optim_meta, "history": history, "source": source or {},
        }
        write_bundle(out / RESUME_DIR, meta, tensors, json_name="state.json", stem="state")

    best_val: EvalResult | None = None
    last_val: EvalResult | None = None
    eval_seconds = 0.0
    window_loss, window_steps, window_chars, window_time = 0.0, 0, 0, 0.0
    evaluations = 0

    def run_evaluation() -> None:
        nonlocal best_bpc, best_val, last_val, eval_seconds, window_loss, window_steps, window_chars, window_time
        nonlocal evaluations
        evaluations += 1
        if world > 1:  # each rank's loss is its share of the global mean (see the loop)
            window_loss = distributed.sum_across_ranks([window_loss], device)[0] / world
            if rank != 0:
                window_loss, window_steps, window_chars, window_time = 0.0, 0, 0, 0.0
                return
        started = time.perf_counter()
        last_val = evaluate_encoded(evaluated, val_data)
        eval_seconds = time.perf_counter() - started
        record = {
            "step": step,
            "elapsed": round(elapsed + eval_seconds, 3),
            "train_bpc": window_loss / max(window_steps, 1) / math.log(2),
            "val_bpc": last_val.bpc,
            "val_top1": last_val.top1,
            "lr": learning_rate(config, max(step - 1, 0), elapsed),
            "chars_per_s": window_chars / window_time if window_time > 0 else 0.0,
        }
        history.append(record)
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if last_val.bpc < best_bpc:
            best_bpc, best_val = last_val.bpc, last_val
            save_checkpoint(out, evaluated, vocab, corpus_format, training_record,
                            {"val": last_val.to_json(), "step": step, "elapsed": record["elapsed"]})
        _plot(out, history)
        window_loss, window_steps, window_chars, window_time = 0.0, 0, 0, 0.0

    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        total = config.steps if config.steps else int(config.time_budget or 0)
        bar = tqdm(total=total, initial=min(step if config.steps else int(elapsed), total),
                   unit="step" if config.steps else "s", dynamic_ncols=True, leave=True,
                   mininterval=0.5)

    def finished() -> bool:
        if config.steps and step >= config.steps:
            return True
        # Stop early enough that the final evaluation also fits in the budget.
        return bool(config.time_budget and elapsed + eval_seconds >= config.time_budget)

    total_chars, total_time = 0, 0.0
    model.train()
    interrupted = False
    stop = distributed.StopRequest()
    try:
        with distributed.stop_on_ctrl_c(stop) if world > 1 else nullcontext(stop):
            while world > 1 or not finished():
                started = time.perf_counter()
                batch = batches(step)
                if world > 1 and not isinstance(batches, MemmapStreamBatches | MemmapLineBatches):
                    batch = Batch(batch.x[rank::world], batch.y[rank::world], batch.reset)
                x, y = batch.x.to(device), batch.y.to(device)
                chars = int((batch.y != IGNORE).sum())
                share = 1.0
                if world > 1:
                    # One small all-reduce a step: all ranks stop together, share rank 0's clock
                    # (time budget, learning rate) and count the targets of the global batch.
                    done, elapsed, global_chars = distributed.sum_across_ranks(
                        [float(finished() or stop.requested or distributed.termination_requested()),
                         elapsed if rank == 0 else 0.0, chars], device)
                    if done:
                        break
                    # DDP averages the ranks' gradients. Scaling each rank's mean loss by
                    # W·(its targets)/(all targets) makes that average the gradient of the mean
                    # loss over the global batch, as one process computes it.
                    share, chars = chars * world / global_chars, int(global_chars)
                if batch.reset or carry is None:
                    carry = model.initial_state(x.shape[0], device)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step, elapsed)
                loss, new_state = sequence_loss(forward, x, y, carry, bf16)
                if world > 1:
                    loss = loss * share
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                if averaged is not None:
                    averaged.update_parameters(model)
                carry = detach_state(new_state)
                step += 1
                spent = time.perf_counter() - started
                elapsed += spent
                window_loss += loss.item()
                window_steps += 1
                window_chars += chars
                window_time += spent
                total_chars += chars
                total_time += spent
                if step % config.eval_interval == 0:
                    before = time.perf_counter()
                    run_evaluation()
                    save_resume_state()
                    elapsed += time.perf_counter() - before
                if bar is not None:
                    position = min(step if config.steps else int(elapsed), bar.total)
                    bar.set_postfix(bpc=f"{loss.item() / share / math.log(2):.3f}", val=f"{best_bpc:.3f}",
                                    chars_s=f"{chars / spent:,.0f}", refresh=False)
                    bar.update(position - bar.n)  # redraws at most every bar.mininterval seconds
                if should_stop is not None and should_stop(step):
                    if world == 1:
                        raise KeyboardInterrupt
                    stop.requested = True  # every rank stops at the next step
    except KeyboardInterrupt:
        if world > 1:  # a second Ctrl-C: the ranks are no longer in step, so no final save
            raise
        interrupted = True
    interrupted = interrupted or stop.requested
    if bar is not None:
        bar.close()
    # The end of a run (or an interruption) always leaves an evaluated, resumable state.
    if window_steps or not (history or evaluations):
        before = time.perf_counter()
        run_evaluation()
        elapsed += time.perf_counter() - before
    save_resume_state()
    distributed.barrier()  # rank 0 has written everything: all ranks leave together
    result = TrainResult(out, step, elapsed, best_val, last_val,
                         total_chars / total_time if total_time > 0 else 0.0, model)
    if interrupted:
        result.final_val = last_val
    return result
