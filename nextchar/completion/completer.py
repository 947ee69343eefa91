"""Autocomplete: ranked suggestions while a person types, from any checkpoint.

    completer = Completer(load_checkpoint("model"))       # or Completer() for the bundled model
    completer.suggest("autocom", k=5, mode="line")        # stateless: any text, any time
    session = completer.session()                         # one person typing
    session.type("a"); session.type("u"); session.backspace(); session.suggest()

Cost. The model reads "^" + text once; after that a keystroke costs one model step:
a `TypingSession` keeps a stack of states s_t (typing pushes, backspace pops, never a
re-read of the whole text), and the stateless `Completer` keeps an LRU cache of states keyed
by text, so that f(text + one character) costs one step too. Suggestions then cost one
batched step per character of the longest completion (beam.py), and reuse the previous
keystroke's search: when the typed character continues a hypothesis of the previous beam,
that hypothesis's states are taken instead of recomputed.

Precision. `precision` is that of the one-character steps' matrix products (stepper.py):
"fp32" (the default here) computes exactly the model's function; "int8" and "bf16" keep
low-precision copies of the recurrent weights (a step for 8 hypotheses 2.1× and 1.4× as fast
as in fp32 on this CPU: bench/step.py) and may swap near ties; "auto" is int8 where PyTorch
has its x86 int8 kernels. The commands and the service use "auto". Longer reads stay fp32.

Bounds. The model reads at most the last `max_context` characters of a text it has to read
from scratch (a million-character paste costs `max_context` steps); a session keeps at most
`max_stack` states, thinning the oldest (backspacing into a thinned stretch re-reads at most
the gap). Every string operation per keystroke looks at a bounded window of the text, except
copying the text itself.

Scores. `logprob` is the natural log-probability of the completion given the typed text,
summed over its symbols, the end event included (<end>, or the boundary that ends a word).
`score` ranks: logprob / n^α (beam.py), plus `lexicon_weight`·ln(weight) for lexicon entries;
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
import unicodedata
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from nextchar.checkpoint import Checkpoint, load_checkpoint
from nextchar.completion.lexicon import Lexicon
from nextchar.completion.search import (
    MODES,
    Candidate,
    Node,
    Request,
    SearchSettings,
    SymbolTable,
    beam_steps,
    drive,
    drive_together,
    symbol_logprobs,
    word_start,
)
from nextchar.completion.typos import ranked_edits
from nextchar.errors import UserError
from nextchar.models import CharModel, State, stack_states
from nextchar.stepper import PRECISIONS, Stepper
from nextchar.text import END, START

K_MAX = 50  # larger k is clamped: a drop-down longer than this is not a drop-down
DENSE_TAIL = 16  # a paste keeps one state per character for its last this many characters …
PASTE_CHUNK = 32  # … and one state per this many characters before them
TYPO_VARIANTS = 3  # corrected texts completed (the likeliest; one that extends another is skipped)
TYPO_OPTIONS = 2  # substitutions/insertions tried per position (without a lexicon)
SHARED_PREFIX = 4  # sessions share the completer's memo for texts this short (they recur across lines)
MEMO_SIZE, TREES_SIZE = 1024, 32  # suggestion lists, search trees (a tree holds ~100 states)
SAFE_LOOKBACK = 512  # how far back to look for a normalisation-safe point before re-preparing all


@dataclass
class Suggestion:
    text: str  # the whole suggested text: what was typed (or its correction) + completion
    completion: str  # only the added part
    logprob: float  # ln p(completion | prefix), summed over its symbols, the end event included
    score: float  # the ranking score (length-normalised; typo penalty applied)
    corrected: bool = False  # True when it completes a correction of the typed text

    def to_json(self) -> dict:
        return asdict(self)


def check_k(k: int) -> int:
    """k as given, clamped to K_MAX; k ≤ 0 or not a whole number is a UserError."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise UserError(f"k must be a whole number, not {k!r}")
    if k < 1:
        raise UserError(f"k must be at least 1, not {k}")
    return min(k, K_MAX)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def _common_prefix(a: str, b: str) -> int:
    """Length of the common prefix (slice comparisons run in C; a loop only on the last block)."""
    n = min(len(a), len(b))
    lo = 0
    step = 4096
    while lo + step <= n and a[lo : lo + step] == b[lo : lo + step]:
        lo += step
    while lo < n and a[lo] == b[lo]:
        lo += 1
    return lo


