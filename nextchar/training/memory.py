"""The memory of a trained model: the index of its training text and the mixer fitted to it.

`remember` is the last step of `nextchar train` (unless --no-memory) and all of `nextchar index`:
the training text, encoded as the model reads it, becomes a suffix-array index
(nextchar.data.memory); the mixer (nextchar.recall.mixer) is fitted on held-out text the index
does not hold (the validation split) or, without one, on the training text with leave-one-out
counts; both go into the checkpoint (nextchar.checkpoint.write_memory).

`remember_prepared` does the same for a corpus made by `nextchar prepare`, larger than memory:
its training split is indexed in shards of at most `shard_symbols` symbols (by default
data.memory.default_shard_symbols: 2^30 one-byte symbols), each built, written and memory-mapped
before the next is read, so that what building needs is bounded by one shard, whatever the
corpus's size (docs/memory.md has the figures).
A `lines` corpus is cut between lines, so every line's contexts stay whole; a `text` stream is
cut where a shard is full (a context that runs across a cut is counted in neither).
The memory's counts are the shards' summed (nextchar.recall.estimator).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextchar.checkpoint import load_checkpoint, write_memory
from nextchar.data.batches import count_targets, encode_corpus
from nextchar.data.memory import MemoryIndex, default_shard_symbols, memory_tokens, token_dtype
from nextchar.data.prepared import PreparedSplit
from nextchar.errors import UserError
from nextchar.evaluation.mixture import fit_mixer
from nextchar.recall.estimator import Memory
from nextchar.recall.mixer import Mixer
from nextchar.text import START


@dataclass
class Remembered:
    indexes: list[MemoryIndex]  # its shards (one, for a text in memory)
    mixer: Mixer
    held_out: bool  # fitted on held-out text (else leave-one-out on the training text)

    @property
    def symbols(self) -> int:
        return sum(len(index) for index in self.indexes)

    @property
    def nbytes(self) -> int:
        return sum(index.tokens.nbytes + index.suffixes.nbytes for index in self.indexes)


def remember_prepared(directory: str | Path, split: PreparedSplit, shard_symbols: int | None = None) -> Remembered:
    """Index a prepared corpus's training split in shards (of `default_shard_symbols` when None)
    and fit the mixer on its validation data (the module docstring); saved in `directory`, the
    checkpoint trained on it."""
    directory = Path(directory)
    ckpt = load_checkpoint(directory)
    if split.corpus.vocab.to_json() != ckpt.vocab.to_json():
        raise UserError(
            f"{split.corpus.path}: its vocabulary is not the model's in {directory}; "
            "index the corpus the model was trained on"
        )
    vocab_size = len(ckpt.vocab)
    indexes = []
    for tokens in _shards(split, shard_symbols or default_shard_symbols(vocab_size), vocab_size):
        described = MemoryIndex.build(tokens).save(directory)  # written, then read back mapped
        indexes.append(MemoryIndex.load(directory, described, vocab_size))
    memory = Memory(indexes, vocab_size)
    held_out = split.val if count_targets(split.val) else None
    mixer = fit_mixer(ckpt.model, memory, held_out, [])
    write_memory(directory, indexes, mixer)
    return Remembered(indexes, mixer, held_out is not None)


def _shards(split: PreparedSplit, shard_symbols: int, vocab_size: int) -> Iterator[np.ndarray]:
    """The training split's symbols as the memory holds them (memory_tokens), shard by shard."""
    corpus, dtype = split.corpus, token_dtype(vocab_size)
    if corpus.format == "text":
        for lo in range(0, split.train_end, shard_symbols):
            yield np.asarray(corpus.tokens[lo : min(lo + shard_symbols, split.train_end)]).astype(dtype)
        return
    offsets = corpus.offsets
    assert offsets is not None
    first = 0
    while first < split.train_end:  # whole lines, each ^ line $, up to shard_symbols (one line at least)
        last = int(np.searchsorted(offsets, int(offsets[first]) + shard_symbols, side="right")) - 1
        last = min(max(last, first + 1), split.train_end)
        body = np.asarray(corpus.tokens[int(offsets[first]) : int(offsets[last])]).astype(dtype)
        starts = (offsets[first:last] - offsets[first]).astype(np.int64)
        yield np.insert(body, starts, START).astype(dtype)
        first = last


def remember(directory: str | Path, train_text: str, held_out_text: str = "") -> Remembered:
    """Index `train_text` (the checkpoint's training text) and fit the mixer; saved in `directory`."""
    ckpt = load_checkpoint(directory)
    vocab_size = len(ckpt.vocab)
    train = encode_corpus(train_text, ckpt.vocab, ckpt.format)
    index = MemoryIndex.build(memory_tokens(train, vocab_size))
    held_out = encode_corpus(held_out_text, ckpt.vocab, ckpt.format) if held_out_text else None
    if held_out is not None and count_targets(held_out) == 0:
        held_out = None
    mixer = fit_mixer(ckpt.model, Memory([index], vocab_size), held_out, train)
    write_memory(directory, [index], mixer)
    return Remembered([index], mixer, held_out is not None)
