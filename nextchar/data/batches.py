"""Characters → index tensors: the two corpus formats and their minibatches.

`text`: one long stream. It starts with <start>, so the first character is predicted from
the initial state, and is cut into B parallel streams read left to right in windows of T
characters (truncated BPTT; the trainer carries the state from one window to the next):

    stream 0: ^ T h e   q u i c k | b r o w n   f o x | …      (window 0 | window 1 | …)
    stream 1: j u m p s   o v e r | t h e   l a z y   | …
    ...
    batch w = column w of windows, shape (B, T); targets are the inputs shifted by one.

`lines`: every non-empty line is its own sequence, framed as in the lecture: input
"^" + line, target line + <end>. Batches are random lines padded to the longest one; padded
targets are IGNORE so they count for nothing.

Every batch is a pure function of (step, seed), which is what makes resumed training exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nextchar.errors import UserError
from nextchar.text import END, START, Vocabulary, split_lines

IGNORE = -100  # cross_entropy's ignore_index: padding positions


def encode_stream(text: str, vocab: Vocabulary) -> Tensor:
    """A `text` corpus as one index tensor, <start> first."""
    return torch.tensor([START, *vocab.encode(text)], dtype=torch.long)


def encode_lines(text: str, vocab: Vocabulary) -> list[Tensor]:
    """A `lines` corpus as a list of index tensors, one per non-empty line (no markers)."""
    return [torch.tensor(vocab.encode(line), dtype=torch.long) for line in split_lines(text)]


def frame_lines(lines: list[Tensor], max_len: int | None = None) -> tuple[Tensor, Tensor]:
    """Pad lines into (inputs "^"+line, targets line+<end>), both (B, T); padding is IGNORE.

    A line cut at `max_len` did not end there: its last target is its true next character.
    """
    kept = [len(line) if max_len is None else min(len(line), max_len) for line in lines]
    length = max(kept) + 1
    x = torch.full((len(lines), length), END, dtype=torch.long)
    y = torch.full((len(lines), length), IGNORE, dtype=torch.long)
    for row, (line, n) in enumerate(zip(lines, kept, strict=True)):
        x[row, 0] = START
        x[row, 1 : n + 1] = line[:n]
        y[row, :n] = line[:n]
        y[row, n] = line[n] if n < len(line) else END
    return x, y


@dataclass
class Batch:
    x: Tensor  # (B, T) inputs
    y: Tensor  # (B, T) targets, IGNORE where nothing is to be predicted
    reset: bool  # True when the carried state must start afresh (new epoch / new lines)


class StreamBatches:
    """Windows of a `text` corpus for truncated BPTT with the state carried across windows."""

    def __init__(self, data: Tensor, batch_size: int, seq_len: int):
        if seq_len < 1 or batch_size < 1:
            raise UserError("batch_size and seq_len must be at least 1", parameter=("batch_size", "seq_len"))
        if len(data) - 1 < seq_len + 1:
            raise UserError(
                f"the training text has {len(data) - 1} characters, shorter than one training "
                f"window of seq_len={seq_len} (+1); give more text or a smaller seq_len",
                parameter="seq_len",
            )
        self.data = data
        self.seq_len = seq_len
        # Fewer streams on small corpora rather than refusing them: each stream needs a window.
        self.batch_size = max(1, min(batch_size, (len(data) - 1) // (seq_len + 1)))
        # At least one window (T inputs + 1 target) per stream, even on the smallest corpus.
        self.stream_len = max(seq_len + 1, (len(data) - seq_len) // self.batch_size)
        self.windows_per_epoch = max(1, (self.stream_len - 1) // seq_len)

    def __call__(self, step: int) -> Batch:
        epoch, window = divmod(step, self.windows_per_epoch)
        # Shift the window boundaries every epoch so no character is always at a window start.
        usable = self.batch_size * self.stream_len
        # The shift stays within the spare text, so a tiny corpus is read without wrapping.
        offset = (epoch * 7919) % min(self.seq_len, len(self.data) - usable + 1)
        streams = self.data[offset : offset + usable]
        if len(streams) < usable:  # wrap the tail around for the last stream
            streams = torch.cat([streams, self.data[: usable - len(streams)]])
        streams = streams.view(self.batch_size, self.stream_len)
        start = window * self.seq_len
        x = streams[:, start : start + self.seq_len]
        y = streams[:, start + 1 : start + self.seq_len + 1]
        return Batch(x.contiguous(), y.contiguous(), reset=window == 0)


class LineBatches:
    """Random minibatches of whole lines, reshuffled every epoch from the seed."""

    def __init__(self, lines: list[Tensor], batch_size: int, max_len: int, seed: int):
        if not lines:
            raise UserError("the training corpus has no non-empty lines")
        self.lines = lines
        self.batch_size = max(1, min(batch_size, len(lines)))
        self.max_len = max_len
        self.seed = seed
        self.batches_per_epoch = max(1, len(lines) // self.batch_size)
        self._perm: tuple[int, Tensor] | None = None

    def __call__(self, step: int) -> Batch:
        epoch, index = divmod(step, self.batches_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.lines), generator=generator))
        rows = self._perm[1][index * self.batch_size : (index + 1) * self.batch_size]
        x, y = frame_lines([self.lines[i] for i in rows.tolist()], self.max_len)
        return Batch(x, y, reset=True)


def stream_eval_shape(n_targets: int, n_streams: int) -> tuple[int, int]:
    """(streams, length of each) of `stream_eval_layout` for a stream of n_targets targets."""
    n_streams = max(1, min(n_streams, n_targets))
    return n_streams, -(-n_targets // n_streams)


def stream_eval_layout(data: Tensor, n_streams: int) -> tuple[Tensor, Tensor]:
    """Cut an evaluation stream into n contiguous streams covering every target exactly once.

    Returns (x, y) of shape (n, L); the tail of the last stream is padded with IGNORE targets.
    Why several streams: one stream of 100,000 characters is 100,000 sequential steps of
    batch 1; 16 streams lose context only at 15 cut points and run 16× fewer steps.
    """
    inputs, targets = data[:-1], data[1:]
    n_targets = len(targets)
    n_streams, length = stream_eval_shape(n_targets, n_streams)
    pad = n_streams * length - n_targets
    x = torch.cat([inputs, torch.full((pad,), END, dtype=torch.long)]).view(n_streams, length)
    y = torch.cat([targets, torch.full((pad,), IGNORE, dtype=torch.long)]).view(n_streams, length)
    return x, y


Encoded = Tensor | list[Tensor]  # a `text` stream or the lines of a `lines` corpus


def encode_corpus(text: str, vocab: Vocabulary, corpus_format: str) -> Encoded:
    """Encode a corpus; lines are split before the vocabulary's mapping (which may join them)."""
    if corpus_format == "text":
        return encode_stream(vocab.prepare(text), vocab)
    lines = (vocab.prepare(line) for line in split_lines(text))
    return [torch.tensor(vocab.encode(line), dtype=torch.long) for line in lines if line.strip()]


def count_targets(encoded: Encoded) -> int:
    """Predicted positions: characters of a stream, characters + <end> of each line."""
    if isinstance(encoded, Tensor):
        return len(encoded) - 1
    return sum(len(line) + 1 for line in encoded)


def split_validation(text: str, corpus_format: str, val_fraction: float) -> tuple[str, str]:
    """The last `val_fraction` of the corpus (of its characters, or of its lines) is validation.

    That is the char-rnn/nanoGPT convention: train = text[:int(0.9 n)], val = the rest.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(
            f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}", parameter="val_fraction"
        )
    if corpus_format == "text":
        cut = int((1.0 - val_fraction) * len(text))
        return text[:cut], text[cut:]
    lines = split_lines(text)
    if len(lines) < 2:
        raise UserError(
            "a `lines` corpus needs at least 2 non-empty lines to hold some out for validation; "
            "give more lines or val_text",
            parameter="val_text",
        )
    cut = min(len(lines) - 1, max(1, int((1.0 - val_fraction) * len(lines))))
    return "\n".join(lines[:cut]) + "\n", "\n".join(lines[cut:]) + "\n"
