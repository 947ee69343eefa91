"""Beam search over completions: the best continuations of a text under a character model.

A hypothesis is a completion c (a string of vocabulary characters) with its log-probability

    log p(c | x) = Σ_t log p_t[c_t]          p_t = softmax(W_o s_t + W0_o), s_t after x + c_<t

Every step extends the live hypotheses by one symbol, all of them in ONE batched forward
call (their parents' states gathered from the step before), keeps the `beam_width` best, and moves a
hypothesis to the finished list when an end event is likely enough to matter:

    word    the rest of the current word: ends at a boundary (space, punctuation, <end>);
            the end event's probability is the total probability of the boundary symbols.
            In scripts written without spaces (Chinese, Japanese, Thai…) a word is
            `cjk_word_chars` characters.
    line    up to <end> (`lines` models) or the newline (`text` models), at most max_chars.
    phrase  up to the boundary after `max_words` words (the word being typed counts), or
            the end of the line, at most max_chars. In `text` models a single newline is
            a hard wrap inside a paragraph, not an end: a phrase runs on across it (and shows
            it as a space); a blank line (a second newline) ends the paragraph and the phrase.

What is offered (not for lexicon entries, which are the lexicon's own): a completion with a
letter, digit or pictograph in it (never only whitespace; only punctuation solely as the rest
of a line, and then of two characters or more: `)".`), of at least `min_chars` characters
(trailing whitespace not counted); a correction's completion may be shorter, even empty (the
correction is the saving). In `word` mode a word keeps the script of the text it continues
(the last letter typed): after Latin letters only Latin letters (digits and marks too), after
Han or kana only Han and kana, and so on (chars.script).

Finished hypotheses are ranked by the length-normalised score  log p(c | x) / n^α  where n
counts the symbols scored (the end symbol included): α = 0 ranks by probability, α = 1 by
mean log-probability per symbol.

Each step is a few requests (lockstep.py): the search yields what it needs computed, so that
the searches of several people can share one model call a step.

With a lexicon the beam walks a marisa trie as it grows: a hypothesis may only grow by a
character that keeps it a prefix of some entry, and it finishes exactly when it is an entry.

Graphemes: completions are sequences of code points, so a completion is never cut where
that would split a user-visible character. A completion never ends after a ZWJ or after an
odd number of regional indicators (half a flag), and a completion that stops because of a
length limit stops only where the model gives < 50% to a combining mark, variation selector,
emoji modifier or ZWJ coming next (it may run up to GRAPHEME_SLACK characters over the limit
to finish a cluster).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nextchar.completion.chars import (
    STRICT_SCRIPTS,
    is_extender,
    is_spaceless,
    last_script,
    needs_continuation,
    offered,
    script,
)
from nextchar.completion.chars import is_boundary as is_boundary  # re-exported, beside word_start
from nextchar.completion.config import DEFAULTS, MODES
from nextchar.completion.deadline import Deadline
from nextchar.completion.lexicon import Lexicon
from nextchar.completion.lockstep import Batch, ExtendRequest, MassesRequest, Request, TopKRequest
from nextchar.completion.states import Node, Tree
from nextchar.text import END, START, UNK, Vocabulary

GRAPHEME_SLACK = 8  # characters a length-limited completion may overrun to finish a grapheme


def word_start(text: str, limit: int = 256) -> int:
    """Index where the word in progress at the end of `text` starts (len(text) if none)."""
    i = len(text)
    stop = max(0, len(text) - limit)
    while i > stop and not is_boundary(text[i - 1]):
        i -= 1
    return i


@dataclass
class Candidate:
    """A finished hypothesis."""

    completion: str
    logprob: float  # log p(completion [+ end event] | text)
    symbols: int  # symbols scored (characters, plus one for an end event)
    score: float  # logprob / symbols^α


@dataclass
class SearchSettings:
    """What a search needs of a CompleterConfig (the defaults are its defaults)."""

    beam_width: int = DEFAULTS.beam_width  # hypotheses kept per step (at least k)
    max_chars: int = DEFAULTS.max_chars  # longest completion in line/phrase mode (word mode: max_chars too)
    max_words: int = DEFAULTS.max_words  # phrase mode: words per phrase, the one being typed included
    length_alpha: float = DEFAULTS.length_alpha  # α of the length normalisation (0: rank by probability)
    min_chars: int = DEFAULTS.min_chars  # shortest completion offered (trailing whitespace not counted)
    cjk_word_chars: int = DEFAULTS.cjk_word_chars  # word mode in scripts without spaces: characters per word
    lexicon_max_chars: int = 256  # longest completion walked in a lexicon
    deadline_s: float = 0.0  # a free search returns its best so far after this long (0: none)
    on_expired: Callable[[], None] | None = None  # told each time a search stops at the deadline


class SymbolTable:
    """What each vocabulary index is, for the search: boundary, extender, end of line…"""

    # Continuation kinds → rows of `masks`: ANY character, a WORD character, an EXTENDer, ANY or
    # a WRAP (a newline inside a phrase: `text` models), a word character of no script (LOOSE:
    # digits, marks…); then a word character of each script in the vocabulary (`script_rows`),
    # and last `none`, which allows nothing (lockstep.py gives the last row to the rows of a
    # batch that no search asks about).
    ANY, WORD, EXTEND, WRAP, LOOSE = 0, 1, 2, 3, 4

    def __init__(self, vocab: Vocabulary, corpus_format: str):
        size = len(vocab)
        self.vocab = vocab
        self.lines = corpus_format == "lines"
        self.chars = ["" if i < 3 else vocab.symbol(i) for i in range(size)]
        self.index = {ch: i for i, ch in enumerate(self.chars) if i >= 3}
        self.boundary = [i >= 3 and is_boundary(ch) for i, ch in enumerate(self.chars)]
        self.extender = [i >= 3 and is_extender(ch) for i, ch in enumerate(self.chars)]
        newline = self.index.get("\n")
        # The end of a line: the <end> marker for `lines` models, the newline for `text` models.
        self.line_end = [END] if self.lines else ([newline] if newline is not None else [])
        # Never a character of a completion: the special symbols, and in `lines` corpora the
        # newline (it separates lines; it is never inside one).
        never = {START, UNK} | ({newline} if self.lines and newline is not None else {END})
        self.never = frozenset(never)
        # Where the memory's continuations stop (nextchar.completion.recall.continuations): a
        # special symbol, and a word boundary (word mode) or the end of a line (line mode).
        self.word_stops = [i < 3 or self.boundary[i] for i in range(size)]
        self.line_stops = [i < 3 or i in self.line_end for i in range(size)]
        ends = (set(self.line_end) | {i for i in range(size) if self.boundary[i]}) - never
        self.line_end_idx = torch.tensor(self.line_end, dtype=torch.long)
        self.boundary_idx = torch.tensor(sorted(ends), dtype=torch.long)
        self.extender_idx = torch.tensor([i for i in range(size) if self.extender[i]], dtype=torch.long)
        # Indicator columns of the sets above (line end, word end, extender): the three
        # probability masses of every row of a step are then one product, p @ ends.
        self.ends = torch.zeros(size, 3)
        for column, idx in enumerate((self.line_end_idx, self.boundary_idx, self.extender_idx)):
            self.ends[idx, column] = 1.0
        blocked = {END, *never, *self.line_end}  # end events finish a hypothesis; they never extend one
        scripts = [script(ch) if i >= 3 else None for i, ch in enumerate(self.chars)]
        self.script_rows = {name: 5 + r for r, name in enumerate(sorted({s for s in scripts if s}))}
        self.none = 5 + len(self.script_rows)
        masks = torch.full((self.none + 1, size), -math.inf)
        for i in range(3, size):
            if i in blocked:
                if not self.lines and i == newline:
                    masks[self.WRAP, i] = 0.0
                continue
            masks[self.ANY, i] = masks[self.WRAP, i] = 0.0
            if not self.boundary[i]:
                masks[self.WORD, i] = 0.0
                if scripts[i] is None:
                    masks[self.LOOSE, i] = 0.0
                for name, row in self.script_rows.items():
                    # a word of a script without spaces holds only its own letters (and marks)
                    loose = scripts[i] is None and (name not in STRICT_SCRIPTS or self.extender[i])
                    if scripts[i] == name or loose:
                        masks[row, i] = 0.0
            if self.extender[i]:
                masks[self.EXTEND, i] = 0.0
        self.masks = masks

    def word_kind(self, context: str) -> int:
        """The mask row for a word after `context`: of the script of its last letter, if any (of a
        script the vocabulary lacks: only what no script owns, marks only for a strict one)."""
        name = last_script(context)
        if name is None:
            return self.WORD
        return self.script_rows.get(name, self.EXTEND if name in STRICT_SCRIPTS else self.LOOSE)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(ch, UNK) for ch in text]


class _Beam:
    """The live hypotheses of one step: parallel lists, their tensors rows lo… of `batch`."""

    __slots__ = ("batch", "in_word", "lo", "lps", "texts", "words")

    def __init__(
        self, texts: list[str], lps: list[float], words: list[int], in_word: list[bool], batch: Batch, lo: int
    ) -> None:
        self.texts, self.lps, self.words, self.in_word = texts, lps, words, in_word
        self.batch, self.lo = batch, lo

    @property
    def hi(self) -> int:
        return self.lo + len(self.texts)

    @property
    def logprobs(self) -> Tensor:
        return self.batch.logprobs[self.lo : self.hi]


def beam_steps(
    table: SymbolTable,
    root: Node,
    context: str,
    mode: str,
    k: int,
    settings: SearchSettings,
    lexicon: Lexicon | None = None,
    lexicon_key: str = "",
    known: Tree | None = None,
    allow_empty: bool = False,
    extras: Sequence[str] = (),
) -> Generator[Request, Any, tuple[list[Candidate], Tree]]:
    """The best completions of `context` (prepared text) from `root`, best first, deduplicated.

    A generator of requests (lockstep.py's `drive`): one model step per round, for every live
    hypothesis at once; a free search stops at `settings.deadline_s` (deadline.py). `extras`,
    completions the memory knows, stay among its hypotheses. An empty completion (the text is
    already complete) is returned only with `allow_empty`: it says nothing about what was
    typed, but completes a correction ("jonh" → "john"), so such a search (a correction's)
    offers completions shorter than `min_chars` too.
    `known` maps completions to nodes already computed (the previous keystroke's search):
    those hypotheses skip the model. Returns the candidates and this search's own tree of
    nodes (completion → Node), for the next keystroke to reuse.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    known = known or {}
    tree: Tree = {}
    width = max(settings.beam_width, k)
    alpha = settings.length_alpha
    in_word0 = bool(context) and not is_boundary(context[-1])
    beam = _Beam([""], [0.0], [1 if in_word0 else 0], [in_word0], Batch(root.logprobs.unsqueeze(0), root.state), 0)
    wrap = mode == "phrase" and not table.lines and lexicon is None
    rows = _Rows(
        go=table.WRAP if wrap else table.ANY,
        word=table.word_kind(context) if mode == "word" else table.WORD,
        none=table.none,
        wrap=wrap,
        after_newline=context.endswith("\n"),
    )
    # Lexicon entries are offered whatever they are; a correction's completion may be short.
    min_chars = None if lexicon is not None else (1 if allow_empty else settings.min_chars)
    # Without a lexicon the search's score is the final ranking (completer.py): only the k
    # best can ever be shown, so only they are kept.
    finished = _Finished(alpha, k if lexicon is None else None, min_chars, wrap, closing=mode == "line")
    finish = finished.add

    deadline = Deadline(settings.deadline_s, settings.on_expired)
    max_steps = settings.lexicon_max_chars if lexicon is not None else settings.max_chars + GRAPHEME_SLACK
    size = len(table.chars)  # V: a top-k index is row·V + symbol
    for _ in range(max_steps + 1):
        masses = yield MassesRequest(beam.batch, beam.lo, beam.hi, table.ends)
        if lexicon is not None:
            chosen = _lexicon_step(beam, masses, table, lexicon, lexicon_key, width, finish)
        else:
            kinds = _free_finish(beam, masses, mode, settings, finish, rows, allow_empty)
            allow_empty = False
            if deadline.next_round_would_overrun(may_stop=finished.would_offer(beam.texts)):
                _offer_as_they_stand(beam, finish)
                break
            values, indices = yield TopKRequest(beam.batch, beam.lo, beam.hi, beam.lps, kinds, width, table.masks)
            chosen = []
            for value, index in zip(values, indices, strict=True):
                if value == -math.inf:
                    break
                parent, symbol = divmod(index, size)
                chosen.append((parent, symbol, table.chars[symbol], value))
            chosen += _extra_rows(beam, table, extras, chosen)
        if not chosen:
            break
        # Early stop: k finished and no live hypothesis would score as well even if it ended now
        # (exact for α = 0 because log-probabilities only fall; the usual heuristic otherwise).
        kth = finished.kth(k)
        if kth > -math.inf:
            best_live = max(lp / (len(beam.texts[h]) + 2) ** alpha for h, _, _, lp in chosen)
            if best_live < kth:
                break
        beam = yield from _expand(table, beam, chosen, known, tree)
    return finished.ranked(), tree


@dataclass(frozen=True)
class _Rows:
    """The mask rows (SymbolTable) one search grows its hypotheses by, and how phrases end."""

    go: int  # line and phrase modes: ANY, or WRAP (phrases of `text` models go on across a newline)
    word: int  # a word's characters: WORD, or in word mode the row of the context's script
    none: int  # nothing (a hypothesis too long to grow)
    wrap: bool  # a single newline is a wrap inside a phrase; a second one ends the paragraph
    after_newline: bool  # the context ends with a newline (then a newline next is a blank line)


class _Finished:
    """The finished hypotheses, one per suggestion: completions that differ only in trailing
    whitespace are one suggestion, and the better-scoring of them stands for it.

    With `top`, only the `top` best suggestions are kept (ties included): a candidate below
    the top-th can never be shown, and the k-th best score is then at hand for early stopping.
    With `min_chars` (None: all), only completions worth offering are kept (`offered`, where
    `closing` lets the rest of a line be punctuation; an empty one reaches here only when it is
    allowed). With `wrap`, the newlines of a completion are wraps: it is shown with spaces for
    them (and without the one before a blank line).
    """

    def __init__(
        self, alpha: float, top: int | None, min_chars: int | None = None, wrap: bool = False, closing: bool = False
    ):
        self.alpha, self.top, self.min_chars, self.wrap, self.closing = alpha, top, min_chars, wrap, closing
        self.best: dict[str, Candidate] = {}
        self.floor = -math.inf  # with `top`: the top-th best score, once there are that many

    def add(self, raw: str, logprob: float, symbols: int) -> None:
        if logprob == -math.inf:
            return
        text = raw.rstrip("\n").replace("\n", " ") if self.wrap else raw
        if self.min_chars is not None and raw and not offered(text, self.min_chars, self.closing):
            return
        score = logprob / max(symbols, 1) ** self.alpha
        if score < self.floor:
            return
        key = text.rstrip()
        old = self.best.get(key)
        if old is not None and old.score >= score:
            return
        self.best[key] = Candidate(text, logprob, symbols, score)
        if self.top is not None and len(self.best) >= self.top:  # (sorting ≤ top + 1 floats beats a heap)
            self.floor = sorted([c.score for c in self.best.values()], reverse=True)[self.top - 1]
            if len(self.best) > self.top:
                self.best = {key: c for key, c in self.best.items() if c.score >= self.floor}

    def would_offer(self, texts: list[str]) -> bool:
        """Whether stopping now would offer anything: a finished suggestion, or one of `texts`
        (live hypotheses) as it stands (`_offer_as_they_stand`)."""
        if self.best:
            return True
        for raw in texts:
            text = raw.rstrip("\n").replace("\n", " ") if self.wrap else raw
            if (
                raw
                and not needs_continuation(raw)
                and (self.min_chars is None or offered(text, self.min_chars, self.closing))
            ):
                return True
        return False

    def kth(self, k: int) -> float:
        """The k-th best score (−inf while there are fewer than k)."""
        if len(self.best) < k:
            return -math.inf
        if self.top == k:
            return self.floor
        return sorted([c.score for c in self.best.values()], reverse=True)[k - 1]

    def ranked(self) -> list[Candidate]:
        return sorted(self.best.values(), key=lambda c: -c.score)


def _free_finish(
    beam: _Beam,
    masses: tuple[list[float], list[float], list[float]],
    mode: str,
    settings: SearchSettings,
    finish: Callable[[str, float, int], None],
    rows: _Rows,
    allow_empty: bool = False,
) -> list[int]:
    """Finish what may end here; returns how each hypothesis may go on (a row of SymbolTable.masks)."""
    line_end, boundary, extend = masses
    if mode == "line":
        boundary = line_end
    kinds = []
    for h, text in enumerate(beam.texts):
        lp, n = beam.lps[h], len(text)
        # No spaces to stop at (Chinese…): a word is a fixed number of characters
        limit = settings.cjk_word_chars if mode == "word" and text and is_spaceless(text[0]) else settings.max_chars
        pending = needs_continuation(text)
        kind = rows.word if mode == "word" else rows.go
        # with wraps, a newline ends the phrase only after another (a blank line), and never grows it
        paragraph = rows.wrap and (text.endswith("\n") if n else rows.after_newline)
        if paragraph:
            kind = SymbolTable.ANY
        if (n or allow_empty) and not pending:
            if mode == "word":
                finish(text, lp + boundary[h], n + 1)
            elif mode == "line":
                finish(text, lp + line_end[h], n + 1)
            elif beam.in_word[h] and beam.words[h] >= settings.max_words:
                finish(text, lp + boundary[h], n + 1)
                kind = SymbolTable.WORD
            elif paragraph or not rows.wrap:
                finish(text, lp + line_end[h], n + 1)
        if n >= limit:
            if n >= limit + GRAPHEME_SLACK:
                kind = rows.none
            elif not pending:
                if extend[h] < math.log(0.5):
                    finish(text, lp, n)  # cut by the length limit: no end event
                kind = SymbolTable.EXTEND
        kinds.append(kind)
    return kinds


def _extra_rows(
    beam: _Beam, table: SymbolTable, extras: Sequence[str], chosen: list[tuple[int, int, str, float]]
) -> list[tuple[int, int, str, float]]:
    """The extensions the beam would have dropped that lead to one of `extras`: each hypothesis
    that begins one grows by its next character too, scored by the same model call as the rest."""
    taken = {(parent, symbol) for parent, symbol, _, _ in chosen}
    out: list[tuple[int, int, str, float]] = []
    for h, text in enumerate(beam.texts):
        for extra in extras:
            if len(extra) <= len(text) or not extra.startswith(text):
                continue
            ch = extra[len(text)]
            symbol = table.index.get(ch)
            if symbol is None or (h, symbol) in taken:
                continue
            lp = beam.lps[h] + float(beam.logprobs[h, symbol])
            if lp > -math.inf:
                out.append((h, symbol, ch, lp))
                taken.add((h, symbol))
    return out


def _offer_as_they_stand(beam: _Beam, finish: Callable[[str, float, int], None]) -> None:
    """At the deadline: every live hypothesis that may stop here is offered as it stands (scored
    by what it has, with no end event, as one cut by the length limit is)."""
    for text, lp in zip(beam.texts, beam.lps, strict=True):
        if text and not needs_continuation(text):
            finish(text, lp, len(text))


def _lexicon_step(
    beam: _Beam,
    masses: tuple[list[float], list[float], list[float]],
    table: SymbolTable,
    lexicon: Lexicon,
    key: str,
    width: int,
    finish: Callable[[str, float, int], None],
) -> list[tuple[int, int, str, float]]:
    """In step with the trie: finish entries, extend only along the trie's edges."""
    size = len(beam.texts)
    line_end, boundary, _ = masses
    ends = line_end if table.lines else boundary
    for h in range(size):
        text = beam.texts[h]
        if key + text in lexicon:
            finish(text, beam.lps[h] + ends[h], len(text) + 1)
    scores = torch.tensor(beam.lps).unsqueeze(1) + beam.logprobs
    scores[:, END] = -math.inf  # the end of an entry is the finish event above
    sorted_scores, sorted_symbols = scores.sort(dim=1, descending=True)
    values: list[list[float]] = sorted_scores.tolist()
    order: list[list[int]] = sorted_symbols.tolist()
    # Merge the rows' sorted candidates best-first and keep those the trie allows.
    heap = [(-values[h][0], h, 0) for h in range(size)]
    heapq.heapify(heap)
    chosen: list[tuple[int, int, str, float]] = []
    oov = lexicon.alphabet_outside(table.index)
    while heap and len(chosen) < width:
        negative, h, j = heapq.heappop(heap)
        if negative == math.inf:
            break
        if j + 1 < len(order[h]):
            heapq.heappush(heap, (-values[h][j + 1], h, j + 1))
        symbol = order[h][j]
        prefix = key + beam.texts[h]
        if symbol == UNK:  # characters the model does not know share the <unk> probability
            for ch in oov:
                if len(chosen) < width and lexicon.has_prefix(prefix + ch):
                    chosen.append((h, UNK, ch, -negative))
        elif symbol >= 3 and lexicon.has_prefix(prefix + table.chars[symbol]):
            chosen.append((h, symbol, table.chars[symbol], -negative))
    chosen.sort(key=lambda c: -c[3])
    return chosen


def _expand(
    table: SymbolTable, beam: _Beam, chosen: list[tuple[int, int, str, float]], known: Tree, tree: Tree
) -> Generator[Request, Any, _Beam]:
    """One model step for all chosen extensions at once (those already known skip it)."""
    texts, lps, words, in_word = [], [], [], []
    boundary = table.boundary  # is_boundary of each symbol, computed once
    for parent, symbol, ch, lp in chosen:
        texts.append(beam.texts[parent] + ch)
        lps.append(lp)
        inside = not (boundary[symbol] if symbol != UNK else is_boundary(ch))
        words.append(beam.words[parent] + (1 if inside and not beam.in_word[parent] else 0))
        in_word.append(inside)
    nodes: list[Node | None] = [known.get(t) for t in texts] if known else [None] * len(texts)
    batch, lo = yield ExtendRequest(beam.batch, beam.lo, [c[0] for c in chosen], [c[1] for c in chosen], nodes)
    for i, (text, node) in enumerate(zip(texts, nodes, strict=True)):
        tree[text] = node if node is not None else Node.row(batch.state, batch.logprobs, lo + i)
    return _Beam(texts, lps, words, in_word, batch, lo)
