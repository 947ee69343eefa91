"""Reading a prepared directory: the token array as a memory map, and training batches from it.

`nextchar prepare` writes the directory (see `nextchar.data.prepare`); this module checks it and
serves the same batches that `nextchar.data.batches` cuts from an in-memory corpus, reading only the
rows a process needs from the memory map, so a corpus larger than RAM trains the same way:

    text:   tokens = ^ c0 c1 c2 …            StreamBatches' layout, B streams read in windows
    lines:  tokens = l0 $ l1 $ l2 $ …        lines.bin: offsets, line i = tokens[o[i] : o[i+1]-1]

Validation is the tail of the corpus (its last --val-fraction, at most `max_val_chars`
characters) unless a separate validation text is given; training uses everything before it.
With several processes (`rank` of `world`), each reads rows rank, rank+world, … of every
global batch: its own streams or lines, never the whole batch.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nextchar import __version__
from nextchar.data.batches import Batch, StreamBatches, encode_corpus, frame_lines
from nextchar.data.memory import token_dtype
from nextchar.errors import UserError
from nextchar.text import FORMATS, START, Vocabulary

PREPARED_VERSION = 1
PREPARED_NAME = "prepared.json"
TOKENS_NAME = "tokens.bin"
LINES_NAME = "lines.bin"
# Up to this many lines, an epoch's order is torch.randperm, exactly as LineBatches shuffles;
# beyond it, the permutation (8 bytes a line) would itself outgrow memory: see _affine_order.
FULL_SHUFFLE_LINES = 1 << 22
VERIFY_CHUNK = 1 << 24  # elements checked at a time when a directory is opened or verified


def prepared_meta(
    corpus_format: str,
    vocab: Vocabulary,
    tokens: int,
    sha256: str,
    characters: int,
    lines: int | None,
    unknown: int,
    sources: list[dict[str, str]],
) -> dict[str, Any]:
    """The content of prepared.json."""
    return {
        "prepared_version": PREPARED_VERSION,
        "nextchar_version": __version__,
        "format": corpus_format,
        "vocabulary": vocab.to_json(),
        "dtype": token_dtype(len(vocab)).name,
        "tokens": {"file": TOKENS_NAME, "count": tokens, "sha256": sha256},
        "lines": None if lines is None else {"file": LINES_NAME, "count": lines},
        "characters": characters,
        "unknown": unknown,
        "sources": sources,
    }


def is_prepared(directory: str | Path) -> bool:
    return (Path(directory) / PREPARED_NAME).is_file()


def read_prepared_meta(directory: str | Path) -> dict[str, Any]:
    """prepared.json, checked: every problem is one UserError saying what to do."""
    directory = Path(directory)
    where = directory / PREPARED_NAME
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory; make one with `nextchar prepare`")
    if not where.is_file():
        raise UserError(f"{directory}: not a prepared directory (no {PREPARED_NAME}); make one with `nextchar prepare`")
    try:
        meta: dict[str, Any] = json.loads(where.read_text(encoding="utf-8"))
        version = meta.get("prepared_version")
    except (ValueError, AttributeError) as exc:  # JSON's errors, a huge integer, invalid UTF-8; not an object
        raise UserError(f"{where}: damaged ({str(exc)[:200]}); run `nextchar prepare` again") from None
    if version != PREPARED_VERSION:
        raise UserError(
            f"{where}: prepared-data version {version!r} is not supported by this nextchar "
            f"(version {PREPARED_VERSION}); run `nextchar prepare` again"
        )
    try:
        vocab = Vocabulary.from_json(meta["vocabulary"])
        if meta["format"] not in FORMATS:
            raise ValueError(f"unknown format {meta['format']!r}")
        if meta["dtype"] != token_dtype(len(vocab)).name:
            raise ValueError(f"dtype {meta['dtype']!r} does not fit a vocabulary of {len(vocab)}")
        int(meta["tokens"]["count"])
        if meta["format"] == "lines":
            int(meta["lines"]["count"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{where}: incompatible prepared directory ({exc}); run `nextchar prepare` again") from None
    return meta


def _check_tokens(path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    """Every token a symbol of the vocabulary (read in chunks: a scan, not a copy)."""
    for start in range(0, len(tokens), VERIFY_CHUNK):
        chunk = tokens[start : start + VERIFY_CHUNK]
        if len(chunk) and int(chunk.max()) >= vocab_size:
            at = start + int(np.argmax(chunk >= vocab_size))
            raise UserError(
                f"{path}: token {at:,} is {int(tokens[at]):,}, past the vocabulary's {vocab_size:,} symbols "
                "(the file is damaged); run `nextchar prepare` again"
            )


def _check_offsets(path: Path, offsets: np.ndarray, n_tokens: int) -> None:
    """Line offsets start at 0, end at the token count and grow by at least one (<end>) a line."""
    if len(offsets) and (int(offsets[0]) != 0 or int(offsets[-1]) != n_tokens):
        raise UserError(f"{path}: does not match {TOKENS_NAME}; run `nextchar prepare` again")
    for start in range(0, max(len(offsets) - 1, 0), VERIFY_CHUNK):
        steps = np.diff(offsets[start : start + VERIFY_CHUNK + 1].astype(np.int64))
        if len(steps) and int(steps.min()) < 1:
            at = start + int(np.argmax(steps < 1))
            raise UserError(
                f"{path}: line {at:,} ends before it starts (offsets {int(offsets[at]):,} → "
                f"{int(offsets[at + 1]):,}; the file is damaged); run `nextchar prepare` again"
            )


def _open_array(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path}: missing; run `nextchar prepare` again")
    size, expected = path.stat().st_size, count * dtype.itemsize
    if size != expected:
        raise UserError(
            f"{path}: {'truncated' if size < expected else 'too long'} ({size:,} bytes, "
            f"{expected:,} expected); run `nextchar prepare` again"
        )
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


@dataclass
class PreparedCorpus:
    """An opened prepared directory: vocabulary, format and memory-mapped arrays."""

    path: Path
    meta: dict[str, Any]
    format: str
    vocab: Vocabulary
    tokens: np.ndarray  # read-only memory map
    offsets: np.ndarray | None  # `lines`: n_lines + 1 offsets into tokens

    @classmethod
    def open(cls, directory: str | Path) -> PreparedCorpus:
        directory = Path(directory)
        meta = read_prepared_meta(directory)
        vocab = Vocabulary.from_json(meta["vocabulary"])
        tokens = _open_array(directory / TOKENS_NAME, token_dtype(len(vocab)), int(meta["tokens"]["count"]))
        _check_tokens(directory / TOKENS_NAME, tokens, len(vocab))
        offsets = None
        if meta["format"] == "lines":
            offsets = _open_array(directory / LINES_NAME, np.dtype("<u8"), int(meta["lines"]["count"]) + 1)
            _check_offsets(directory / LINES_NAME, offsets, len(tokens))
        return cls(directory, meta, meta["format"], vocab, tokens, offsets)

    def verify(self) -> None:
        """Recompute the tokens' SHA-256 and compare it with prepared.json's (one UserError if not:
        the file was changed after `prepare` wrote it, and its values still looked possible)."""
        digest = hashlib.sha256()
        step = VERIFY_CHUNK // self.tokens.dtype.itemsize
        for start in range(0, len(self.tokens), step):
            digest.update(np.ascontiguousarray(self.tokens[start : start + step]).tobytes())
        if digest.hexdigest() != self.meta["tokens"]["sha256"]:
            raise UserError(
                f"{self.path / TOKENS_NAME}: its checksum is not the one prepared.json records (the file was "
                "modified); run `nextchar prepare` again"
            )

    @property
    def n_lines(self) -> int:
        return 0 if self.offsets is None else len(self.offsets) - 1

    def line(self, i: int) -> Tensor:
        assert self.offsets is not None
        start, end = int(self.offsets[i]), int(self.offsets[i + 1]) - 1  # without its <end>
        return torch.from_numpy(self.tokens[start:end].astype(np.int64))

    def split(self, val_fraction: float, max_val_chars: int, val_text: str | None = None) -> PreparedSplit:
        """Training part and validation data: `val_text`, or the tail of the corpus.

        The tail is the last `val_fraction` (of characters, or of lines), at most
        `max_val_chars` characters (a whole line at least): the same cut as
        `nextchar.data.batches.split_validation` when the cap does not bite.
        """
        if val_text is None and not 0.0 < val_fraction < 1.0:
            raise UserError(
                f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}", parameter="val_fraction"
            )
        if self.format == "text":
            n = len(self.tokens) - 1  # characters after <start>
            if val_text is not None:
                cut = n
                val = encode_corpus(val_text, self.vocab, "text")
            else:
                cut = max(int((1.0 - val_fraction) * n), n - max_val_chars)
                val = torch.cat([torch.tensor([START]), torch.from_numpy(self.tokens[1 + cut :].astype(np.int64))])
            train_end, train_chars = 1 + cut, cut
        else:
            n = self.n_lines
            if val_text is not None:
                cut = n
                val = encode_corpus(val_text, self.vocab, "lines")
            else:
                if n < 2:
                    raise UserError(
                        f"{self.path}: a `lines` corpus needs at least 2 non-empty lines to hold some "
                        "out for validation; give more lines or val_text",
                        parameter="val_text",
                    )
                assert self.offsets is not None
                cut = min(n - 1, max(1, int((1.0 - val_fraction) * n)))
                # Move the cut later until the tail has at most max_val_chars symbols (chars + <end>).
                floor = int(self.offsets[n]) - max_val_chars
                cut = max(cut, min(n - 1, int(np.searchsorted(self.offsets, floor, side="left"))))
                val = [self.line(i) for i in range(cut, n)]
            train_end = cut
            train_chars = 0 if self.offsets is None else int(self.offsets[cut]) - cut
        identity = f"{self.meta['tokens']['sha256']}|{self.format}|{train_end}"
        digest = hashlib.sha256(identity.encode()).hexdigest()
        return PreparedSplit(self, train_end, val, digest, train_chars)


def vocabulary_mapping(source: Vocabulary, target: Vocabulary, where: Path) -> Tensor | None:
    """Index translation source → target (None when they are the same vocabulary).

    Characters the target lacks become its <unk>, as when the text itself is encoded; the
    special symbols keep their indices. Vocabularies of different alphabets cannot be mapped
    (the lecture alphabet rewrites the text before encoding it).
    """
    if source == target:
        return None
    if source.alphabet != target.alphabet:
        raise UserError(
            f"{where}: prepared with the {source.alphabet} alphabet, the model uses the "
            f"{target.alphabet} alphabet; prepare the corpus again with vocab_from=MODEL",
            parameter="vocab_from",
        )
    mapping = torch.arange(len(source))
    mapping[len(source) - len(source.chars) :] = torch.tensor(target.encode("".join(source.chars)), dtype=torch.long)
    return mapping


class PreparedLines:
    """The lines of a prepared `lines` corpus as a sequence of index tensors, read on demand."""

    def __init__(self, corpus: PreparedCorpus, mapping: Tensor | None = None):
        assert corpus.offsets is not None
        self.corpus, self.mapping = corpus, mapping

    def __len__(self) -> int:
        return self.corpus.n_lines

    def __getitem__(self, i: int) -> Tensor:
        line = self.corpus.line(i)
        return line if self.mapping is None else self.mapping[line]

    def lengths(self) -> np.ndarray:
        assert self.corpus.offsets is not None
        return np.diff(self.corpus.offsets.astype(np.int64)) - 1  # without each line's <end>


@dataclass
class PreparedSplit:
    """The training part of a prepared corpus, its validation data, and an identity for resuming."""

    corpus: PreparedCorpus
    train_end: int  # text: tokens[:train_end] is the stream; lines: the first train_end lines
    val: Tensor | list[Tensor]
    digest: str
    train_characters: int

    def batches(
        self, batch_size: int, seq_len: int, max_line_len: int, seed: int, rank: int = 0, world: int = 1
    ) -> MemmapStreamBatches | MemmapLineBatches:
        """This process's rows of every global batch (all rows when world = 1)."""
        if self.corpus.format == "text":
            return MemmapStreamBatches(self.corpus.tokens[: self.train_end], batch_size, seq_len, rank, world)
        return MemmapLineBatches(self.corpus, self.train_end, batch_size, max_line_len, seed, rank, world)


