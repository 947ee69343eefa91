"""One person typing: the text, keystroke by keystroke, and a stack of the model's states along it.

    session = completer.session()
    session.type("th"); session.backspace(); session.set_text("the s"); session.suggest(5)

The stack holds the node after every prepared prefix of the text (typing pushes, backspace
pops), so that a keystroke costs one model step and a backspace none. A paste pushes one
state per PASTE_CHUNK characters except for its last DENSE_TAIL (backspacing into the sparse
stretch re-reads at most the gap); past `max_stack` states the older half is thinned; past
`max_context` characters only the last max_context are read.

The typed text and the prepared one (what the model reads: NFC, and the lecture alphabet's
mapping) can differ in length, and a keystroke can change the prepared text before it (a
combining accent composes with the letter before it). An edit re-prepares only the text after
a point where preparing the two halves apart gives what preparing the whole gives
(`safe_start`), and keeps the stack up to the first prepared character that changed.

Each stack entry keeps the suggestions asked for at it and the tree of its last search
(completion → node): when the next character continues a hypothesis of that search, its node
is taken instead of a model step, and the next search starts from the subtree. Texts of at
most SHARED_PREFIX characters share the completer's cache instead (every line starts short).
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

from torch import Tensor

from nextchar.completion.config import check_k, check_mode
from nextchar.completion.lockstep import drive
from nextchar.completion.states import MemoKey, Node, Tree, subtree
from nextchar.errors import UserError
from nextchar.models import State

if TYPE_CHECKING:
    from nextchar.completion.completer import Completer, Suggestion

DENSE_TAIL = 16  # a paste keeps one state per character for its last this many characters …
PASTE_CHUNK = 32  # … and one state per this many characters before them
SHARED_PREFIX = 4  # sessions share the completer's memo for texts this short (they recur across lines)
SAFE_LOOKBACK = 512  # how far back to look for a normalisation-safe point before re-preparing all


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


def safe_start(raw: str, upto: int, lecture: bool) -> int:
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
        if (
            unicodedata.combining(ch) == 0
            and unicodedata.is_normalized("NFC", ch)
            and unicodedata.normalize("NFC", raw[w - 1 : w + 1]) == unicodedata.normalize("NFC", raw[w - 1]) + ch
        ):
            return w
    return 0


class _Entry:
    """One stack entry: the node after the first `pos` prepared characters."""

    __slots__ = ("memo", "node", "pos", "tree")

    def __init__(self, pos: int, node: Node) -> None:
        self.pos, self.node = pos, node
        self.memo: dict[tuple[int, str, bool], list[Suggestion]] = {}
        self.tree: Tree | None = None


class TypingSession:
    """One person typing: the text and a stack of states (typing pushes, backspace pops)."""

    def __init__(self, completer: Completer) -> None:
        self._completer = completer
        self.text = ""  # what was typed, as typed
        self._prepared = ""  # what the model read
        with completer.lock:
            self._generation = completer.states.generation
            self._stack = [_Entry(0, completer.node_after(""))]

    def _check_generation(self) -> None:
        """After Completer.clear_cache (new weights) every state is stale: read the text afresh."""
        c = self._completer
        if self._generation != c.states.generation:
            self._generation = c.states.generation
            self._stack = [_Entry(0, c.node_after(""))]
            self._push_from(0)

    @property
    def prepared(self) -> str:
        """The text as the model read it (Completer.prepare of `text`)."""
        return self._prepared

    @property
    def stack_size(self) -> int:
        """States kept on the stack: one per character typed, fewer along a paste or past max_stack."""
        return len(self._stack)

    def current_state(self) -> tuple[State, Tensor]:
        """(s_t, log p_t) after "^" + the text: what Completer.state_after(text) gives."""
        with self._completer.lock:
            self._check_generation()
            node = self._stack[-1].node
            return node.state, node.logprobs

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
        """Completer.suggest(text, k, mode, typos), from the states and searches kept here."""
        k, mode = check_k(k), check_mode(mode)
        c = self._completer
        reuse = c.config.reuse
        with c.lock:
            self._check_generation()
            top = self._stack[-1]
            memo_key = (k, mode, bool(typos))
            if reuse and memo_key in top.memo:
                return list(top.memo[memo_key])
            shared = reuse and len(self.text) <= SHARED_PREFIX and top.pos == len(self._prepared)
            shared_key: MemoKey = (self.text, *memo_key)
            if shared:  # short texts recur (every line starts with one): the completer may know it
                cached, tree = c.states.recall(shared_key, self._prepared)
                if tree is not None and top.tree is None:
                    top.tree = tree
                if cached is not None:
                    top.memo[memo_key] = cached
                    return list(cached)
            known = top.tree
            if known is None and reuse and len(self._stack) > 1:
                parent = self._stack[-2]
                if parent.tree is not None and parent.pos == top.pos - 1:
                    known = subtree(parent.tree, self._prepared[-1])
            result, tree = drive(
                c.forward,
                c.complete_steps(
                    top.node, self._prepared, self.text, mode, k, bool(typos), known if reuse else None, self._path
                ),
            )
            if reuse:
                top.tree = {**known, **tree} if known else tree
                top.memo[memo_key] = result
                if shared:
                    c.states.remember(shared_key, result, self._prepared, top.tree)
            return list(result)

    def next_chars(self, k: int = 10) -> list[tuple[str, float]]:
        """Completer.next_chars(text, k), from the state on top of the stack."""
        k = check_k(k)
        with self._completer.lock:
            self._check_generation()
            return self._completer.top_chars(self._stack[-1].node, k)

    # ------------------------------------------------------------------ the stack

    def _apply(self, new_text: str, common: int) -> None:
        """Go from self.text to new_text, which share their first `common` characters."""
        c = self._completer
        with c.lock:
            self._check_generation()
            lecture = c.vocab.alphabet == "lecture"
            w = safe_start(self.text, min(common, len(self.text)), lecture) if common else 0
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
            self._push_from(keep)

    def _rewind(self, pos: int) -> None:
        """Pop to the state after the first `pos` prepared characters."""
        c = self._completer
        stack = self._stack
        while len(stack) > 1 and stack[-1].pos > pos:
            stack.pop()
        top = stack[-1]
        if top.pos > pos:  # below a truncated base: read afresh (at most max_context characters)
            self._stack = [_Entry(pos, c.node_after(self._prepared[:pos]))]
        elif top.pos < pos:  # inside a stretch kept sparse: re-read the gap only
            stack.append(_Entry(pos, c.advance(top.node, self._prepared[top.pos : pos])))

    def _push_from(self, pos: int) -> None:
        """Push states for self._prepared[pos:] (the stack's top is at pos)."""
        c = self._completer
        total = len(self._prepared)
        if total - pos > c.config.max_context:  # a huge paste: only the last max_context characters matter
            self._stack = [_Entry(total, c.node_after(self._prepared))]
            return
        while pos < total:
            top = self._stack[-1]
            remaining = total - pos
            node: Node | None
            if remaining > DENSE_TAIL:
                size = min(PASTE_CHUNK, remaining - DENSE_TAIL)
                node = c.advance(top.node, self._prepared[pos : pos + size])
            else:
                size = 1
                ch = self._prepared[pos]
                node = top.tree.get(ch) if top.tree is not None and c.config.reuse else None
                if node is None:  # the previous search did not reach this character
                    node = c.advance(top.node, ch)
            pos += size
            self._push(_Entry(pos, node))

    def _push(self, entry: _Entry) -> None:
        stack = self._stack
        stack.append(entry)
        if len(stack) > 3:
            stack[-4].tree = None  # trees are for the next keystroke only; they are big
        if len(stack) > self._completer.config.max_stack:  # thin the older half: every other state
            half = len(stack) // 2
            self._stack = [stack[0], *stack[1:half:2], *stack[half:]]

    def _path(self, lo: int) -> tuple[int, list[Node]]:
        """Nodes after every prefix length lo … len(prepared) (filling any sparse gap)."""
        c = self._completer
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
                node = have.get(pos) or c.advance(node, self._prepared[pos - 1])
            if pos >= lo:
                nodes.append(node)
        return lo, nodes
