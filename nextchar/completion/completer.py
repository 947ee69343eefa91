"""Autocomplete: ranked suggestions while a person types, from any checkpoint.

    completer = Completer(load_checkpoint("model"))       # or Completer() for the bundled model
    completer.suggest("autocom", k=5, mode="line")        # stateless: any text, any time
    session = completer.session()                         # one person typing (session.py)
    session.type("a"); session.type("u"); session.backspace(); session.suggest()

Settings. A `CompleterConfig` (config.py) holds every setting and its default:
`Completer(ckpt, config=config)`, or keyword overrides of the defaults, `Completer(ckpt,
beam_width=16)`; either is validated once and kept as `completer.config`.

Cost. The model reads "^" + text once; after that a keystroke costs one model step:
a `TypingSession` keeps a stack of states s_t (typing pushes, backspace pops, never a
re-read of the whole text), and the stateless `Completer` keeps an LRU cache of states keyed
by text (`StateCache`, states.py), so that f(text + one character) costs one step too.
Suggestions then cost one batched step per character of the longest completion (search.py),
and reuse the previous keystroke's search: when the typed character continues a hypothesis
of the previous beam, that hypothesis's states are taken instead of recomputed.

Precision. `precision` is that of the one-character steps' matrix products (stepper.py):
"fp32" (the default here) computes exactly the model's function; "int8" and "bf16" keep
low-precision copies of the recurrent weights (a step for 8 hypotheses 2.1× and 1.4× as fast
as in fp32 on this CPU: python -m bench.step) and may swap near ties; "auto" is int8 where PyTorch
has its x86 int8 kernels. The commands and the service use "auto". Longer reads stay fp32.

Bounds. The model reads at most the last `max_context` characters of a text it has to read
from scratch (a million-character paste costs `max_context` steps); a session keeps at most
`max_stack` states, thinning the oldest (backspacing into a thinned stretch re-reads at most
the gap). Every string operation per keystroke looks at a bounded window of the text, except
copying the text itself.

Scores. `logprob` is the natural log-probability of the completion given the typed text,
summed over its symbols, the end event included (<end>, or the boundary that ends a word).
`score` ranks: logprob / n^α (search.py), plus `lexicon_weight`·ln(weight) for lexicon entries;
for a correction (typo tolerance) it is the same score of its completion plus

    Δ − typo_penalty,   Δ = log p(corrected text) − log p(typed text)

(a noisy channel: the model's preference for the corrected text, minus the cost of a typo).
With a lexicon, an exact match (an entry that extends what was typed) always outranks a
correction: a correction's score is capped at typo_penalty below the last exact match.
Without one every text has exact completions, so the model decides: an exact suggestion
outranks a correction unless the model finds the typed text far less likely than the
correction (by more than typo_penalty nats, 4 by default: 55×) — "teh" becomes "the …".
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Unpack

import torch
from torch import Tensor

from nextchar.checkpoint import Checkpoint, load_checkpoint, read_memory
from nextchar.completion.config import BEAM_MAX, DEFAULTS, CompleterConfig, ConfigOverrides, check_k, check_mode
from nextchar.completion.lexicon import Lexicon
from nextchar.completion.lockstep import Forward, Request, drive, drive_together
from nextchar.completion.recall import InfixMatch, MixedForward, continuations, infix_matches
from nextchar.completion.search import Candidate, SearchSettings, SymbolTable, beam_steps, word_start
from nextchar.completion.session import TypingSession
from nextchar.completion.states import Node, StateCache, Tree, answers_bytes, subtree, symbol_logprobs
from nextchar.completion.typos import Edit, ranked_edits
from nextchar.errors import UserError
from nextchar.models import CharModel, State, stack_states
from nextchar.recall.estimator import Memory
from nextchar.stepper import Stepper
from nextchar.text import END, START, UNK

MEMORY_SHARE = 8  # with a byte bound on the caches, the memory's remembered predictions get 1/8
TYPO_VARIANTS = 3  # corrected texts completed (the likeliest; one that extends another is skipped)
TYPO_OPTIONS = 2  # substitutions/insertions tried per position (without a lexicon)

# The nodes after every prefix length lo … len(text) of the text being completed, from lo
# (or from the first length the caller still has a node for, if later): what typo tolerance
# scores its edits with. A session has them on its stack; a stateless call finds them cached.
NodePath = Callable[[int], tuple[int, list[Node]]]


@dataclass
class Suggestion:
    text: str  # the whole suggested text: what was typed (or its correction) + completion
    completion: str  # only the added part
    logprob: float  # ln p(completion | prefix), summed over its symbols, the end event included
    score: float  # the ranking score (length-normalised; typo penalty applied)
    corrected: bool = False  # True when it completes a correction of the typed text

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Completer:
    """Suggestions from one checkpoint (see the module docstring). Thread-safe: calls are serialised
    by `lock`, which typing sessions take too."""

    def __init__(
        self,
        ckpt: Checkpoint | None = None,
        *,
        lexicon: Lexicon | None = None,
        config: CompleterConfig | None = None,
        memory: bool = True,
        **overrides: Unpack[ConfigOverrides],
    ) -> None:
        """`memory`: predict with the mixture of the model and the checkpoint's memory when it has
        one (nextchar.completion.recall); False: the model alone."""
        base = config if config is not None else DEFAULTS
        self.config = replace(base, **overrides) if overrides else base  # replace validates (UserError)
        self.ckpt = ckpt if ckpt is not None else load_checkpoint(None)
        self.model = self.ckpt.model.eval()
        # model(idx, state), one character fast (stepper.py); precision: of its matrix products
        try:
            self.stepper = Stepper(self.model, self.config.precision)
        except ValueError as exc:  # int8 asked for where PyTorch lacks its kernels
            raise UserError(str(exc)) from None
        self.precision = self.stepper.precision  # what "auto" became
        self.recall = read_memory(self.ckpt) if memory else None  # (index shards, mixer), or None
        self.forward = self._forward(self.stepper)
        self.vocab = self.ckpt.vocab
        self.format = self.ckpt.format
        self.table = SymbolTable(self.vocab, self.format)
        c = self.config
        self.settings = SearchSettings(
            beam_width=min(c.beam_width, BEAM_MAX),
            max_chars=c.max_chars,
            max_words=c.max_words,
            length_alpha=float(c.length_alpha),
            min_chars=c.min_chars,
            cjk_word_chars=c.cjk_word_chars,
            deadline_s=float(c.deadline_ms) / 1000,
            on_expired=self._expired,
        )
        self.search_stats = {"searches": 0, "expired": 0}  # searches run, and stopped at the deadline
        if lexicon is not None and self.vocab.alphabet == "lecture":
            lexicon = lexicon.mapped(self.vocab.prepare)  # entries NFC already; the lecture alphabet maps more
        self.lexicon = lexicon
        if lexicon is not None:
            self.settings.lexicon_max_chars = lexicon.max_len
        self.lock = threading.RLock()
        self.states: StateCache[list[Suggestion]] = StateCache(c.cache_size, c.max_context, memo_bytes=answers_bytes)
        self._cache_bytes: int | None = None

    def _expired(self) -> None:
        self.search_stats["expired"] += 1

    def _forward(self, stepper: Stepper) -> Forward:
        """The searches' model call: the stepper, mixed with the memory when there is one."""
        if self.recall is None:
            return stepper
        indexes, mixer = self.recall
        memory = Memory(indexes, len(self.ckpt.vocab))
        return MixedForward(stepper, memory, mixer, len(self.model.initial_state(1)))

    @property
    def memory(self) -> str:
        """What the completer recalls: "none", or the memory's size (for /healthz and --help)."""
        if self.recall is None:
            return "none"
        indexes = self.recall[0]
        shards = f" in {len(indexes)} shards" if len(indexes) > 1 else ""
        return f"{sum(len(i) for i in indexes):,} symbols of training text{shards}, mixed with the model"

    @property
    def cache_size(self) -> int:
        """Model states cached across texts; settable (the service sizes it to its memory budget)."""
        return self.states.capacity

    @cache_size.setter
    def cache_size(self, size: int) -> None:
        self.config = replace(self.config, cache_size=size)
        self.states.capacity = size

    @property
    def cache_bytes(self) -> int | None:
        """What this completer's caches across texts may hold, in bytes: the state cache's nodes,
        search trees and answers, and the memory's remembered predictions (None: bounded by
        counts, cache_size and the memory's own default). Settable: the service gives each
        process its share of --cache-mb; the memory then gets 1/MEMORY_SHARE of it."""
        return self._cache_bytes

    @cache_bytes.setter
    def cache_bytes(self, cache_bytes: int | None) -> None:
        self._cache_bytes = cache_bytes
        memory = getattr(self.forward, "memory", None)
        if cache_bytes is None:
            self.states.max_bytes = None
            return
        if isinstance(memory, Memory):  # half for its predictions, half for its indexes' intervals
            share = cache_bytes // MEMORY_SHARE
            memory.cache_bytes = share // 2
            for index in memory.indexes:
                index.memo_bytes = share // (2 * len(memory.indexes))
            cache_bytes -= share
        self.states.max_bytes = cache_bytes

    @property
    def max_context(self) -> int:
        return self.config.max_context

    @property
    def cache_stats(self) -> dict[str, int]:
        """How the state cache found each state: {"hit", "step", "read"} counts (the service's /metrics)."""
        return self.states.stats

    # ------------------------------------------------------------------ model steps

    def prepare(self, text: str) -> str:
        """The text as the model sees it: NFC (and the lecture alphabet's mapping, if any)."""
        if not isinstance(text, str):
            raise UserError(f"the text must be a string, not {type(text).__name__}")
        return self.vocab.prepare(text)

    @torch.inference_mode()
    def read(self, text: str) -> Node:
        """Read "^" + text (prepared) from s_0 in one forward call."""
        idx = torch.tensor([[START, *self.table.encode(text)]], dtype=torch.long)
        logits, state = self.forward(idx, self.model.initial_state(1))
        return Node(state, symbol_logprobs(logits[0, -1]))

    @torch.inference_mode()
    def advance(self, node: Node, chars: str) -> Node:
        """Read `chars` (prepared) on from `node` in one forward call (one model step per character)."""
        idx = torch.tensor([self.table.encode(chars)], dtype=torch.long)
        logits, state = self.forward(idx, node.state)
        return Node(state, symbol_logprobs(logits[0, -1]))

    def node_after(self, prepared: str) -> Node:
        """The node after a prepared text, through the state cache. Caller holds the lock."""
        return self.states.node(prepared, self)

    def state_after(self, text: str) -> tuple[State, Tensor]:
        """(s_t, log p_t) after "^" + text: the state and the next-symbol log-probabilities."""
        with self.lock:
            node = self.node_after(self.prepare(text))
            return node.state, node.logprobs

    # ------------------------------------------------------------------ public queries

    def next_chars(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """The k likeliest next characters with their probabilities (the end of a line is "\\n")."""
        k = check_k(k)
        with self.lock:
            return self.top_chars(self.node_after(self.prepare(text)), k)

    def top_chars(self, node: Node, k: int) -> list[tuple[str, float]]:
        """The k likeliest next characters after `node` (k checked by the caller)."""
        probs = node.logprobs.exp().clone()
        for index in self.table.never:  # <start>, <unk>; <end> of `text` models, newline of `lines` models
            probs[index] = 0.0
        top = probs.topk(min(k, len(probs)))
        out = []
        for index, prob in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            if prob > 0:
                out.append(("\n" if index == END else self.table.chars[index], prob))
        return out

    def suggest(self, text: str, k: int = 5, mode: str = "line", typos: bool = False) -> list[Suggestion]:
        """The k best suggestions after `text`, best first (see the module docstring for the scores)."""
        with self.lock:
            return drive(self.forward, self.suggest_steps(text, k, mode, typos))

    def infix(self, text: str, k: int = 5) -> list[InfixMatch]:
        """The k entries of the memory's text (its lines) that hold `text` at the start of a word
        inside them, most often first ("jone" → "bob jones"; recall.infix_matches). Only for
        `lines` models with a memory (the lines are the entries); otherwise none."""
        k = check_k(k)
        forward = self.forward
        if not isinstance(forward, MixedForward) or not self.table.lines:
            return []
        prepared = self.prepare(text)
        symbols = self.table.encode(prepared)
        if not symbols or UNK in symbols or any(self.table.boundary[s] for s in symbols[:1]):
            return []  # nothing typed, a character the memory never saw, or no word start
        boundaries = [i for i, is_boundary in enumerate(self.table.boundary) if is_boundary]
        with self.lock:
            found = infix_matches(forward.memory, symbols, boundaries, k)
        chars = self.table.chars
        return [InfixMatch("".join(chars[s] for s in entry), at, count) for entry, at, count in found]

    def suggest_many(self, queries: Sequence[tuple[str, int, str, bool]]) -> list[list[Suggestion] | Exception]:
        """suggest(text, k, mode, typos) for each query, their beams batched into shared model calls.

        Returns, per query, its suggestions or the exception it raised (bad k or mode, …).
        """
        with self.lock:
            return self.drive_together([self.suggest_steps(*query) for query in queries])

    def drive_together(self, searches: Sequence[Generator[object, Any, object]]) -> list[Any]:
        """Run generators built on `suggest_steps` in lockstep (lockstep.drive_together), under the lock."""
        with self.lock:
            return drive_together(self.forward, searches)

    def suggest_steps(
        self, text: str, k: int = 5, mode: str = "line", typos: bool = False
    ) -> Generator[Request, Any, list[Suggestion]]:
        """`suggest` as a generator of its search's requests (lockstep.drive). Caller holds the lock."""
        k, mode = check_k(k), check_mode(mode)
        memo_key = (text, k, mode, bool(typos))
        prepared = self.prepare(text)
        key = self.states.key(prepared)
        reuse = self.config.reuse
        known: Tree | None = None
        if reuse:
            cached, known = self.states.recall(memo_key, key)
            if cached is not None:
                return list(cached)
        root = self.node_after(prepared)
        if known is None and reuse and key:
            previous = self.states.tree(key[:-1])  # the last keystroke's search, one character back
            if previous is not None:
                known = subtree(previous, key[-1])

        def path(lo: int) -> tuple[int, list[Node]]:
            return lo, [self.node_after(prepared[:t]) for t in range(lo, len(prepared) + 1)]

        result, tree = yield from self.complete_steps(root, prepared, text, mode, k, bool(typos), known, path)
        if reuse:
            self.states.remember(memo_key, result, key, tree)
        return list(result)

    def session(self) -> TypingSession:
        """A typing session: one person's text and its stack of states."""
        return TypingSession(self)

    def clear_cache(self) -> None:
        """Forget every cached state and suggestion (after the model's weights changed).

        Sessions notice and re-read their text (at most max_context characters) on their next call.
        """
        with self.lock:
            self.states.clear()

    def with_model(self, model: CharModel, *, cache_size: int | None = None) -> Completer:
        """A Completer with these settings and lexicon over another model of the same vocabulary
        (e.g. a copy adapted to one person); its caches are its own."""
        if model.config.vocab_size != len(self.vocab):
            raise UserError(f"the model has {model.config.vocab_size} symbols, the vocabulary {len(self.vocab)}")
        ckpt = Checkpoint(model, self.vocab, self.format, self.ckpt.meta, self.ckpt.path)
        # The same precision: the stepper's low-precision copies follow the weights if their
        # owner changes them (nextchar.completion.personal adapts in place).
        config = replace(
            self.config, cache_size=self.cache_size if cache_size is None else cache_size, precision=self.precision
        )
        clone = Completer(ckpt, config=config, memory=False)
        clone.lexicon = self.lexicon  # already mapped to the vocabulary
        clone.settings = replace(self.settings, on_expired=clone._expired)
        clone.stepper = Stepper(clone.model, self.precision, share=self.stepper)  # the weights it shares: made once
        clone.recall = self.recall
        clone.forward = clone._forward(clone.stepper)
        return clone

    # ------------------------------------------------------------------ the search

    def complete_steps(
        self,
        root: Node,
        prepared: str,
        typed: str,
        mode: str,
        k: int,
        typos: bool,
        known: Tree | None,
        path: NodePath,
    ) -> Generator[Request, Any, tuple[list[Suggestion], Tree]]:
        """The k best suggestions after `root`, the node after `prepared` (typed as `typed`), and
        the exact search's tree; `known`: nodes of an earlier search to reuse. Caller holds the lock."""
        exact, tree = yield from self._search(root, prepared, typed, mode, k, known, corrected=False, delta=0.0)
        suggestions = sorted(exact, key=lambda s: -s.score)
        if typos:
            seen = {s.text.rstrip() for s in suggestions}
            fresh = []
            corrections = yield from self._corrections(prepared, mode, k, path)
            for s in sorted(corrections, key=lambda s: -s.score):
                if s.text.rstrip() not in seen:
                    seen.add(s.text.rstrip())
                    fresh.append(s)
            if self.lexicon is not None and suggestions:
                # An entry that extends what was typed beats every correction (Elasticsearch's
                # fuzzy suggester lets a heavier fuzzy match outrank it): corrections score at
                # least typo_penalty below the last exact match (ties keep their own order).
                floor = suggestions[-1].score - float(self.config.typo_penalty)
                for s in fresh:
                    s.score = min(s.score, floor)
            suggestions = sorted(suggestions + fresh, key=lambda s: (-s.score, s.corrected))
        return suggestions[:k], tree

    def _search(
        self, root: Node, prepared: str, base: str, mode: str, k: int, known: Tree | None, corrected: bool, delta: float
    ) -> Generator[Request, Any, tuple[list[Suggestion], Tree]]:
        """Beam search from `root`; suggestions are `base` + completion."""
        key = ""
        if self.lexicon is not None:
            key = prepared[word_start(prepared) :] if mode == "word" else prepared
            if not self.lexicon.has_prefix(key):
                return [], {}
        # A correction's beam is k wide (not beam_width): there are TYPO_VARIANTS of them.
        settings = replace(self.settings, beam_width=k) if corrected else self.settings
        self.search_stats["searches"] += 1
        extras = [] if corrected or self.lexicon is not None else self._memory_extras(root, mode, k)
        candidates, tree = yield from beam_steps(
            self.table, root, prepared, mode, k, settings, self.lexicon, key, known, corrected, extras
        )
        penalty = delta - float(self.config.typo_penalty) if corrected else 0.0
        return [
            Suggestion(base + c.completion, c.completion, c.logprob, self._score(c, key) + penalty, corrected)
            for c in candidates
        ], tree

    def _memory_extras(self, root: Node, mode: str, k: int) -> list[str]:
        """The k commonest ways the memory's text goes on after the longest suffix of the root's
        context it holds: to the next word boundary (word mode) or to the end of the line (line
        mode); none in phrase mode. (Continuations of the word begun, counted over the whole
        text as a frequency trie counts them, were measured too: no more keystrokes saved, and
        their reading cost a third more time per keystroke.)"""
        forward = self.forward
        if not isinstance(forward, MixedForward) or mode == "phrase":
            return []
        state = root.state
        if len(state) <= forward.model_state_size:
            return []
        context = forward.memory.context(state[-1][0].numpy())
        stops = self.table.word_stops if mode == "word" else self.table.line_stops
        found = continuations(forward.memory, context, stops, self.settings.max_chars, k)
        return ["".join(self.table.chars[s] for s in symbols) for symbols in found]

    def _score(self, cand: Candidate, key: str) -> float:
        weight = float(self.config.lexicon_weight)
        if self.lexicon is None or not weight:
            return cand.score
        return cand.score + weight * math.log(self.lexicon.weight(key + cand.completion))

    def _corrections(
        self,
        prepared: str,
        mode: str,
        k: int,
        path: NodePath,
    ) -> Generator[Request, Any, list[Suggestion]]:
        """Completions of the best texts within edit distance 1 of `prepared` (typos.py)."""
        n = len(prepared)
        key_start = word_start(prepared) if self.lexicon is not None and mode == "word" else 0
        lo, nodes = path(max(0, n - self.config.typo_window, key_start))
        if lo >= n:
            return []
        rows = [node.logprobs for node in nodes]
        edits = ranked_edits(prepared, lo, rows, self.table.index, TYPO_OPTIONS, None, self.lexicon, key_start)
        if not edits:
            return []
        encoded = self.table.encode(prepared)
        exact_suffix = [0.0] * (n - lo + 1)  # log p(prepared[i:] | prepared[:i]) for i = lo … n
        for j in range(n - lo - 1, -1, -1):
            exact_suffix[j] = exact_suffix[j + 1] + float(rows[j][encoded[lo + j]])
        groups: dict[int, list[Edit]] = defaultdict(list)
        for _, edit in edits:
            groups[len(edit.new) + n - edit.end].append(edit)
        variants: list[tuple[float, str, Node]] = []
        for length, group in groups.items():
            starts = [nodes[edit.pos - lo] for edit in group]
            if length == 0:  # the last character deleted: the variant is a node we already have
                variants.extend(
                    (-exact_suffix[e.pos - lo], e.apply(prepared), s) for e, s in zip(group, starts, strict=True)
                )
                continue
            inputs = torch.tensor([self.table.encode(e.new + prepared[e.end :]) for e in group], dtype=torch.long)
            logits, state = self.forward(inputs, stack_states([s.state for s in starts]))
            logprobs = symbol_logprobs(logits)
            for g, (edit, start) in enumerate(zip(group, starts, strict=True)):
                lp = float(start.logprobs[inputs[g, 0]])
                if length > 1:
                    lp += float(logprobs[g, :-1].gather(1, inputs[g, 1:, None]).sum())
                node = Node(tuple(s[g : g + 1] for s in state), logprobs[g, -1])
                variants.append((lp - exact_suffix[edit.pos - lo], edit.apply(prepared), node))
        variants.sort(key=lambda v: -v[0])
        chosen: list[str] = []
        out: list[Suggestion] = []
        for delta, text, node in variants:
            if len(chosen) == TYPO_VARIANTS:
                break
            if any(text.startswith(other) for other in chosen):
                continue  # the completions of a shorter chosen variant already cover this one
            chosen.append(text)
            found, _ = yield from self._search(node, text, text, mode, k, None, corrected=True, delta=delta)
            out.extend(found)
        return out