class MemmapStreamBatches(StreamBatches):
    """StreamBatches over a memory map: the same windows, reading only this rank's streams.

    Row b of window w (epoch e) is tokens[offset_e + b·stream_len + w·T : … + T + 1], so a batch
    is one gather of B×(T+1) symbols; `batch_size` stays the global B.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, rank: int = 0, world: int = 1):
        super().__init__(tokens, batch_size, seq_len)  # type: ignore[arg-type]  # needs only len()
        self.rows = np.arange(self.batch_size)[rank::world]
        self.span = np.arange(seq_len + 1)

    def __call__(self, step: int) -> Batch:
        # The arithmetic of StreamBatches.__call__ (tests/data/test_prepare.py checks they agree).
        epoch, window = divmod(step, self.windows_per_epoch)
        n = len(self.data)
        offset = (epoch * 7919) % min(self.seq_len, n - self.batch_size * self.stream_len + 1)
        starts = offset + self.rows * self.stream_len + window * self.seq_len
        positions = (starts[:, None] + self.span) % n  # a tiny corpus wraps around for its last stream
        rows = torch.from_numpy(np.asarray(self.data[positions], dtype=np.int64))
        return Batch(rows[:, :-1].contiguous(), rows[:, 1:].contiguous(), reset=window == 0)


class MemmapLineBatches:
    """LineBatches over a memory map: random lines each step, reading only this rank's lines."""

    def __init__(
        self,
        corpus: PreparedCorpus,
        n_lines: int,
        batch_size: int,
        max_len: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ):
        if n_lines < 1:
            raise UserError("the training corpus has no non-empty lines")
        self.corpus, self.n_lines = corpus, n_lines
        self.batch_size = max(1, min(batch_size, n_lines))
        self.max_len, self.seed = max_len, seed
        self.batches_per_epoch = max(1, n_lines // self.batch_size)
        self.rows = list(range(self.batch_size))[rank::world]
        self._perm: tuple[int, Tensor] | None = None

    def _affine_order(self, epoch: int, positions: list[int]) -> list[int]:
        """Line i of a shuffled epoch = (a·i + c) mod n, gcd(a, n) = 1: a permutation in O(1) memory.

        Weaker than a uniform shuffle (lines a apart mod n land next to each other), but every
        line is visited once per epoch, batches mix lines from all over the corpus, and the
        order is a pure function of (seed, epoch) as resuming requires.
        """
        n = self.n_lines
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        while True:
            a = int(torch.randint(1, n, (1,), generator=generator))
            if math.gcd(a, n) == 1:
                break
        c = int(torch.randint(0, n, (1,), generator=generator))
        return [(a * i + c) % n for i in positions]

    def __call__(self, step: int) -> Batch:
        epoch, index = divmod(step, self.batches_per_epoch)
        positions = [index * self.batch_size + r for r in self.rows]
        if self.n_lines > FULL_SHUFFLE_LINES:
            chosen = self._affine_order(epoch, positions)
        else:
            if self._perm is None or self._perm[0] != epoch:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)  # as LineBatches
                self._perm = (epoch, torch.randperm(self.n_lines, generator=generator))
            chosen = self._perm[1][positions].tolist()
        x, y = frame_lines([self.corpus.line(i) for i in chosen], self.max_len)
        return Batch(x, y, reset=True)
