"""Online memory: text added to the memory once it has been scored, so that what was read is recalled.

A compressor that has read the training text still learns as it reads on; so do dynamic
evaluation's weights (nextchar.evaluation.dynamic). `OnlineMemory` does the same for the memory:
beside the training text's index it keeps an index of the pieces of text added so far, and
`add` rebuilds it (libdivsufsort: a few milliseconds for 100,000 symbols) each time a scored
window is added. Score first, then add: a symbol is never in the memory when it is predicted.

The pieces are the symbols as the model reads them. A stream read in rows grows one piece per
row (row r's symbols, contiguous); a line is a piece of its own (^ line $). Pieces are joined
with <start> between them, so that no context runs from the end of one into the next.

`limit` bounds the online symbols (the oldest pieces go first): a person's typed history
(nextchar.completion.personal) stays that size, and `forget` empties it.

After a rebuild the contexts matched in the previous online index mean nothing; `rematch`
gives a context its online match again, from the last symbols it read (`history`).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np

from nextchar.data.memory import Match, MemoryIndex, token_dtype
from nextchar.recall.estimator import Context, Memory
from nextchar.text import START


class OnlineMemory:
    """The static indexes of `memory`, and one more index of the pieces added since."""

    def __init__(
        self, memory: Memory, limit: int | None = None, cache_bytes: int | None = None, memo_bytes: int | None = None
    ):
        """`cache_bytes`: what each rebuilt memory's `predict` may keep (Memory); `memo_bytes`:
        what the online index may remember of its intervals (MemoryIndex.memo_bytes)."""
        self.static = memory
        self.limit = limit
        self.cache_bytes = cache_bytes
        self.memo_bytes = memo_bytes
        # the static indexes' symbol type (the compiled searches take indexes of one type together)
        self._dtype = memory.indexes[0].tokens.dtype if memory.indexes else token_dtype(memory.vocab_size)
        self._typecode = {1: "B", 2: "H", 4: "I"}[self._dtype.itemsize]
        self.pieces: list[array[int]] = []
        self.memory = self._memory(MemoryIndex.build(np.zeros(0, dtype=self._dtype)))

    def _memory(self, online: MemoryIndex) -> Memory:
        if self.memo_bytes is not None:
            online.memo_bytes = self.memo_bytes
        static = self.static
        return Memory((*static.indexes, online), static.vocab_size, static.max_order, self.cache_bytes)

    def parts(self) -> tuple[Memory, Memory]:
        """The training text's indexes and the online one, each as a memory of its own (the
        online mixer weighs them apart; nextchar.recall.mixer.OnlineMixer)."""
        online = Memory(self.memory.indexes[-1:], self.static.vocab_size, self.static.max_order, self.cache_bytes)
        return self.static, online

    @property
    def online_symbols(self) -> int:
        return sum(len(piece) for piece in self.pieces)

    def start(self) -> Context:
        return self.memory.start()

    def piece(self) -> int:
        """A new, empty piece (a stream's row); its number, for `extend`."""
        self.pieces.append(array(self._typecode))
        return len(self.pieces) - 1

    def extend(self, piece: int, symbols: Sequence[int]) -> None:
        """Add symbols at the end of a piece (seen once `rebuild` runs)."""
        self.pieces[piece].extend(symbols)

    def rebuild(self) -> None:
        """Index the pieces as they are now (oldest dropped past `limit`)."""
        if self.limit is not None:
            while self.pieces and self.online_symbols > self.limit:
                self.pieces.pop(0)
        tokens = array(self._typecode)
        for piece in self.pieces:
            if piece:
                if piece[0] != START:
                    tokens.append(START)
                tokens.extend(piece)
        self.memory = self._memory(MemoryIndex.build(np.frombuffer(tokens, dtype=self._dtype).copy()))

    def forget(self) -> None:
        """Empty the online part: the memory is the static one again."""
        self.pieces.clear()
        self.rebuild()

    def owned_bytes(self) -> int:
        """Bytes of the online part: its pieces (1, 2 or 4 bytes a symbol) and its index."""
        index = self.memory.indexes[-1]
        pieces = sum(piece.itemsize * len(piece) for piece in self.pieces)
        return pieces + index.tokens.nbytes + index.suffixes.nbytes

    def rematch(self, context: Context, history: Sequence[int]) -> Context:
        """`context` with its online match recomputed from `history` (the symbols it read, last
        ones last; only the last max_order count)."""
        index = self.memory.indexes[-1]
        match = Match.start(index)
        for symbol in history[-self.memory.max_order :]:
            match = match.push(index, symbol, self.memory.max_order)
        return Context((*context.matches[: len(self.static.indexes)], match))
