"""Many searches answered by one model call a round: the requests a search yields, and their driver.

A search (search.py's `beam_steps`) is a generator that yields what it needs computed and is
sent back the answer:

    MassesRequest   the end-event masses of its hypotheses: log p(line end), log p(word end),
                    log p(extender), each the total probability of a set of symbols
    TopKRequest     its `width` best extensions (row, symbol) by log p(hypothesis) + log p_t
    ExtendRequest   the model's step for the extensions it chose

`drive_together` answers each kind of request for every search at once, so a round of a dozen
concurrent searches costs about one search's tensor operations and ONE model call. Why: per
hypothesis, a step for 64 costs half what a step for 8 does on this CPU (python -m bench.step), and
a search's own tensor operations, a few µs each, cost as much as its share of the model call
(python -m bench.search: 17–24% less per search in batches of 5–16). A search's hypotheses are rows
lo…hi of the round's `Batch`, which holds every search's rows; `drive` runs a single search.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from nextchar.completion.states import Node, symbol_logprobs
from nextchar.models import State, select_state, stack_states

Masses = tuple[list[float], list[float], list[float]]  # log p of [line end, word end, extender] per row
Forward = Callable[[Tensor, State], tuple[Tensor, State]]  # model(idx, state), e.g. a stepper.Stepper
R = TypeVar("R")


class Batch:
    """One round's hypotheses, of every search driven together: log p_t rows (N, V) and states."""

    __slots__ = ("logprobs", "masses", "state")

    def __init__(self, logprobs: Tensor, state: State) -> None:
        self.logprobs, self.state = logprobs, state
        self.masses: list[list[float]] | None = None  # [line end, word end, extender] × rows, once computed


class MassesRequest:
    """Request: log p(line end), log p(word end), log p(extender) of rows lo…hi.

    `ends` (V, 3) holds the indicator columns of those three sets of symbols (SymbolTable.ends):
    the masses of every row of a batch are then one product, p @ ends.
    """

    __slots__ = ("batch", "ends", "hi", "lo")

    def __init__(self, batch: Batch, lo: int, hi: int, ends: Tensor) -> None:
        self.batch, self.lo, self.hi, self.ends = batch, lo, hi, ends


class TopKRequest:
    """Request: the `width` best (row, symbol) pairs by lps[row] + log p[row, symbol] + mask,
    the mask of each row chosen by its kind: masks[kinds[row]] (SymbolTable.masks, whose last
    row allows nothing); indices are row·V + symbol."""

    __slots__ = ("batch", "hi", "kinds", "lo", "lps", "masks", "width")

    def __init__(
        self, batch: Batch, lo: int, hi: int, lps: list[float], kinds: list[int], width: int, masks: Tensor
    ) -> None:
        self.batch, self.lo, self.hi, self.masks = batch, lo, hi, masks
        self.lps, self.kinds, self.width = lps, kinds, width


class ExtendRequest:
    """Request: one model step for each (parent row, symbol), unless its node is known already.
    Answered by (batch, lo): the new hypotheses are rows lo… of the next round's batch."""

    __slots__ = ("batch", "known", "lo", "parents", "symbols")

    def __init__(
        self, batch: Batch, lo: int, parents: list[int], symbols: list[int], known: Sequence[Node | None]
    ) -> None:
        self.batch, self.lo, self.parents, self.symbols, self.known = batch, lo, parents, symbols, known


Request = MassesRequest | TopKRequest | ExtendRequest
Steps = Generator[Request, Any, Any]  # a search: yields requests, is sent their answers


@torch.inference_mode()
def drive(forward: Forward, steps: Generator[Request, Any, R]) -> R:
    """Run one search to its end.

    The whole search runs in inference mode here, in the driver: a generator must not enter
    a context manager across its yields (it would leak into whatever runs between them).
    """
    result = drive_together(forward, [steps])[0]
    if isinstance(result, Exception):
        raise result
    return cast(R, result)