class Completer:
    """Suggestions from one checkpoint (see the module docstring). Thread-safe: calls are serialised."""

    def __init__(
        self,
        ckpt: Checkpoint | None = None,
        *,
        lexicon: Lexicon | None = None,
        beam_width: int = 8,
        max_chars: int = 48,
        max_words: int = 3,
        length_alpha: float = 0.0,
        lexicon_weight: float = 0.0,
        typo_penalty: float = 4.0,
        typo_window: int = 8,
        cjk_word_chars: int = 2,
        max_context: int = 2048,
        max_stack: int = 8192,
        cache_size: int = 4096,
        reuse: bool = True,
        precision: str = "fp32",
    ):
        for name, value, low in (("beam_width", beam_width, 1), ("max_chars", max_chars, 1),
                                 ("max_words", max_words, 1), ("typo_window", typo_window, 1),
                                 ("cjk_word_chars", cjk_word_chars, 1), ("max_context", max_context, 1),
                                 ("max_stack", max_stack, 64), ("cache_size", cache_size, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{name} must be a whole number ≥ {low}, not {value!r}")
        for name, number in (("length_alpha", length_alpha), ("lexicon_weight", lexicon_weight),
                             ("typo_penalty", typo_penalty)):
            if not (isinstance(number, int | float) and math.isfinite(number) and number >= 0):
                raise UserError(f"{name} must be a finite number ≥ 0, not {number!r}")
        if precision not in PRECISIONS:
            raise UserError(f"precision must be {', '.join(PRECISIONS)}, not {precision!r}")
        self.ckpt = ckpt if ckpt is not None else load_checkpoint(None)
        self.model = self.ckpt.model.eval()
        # model(idx, state), one character fast (stepper.py); precision: of its matrix products
        try:
            self.forward = Stepper(self.model, precision)
        except ValueError as exc:  # int8 asked for where PyTorch lacks its kernels
            raise UserError(str(exc)) from None
        self.precision = self.forward.precision
        self.vocab = self.ckpt.vocab
        self.format = self.ckpt.format
        self.table = SymbolTable(self.vocab, self.format)
        self.settings = SearchSettings(beam_width=min(beam_width, 256), max_chars=max_chars, max_words=max_words,
                                       length_alpha=float(length_alpha), cjk_word_chars=cjk_word_chars)
        if lexicon is not None and self.vocab.alphabet == "lecture":
            lexicon = lexicon.mapped(self.vocab.prepare)  # entries NFC already; the lecture alphabet maps more
        self.lexicon = lexicon
        if self.lexicon is not None:
            self.settings.lexicon_max_chars = self.lexicon.max_len
        self.lexicon_weight = float(lexicon_weight)
        self.typo_penalty = float(typo_penalty)
        self.typo_window = typo_window
        self.max_context = max_context
        self.max_stack = max_stack
        self.cache_size = cache_size
        self.reuse = reuse
        self._options = {"beam_width": beam_width, "max_chars": max_chars, "max_words": max_words,
                         "length_alpha": length_alpha, "lexicon_weight": lexicon_weight,
                         "typo_penalty": typo_penalty, "typo_window": typo_window, "cjk_word_chars": cjk_word_chars,
                         "max_context": max_context, "max_stack": max_stack, "reuse": reuse}
        self._generation = 0  # bumped by clear_cache: sessions then re-read their text
        self._nodes: OrderedDict[str, Node] = OrderedDict()  # prepared text (≤ max_context) → node
        self._trees: OrderedDict[str, dict[str, Node]] = OrderedDict()  # text → its last search tree
        self._memo: OrderedDict[tuple, list[Suggestion]] = OrderedDict()
        self._lock = threading.RLock()
        # How _node found each state: cached (hit), one step from a cached prefix (step), or read
        # from the start (read). Read by the service's /metrics (nextchar.service.app).
        self.cache_stats = {"hit": 0, "step": 0, "read": 0}

    # ------------------------------------------------------------------ model steps

    def prepare(self, text: str) -> str:
        """The text as the model sees it: NFC (and the lecture alphabet's mapping, if any)."""
        if not isinstance(text, str):
            raise UserError(f"the text must be a string, not {type(text).__name__}")
        return self.vocab.prepare(text)

    @torch.inference_mode()
    def _read(self, text: str) -> Node:
        """Read "^" + text from s_0 in one forward call."""
        idx = torch.tensor([[START, *self.table.encode(text)]], dtype=torch.long)
        logits, state = self.forward(idx, self.model.initial_state(1))
        return Node(state, symbol_logprobs(logits[0, -1]))

    @torch.inference_mode()
    def _advance(self, node: Node, chars: str) -> Node:
        """Read `chars` on from `node` in one forward call (one model step per character)."""
        idx = torch.tensor([self.table.encode(chars)], dtype=torch.long)
        logits, state = self.forward(idx, node.state)
        return Node(state, symbol_logprobs(logits[0, -1]))

    def _node(self, prepared: str) -> Node:
        """The node after `prepared`, from the LRU cache, one step from a cached parent, or read."""
        key = prepared[-self.max_context :] if len(prepared) > self.max_context else prepared
        node = self._nodes.get(key)
        if node is not None:
            self._nodes.move_to_end(key)
            self.cache_stats["hit"] += 1
            return node
        parent = self._nodes.get(key[:-1]) if key else None
        self.cache_stats["step" if parent is not None else "read"] += 1
        node = self._advance(parent, key[-1]) if parent is not None else self._read(key)
        if self.cache_size:
            self._nodes[key] = node
            while len(self._nodes) > self.cache_size:
                self._nodes.popitem(last=False)
        return node

    def state_after(self, text: str) -> tuple[State, torch.Tensor]:
        """(s_t, log p_t) after "^" + text: the state and the next-symbol log-probabilities."""
        with self._lock:
            node = self._node(self.prepare(text))
            return node.state, node.logprobs

    # ------------------------------------------------------------------ public queries

    def next_chars(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """The k likeliest next characters with their probabilities (the end of a line is "\\n")."""
        k = check_k(k)
        with self._lock:
            return self._top_chars(self._node(self.prepare(text)), k)

    def _top_chars(self, node: Node, k: int) -> list[tuple[str, float]]:
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
        with self._lock:
            return drive(self.forward, self.suggest_steps(text, k, mode, typos))

    def suggest_many(self, queries: Sequence[tuple[str, int, str, bool]]) -> list[list[Suggestion] | Exception]:
        """suggest(text, k, mode, typos) for each query, their beams batched into shared model calls.

        Returns, per query, its suggestions or the exception it raised (bad k or mode, …).
        """
        with self._lock:
            return self.drive_together([self.suggest_steps(*query) for query in queries])

    def drive_together(self, searches: Sequence[Generator[Request, Any, object]]) -> list:
        """Run generators built on `suggest_steps` in lockstep (beam.drive_together), under the lock."""
        with self._lock:
            return drive_together(self.forward, searches)

    def suggest_steps(self, text: str, k: int = 5, mode: str = "line",
                      typos: bool = False) -> Generator[Request, Any, list[Suggestion]]:
        """`suggest` as a generator of its search's requests (beam.drive). Caller holds the lock."""
        k, mode = check_k(k), check_mode(mode)
        memo_key = (text, k, mode, bool(typos))
        prepared = self.prepare(text)
        key = prepared[-self.max_context :]
        if self.reuse:
            cached, known = self._recall(memo_key, key)
            if cached is not None:
                return list(cached)
        else:
            known = None
        root = self._node(prepared)
        if known is None and self.reuse and key and key[:-1] in self._trees:
            known = _subtree(self._trees[key[:-1]], key[-1])

        def path(lo: int) -> tuple[int, list[Node]]:
            return lo, [self._node(prepared[:t]) for t in range(lo, len(prepared) + 1)]

        result, tree = yield from self._complete(root, prepared, text, mode, k, bool(typos), known, path)
        if self.reuse:
            self._remember(memo_key, result, key, tree)
        return list(result)

    def _remember(self, memo_key: tuple, result: list[Suggestion], tree_key: str, tree: dict[str, Node]) -> None:
        """Keep a result and its search tree in the bounded LRU caches."""
        self._memo[memo_key] = result
        self._trees[tree_key] = tree
        for cache, size in ((self._memo, MEMO_SIZE), (self._trees, TREES_SIZE)):
            while len(cache) > size:
                cache.popitem(last=False)

    def _recall(self, memo_key: tuple, tree_key: str) -> tuple[list[Suggestion] | None, dict[str, Node] | None]:
        result = self._memo.get(memo_key)
        if result is not None:
            self._memo.move_to_end(memo_key)
        return result, self._trees.get(tree_key)

    def session(self) -> TypingSession:
        """A typing session: one person's text and its stack of states."""
        return TypingSession(self)

    def clear_cache(self) -> None:
        """Forget every cached state and suggestion (after the model's weights changed).

        Sessions notice and re-read their text (at most max_context characters) on their next call.
        """
        with self._lock:
            self._nodes.clear()
            self._trees.clear()
            self._memo.clear()
            self._generation += 1

    def with_model(self, model: CharModel, *, cache_size: int | None = None) -> Completer:
        """A Completer with these settings and lexicon over another model of the same vocabulary
        (e.g. a copy adapted to one person); its caches are its own."""
        if model.config.vocab_size != len(self.vocab):
            raise UserError(f"the model has {model.config.vocab_size} symbols, the vocabulary {len(self.vocab)}")
        ckpt = Checkpoint(model, self.vocab, self.format, self.ckpt.meta, self.ckpt.path)
        # The same precision: the stepper's low-precision copies follow the weights if their
        # owner changes them (nextchar.completion.personal adapts in place).
        clone = Completer(ckpt, cache_size=self.cache_size if cache_size is None else cache_size, **self._options,
                          precision=self.precision)
        clone.lexicon = self.lexicon  # already mapped to the vocabulary
        clone.settings = replace(self.settings)
        clone.forward = Stepper(clone.model, self.precision, share=self.forward)  # the weights it shares: made once
        return clone

    # ------------------------------------------------------------------ the search

    def _complete(self, root: Node, prepared: str, typed: str, mode: str, k: int, typos: bool,
                  known: dict[str, Node] | None, path: Callable[[int], tuple[int, list[Node]]],
                  ) -> Generator[Request, Any, tuple[list[Suggestion], dict[str, Node]]]:
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
                floor = suggestions[-1].score - self.typo_penalty
                for s in fresh:
                    s.score = min(s.score, floor)
            suggestions = sorted(suggestions + fresh, key=lambda s: (-s.score, s.corrected))
        return suggestions[:k], tree

    def _search(self, root: Node, prepared: str, base: str, mode: str, k: int, known: dict[str, Node] | None,
                corrected: bool, delta: float) -> Generator[Request, Any, tuple[list[Suggestion], dict[str, Node]]]:
        """Beam search from `root`; suggestions are `base` + completion."""
        key = ""
        if self.lexicon is not None:
            key = prepared[word_start(prepared):] if mode == "word" else prepared
            if not self.lexicon.has_prefix(key):
                return [], {}
        # A correction's beam is k wide (not beam_width): there are TYPO_VARIANTS of them.
        settings = replace(self.settings, beam_width=k) if corrected else self.settings
        candidates, tree = yield from beam_steps(self.table, root, prepared, mode, k, settings,
                                                 self.lexicon, key, known, allow_empty=corrected)
        penalty = delta - self.typo_penalty if corrected else 0.0
        return [Suggestion(base + c.completion, c.completion, c.logprob,
                           self._score(c, key) + penalty, corrected) for c in candidates], tree

    def _score(self, cand: Candidate, key: str) -> float:
        if self.lexicon is None or not self.lexicon_weight:
            return cand.score
        return cand.score + self.lexicon_weight * math.log(self.lexicon.weight(key + cand.completion))

    def _corrections(self, prepared: str, mode: str, k: int, path: Callable[[int], tuple[int, list[Node]]],
                     ) -> Generator[Request, Any, list[Suggestion]]:
        """Completions of the best texts within edit distance 1 of `prepared` (typos.py)."""
        n = len(prepared)
        key_start = word_start(prepared) if self.lexicon is not None and mode == "word" else 0
        lo, nodes = path(max(0, n - self.typo_window, key_start))
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
        groups: dict[int, list] = defaultdict(list)
        for _, edit in edits:
            groups[len(edit.new) + n - edit.end].append(edit)
        variants: list[tuple[float, str, Node]] = []
        for length, group in groups.items():
            starts = [nodes[edit.pos - lo] for edit in group]
            if length == 0:  # the last character deleted: the variant is a node we already have
                variants.extend((-exact_suffix[e.pos - lo], e.apply(prepared), s) for e, s in zip(group, starts,
                                                                                                strict=True))
                continue
            inputs = torch.tensor([self.table.encode(e.new + prepared[e.end:]) for e in group], dtype=torch.long)
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


def _subtree(tree: dict[str, Node], ch: str) -> dict[str, Node]:
    """The part of a search tree below the typed character, re-keyed relative to it."""
    return {key[1:]: node for key, node in tree.items() if len(key) > 1 and key[0] == ch}


def _safe_start(raw: str, upto: int, lecture: bool) -> int:
    """An index w ≤ upto − 1 where preparing raw[:w] and raw[w:] separately gives the same as
    preparing raw whole (so only the tail after w needs re-preparing); 0 when none is near.

    Safe: raw[w] is a starter that never composes with what precedes it (NFC), and for the
    lecture alphabet an ASCII letter (emitted whatever came before; whitespace is not).
    """
    stop = max(0, upto - SAFE_LOOKBACK)
    for w in range(upto - 1, stop, -1):
        ch = raw[w]
        if lecture:
            if ch.isascii() and ch.isalpha():
                return w
            continue
        if ch.isascii():  # an ASCII character is a starter and never the second half of a composition
            return w
        if (unicodedata.combining(ch) == 0 and unicodedata.is_normalized("NFC", ch)
                and unicodedata.normalize("NFC", raw[w - 1 : w + 1]) == unicodedata.normalize("NFC", raw[w - 1]) + ch):
            return w
    return 0


class _Entry:
    """One stack entry: the node after the first `pos` prepared characters."""

    __slots__ = ("memo", "node", "pos", "tree")

    def __init__(self, pos: int, node: Node):
        self.pos, self.node = pos, node
        self.memo: dict[tuple, list[Suggestion]] = {}
        self.tree: dict[str, Node] | None = None


class TypingSession:
    """One person typing: the text and a stack of states (typing pushes, backspace pops)."""

    def __init__(self, completer: Completer):
        self._c = completer
        self.text = ""  # what was typed, as typed
        self._prepared = ""  # what the model read
        with completer._lock:
            self._generation = completer._generation
            self._stack = [_Entry(0, completer._node(""))]

    def _check_generation(self) -> None:
        """After Completer.clear_cache (new weights) every state is stale: read the text afresh."""
        c = self._c
        if self._generation != c._generation:
            self._generation = c._generation
            self._stack = [_Entry(0, c._node(""))]
            self._advance(0)

    @property
    def prepared(self) -> str:
        return self._prepared

    def type(self, chars: str) -> None:
        """Append `chars` (one model step per character)."""
        if not isinstance(chars, str):
            raise UserError(f"type() takes a string, not {type(chars).__name__}")
        if chars:
            self._apply(self.text + chars, len(self.text))

    def backspace(self, n: int = 1) -> None:
        """Delete the last n typed characters (clamped to the text): pops the stack."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UserError(f"backspace takes a whole number ≥ 0, not {n!r}")
        n = min(n, len(self.text))
        if n:
            self._apply(self.text[: len(self.text) - n], len(self.text) - n)

    def set_text(self, text: str) -> None:
        """Replace the whole text; the common prefix with the current text is kept."""
        if not isinstance(text, str):
            raise UserError(f"set_text() takes a string, not {type(text).__name__}")
        if text != self.text:
            self._apply(text, _common_prefix(self.text, text))

    def suggest(self, k: int = 5, mode: str = "line", typos: bool = False) -> list[Suggestion]:
        k, mode = check_k(k), check_mode(mode)
        c = self._c
        with c._lock:
            self._check_generation()
            top = self._stack[-1]
            memo_key = (k, mode, bool(typos))
            if c.reuse and memo_key in top.memo:
                return list(top.memo[memo_key])
            shared = c.reuse and len(self.text) <= SHARED_PREFIX and top.pos == len(self._prepared)
            if shared:  # short texts recur (every line starts with one): the completer may know it
                cached, tree = c._recall((self.text, *memo_key), self._prepared)
                if tree is not None and top.tree is None:
                    top.tree = tree
                if cached is not None:
                    top.memo[memo_key] = cached
                    return list(cached)
            known = top.tree
            if known is None and c.reuse and len(self._stack) > 1:
                parent = self._stack[-2]
                if parent.tree is not None and parent.pos == top.pos - 1:
                    known = _subtree(parent.tree, self._prepared[-1])
            result, tree = drive(c.forward, c._complete(top.node, self._prepared, self.text, mode, k, bool(typos),
                                                      known if c.reuse else None, self._path))
            if c.reuse:
                top.tree = {**known, **tree} if known else tree
                top.memo[memo_key] = result
                if shared:
                    c._remember((self.text, *memo_key), result, self._prepared, top.tree)
            return list(result)

    def next_chars(self, k: int = 10) -> list[tuple[str, float]]:
        k = check_k(k)
        with self._c._lock:
            self._check_generation()
            return self._c._top_chars(self._stack[-1].node, k)

    # ------------------------------------------------------------------ the stack

    def _apply(self, new_text: str, common: int) -> None:
        """Go from self.text to new_text, which share their first `common` characters."""
        c = self._c
        with c._lock:
            self._check_generation()
            lecture = c.vocab.alphabet == "lecture"
            w = _safe_start(self.text, min(common, len(self.text)), lecture) if common else 0
            old_tail = c.prepare(self.text[w:])
            new_tail = c.prepare(new_text[w:])
            head = len(self._prepared) - len(old_tail)
            if head < 0 or not self._prepared.endswith(old_tail):  # not separable after all: prepare all
                old_tail, new_tail, head = self._prepared, c.prepare(new_text), 0
            prepared = self._prepared[:head] + new_tail
            keep = head + _common_prefix(old_tail, new_tail)
            self._rewind(keep)
            self._prepared = prepared
            self.text = new_text
            self._advance(keep)

    def _rewind(self, pos: int) -> None:
        """Pop to the state after the first `pos` prepared characters."""
        c = self._c
        stack = self._stack
        while len(stack) > 1 and stack[-1].pos > pos:
            stack.pop()
        top = stack[-1]
        if top.pos > pos:  # below a truncated base: read afresh (at most max_context characters)
            self._stack = [_Entry(pos, c._node(self._prepared[:pos]))]
        elif top.pos < pos:  # inside a stretch kept sparse: re-read the gap only
            stack.append(_Entry(pos, c._advance(top.node, self._prepared[top.pos : pos])))

    def _advance(self, pos: int) -> None:
        """Push states for self._prepared[pos:] (the stack's top is at pos)."""
        c = self._c
        total = len(self._prepared)
        if total - pos > c.max_context:  # a huge paste: only the last max_context characters matter
            self._stack = [_Entry(total, c._node(self._prepared))]
            return
        while pos < total:
            top = self._stack[-1]
            remaining = total - pos
            if remaining > DENSE_TAIL:
                size = min(PASTE_CHUNK, remaining - DENSE_TAIL)
                node = c._advance(top.node, self._prepared[pos : pos + size])
            else:
                size = 1
                ch = self._prepared[pos]
                node = top.tree.get(ch) if top.tree is not None and c.reuse else None
                if node is None:  # the previous search did not reach this character
                    node = c._advance(top.node, ch)
            pos += size
            self._push(_Entry(pos, node))

    def _push(self, entry: _Entry) -> None:
        stack = self._stack
        stack.append(entry)
        if len(stack) > 3:
            stack[-4].tree = None  # trees are for the next keystroke only; they are big
        if len(stack) > self._c.max_stack:  # thin the older half: every other state
            half = len(stack) // 2
            self._stack = [stack[0], *stack[1:half:2], *stack[half:]]

    def _path(self, lo: int) -> tuple[int, list[Node]]:
        """Nodes after every prefix length lo … len(prepared) (filling any sparse gap)."""
        c = self._c
        stack = self._stack
        j = len(stack) - 1
        while j > 0 and stack[j].pos > lo:
            j -= 1
        lo = max(lo, stack[j].pos)
        have = {e.pos: e.node for e in stack[j:]}
        nodes = []
        node = have[stack[j].pos]
        for pos in range(stack[j].pos, len(self._prepared) + 1):
            if pos > stack[j].pos:
                node = have.get(pos) or c._advance(node, self._prepared[pos - 1])
            if pos >= lo:
                nodes.append(node)
        return lo, nodes
