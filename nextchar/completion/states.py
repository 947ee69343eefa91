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
recent queries, both bounded LRUs too. With `max_bytes` the three are bounded in bytes as
well (`BoundedLRU`): each entry is charged what it keeps alive — a node its tensors' storages,
a tree every batch its rows belong to (a search's rows are slices of one batch per step),
an answer its strings — each storage once per entry, so what is shared is over-counted, never
under. `stats` counts hits, steps and reads (the service's /metrics reads them); `clear`
forgets everything and bumps `generation`, which tells typing sessions that their own states
are stale (the weights changed).
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import Tensor

from nextchar.models import State
from nextchar.text import START

MEMO_SIZE = 1024  # suggestion lists kept
TREES_SIZE = 32  # search trees kept (a tree holds ~100 nodes)
TREES_FRACTION = 0.25  # with a byte bound: the trees may take this much of it (by default) …
MEMO_SHARE = 16  # … the answers 1/16, the nodes the rest
# What a kept object costs beyond the data this module counts (measured with sys.getsizeof and
# tests/service/test_cache_bytes.py, which sums every byte a full cache holds):
TENSOR_OVERHEAD = 512  # a tensor: TensorImpl, its storage, the Python object
NODE_OVERHEAD = 160  # a Node (slots) and the tuples it holds
ENTRY_OVERHEAD = 200  # an LRU slot: the dict entry, the ordering link, the (value, size) pair

Key = TypeVar("Key")
Value = TypeVar("Value")
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


def tensors_bytes(tensors: Iterable[Tensor]) -> int:
    """The bytes of the tensors' storages and of the tensors themselves, each counted once."""
    seen: set[int] = set()
    storages: set[int] = set()
    total = 0
    for tensor in tensors:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        storage = tensor.untyped_storage()
        total += TENSOR_OVERHEAD
        if storage.data_ptr() not in storages:
            storages.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _node_tensors(node: Node) -> list[Tensor]:
    """What a node keeps alive: its batch's tensors when it is a row of one (its own state and
    log p are then views of them), else its own."""
    if node._batch is not None:
        states, logprobs = node._batch
        return [*states, logprobs]
    assert node._state is not None and node._logprobs is not None
    return [*node._state, node._logprobs]


def node_bytes(node: Node) -> int:
    """What keeping `node` costs, at most (a row of a batch keeps the whole batch)."""
    return NODE_OVERHEAD + ENTRY_OVERHEAD + tensors_bytes(_node_tensors(node))


def tree_bytes(tree: Tree) -> int:
    """What keeping a search tree costs, at most: its keys, its nodes, each batch once."""
    batches: dict[int, list[Tensor]] = {}
    for node in tree.values():
        key = id(node._batch[0]) if node._batch is not None else id(node)  # a batch's rows share its states
        if key not in batches:
            batches[key] = _node_tensors(node)
    keys = sum(str_bytes(key) for key in tree)
    tensors = tensors_bytes(t for ts in batches.values() for t in ts)
    return sys.getsizeof(tree) + keys + (NODE_OVERHEAD + ENTRY_OVERHEAD) * len(tree) + tensors + ENTRY_OVERHEAD


def str_bytes(text: str) -> int:
    return sys.getsizeof(text)


def answers_bytes(answers: list[Any]) -> int:
    """What a kept list of suggestions costs: the list, each object, its `text` and `completion`
    strings and two floats (nextchar.completion.completer.Suggestion)."""
    each = (
        sys.getsizeof(a) + sys.getsizeof(a.__dict__) + sys.getsizeof(a.text) + sys.getsizeof(a.completion) + 48
        for a in answers
    )
    return sys.getsizeof(answers) + sum(each)


def memo_key_bytes(key: MemoKey) -> int:
    return sys.getsizeof(key) + sum(sys.getsizeof(part) for part in key) + ENTRY_OVERHEAD


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


class BoundedLRU(Generic[Key, Value]):
    """An LRU bounded by entries and, when `max_bytes` is set, by the bytes `size` says each costs."""

    def __init__(self, max_items: int, size: Callable[[Key, Value], int], max_bytes: int | None = None) -> None:
        self.max_items = max_items  # may be changed; applies from the next put
        self.max_bytes = max_bytes  # None: entries only (sizes are then not computed)
        self.bytes = 0  # what the entries cost, when bounded by bytes
        self.evicted = 0  # entries dropped to keep within the bounds
        self._size = size
        self._items: OrderedDict[Key, tuple[Value, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key) -> Value | None:
        found = self._items.get(key)
        if found is None:
            return None
        self._items.move_to_end(key)
        return found[0]

    def peek(self, key: Key) -> Value | None:
        """The value, without making it recent."""
        found = self._items.get(key)
        return None if found is None else found[0]

    def put(self, key: Key, value: Value) -> None:
        size = self._size(key, value) if self.max_bytes is not None else 0
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if self.max_items <= 0 or (self.max_bytes is not None and size > self.max_bytes):
            return
        self._items[key] = (value, size)
        self.bytes += size
        while len(self._items) > self.max_items or (self.max_bytes is not None and self.bytes > self.max_bytes):
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped
            self.evicted += 1

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


class StateCache(Generic[Memo]):
    """Nodes of prepared texts, recent search trees and recent answers, each a bounded LRU.

    With `max_bytes`, the three together stay within it: the trees get `trees_fraction` of it,
    the answers 1/MEMO_SHARE, the nodes the rest (`memo_bytes` says what an answer costs).
    """

    def __init__(
        self,
        capacity: int,
        max_context: int,
        max_bytes: int | None = None,
        memo_bytes: Callable[[Memo], int] | None = None,
        trees_fraction: float = TREES_FRACTION,
    ) -> None:
        self.trees_fraction = trees_fraction
        self.max_context = max_context  # characters of a text that matter to the model
        self.stats = {"hit": 0, "step": 0, "read": 0}  # how `node` found each node
        self.generation = 0  # bumped by `clear`
        answer_bytes = memo_bytes or (lambda memo: sys.getsizeof(memo))
        self._nodes: BoundedLRU[str, Node] = BoundedLRU(capacity, lambda key, node: str_bytes(key) + node_bytes(node))
        self._trees: BoundedLRU[str, Tree] = BoundedLRU(TREES_SIZE, lambda key, tree: str_bytes(key) + tree_bytes(tree))
        self._memo: BoundedLRU[MemoKey, Memo] = BoundedLRU(
            MEMO_SIZE, lambda key, memo: memo_key_bytes(key) + answer_bytes(memo)
        )
        self.max_bytes = max_bytes

    @property
    def capacity(self) -> int:
        """Nodes kept at most (0: none); may be changed, applies from the next insert."""
        return self._nodes.max_items

    @capacity.setter
    def capacity(self, capacity: int) -> None:
        self._nodes.max_items = capacity

    @property
    def max_bytes(self) -> int | None:
        """What nodes, trees and answers may cost together (None: bounded by counts only)."""
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, max_bytes: int | None) -> None:
        self._max_bytes = max_bytes
        if max_bytes is None:
            self._nodes.max_bytes = self._trees.max_bytes = self._memo.max_bytes = None
            return
        self._trees.max_bytes = int(max_bytes * self.trees_fraction)
        self._memo.max_bytes = max_bytes // MEMO_SHARE
        self._nodes.max_bytes = max_bytes - self._trees.max_bytes - self._memo.max_bytes
        self._forget()  # what is kept was not measured

    @property
    def budgets(self) -> dict[str, int | None]:
        """Each LRU's share of max_bytes: {"nodes", "trees", "answers"} (None: no byte bound)."""
        return {"nodes": self._nodes.max_bytes, "trees": self._trees.max_bytes, "answers": self._memo.max_bytes}

    @property
    def bytes(self) -> int:
        """What the nodes, trees and answers kept cost (counted when bounded by bytes)."""
        return self._nodes.bytes + self._trees.bytes + self._memo.bytes

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
            self.stats["hit"] += 1
            return node
        parent = self._nodes.peek(key[:-1]) if key else None
        self.stats["step" if parent is not None else "read"] += 1
        node = reader.advance(parent, key[-1]) if parent is not None else reader.read(key)
        self._nodes.put(key, node)
        return node

    def tree(self, key: str) -> Tree | None:
        """The last search tree remembered under `key` (a prepared text), if any."""
        return self._trees.peek(key)

    def recall(self, memo_key: MemoKey, tree_key: str) -> tuple[Memo | None, Tree | None]:
        """The answer remembered for `memo_key` and the tree for `tree_key` (None: not kept)."""
        return self._memo.get(memo_key), self._trees.peek(tree_key)

    def remember(self, memo_key: MemoKey, result: Memo, tree_key: str, tree: Tree) -> None:
        """Keep an answer and its search tree (the oldest go past MEMO_SIZE and TREES_SIZE, or their bytes)."""
        self._memo.put(memo_key, result)
        self._trees.put(tree_key, tree)

    def _forget(self) -> None:
        self._nodes.clear()
        self._trees.clear()
        self._memo.clear()

    def clear(self) -> None:
        """Forget every node, tree and answer (the weights changed); `stats` are kept."""
        self._forget()
        self.generation += 1