@torch.inference_mode()
def drive_together(forward: Forward, searches: Sequence[Generator[object, Any, object]]) -> list[Any]:
    """Run several searches in lockstep, each kind of request answered for all of them at once.

    Returns each search's result, or the exception it raised (one failing search does not
    stop the others; a search that yields something other than a request fails alone).
    """
    results: list[Any] = [None] * len(searches)
    waiting: dict[int, Request] = {}

    def advance(i: int, reply: Any) -> None:
        try:
            request = next(searches[i]) if reply is None else searches[i].send(reply)
        except StopIteration as done:
            results[i] = done.value
        except Exception as exc:  # handed back to that search's caller, who raises it
            results[i] = exc
        else:
            if isinstance(request, _PHASES):
                waiting[i] = request
            else:
                searches[i].close()
                results[i] = TypeError(f"a search yielded {type(request).__name__}, not a request")

    for i in range(len(searches)):
        advance(i, None)
    while waiting:
        # The earliest phase of a round first: searches at a later one wait there for the rest.
        for phase in _PHASES:
            group = [i for i, request in waiting.items() if type(request) is phase]
            if group:
                break
        replies = _SERVE[phase](forward, [waiting.pop(i) for i in group])
        for i, reply in zip(group, replies, strict=True):
            advance(i, reply)
    return results


def _serve_masses(forward: Forward, requests: list[MassesRequest]) -> list[Masses]:
    replies = []
    for r in requests:
        batch = r.batch
        if batch.masses is None:  # one product per batch (a mass below 1e-38 is taken as 0)
            batch.masses = (batch.logprobs.exp() @ r.ends).log_().t().tolist()
        line_end, boundary, extend = batch.masses
        replies.append((line_end[r.lo : r.hi], boundary[r.lo : r.hi], extend[r.lo : r.hi]))
    return replies


def _serve_topk(forward: Forward, requests: list[TopKRequest]) -> list[tuple[list[float], list[int]]]:
    replies: list[tuple[list[float], list[int]]] = [([], [])] * len(requests)
    by_batch: dict[int, list[int]] = {}
    for j, r in enumerate(requests):
        by_batch.setdefault(id(r.batch), []).append(j)
    for js in by_batch.values():
        group = [requests[j] for j in js]
        batch, masks = group[0].batch, group[0].masks
        n, size = batch.logprobs.shape
        if len(group) == 1 and group[0].hi - group[0].lo == n:
            lps, kinds = group[0].lps, group[0].kinds
        else:  # rows no search asks about (theirs ended) get nothing: −inf, and the mask that allows nothing
            lps, kinds = [-math.inf] * n, [len(masks) - 1] * n
            for r in group:
                lps[r.lo : r.hi], kinds[r.lo : r.hi] = r.lps, r.kinds
        mask = masks[kinds[0]] if kinds.count(kinds[0]) == n else masks[torch.tensor(kinds)]
        scores = torch.tensor(lps).unsqueeze(1) + batch.logprobs + mask
        tallest = max(r.hi - r.lo for r in group)
        if len(group) == 1:
            flat = scores[group[0].lo : group[0].hi].reshape(1, -1)
        elif tallest * len(group) == n and all(r.lo == g * tallest for g, r in enumerate(group)):
            flat = scores.view(len(group), -1)  # the searches tile the batch evenly: one row each
        else:  # pad every search to the tallest with rows of −inf (row n)
            padded = torch.cat((scores, scores.new_full((1, size), -math.inf)))
            index = [[r.lo + h if h < r.hi - r.lo else n for h in range(tallest)] for r in group]
            flat = padded[torch.tensor(index)].view(len(group), -1)
        top = flat.topk(min(max(r.width for r in group), flat.shape[1]), dim=1)
        for j, r, values, indices in zip(js, group, top.values.tolist(), top.indices.tolist(), strict=True):
            replies[j] = (values[: r.width], indices[: r.width])
    return replies


