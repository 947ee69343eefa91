"""Typo tolerance: edit-distance-1 variants, corrections labelled, exact matches first."""

from __future__ import annotations

import pytest

from nextchar.checkpoint import Checkpoint, load_checkpoint
from nextchar.completion.completer import Completer
from nextchar.completion.lexicon import Lexicon
from nextchar.completion.typos import Edit, edits1
from nextchar.training.loop import train
from tests.helpers import NAMES, model_config, train_config


def damerau1(text: str, alphabet: str) -> set[str]:
    """Every text at Damerau–Levenshtein distance exactly 1 (brute force, for reference)."""
    out = set()
    for i in range(len(text) + 1):
        for ch in alphabet:
            out.add(text[:i] + ch + text[i:])
            if i < len(text):
                out.add(text[:i] + ch + text[i + 1 :])
        if i < len(text):
            out.add(text[:i] + text[i + 1 :])
        if i + 1 < len(text):
            out.add(text[:i] + text[i + 1] + text[i] + text[i + 2 :])
    out.discard(text)
    return out


@pytest.mark.parametrize("text", ["teh", "a", "aab", "abba", ""])
def test_edits1_are_exactly_the_distance_one_variants(text: str) -> None:
    alphabet = "abeht"
    got = {e.apply(text) for e in edits1(text, alphabet)}
    # appending at the very end is completion, not a correction
    want = {v for v in damerau1(text, alphabet) if not (len(v) == len(text) + 1 and v.startswith(text))}
    assert got == want


def test_edit_apply() -> None:
    assert Edit("transposition", 1, 3, "he").apply("teh") == "the"
    assert Edit("insertion", 1, 1, "h").apply("te") == "the"
    assert Edit("deletion", 2, 3, "").apply("thhe") == "the"


@pytest.fixture(scope="module")
def names_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    out = tmp_path_factory.mktemp("names-gru")
    train(
        NAMES * 4,
        "mia\nemma\n",
        out,
        train_config(steps=60),
        model_config("gru", hidden_size=48),
        "lines",
        progress=False,
    )
    return load_checkpoint(out)


@pytest.mark.parametrize(
    ("typed", "want"),
    [
        ("hlelo", "hello"),  # transposition
        ("helo", "hello"),  # a missed letter (insertion)
        ("hxello", "hello"),  # an extra letter (deletion)
        ("jello", "hello"),  # substitution
    ],
)
def test_lexicon_corrections_are_found_and_labelled(names_ckpt: Checkpoint, typed: str, want: str) -> None:
    completer = Completer(names_ckpt, lexicon=Lexicon.from_entries(["hello", "help", "yellow", "world"]))
    assert completer.suggest(typed, k=5) == []  # no entry extends what was typed
    found = completer.suggest(typed, k=5, typos=True)
    corrected = [s for s in found if s.corrected]
    assert want in [s.text for s in corrected]
    for s in corrected:
        assert s.text in completer.lexicon
        assert s.text.endswith(s.completion)


def test_exact_matches_outrank_corrections(names_ckpt: Checkpoint) -> None:
    completer = Completer(
        names_ckpt, lexicon=Lexicon.from_entries(["hello", "help", "helium", "jello", "yelp"]), beam_width=16
    )
    found = completer.suggest("hel", k=10, typos=True)
    flags = [s.corrected for s in found]
    assert flags[:3] == [False, False, False] and any(flags)  # exact first, then corrections
    assert flags == sorted(flags)
    assert {s.text for s in found if not s.corrected} == {"hello", "help", "helium"}
    scores = [s.score for s in found]
    assert scores == sorted(scores, reverse=True)


def test_a_correction_never_duplicates_an_exact_suggestion(names_ckpt: Checkpoint) -> None:
    completer = Completer(names_ckpt)
    found = completer.suggest("emm", k=10, typos=True)
    assert not found[0].corrected  # a plausible text: the model prefers to complete it as typed
    texts = [s.text.rstrip() for s in found]
    assert len(texts) == len(set(texts))


def test_model_corrections_without_a_lexicon(names_ckpt: Checkpoint) -> None:
    completer = Completer(names_ckpt, typo_penalty=0.0)
    found = completer.suggest("olvia", k=10, mode="line", typos=True)
    assert any(s.corrected for s in found)
    for s in found:
        if s.corrected:
            assert not s.text.startswith("olvia") or len(s.text) < len("olvia") + len(s.completion) + 1
        else:
            assert s.text.startswith("olvia")
    session = completer.session()
    session.type("olvia")
    assert [s.text for s in session.suggest(10, typos=True)] == [s.text for s in found]


def test_the_penalty_pushes_corrections_down(names_ckpt: Checkpoint) -> None:
    gentle = Completer(names_ckpt, typo_penalty=0.0).suggest("olvia", k=5, typos=True)
    harsh = Completer(names_ckpt, typo_penalty=1e6).suggest("olvia", k=5, typos=True)
    assert not any(s.corrected for s in harsh)
    assert sum(s.corrected for s in gentle) >= sum(s.corrected for s in harsh)
