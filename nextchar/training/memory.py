"""The memory of a trained model: the index of its training text and the mixer fitted to it.

`remember` is the last step of `nextchar train` (unless --no-memory) and all of `nextchar index`:
the training text, encoded as the model reads it, becomes a suffix-array index
(nextchar.data.memory); the mixer (nextchar.recall.mixer) is fitted on held-out text the index
does not hold (the validation split) or, without one, on the training text with leave-one-out
counts; both go into the checkpoint (nextchar.checkpoint.write_memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nextchar.checkpoint import load_checkpoint, write_memory
from nextchar.data.batches import count_targets, encode_corpus
from nextchar.data.memory import MemoryIndex, memory_tokens
from nextchar.evaluation.mixture import fit_mixer
from nextchar.recall.estimator import Memory
from nextchar.recall.mixer import Mixer


@dataclass
class Remembered:
    index: MemoryIndex
    mixer: Mixer
    held_out: bool  # fitted on held-out text (else leave-one-out on the training text)


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
    write_memory(directory, index, mixer)
    return Remembered(index, mixer, held_out is not None)
