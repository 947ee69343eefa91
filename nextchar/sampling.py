"""Asking a trained model what comes next: the next-character distribution, and sampling.

Both feed "^" + the text (NFC-normalised, mapped as the vocabulary was built) through the
model from s_0, exactly as training framed every sequence, so a model trained on `lines`
sees the text as the beginning of a line. Given the checkpoint's memory (`Recall`: its index
and mixer, nextchar.recall), each distribution is the mixture of the model's and the memory's
after the same symbols; without one, the model's alone.
"""

from __future__ import annotations

import torch

from nextchar.checkpoint import Checkpoint
from nextchar.errors import UserError
from nextchar.models import State
from nextchar.recall.estimator import Context, Memory
from nextchar.recall.mixer import Mixer
from nextchar.text import END, START, UNK

Recall = tuple[Memory, Mixer]  # a checkpoint's memory and its mixer (nextchar.cli.options.loaded_memory)


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


def read_memory_context(ckpt: Checkpoint, memory: Memory, text: str) -> Context:
    """The memory's context after "^"+text, the symbols the model reads."""
    context = memory.start()
    for symbol in [START, *ckpt.vocab.encode(ckpt.vocab.prepare(text))]:
        context = memory.push(context, symbol)
    return context


def _scores(logits: torch.Tensor, recall: Recall | None, context: Context | None) -> torch.Tensor:
    """log p of the next symbol: the model's (its logits), or the mixture's with the memory."""
    if recall is None or context is None:
        return logits
    memory, mixer = recall
    return mixer.next_logprobs(memory, [context], torch.log_softmax(logits.float(), dim=-1)[None])[0]


def next_char_distribution(ckpt: Checkpoint, text: str, recall: Recall | None = None) -> torch.Tensor:
    """p(next symbol | text) over the whole vocabulary, as the model (or the mixture) computes it (unmasked)."""
    logits, _ = read_text(ckpt, text)
    context = read_memory_context(ckpt, recall[0], text) if recall is not None else None
    return torch.softmax(_scores(logits, recall, context), dim=-1)


def predict(ckpt: Checkpoint, text: str, k: int = 10, recall: Recall | None = None) -> list[tuple[str, float]]:
    """The k most likely next symbols after `text` with their probabilities (<end> shown as $)."""
    if k < 1:
        raise UserError(f"k must be at least 1, not {k}", parameter="k")
    probs = next_char_distribution(ckpt, text, recall)
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
    recall: Recall | None = None,
) -> str:
    """Continue `prefix` by sampling up to `length` characters (stops at <end> in lines format);
    from the mixture with the memory when `recall` is given."""
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
    context = read_memory_context(ckpt, recall[0], prefix) if recall is not None else None
    out: list[int] = []
    for _ in range(length):
        scores = mask_logits(_scores(logits, recall, context), ckpt.format) / temperature
        if top_k is not None and top_k < len(scores):
            threshold = scores.topk(top_k).values[-1]
            scores = scores.masked_fill(scores < threshold, -torch.inf)
        index = int(torch.multinomial(torch.softmax(scores, dim=-1).cpu(), 1, generator=generator))
        if index == END:
            break
        out.append(index)
        if recall is not None and context is not None:
            context = recall[0].push(context, index)
        step_logits, state = ckpt.model(torch.tensor([[index]], device=ckpt.model.device), state)
        logits = step_logits[0, -1].float()
    return ckpt.vocab.decode(out)