class _NextBatch:
    """The next round's batch, made of blocks: the model's step for the rows it must take (by
    batch: (batch, rows, symbols)), known rows copied out of the batch they live in (by
    tensor), and single known nodes. `plan` says where the new hypotheses are, in runs:
    (block kind, key, place in the block, count)."""

    MODEL, COPY, SINGLE = 0, 1, 2  # block kinds

    def __init__(self) -> None:
        self.steps: dict[int, tuple[Batch, list[int], list[int]]] = {}
        self.copies: dict[int, tuple[State, Tensor, list[int]]] = {}
        self.singles: list[Node] = []
        self.plan: list[tuple[int, int, int, int]] = []

    def from_model(self, r: ExtendRequest, parents: list[int], symbols: list[int]) -> None:
        rows, block_symbols = self.steps.setdefault(id(r.batch), (r.batch, [], []))[1:]
        self.plan.append((self.MODEL, id(r.batch), len(rows), len(parents)))
        rows.extend([r.lo + parent for parent in parents])
        block_symbols.extend(symbols)

    def known(self, node: Node) -> None:
        source = node.batch_row
        if source is not None:  # one gather for all of a batch's rows, not a slice each
            states, logprobs, row = source
            rows = self.copies.setdefault(id(logprobs), (states, logprobs, []))[2]
            self.plan.append((self.COPY, id(logprobs), len(rows), 1))
            rows.append(row)
        else:
            self.plan.append((self.SINGLE, 0, len(self.singles), 1))
            self.singles.append(node)

    def build(self, forward: Forward) -> Batch:
        """One model call for every row it must take; the blocks put together in the plan's order."""
        offsets: tuple[dict[int, int], dict[int, int], dict[int, int]] = ({}, {}, {})
        blocks: list[tuple[Tensor, State]] = []
        start = 0
        if self.steps:
            parts, symbols = [], []
            for key, (batch, rows, syms) in self.steps.items():
                index = torch.tensor(rows)
                parts.append(select_state(batch.state, index))
                symbols.extend(syms)
                offsets[self.MODEL][key], start = start, start + len(rows)
            state = parts[0] if len(parts) == 1 else stack_states(parts)
            logits, state = forward(torch.tensor(symbols).unsqueeze(1), state)
            blocks.append((symbol_logprobs(logits[:, -1]), state))
        for key, (states, logprobs, rows) in self.copies.items():
            index = torch.tensor(rows)
            blocks.append((logprobs[index], select_state(states, index)))
            offsets[self.COPY][key], start = start, start + len(rows)
        if self.singles:
            blocks.append(
                (torch.stack([n.logprobs for n in self.singles]), stack_states([n.state for n in self.singles]))
            )
            offsets[self.SINGLE][0] = start
        if len(blocks) == 1:
            logprobs, state = blocks[0]
        else:
            logprobs, state = torch.cat([b[0] for b in blocks]), stack_states([b[1] for b in blocks])
        order: list[int] = []
        for kind, key, place, count in self.plan:
            first = offsets[kind][key] + place
            order.extend(range(first, first + count))
        if order != list(range(len(order))):
            index = torch.tensor(order)
            logprobs, state = logprobs[index], select_state(state, index)
        return Batch(logprobs, state)


def _serve_extend(forward: Forward, requests: list[ExtendRequest]) -> list[tuple[Batch, int]]:
    plan = _NextBatch()
    for r in requests:
        if not any(r.known):  # the usual case: every row from the model, one run
            plan.from_model(r, r.parents, r.symbols)
            continue
        for parent, symbol, node in zip(r.parents, r.symbols, r.known, strict=True):
            if node is None:
                plan.from_model(r, [parent], [symbol])
            else:
                plan.known(node)
    out = plan.build(forward)
    replies, lo = [], 0
    for r in requests:
        replies.append((out, lo))
        lo += len(r.parents)
    return replies


_PHASES = (MassesRequest, TopKRequest, ExtendRequest)  # a round's requests, in order
_SERVE: dict[type, Callable[[Forward, list[Any]], list[Any]]] = {
    MassesRequest: _serve_masses,
    TopKRequest: _serve_topk,
    ExtendRequest: _serve_extend,
}
