"""Personalised suggestions: each person's own adapted output layer, learned from what they type.

A shared model cannot know one person's names and words. A `PersonalCompleter` is a Completer
over a *view* of the shared model that shares every weight except the output layer
p_t = softmax(W_o s_t + W0_o), which it owns and adapts (adapt.Adapter, the same update as
dynamic evaluation) on the text the person has typed or accepted:

    people = PersonalCompleters(completer)            # one shared model, an LRU of people
    alice = people.get("alice")
    alice.completer.suggest("Pro")                     # suggestions with alice's weights
    alice.learn("PROSPERO:\\n")                          # after the line is typed: one step
    people.reset("alice")                              # forget what was learned

Why only the output layer by default: its copy is v·m + v numbers (133 kB for a 65-symbol,
512-state model), so thousands of people fit where full copies would not; and the recurrent
states s_t do not depend on it, so nothing learned can make a state wrong. Nothing is shared
between people but the frozen weights: learning for one never changes another's suggestions,
nor the shared model's. Memory is bounded: at most `max_users` people are kept (least
recently used first out), each with their output layer, its last good copy (for rollback)
and a small state cache of `cache_size` entries and PERSON_CACHE_BYTES; `person_bytes` is
what one person may hold at most, so that a service can budget for all of them.

With a memory (the checkpoint's index of its training text, nextchar.completion.recall), each
person's memory also holds what they taught, after they taught it: the last MEMORY_CHARS
symbols, a line per piece, in an online index rebuilt at each `learn`
(nextchar.recall.online). `reset` forgets it with the weights.

Learning never runs inside a suggestion: the caller calls `learn` when a line is finished or
a suggestion accepted, so it can run after the suggestions have been returned. Its cost is
one forward pass over the text (no gradient through the recurrence) and one output-layer step.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nextchar.adapt import AdaptConfig, Adapter, GradStats, adapted_names
from nextchar.completion.completer import Completer
from nextchar.completion.recall import MixedForward
from nextchar.errors import UserError
from nextchar.models import CharModel, detach_state
from nextchar.recall.online import OnlineMemory
from nextchar.text import END, START

# Measured on held-out Shakespeare speaker names (docs/adaptation.md): plain steps on the
# output layer, one per learned line; a slow pull back so that old names fade after a while.
PERSONAL_DEFAULTS = AdaptConfig(rule="sgd", lr=0.3, window=256, decay=1e-3, params="output")
MAX_LEARN_CHARS = 4096  # a paste longer than this teaches only its last this many characters
MEMORY_CHARS = 65_536  # a person's memory keeps the last this many symbols they taught
MEMORY_CACHE_BYTES = 1 << 20  # … and its searches keep at most this many bytes of p_mem …
MEMORY_MEMO_BYTES = 256 << 10  # … and of its online index's intervals
ONLINE_SYMBOL_BYTES = 16  # a taught symbol: in its piece (≤ 4), the index's tokens (≤ 4), its suffix (≤ 8)
PERSON_CACHE_BYTES = 2 << 20  # each person's state cache (nodes, search trees, answers) …
PERSON_TREES_FRACTION = 0.75  # … mostly for the last search's tree (the default model's: about 1 MB)
# What a person costs beyond their weights, memory and caches: the view's module objects, the
# adapter's bookkeeping, the completer and its stepper (measured by tests/service/test_cache_bytes.py)
PERSON_OVERHEAD = 128 << 10


def personal_view(model: CharModel, names: Iterable[str]) -> CharModel:
    """A model that shares every weight with `model` except `names`, which it owns (copies).

    The view is a shallow copy of the module tree along the path to each owned parameter, so
    `model` itself is never changed by anything done to the view. With every parameter owned,
    it is simply a deep copy.
    """
    names = list(names)
    if set(names) >= {name for name, _ in model.named_parameters()}:
        return copy.deepcopy(model)

    def shallow(module: nn.Module) -> nn.Module:
        clone = copy.copy(module)
        clone._parameters = dict(module._parameters)
        clone._modules = dict(module._modules)
        clone._buffers = dict(module._buffers)
        return clone

    view = shallow(model)
    for name in names:
        *path, leaf = name.split(".")
        owner = view
        for part in path:
            child = shallow(owner._modules[part])  # type: ignore[arg-type]
            owner._modules[part] = child
            owner = child
        owner._parameters[leaf] = nn.Parameter(owner._parameters[leaf].detach().clone())  # type: ignore[union-attr]
        if isinstance(owner, nn.RNNBase):  # the fused kernels read a cached list of the weights
            owner._init_flat_weights()
    return view  # type: ignore[return-value]


@dataclass
class LearnReport:
    chars: int  # characters learned from
    steps: int  # updates applied
    seconds: float  # time taken (forward, gradient, update, cache reset)
    rolled_back: bool  # a divergence was caught and undone


def person_bytes(model: CharModel, memory: bool, config: AdaptConfig = PERSONAL_DEFAULTS) -> int:
    """An upper bound on the bytes one person holds over a shared `model` (with a memory or not):
    their adapted weights three times (the weights, the rollback copy, the gradient), their
    memory at its limit with its caches, their state cache, and PERSON_OVERHEAD."""
    params = dict(model.named_parameters())
    weights = sum(params[name].numel() * params[name].element_size() for name in adapted_names(model, config.params))
    remembered = MEMORY_CHARS * ONLINE_SYMBOL_BYTES + MEMORY_CACHE_BYTES + MEMORY_MEMO_BYTES if memory else 0
    return 3 * weights + remembered + PERSON_CACHE_BYTES + PERSON_OVERHEAD


class PersonalCompleter:
    """One person's suggestions: the shared model with their own adapted output layer."""

    def __init__(
        self,
        base: Completer,
        config: AdaptConfig = PERSONAL_DEFAULTS,
        stats: GradStats | None = None,
        cache_size: int = 256,
    ):
        self.config = config
        self.model = personal_view(base.ckpt.model, adapted_names(base.ckpt.model, config.params))  # fp32
        self.completer = base.with_model(self.model, cache_size=cache_size)
        self.completer.states.trees_fraction = PERSON_TREES_FRACTION
        self.completer.states.max_bytes = PERSON_CACHE_BYTES
        self.adapter = Adapter(self.model, config, stats)
        self.learned_chars = 0
        self.learn_seconds = 0.0
        # With a memory, what the person typed joins it too (the last MEMORY_CHARS symbols)
        forward = self.completer.forward
        self.memory: OnlineMemory | None = None
        if isinstance(forward, MixedForward):
            self.memory = OnlineMemory(
                forward.memory, limit=MEMORY_CHARS, cache_bytes=MEMORY_CACHE_BYTES, memo_bytes=MEMORY_MEMO_BYTES
            )
            forward.memory = self.memory.memory

    def _windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """(inputs, targets) index lists, framed as the Completer reads text.

        `text` models read "^" + the whole text (newlines are characters like any other);
        `lines` models read each line from s_0: "^"+line → line + <end> (the last line without
        <end> when it does not end with a newline: it may still be being typed).
        """
        prepared = self.completer.prepare(text)[-MAX_LEARN_CHARS:]
        encode = self.completer.table.encode
        if self.completer.format == "text":
            idx = encode(prepared)
            return [([START, *idx[:-1]], idx)] if idx else []
        lines = prepared.split("\n")
        ends_open = not prepared.endswith("\n")
        if not ends_open:
            lines = lines[:-1]
        pieces = []
        for i, line in enumerate(lines):
            idx = encode(line)
            target = idx + ([END] if i < len(lines) - 1 or not ends_open else [])
            if target:
                pieces.append(([START, *idx][: len(target)], target))
        return pieces

    def learn(self, text: str) -> LearnReport:
        """Adapt on `text` (what the person typed or accepted; whole lines end with "\\n").

        Each line is read from s_0 as the Completer reads it; one step per `config.window`
        symbols (state carried within a line). Afterwards this person's caches start afresh,
        since their suggestions have changed. A divergence is rolled back, never kept.
        """
        if not isinstance(text, str):
            raise UserError(f"the text to learn from must be a string, not {type(text).__name__}")
        started = time.perf_counter()
        model, adapter, window = self.model, self.adapter, self.config.window
        limit = self.config.diverge_factor * float(torch.log(torch.tensor(float(model.config.vocab_size))))
        steps, chars, rolled_back = 0, 0, False
        pieces = self._windows(text)
        for inputs, targets in pieces:
            state = model.initial_state(1)
            for lo in range(0, len(targets), window):
                x = torch.tensor([inputs[lo : lo + window]], dtype=torch.long)
                y = torch.tensor(targets[lo : lo + window], dtype=torch.long)
                logits, new_state = model(x, state)
                state = detach_state(new_state)
                loss = F.cross_entropy(logits[0], y)
                chars += len(y)
                if not (torch.isfinite(loss) and loss.item() <= limit):
                    if adapter.dirty:  # an earlier step of this call broke the weights
                        adapter.rollback()
                        rolled_back = True
                    continue
                adapter.checkpoint()
                outcome = adapter.learn(loss)
                steps += outcome.applied
                rolled_back |= outcome.rolled_back
        remembered = self._remember(pieces)
        if steps or rolled_back or remembered:
            self.completer.clear_cache()
        seconds = time.perf_counter() - started
        self.learned_chars += chars
        self.learn_seconds += seconds
        return LearnReport(chars=chars, steps=steps, seconds=seconds, rolled_back=rolled_back)

    def _remember(self, pieces: list[tuple[list[int], list[int]]]) -> bool:
        """Add the learned text to the person's memory, a piece per line (framed as read)."""
        if self.memory is None or not pieces:
            return False
        for inputs, targets in pieces:
            self.memory.extend(self.memory.piece(), [inputs[0], *targets])
        self._use(self.memory.rebuild)
        return True

    def _use(self, change: Callable[[], None]) -> None:
        """Change the person's memory, and point the searches' model call at what it is now."""
        assert self.memory is not None
        change()
        forward = self.completer.forward
        assert isinstance(forward, MixedForward)
        forward.memory = self.memory.memory

    def reset(self) -> None:
        """Forget everything learned: back to the shared model's weights and memory, caches emptied."""
        self.adapter.reset()
        if self.memory is not None:
            self._use(self.memory.forget)
        self.completer.clear_cache()
        self.learned_chars = 0

    def owned_bytes(self) -> int:
        """Bytes this person owns: their output layer and its rollback copy, and their memory."""
        weights = 2 * sum(p.numel() * p.element_size() for p in self.adapter.params.values())
        return weights + (self.memory.owned_bytes() if self.memory is not None else 0)


