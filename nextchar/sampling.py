"""Asking a trained model what comes next: the next-character distribution, and sampling.

Both feed "^" + the text (NFC-normalised, mapped as the vocabulary was built) through the
model from s_0, exactly as training framed every sequence, so a model trained on `lines`
sees the text as the beginning of a line.
"""

from __future__ import annotations

import torch

from nextchar.checkpoint import Checkpoint
from nextchar.errors import UserError
from nextchar.models import State
from nextchar.text import END, START, UNK


@torch.no_grad()
def read_text(ckpt: Checkpoint, text: str) -> tuple[torch.Tensor, State]:
    """Run "^"+text through the model; return the logits after its last symbol and the state."""
    indices = [START, *ckpt.vocab.encode(ckpt.vocab.prepare(text))]
    idx = torch.tensor([indices], dtype=torch.long, device=ckpt.model.device)
    logits, state = ckpt.model(idx, None)
    return logits[0, -1].float(), state


def mask_logits(logits: torch.Tensor, corpus_format: str) -> torch.Tensor:
    """What a model may emit: never <start> or <unk>; <end> only where lines end (lines format)."""
    logits = logits.clone()
    logits[..., START] = -torch.inf
    logits[..., UNK] = -torch.inf
    if corpus_format == "text":
        logits[..., END] = -torch.inf
    return logits


def next_char_distribution(ckpt: Checkpoint, text: str) -> torch.Tensor:
    """p(next symbol | text) over the whole vocabulary, as the model computes it (unmasked)."""
    logits, _ = read_text(ckpt, text)
    return torch.softmax(logits, dim=-1)


def predict(ckpt: Checkpoint, text: str, k: int = 10) -> list[tuple[str, float]]:
    """The k most likely next symbols after `text` with their probabilities (<end> shown as $)."""
    if k < 1:
        raise UserError(f"k must be at least 1, not {k}", parameter="k")
    probs = next_char_distribution(ckpt, text)
    top = probs.topk(min(k, len(probs)))
    return [(ckpt.vocab.symbol(i), p) for i, p in zip(top.indices.tolist(), top.values.tolist(), strict=True)]


@torch.no_grad()
def sample(
    ckpt: Checkpoint,
    prefix: str = "",
    length: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> str:
    """Continue `prefix` by sampling up to `length` characters (stops at <end> in lines format)."""
    if length < 0:
        raise UserError(f"length must be at least 0, not {length}", parameter="length")
    if temperature <= 0:
        raise UserError(f"temperature must be positive, not {temperature}", parameter="temperature")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be at least 1, not {top_k}", parameter="top_k")
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    logits, state = read_text(ckpt, prefix)
    out: list[int] = []
    for _ in range(length):
        scores = mask_logits(logits, ckpt.format) / temperature
        if top_k is not None and top_k < len(scores):
            threshold = scores.topk(top_k).values[-1]
            scores = scores.masked_fill(scores < threshold, -torch.inf)
        index = int(torch.multinomial(torch.softmax(scores, dim=-1).cpu(), 1, generator=generator))
        if index == END:
            break
        out.append(index)
        step_logits, state = ckpt.model(torch.tensor([[index]], device=ckpt.model.device), state)
        logits = step_logits[0, -1].float()
    return ckpt.vocab.decode(out)
