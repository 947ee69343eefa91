"""Dynamic evaluation (Krause et al., 2018): BPC of a text while the model learns from it.

The text is read in windows of T characters; after each window has been predicted and scored,
the model takes one gradient step on that window's loss L_seq (`nextchar.adapt.Adapter`, the
update rule) before it predicts the next one.

Score first, learn after. The log-probability of every character is computed with weights
that have learned only from the windows before its own, so the adapted BPC is an honest
sequential code length (tests/evaluation/test_dynamic.py checks that changing a character
changes no score of any character read before it). The recurrent state is carried from window
to window as in evaluation; it is computed by the weights of the window it belongs to.

Divergence. A window whose loss is not finite or exceeds `diverge_factor`·ln V nats per
symbol (far worse than guessing uniformly), a gradient or an update that is not finite: each
is detected, the weights are rolled back to the last ones that scored a window sanely, the
window is scored again with them (still before learning from it), and the event is counted.
After `max_rollbacks` such events adaptation stops for the rest of the text (the weights stay
at the last good ones). The model given to `dynamic_evaluate` is never changed: it adapts a
deep copy.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nextchar.adapt import AdaptConfig, Adapter, GradStats, adapted_names
from nextchar.data.batches import IGNORE, frame_lines, stream_eval_layout
from nextchar.evaluation.bpc import EvalResult, Tally, evaluate_lines, evaluate_stream
from nextchar.evaluation.mixture import OnlineScorer
from nextchar.models import CharModel, State, detach_state
from nextchar.recall.estimator import Memory
from nextchar.recall.mixer import Mixer

if TYPE_CHECKING:
    from tqdm import tqdm


@dataclass
class DynamicEvalResult:
    static: EvalResult | None  # the trained model, same layout (None when not asked for)
    adapted: EvalResult  # scored with the weights adapted on the windows before each one
    config: AdaptConfig
    windows: int  # windows read (each scored, then learned from)
    steps: int  # updates applied (windows minus skipped, diverged or after stopping)
    score_seconds: float  # forward passes that score (what static evaluation also does, with grad)
    adapt_seconds: float  # backward passes and updates: what adaptation adds
    static_seconds: float = 0.0  # the static evaluation, same layout
    stats_seconds: float = 0.0  # gradient statistics on training text (once per model)
    rollbacks: int = 0  # divergences detected and rolled back
    stopped: bool = False  # adaptation stopped after too many divergences
    logprobs: Tensor | None = None  # ln p of each target, in reading order (record=True)
    memory: EvalResult | None = None  # the memory alone, learning online (given a memory)
    mixture: EvalResult | None = None  # the mixture of the adapted model and the online memory
    mixture_logprobs: Tensor | None = None  # its ln q of each target, reading order (record=True)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def adapt_seconds_per_window(self) -> float:
        return self.adapt_seconds / max(self.windows, 1)

    @property
    def adapt_seconds_per_char(self) -> float:
        return self.adapt_seconds / max(self.adapted.chars, 1)

    @property
    def cost_ratio(self) -> float:
        """Wall time of adapted evaluation (score + adapt) over static evaluation's, same layout."""
        if self.static_seconds <= 0:
            return math.nan
        return (self.score_seconds + self.adapt_seconds) / self.static_seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "static": self.static.to_json() if self.static else None,
            "adapted": self.adapted.to_json(),
            "config": self.config.to_json(),
            "windows": self.windows,
            "steps": self.steps,
            "score_seconds": self.score_seconds,
            "adapt_seconds": self.adapt_seconds,
            "adapt_seconds_per_window": self.adapt_seconds_per_window,
            "adapt_seconds_per_char": self.adapt_seconds_per_char,
            "static_seconds": self.static_seconds,
            "stats_seconds": self.stats_seconds,
            "cost_ratio": self.cost_ratio,
            "rollbacks": self.rollbacks,
            "stopped": self.stopped,
            "memory": self.memory.to_json() if self.memory else None,
            "mixture": self.mixture.to_json() if self.mixture else None,
        }


def iter_windows(encoded: Tensor | list[Tensor], config: AdaptConfig) -> Iterator[tuple[Tensor, Tensor, bool]]:
    """(x, y, carry_state) per window, in reading order.

    Text: the stream cut into `streams` contiguous rows (stream_eval_layout), read T columns at
    a time with the state carried. Lines: consecutive lines grouped until they hold at least T
    targets, each line framed "^"+line → line+<end> from s_0 (no state carried).
    """
    if isinstance(encoded, Tensor):
        x, y = stream_eval_layout(encoded, config.streams)
        for start in range(0, x.shape[1], config.window):
            yield x[:, start : start + config.window], y[:, start : start + config.window], True
        return
    group: list[Tensor] = []
    targets = 0
    for line in encoded:
        group.append(line)
        targets += len(line) + 1
        if targets >= config.window:
            yield (*frame_lines(group), False)
            group, targets = [], 0
    if group:
        yield (*frame_lines(group), False)


def _sane(loss: Tensor, limit: float) -> bool:
    value = loss.item()
    return math.isfinite(value) and value <= limit


def _finite(state: State) -> bool:
    return all(bool(torch.isfinite(s).all()) for s in state)