class PersonalCompleters:
    """An LRU of people, each with their own `PersonalCompleter`; thread-safe."""

    def __init__(
        self,
        base: Completer,
        config: AdaptConfig = PERSONAL_DEFAULTS,
        *,
        stats: GradStats | None = None,
        max_users: int = 64,
        cache_size: int = 256,
    ):
        if isinstance(max_users, bool) or not isinstance(max_users, int) or max_users < 1:
            raise UserError(f"max_users must be a whole number ≥ 1, not {max_users!r}")
        self.base, self.config, self.stats = base, config, stats
        self.max_users, self.cache_size = max_users, cache_size
        self._people: OrderedDict[str, PersonalCompleter] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    @staticmethod
    def check_user(user: str) -> str:
        if not isinstance(user, str) or not user or len(user) > 200:
            raise UserError("a user key must be a non-empty string of at most 200 characters")
        return user

    def get(self, user: str) -> PersonalCompleter:
        """This person's completer, created on first use (evicting the least recently used)."""
        user = self.check_user(user)
        with self._lock:
            person = self._people.get(user)
            if person is not None:
                self._people.move_to_end(user)
                return person
            person = PersonalCompleter(self.base, self.config, self.stats, self.cache_size)
            self._people[user] = person
            while len(self._people) > self.max_users:
                self._people.popitem(last=False)
                self.evicted += 1
            return person

    def reset(self, user: str) -> bool:
        """Forget this person entirely; True when they were known."""
        user = self.check_user(user)
        with self._lock:
            return self._people.pop(user, None) is not None

    def __contains__(self, user: object) -> bool:
        return user in self._people

    def __len__(self) -> int:
        return len(self._people)

    def owned_bytes(self) -> int:
        with self._lock:
            return sum(person.owned_bytes() for person in self._people.values())
