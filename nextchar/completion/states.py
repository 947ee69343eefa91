"""The model's states along typed texts, and the cache that keeps them across calls.

After reading "^" + x the model is in state s_t with next-symbol distribution p_t; a `Node`
holds both. Everything a completer does starts from such a node, and a text typed one
character at a time asks for the node of x + c right after that of x, so the nodes are kept:

    StateCache.node(x)   cached (a hit); else one model step from the node of x[:-1] if that
                         is cached (a step); else "^" + x read from s_0 (a read)

The cache is an LRU of at most `capacity` nodes, keyed by the last `max_context` characters
of the prepared text (the model never reads further back). Beside the nodes it keeps, for
the next keystroke, the search tree of each recent search (completion → node: when the next
character continues a hypothesis, its node is there, `subtree`) and the suggestion lists of
recent queries, both bounded LRUs too. `stats` counts hits, steps and reads (the service's
/metrics reads them); `clear` forgets everything and bumps `generation`, which tells
typing sessions that their own states are stale (the weights changed).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Generic, Protocol, TypeVar

import torch
from torch import Tensor

from nextchar.models import State
from nextchar.text import START

MEMO_SIZE = 1024  # suggestion lists kept
TREES_SIZE = 32  # search trees kept (a tree holds ~100 nodes)

Memo = TypeVar("Memo")  # what a query's answer is (the completer's list of suggestions)
MemoKey = tuple[str, int, str, bool]  # (text, k, mode, typos)
Tree = dict[str, "Node"]  # completion → the node after it: a search's tree


def symbol_logprobs(logits: Tensor) -> Tensor:
    """log p over the symbols (last dimension); <start> is never a next symbol, so it gets 0."""
    logits = logits.float()
    logits[..., START] = -math.inf
    return torch.log_softmax(logits, dim=-1)


class Node:
    """The model after reading some text: its state s_t (batch of 1) and log p_t (V,).

    `Node.row(states, logprobs, r)` is row r of a batch, sliced when first read: a search makes
    a node for every hypothesis of every step, and only a few are ever read again.
    """

    __slots__ = ("_batch", "_logprobs", "_row", "_state")

    def __init__(self, state: State, logprobs: Tensor) -> None:
        self._state: State | None = state
        self._logprobs: Tensor | None = logprobs
        self._batch: tuple[State, Tensor] | None = None
        self._row = 0

    @classmethod
    def row(cls, states: State, logprobs: Tensor, row: int) -> Node:
        node = cls.__new__(cls)
        node._state = node._logprobs = None
        node._batch, node._row = (states, logprobs), row
        return node

    @property
    def batch_row(self) -> tuple[State, Tensor, int] | None:
        """(states, logprobs, r) when this node is row r of a batch (`Node.row`), else None:
        a batch's rows are then gathered at once instead of sliced one by one."""
        if self._batch is None:
            return None
        return self._batch[0], self._batch[1], self._row

    @property
    def state(self) -> State:
        if self._state is None:
            assert self._batch is not None  # one of the two is always set
            states = self._batch[0]
            self._state = tuple(s[self._row : self._row + 1] for s in states)
        return self._state

    @property
    def logprobs(self) -> Tensor:
        if self._logprobs is None:
            assert self._batch is not None
            self._logprobs = self._batch[1][self._row]
        return self._logprobs


def subtree(tree: Tree, ch: str) -> Tree:
    """The part of a search tree below the typed character, re-keyed relative to it."""
    return {key[1:]: node for key, node in tree.items() if len(key) > 1 and key[0] == ch}


class StateReader(Protocol):
    """What makes the nodes a StateCache does not have (a Completer: its model and its stepper)."""

    def read(self, text: str) -> Node:
        """The node after "^" + text, read from s_0."""
        ...

    def advance(self, node: Node, chars: str) -> Node:
        """The node after reading `chars` on from `node`."""
        ...


class StateCache(Generic[Memo]):
    """Nodes of prepared texts, recent search trees and recent answers, each a bounded LRU."""

    def __init__(self, capacity: int, max_context: int) -> None:
        self.capacity = capacity  # nodes kept (0: none); may be changed, applies from the next insert
        self.max_context = max_context  # characters of a text that matter to the model
        self.stats = {"hit": 0, "step": 0, "read": 0}  # how `node` found each node
        self.generation = 0  # bumped by `clear`
        self._nodes: OrderedDict[str, Node] = OrderedDict()
        self._trees: OrderedDict[str, Tree] = OrderedDict()
        self._memo: OrderedDict[MemoKey, Memo] = OrderedDict()

    def __len__(self) -> int:
        """Nodes cached."""
        return len(self._nodes)

    def key(self, prepared: str) -> str:
        """What the model reads of a prepared text: its last max_context characters."""
        return prepared[-self.max_context :] if len(prepared) > self.max_context else prepared

    def node(self, prepared: str, reader: StateReader) -> Node:
        """The node after `prepared`: cached, one step from a cached parent, or read."""
        key = self.key(prepared)
        node = self._nodes.get(key)
        if node is not None:
            self._nodes.move_to_end(key)
            self.stats["hit"] += 1
            return node
        parent = self._nodes.get(key[:-1]) if key else None
        self.stats["step" if parent is not None else "read"] += 1
        node = reader.advance(parent, key[-1]) if parent is not None else reader.read(key)
        if self.capacity:
            self._nodes[key] = node
            while len(self._nodes) > self.capacity:
                self._nodes.popitem(last=False)
        return node

    def tree(self, key: str) -> Tree | None:
        """The last search tree remembered under `key` (a prepared text), if any."""
        return self._trees.get(key)

    def recall(self, memo_key: MemoKey, tree_key: str) -> tuple[Memo | None, Tree | None]:
        """The answer remembered for `memo_key` and the tree for `tree_key` (None: not kept)."""
        result = self._memo.get(memo_key)
        if result is not None:
            self._memo.move_to_end(memo_key)
        return result, self._trees.get(tree_key)

    def remember(self, memo_key: MemoKey, result: Memo, tree_key: str, tree: Tree) -> None:
        """Keep an answer and its search tree (the oldest go past MEMO_SIZE and TREES_SIZE)."""
        self._memo[memo_key] = result
        self._trees[tree_key] = tree
        while len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)
        while len(self._trees) > TREES_SIZE:
            self._trees.popitem(last=False)

    def clear(self) -> None:
        """Forget every node, tree and answer (the weights changed); `stats` are kept."""
        self._nodes.clear()
        self._trees.clear()
        self._memo.clear()
        self.generation += 1
