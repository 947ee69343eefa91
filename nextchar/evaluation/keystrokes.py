"""eval-complete: simulate a person typing each line of a file, and measure what autocomplete saves.

The person types a line character by character. After every keystroke the system shows k
suggestions (whole texts: what was typed + a completion). As soon as the current target is
among them, the person takes it with one keystroke and goes on typing after it.

Targets and prediction points (n = len(line), cursor p = characters typed, 1 ≤ p < n):

    line    the target is the whole line; every p is a prediction point; prefix length = p.
    word    the target is the word the cursor is in: p is a prediction point when the last
            typed character is inside a word (not a boundary, see search.is_boundary) and the
            word goes on after p; the target is line[:end of that word]; prefix length =
            characters of that word typed.
    phrase  as word, but the target runs to the end of the `max_words`-th word counting the
            word being typed (or to the end of the line).
    next-word  as word, and also where a word is about to start (the cursor after the boundary
            before it, prefix length 0): what an email editor offers after a space, as
            word-prediction systems are measured. The systems search in word mode.

Metrics (a target "appears" when a suggestion equals it, ignoring trailing whitespace):

    keystrokes   per line: walk from p = 0; at a prediction point whose target appears in
                 the top k, one keystroke (accept) moves the cursor to the target's end;
                 otherwise one keystroke types the next character.
    ksr          keystroke savings rate = 1 − Σ keystrokes / Σ characters of the lines.
    mrr          mean over ALL prediction points (not only those the walk visits) of 1/rank
                 of the target among the k suggestions, 0 when it is not among them.
    success_at_1[ℓ], success_at_k[ℓ]
                 over the prediction points whose prefix length is ℓ (1–5): the fraction whose
                 target is the first suggestion / among the k.
    latency_ms   p50/p95/p99 over every keystroke 1 ≤ p < n of every line of the time from the
                 keystroke to its suggestions (typing the character + suggesting).
    targets      distinct (line, target end) pairs that have at least one prediction point.
    groups       given the training lines: keystrokes and KSR of the targets found in them
                 ("seen": what recall alone can complete) and of the others ("unseen"). A
                 target is seen when its own text is one of the training lines' targets: the
                 line (line mode), the word (word, next-word), the phrase from the word
                 being typed (phrase). In the word modes a group holds its words' characters
                 and the keystrokes spent at them; the boundaries between words, typed by
                 every system alike, are in neither.

Baselines, measured the same way:
    trie     the classic autocomplete: a frequency-ranked prefix trie of the training lines
             (line mode), of their words (word mode) or of their `max_words`-word phrases
             starting at each word (phrase mode); it can only complete what it has seen.
    window   the lecture's window model (any checkpoint, through the same Completer).
    memory alone
             a checkpoint's memory without its model (`MemoryPredictor`): the commonest ways
             the training text goes on after the longest suffix of the typed text it holds,
             backing off to shorter ones (completion/recall.py: `recalled`). In `line` mode
             that is a frequency trie of the training lines while the typed line is one's
             prefix, and more where it is not; in `word` mode, the words that followed.

And the model learning as it is used (`PersonalPredictor`, eval-complete --adapt): a person's
own completer (nextchar.completion.personal) learns each line once it has been typed, so the
suggestions for a line come from what was learned on the lines before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nextchar.completion.completer import Completer
from nextchar.completion.config import check_k, check_mode
from nextchar.completion.lexicon import Lexicon
from nextchar.completion.personal import PersonalCompleter
from nextchar.completion.recall import MixedForward, recalled
from nextchar.completion.search import is_boundary, word_start
from nextchar.errors import UserError
from nextchar.text import START

PREFIX_LENGTHS = (1, 2, 3, 4, 5)


@dataclass
class CompleteEvalResult:
    name: str
    mode: str
    k: int
    ksr: float
    mrr: float
    success_at_1: dict[str, float]
    success_at_k: dict[str, float]
    latency_ms: dict[str, float]
    targets: int
    lines: int
    chars: int
    keystrokes: int
    prediction_points: int
    # with `seen` lines: {"seen": …, "unseen": …}, each {"targets", "chars", "keystrokes", "ksr"}
    groups: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


GROUPS = ("seen", "unseen")  # targets found among the training lines' targets, and the others
NEXT_WORD = "next-word"  # an evaluation mode: word mode's targets, and each word before it is begun


def word_spans(line: str) -> list[tuple[int, int]]:
    """(start, end) of each word: maximal runs of non-boundary characters."""
    spans: list[tuple[int, int]] = []
    start: int | None = None
    for i, ch in enumerate(line):
        if is_boundary(ch):
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(line)))
    return spans


def search_mode(mode: str) -> str:
    """The completer's mode an evaluation mode asks for: next-word is word mode's search."""
    return "word" if mode == NEXT_WORD else mode


def prediction_points(line: str, mode: str, max_words: int = 3) -> dict[int, tuple[int, int]]:
    """{cursor p: (target end q, prefix length)} for one line (see the module docstring)."""
    n = len(line)
    if mode == "line":
        return {p: (n, p) for p in range(1, n)}
    spans = word_spans(line)
    words = 1 if mode in ("word", NEXT_WORD) else max_words
    first = 0 if mode == NEXT_WORD else 1  # next-word: also where a word is about to start
    points = {}
    for j, (start, end) in enumerate(spans):
        q = spans[min(j + words - 1, len(spans) - 1)][1]
        for p in range(max(start + first, 1), end + 1):
            if p < q and p < n:
                points[p] = (q, p - start)
    return points


class Predictor:
    """What eval-complete asks a system: a new line starts, a character is typed, suggest."""

    name = "system"

    def start(self) -> None: ...

    def keystroke(self, ch: str, typed: str) -> list[str]:
        raise NotImplementedError

    def finish(self, line: str) -> None:
        """The line is done (untimed): an adapting predictor learns from it (`PersonalPredictor`)."""


class CompleterPredictor(Predictor):
    """A neural model through a typing session (one model step per keystroke)."""

    def __init__(self, completer: Completer, mode: str, k: int, name: str = "model", typos: bool = False):
        self.completer, self.mode, self.k, self.name, self.typos = completer, search_mode(mode), k, name, typos
        self.session = completer.session()

    def start(self) -> None:
        self.session.set_text("")

    def keystroke(self, ch: str, typed: str) -> list[str]:
        self.session.type(ch)
        return [s.text for s in self.session.suggest(self.k, self.mode, self.typos)]


class PersonalPredictor(CompleterPredictor):
    """eval-complete's typist for a person whose completer learns each line once it is typed.

    Suggestions for a line come from weights learned on the lines before it only; learning
    happens in `finish`, untimed by the keystroke latency (as a service would learn after
    answering), and is timed here instead.
    """

    def __init__(self, person: PersonalCompleter, mode: str, k: int, name: str = "model, adapted", typos: bool = False):
        super().__init__(person.completer, mode, k, name=name, typos=typos)
        self.person = person
        self.learn_seconds: list[float] = []
        self.learned_chars = 0
        self.rollbacks = 0

    def finish(self, line: str) -> None:
        report = self.person.learn(line + "\n")
        self.learn_seconds.append(report.seconds)
        self.learned_chars += report.chars
        self.rollbacks += report.rolled_back

    def cost(self) -> dict[str, float]:
        """Learning time per line (one step each, p50/p99 in ms) and per character (µs)."""
        times = sorted(self.learn_seconds) or [0.0]
        return {
            "lines": len(self.learn_seconds),
            "chars": self.learned_chars,
            "ms_per_line_p50": 1e3 * times[len(times) // 2],
            "ms_per_line_p99": 1e3 * times[min(len(times) - 1, int(0.99 * len(times)))],
            "us_per_char": 1e6 * sum(times) / max(self.learned_chars, 1),
            "rollbacks": self.rollbacks,
        }


class TriePredictor(Predictor):
    """The frequency-ranked prefix trie of what was seen in training."""

    def __init__(self, lexicon: Lexicon, mode: str, k: int, name: str = "trie"):
        self.lexicon, self.mode, self.k, self.name = lexicon, search_mode(mode), k, name

    @classmethod
    def from_lines(cls, lines: Iterable[str], mode: str, k: int, max_words: int = 3) -> TriePredictor:
        mode = search_mode(mode)
        items: list[str] = []
        for line in lines:
            if mode == "line":
                items.append(line)
                continue
            spans = word_spans(line)
            words = 1 if mode == "word" else max_words
            for j, (start, _) in enumerate(spans):
                items.append(line[start : spans[min(j + words - 1, len(spans) - 1)][1]])
        if not items:
            raise UserError("the trie baseline has nothing to learn from (no lines or no words)")
        return cls(Lexicon.from_entries(items, source="training lines"), mode, k)

    def keystroke(self, ch: str, typed: str) -> list[str]:
        start = 0 if self.mode == "line" else word_start(typed)
        fragment = typed[start:]
        found = self.lexicon.top(fragment, self.k + 1)
        return [typed[:start] + entry for entry, _ in found if entry != fragment][: self.k]


class MemoryPredictor(Predictor):
    """A checkpoint's memory alone (module docstring): its context grows by the typed symbols,
    one push each (a fresh match only when the typed text is not the last one continued)."""

    def __init__(self, completer: Completer, mode: str, k: int, name: str = "memory alone"):
        forward = completer.forward
        if not isinstance(forward, MixedForward):
            raise UserError("the memory-alone baseline needs a checkpoint with a memory (nextchar index)")
        if search_mode(mode) == "phrase":
            raise UserError("the memory-alone baseline suggests words and lines, not phrases")
        self.memory, self.table, self.prepare = forward.memory, completer.table, completer.prepare
        self.mode, self.k, self.name = search_mode(mode), k, name
        self.max_len = completer.settings.max_chars
        self.start()

    def start(self) -> None:
        self.prepared = ""
        self.context = self.memory.push(self.memory.start(), START)

    def keystroke(self, ch: str, typed: str) -> list[str]:
        prepared = self.prepare(typed)
        if not prepared.startswith(self.prepared):
            self.start()
        for symbol in self.table.encode(prepared[len(self.prepared) :]):
            self.context = self.memory.push(self.context, symbol)
        self.prepared = prepared
        if self.mode == "line":
            stops, min_depth = self.table.line_stops, 1
        else:
            stops, min_depth = self.table.word_stops, max(1, len(prepared) - word_start(prepared))
        found = recalled(self.memory, self.context, stops, self.max_len, self.k, min_depth)
        return [typed + "".join(self.table.chars[s] for s in symbols) for symbols in found]


def _walk(points: dict[int, tuple[int, int]], ranks: dict[int, int], n: int) -> list[int]:
    """The walk along a line of n characters: one keystroke accepts a target shown at the
    cursor (jumping to its end), else one types the next character. The cursor of each keystroke."""
    cursor = 0
    cursors = []
    while cursor < n:
        cursors.append(cursor)
        cursor = points[cursor][0] if ranks.get(cursor) else cursor + 1
    return cursors


def target_spans(line: str, mode: str, max_words: int = 3) -> list[tuple[int, int, str]]:
    """(start, end, the target's own text) of each target of a line: the line itself in line
    mode, else each word (word modes) or the phrase that starts at it (phrase mode)."""
    if mode == "line":
        return [(0, len(line), line)]
    spans = word_spans(line)
    words = max_words if mode == "phrase" else 1
    return [(a, b, line[a : spans[min(j + words - 1, len(spans) - 1)][1]]) for j, (a, b) in enumerate(spans)]


def _count(
    groups: dict[str, dict[str, float]], line: str, mode: str, max_words: int, walk: list[int], seen: Collection[str]
) -> None:
    """Add a line's targets, their characters and the keystrokes spent at them to their groups."""
    group_at: dict[int, dict[str, float]] = {}
    for start, end, text in target_spans(line, mode, max_words):
        group = groups["seen" if text in seen else "unseen"]
        group["targets"] += 1
        group["chars"] += end - start
        group_at.update(dict.fromkeys(range(start, end), group))
    for cursor in walk:
        if cursor in group_at:
            group_at[cursor]["keystrokes"] += 1


def seen_targets(lines: Iterable[str], mode: str, max_words: int = 3) -> set[str]:
    """The texts of the training lines' targets (`target_spans`): what a target is seen among."""
    return {text for line in lines for _, _, text in target_spans(line, search_mode(mode), max_words)}


def evaluate_completion(
    lines: list[str],
    predictor: Predictor,
    mode: str,
    k: int,
    max_words: int = 3,
    progress: bool = False,
    seen: Collection[str] | None = None,
) -> CompleteEvalResult:
    """Simulate typing `lines` with `predictor`'s suggestions (see the module docstring).
    `seen` (the training lines): the keystrokes are also reported for the targets found there
    and for the others apart (`groups`): what recall can save, and what only generalising can."""
    k = check_k(k)
    mode = mode if mode == NEXT_WORD else check_mode(mode)
    lines = [line for line in lines if line]
    if not lines:
        raise UserError("nothing to evaluate: no non-empty lines")
    chars = keystrokes = points = targets = 0
    reciprocal = 0.0
    at = {ell: [0, 0, 0] for ell in PREFIX_LENGTHS}  # count, top-1 hits, top-k hits
    latencies: list[float] = []
    groups: dict[str, dict[str, float]] = {name: {"targets": 0, "chars": 0, "keystrokes": 0} for name in GROUPS}
    known = None if seen is None else seen_targets(seen, mode, max_words)
    iterator: Iterable[str] = lines
    if progress:
        from tqdm import tqdm

        iterator = tqdm(lines, desc=predictor.name, unit="line", leave=False, mininterval=0.5)
    clock = time.perf_counter
    for line in iterator:
        n = len(line)
        chars += n
        line_points = prediction_points(line, mode, max_words)
        targets += len({q for q, _ in line_points.values()})
        predictor.start()
        ranks: dict[int, int] = {}
        for p in range(1, n):
            started = clock()
            texts = predictor.keystroke(line[p - 1], line[:p])
            latencies.append(clock() - started)
            if p not in line_points:
                continue
            q, ell = line_points[p]
            target = line[:q].rstrip()
            rank = next((i + 1 for i, text in enumerate(texts[:k]) if text.rstrip() == target), 0)
            ranks[p] = rank
            points += 1
            reciprocal += 1.0 / rank if rank else 0.0
            if ell in at:
                at[ell][0] += 1
                at[ell][1] += rank == 1
                at[ell][2] += rank >= 1
        predictor.finish(line)
        walk = _walk(line_points, ranks, n)
        keystrokes += len(walk)
        if known is not None:
            _count(groups, line, search_mode(mode), max_words, walk, known)
    ms = np.array(latencies or [0.0]) * 1000.0
    return CompleteEvalResult(
        name=predictor.name,
        mode=mode,
        k=k,
        ksr=1.0 - keystrokes / chars,
        mrr=reciprocal / points if points else 0.0,
        success_at_1={str(ell): (v[1] / v[0] if v[0] else 0.0) for ell, v in at.items()},
        success_at_k={str(ell): (v[2] / v[0] if v[0] else 0.0) for ell, v in at.items()},
        latency_ms={
            "p50": float(np.percentile(ms, 50)),
            "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)),
        },
        targets=targets,
        lines=len(lines),
        chars=chars,
        keystrokes=keystrokes,
        prediction_points=points,
        groups={}
        if seen is None
        else {name: {**g, "ksr": 1.0 - g["keystrokes"] / max(g["chars"], 1)} for name, g in groups.items()},
    )


def format_table(results: list[CompleteEvalResult]) -> str:
    """A plain-text table: one row per system."""
    if not results:
        return ""
    k = results[0].k
    head = (
        f"{'system':<22} {'KSR':>6} {'MRR':>6}  {'s@1 by prefix length 1-5':<26}  "
        f"{f's@{k} by prefix length 1-5':<26}  {'p50 ms':>6} {'p95 ms':>6} {'p99 ms':>6}"
    )
    rows = [head]
    for r in results:
        s1 = " ".join(f"{r.success_at_1[str(ell)]:.2f}" for ell in PREFIX_LENGTHS)
        sk = " ".join(f"{r.success_at_k[str(ell)]:.2f}" for ell in PREFIX_LENGTHS)
        lat = r.latency_ms
        rows.append(
            f"{r.name[:22]:<22} {r.ksr:6.3f} {r.mrr:6.3f}  {s1:<26}  {sk:<26}  "
            f"{lat['p50']:6.2f} {lat['p95']:6.2f} {lat['p99']:6.2f}"
        )
    return "\n".join(rows)


def typing_latency(
    completer: Completer,
    text: str,
    lengths: Iterable[int],
    keystrokes: int = 20,
    k: int = 5,
    mode: str = "line",
    clock: Callable[[], float] = time.perf_counter,
) -> dict[int, dict[str, float]]:
    """Per-keystroke latency (ms) after `length` characters are already typed, for each length.

    For each length L: a session is set to text[:L] (untimed), then the next `keystrokes`
    characters of `text` are typed one at a time, each timed from the keystroke to its k
    suggestions. `text` must hold max(lengths) + keystrokes characters.
    """
    out = {}
    for length in lengths:
        if length + keystrokes > len(text):
            raise UserError(f"typing_latency needs {length + keystrokes} characters of text, got {len(text)}")
        session = completer.session()
        session.set_text(text[:length])
        session.suggest(k, mode)
        times = []
        for ch in text[length : length + keystrokes]:
            started = clock()
            session.type(ch)
            session.suggest(k, mode)
            times.append((clock() - started) * 1000.0)
        arr = np.array(times)
        out[length] = {
            "p50": float(np.percentile(arr, 50)),
            "p99": float(np.percentile(arr, 99)),
            "max": float(arr.max()),
        }
    return out