def _score_window(
    work: CharModel, adapter: Adapter, x: Tensor, flat_y: Tensor, start_state: State, limit: float
) -> tuple[Tensor, Tensor, State]:
    """(flat logits, loss, end state) of one window under the current weights.

    When the last update broke the model (the loss is not sane and an update has been applied
    since the last good weights), the weights go back to the last good ones and the window is
    scored again with them: still before learning from it.
    """
    logits, new_state = work(x, start_state)
    flat_logits = logits.reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(flat_logits, flat_y, ignore_index=IGNORE)
    if (flat_y != IGNORE).any() and not _sane(loss, limit) and adapter.dirty:
        adapter.rollback()
        if not _finite(start_state):
            start_state = work.initial_state(x.shape[0], work.device)
        logits, new_state = work(x, start_state)
        flat_logits = logits.reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(flat_logits, flat_y, ignore_index=IGNORE)
    return flat_logits, loss, new_state


def _target_logprobs(flat_logits: Tensor, flat_y: Tensor) -> Tensor:
    """ln p of each scored target (IGNORE positions left out), on the CPU."""
    logp = torch.log_softmax(flat_logits.detach().float(), dim=-1)
    keep = flat_y != IGNORE
    return logp[keep].gather(1, flat_y[keep, None]).squeeze(1).cpu()


def _progress_bar(encoded: Tensor | list[Tensor]) -> tqdm[Any]:
    from tqdm import tqdm

    total = (len(encoded) - 1) if isinstance(encoded, Tensor) else sum(len(line) + 1 for line in encoded)
    return tqdm(total=total, unit="char", desc="dynamic evaluation", leave=False)


def _static(model: CharModel, encoded: Tensor | list[Tensor], streams: int) -> tuple[EvalResult, float]:
    """The unadapted model's figures in the same layout, and the seconds they took."""
    started = time.perf_counter()
    if isinstance(encoded, Tensor):
        result = evaluate_stream(model, encoded, n_streams=streams)
    else:
        result = evaluate_lines(model, encoded)
    return result, time.perf_counter() - started


def dynamic_evaluate(
    model: CharModel,
    encoded: Tensor | list[Tensor],
    config: AdaptConfig | None = None,
    stats: GradStats | None = None,
    *,
    static: bool = True,
    record: bool = False,
    progress: bool = False,
    recall: tuple[Memory, Mixer] | None = None,
    learn_mixer: bool = True,
) -> DynamicEvalResult:
    """Evaluate `encoded` (a `text` stream or a list of lines) with dynamic evaluation.

    Per window w: logits from the current weights θ_w → the window is scored (BPC, top-1,
    top-5) → L_seq = mean −ln p over its symbols → θ_{w+1} = update(θ_w, ∇L_seq). So window w
    is scored by weights that depend only on windows < w. `static=True` also evaluates the
    unadapted model in the same layout (and times it) for comparison. `record=True` keeps the
    ln p of every target in reading order (text: streams × positions, row-major by window).
    `recall` (a memory and its mixer): each window is also scored by the mixture, then added to
    the memory and learned by the mixture's gate (`learn_mixer`; else the checkpoint's, fixed).
    """
    config = config or AdaptConfig()
    static_result, static_seconds = _static(model, encoded, config.streams) if static else (None, 0.0)

    work = copy.deepcopy(model).eval()  # the caller's model stays exactly as it was
    names = set(adapted_names(work, config.params))
    for name, p in work.named_parameters():  # no graph through weights that do not adapt (faster)
        p.requires_grad_(name in names)
    adapter = Adapter(work, config, stats)
    limit = config.diverge_factor * math.log(work.config.vocab_size)
    device = work.device
    tally = Tally()
    recorded: list[Tensor] = []
    state: State | None = None
    windows, score_seconds, adapt_seconds = 0, 0.0, 0.0
    bar = _progress_bar(encoded) if progress else None
    scorer = OnlineScorer(*recall, record=record, learn_mixer=learn_mixer) if recall is not None else None
    for x, y, carry in iter_windows(encoded, config):
        started = time.perf_counter()
        x, y = x.to(device), y.to(device)
        start_state = state if carry and state is not None else work.initial_state(x.shape[0], device)
        flat_y = y.reshape(-1)
        flat_logits, loss, new_state = _score_window(work, adapter, x, flat_y, start_state, limit)
        tally.add(flat_logits.detach(), flat_y)
        if scorer is not None:
            scorer.score(x, y, carry, flat_logits)
        if record:
            recorded.append(_target_logprobs(flat_logits, flat_y))
        state = detach_state(new_state) if carry else None
        scored = time.perf_counter()
        score_seconds += scored - started
        if (flat_y != IGNORE).any() and not adapter.stopped and _sane(loss, limit):
            adapter.checkpoint()
            outcome = adapter.learn(loss)
            if outcome.rolled_back and state is not None and not _finite(state):
                state = work.initial_state(x.shape[0], device)
        windows += 1
        adapt_seconds += time.perf_counter() - scored
        if bar is not None:
            bar.update(int((flat_y != IGNORE).sum()))
    if bar is not None:
        bar.close()
    return DynamicEvalResult(
        static=static_result,
        adapted=tally.result(),
        config=config,
        windows=windows,
        steps=adapter.steps,
        score_seconds=score_seconds,
        adapt_seconds=adapt_seconds,
        static_seconds=static_seconds,
        stats_seconds=stats.seconds if stats is not None else 0.0,
        rollbacks=adapter.rollbacks,
        stopped=adapter.stopped,
        logprobs=torch.cat(recorded) if record and recorded else None,
        memory=scorer.results()[0] if scorer is not None else None,
        mixture=scorer.results()[1] if scorer is not None else None,
        mixture_logprobs=torch.cat(scorer.recorded) if scorer is not None and scorer.recorded else None,
    )
