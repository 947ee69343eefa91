"""Lexicons: loading (and every way a file can be wrong), ranking, and the trie walk."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import marisa_trie
import pytest
import torch

from nextchar.checkpoint import Checkpoint, load_checkpoint
from nextchar.completion import lexicon as lexicon_module
from nextchar.completion.completer import Completer
from nextchar.completion.lexicon import Lexicon
from nextchar.errors import UserError
from nextchar.text import END, START
from nextchar.training.loop import train
from tests.helpers import NAMES, CallCounter, model_config, train_config


@pytest.fixture(scope="module")
def names_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    out = tmp_path_factory.mktemp("names-lstm")
    train(NAMES, "mia\nemma\n", out, train_config(steps=30), model_config("lstm"), "lines", progress=False)
    return load_checkpoint(out)


def entry_logprob(ckpt: Checkpoint, entry: str) -> float:
    """log p(entry + <end>) from s_0, by one plain forward call."""
    idx = [START, *ckpt.vocab.encode(entry)]
    with torch.no_grad():
        logits, _ = ckpt.model(torch.tensor([idx]), None)
    logits = logits[0].float()
    logits[:, START] = -math.inf
    lp = torch.log_softmax(logits, -1)
    return sum(float(lp[i, idx[i + 1]]) for i in range(len(entry))) + float(lp[-1, END])


@pytest.fixture
def trie_builds(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The keys of every marisa trie built while the test runs, sorted, one list per trie."""
    builds: list[list[str]] = []
    build = marisa_trie.Trie

    def counting(keys: Iterable[str]) -> marisa_trie.Trie:
        listed = list(keys)
        builds.append(sorted(listed))
        return build(listed)

    monkeypatch.setattr(marisa_trie, "Trie", counting)
    return builds


def prefix_questions(lexicon: Lexicon, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The prefixes the completer asks `lexicon.has_prefix` about from now on, in order."""
    asked: list[str] = []
    has_prefix = lexicon.has_prefix

    def counting(prefix: str) -> bool:
        asked.append(prefix)
        return has_prefix(prefix)

    monkeypatch.setattr(lexicon, "has_prefix", counting)
    return asked


# ---------------------------------------------------------------------------------- loading


def test_load_weights_duplicates_and_blank_lines(write_file: Callable[..., Path], trie_builds: list[list[str]]) -> None:
    path = write_file("lex.txt", "new york\t8\n\n   \nnew orleans\t3.5\nnewcastle\nnew york\t2\n\ufeffx\n")
    lexicon = Lexicon.load(path)
    assert trie_builds == [["new orleans", "new york", "newcastle", "\ufeffx"]]  # the entries, in one marisa trie
    assert len(lexicon) == 4
    assert lexicon.weight("new york") == 10.0  # duplicates merged by summing
    assert lexicon.weight("newcastle") == 1.0  # no weight: 1
    assert lexicon.weight("nowhere") == 0.0
    assert lexicon.top("new", 2) == [("new york", 10.0), ("new orleans", 3.5)]
    assert lexicon.has_prefix("new o") and not lexicon.has_prefix("old")
    assert "newcastle" in lexicon and "new" not in lexicon


def test_a_file_without_weights_counts_repeats(write_file: Callable[..., Path]) -> None:
    lexicon = Lexicon.load(write_file("q.txt", "cheap flights\ncheap hotels\ncheap flights\r\n"))
    assert lexicon.top("cheap", 5) == [("cheap flights", 2.0), ("cheap hotels", 1.0)]


def test_entries_are_nfc(write_file: Callable[..., Path]) -> None:
    lexicon = Lexicon.load(write_file("nfc.txt", "cafe\u0301\n"))
    assert "café" in lexicon


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"good\nbad\tmany\n", r"lex.txt:2: bad weight 'many'"),
        (b"good\t1\nbad\t-2\n", r"lex.txt:2: bad weight '-2'"),
        (b"good\t1\n\nbad\t0\n", r"lex.txt:3: bad weight '0'"),
        (b"a\t1\nbad\tinf\n", r"lex.txt:2: bad weight 'inf'"),
        (b"a\t1\nbad\tnan\n", r"lex.txt:2: bad weight 'nan'"),
        (b"ok\n\t5\n", r"lex.txt:2: a weight without an entry"),
        (b"ok\nfine\n\xff\xfe broken\n", r"lex.txt:3: invalid UTF-8"),
        (b"ok\nnul\x00\n", r"lex.txt:2: NUL byte"),
        (b"\n\n   \n", r"no entries"),
    ],
)
def test_bad_lexicons_name_the_line(write_file: Callable[..., Path], content: bytes, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Lexicon.load(write_file("lex.txt", content))


def test_missing_lexicon(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such lexicon file"):
        Lexicon.load(tmp_path / "nope.txt")


@pytest.mark.slow
def test_a_million_entries_load_in_one_bulk_pass_and_the_walk_stays_small(
    tmp_path: Path, names_ckpt: Checkpoint, trie_builds: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What makes a big lexicon cheap: one bulk parse (the per-line path, there to name a bad
    line, never runs), one trie, and a walk whose questions depend on the beam, not the size.
    (How many seconds that takes on a given machine is a benchmark's figure, not a test's.)"""
    path = tmp_path / "big.txt"
    path.write_text("".join(f"{'abcdefghij'[i % 10]}{i:07d}x\t{1 + i % 97}\n" for i in range(1_000_000)))
    parsed: list[int | None] = []
    parse_in_bulk = lexicon_module._parse_fast

    def counting(lines: list[str]) -> dict[str, float] | None:
        merged = parse_in_bulk(lines)
        parsed.append(None if merged is None else len(merged))
        return merged

    monkeypatch.setattr(lexicon_module, "_parse_fast", counting)
    lexicon = Lexicon.load(path)
    assert parsed == [1_000_000]  # one bulk pass took every line: load returned without the per-line loop
    assert len(trie_builds) == 1 and len(trie_builds[0]) == 1_000_000
    assert len(lexicon) == 1_000_000
    completer = Completer(names_ckpt, lexicon=lexicon)
    assert completer.lexicon is lexicon and len(trie_builds) == 1  # taken as it is: no second trie
    asked = prefix_questions(lexicon, monkeypatch)
    calls = CallCounter(completer)
    found = completer.suggest("c000", k=5)
    assert found and all(lexicon.has_prefix(s.text) and s.text in lexicon for s in found)
    # Each step of the walk asks about extensions of its beam only: at most every symbol of the
    # model (and every lexicon character it lacks) for each of beam_width hypotheses, for at
    # most the longest entry's length in steps; one model step per walk step after the read.
    width, walk_steps = completer.config.beam_width, lexicon.max_len - len("c000") + 1
    assert 0 < len(asked) <= walk_steps * width * (len(names_ckpt.vocab) + len(lexicon.alphabet))
    assert all(prefix.startswith("c000") for prefix in asked)
    assert calls.steps <= len("^c000") + walk_steps


# ---------------------------------------------------------------------------------- the walk


def test_suggestions_are_entries_ranked_by_the_model(names_ckpt: Checkpoint) -> None:
    entries = ["emma", "emily", "emilia", "evelyn", "mia", "amelia", "em"]
    completer = Completer(names_ckpt, lexicon=Lexicon.from_entries(entries), beam_width=16)
    found = completer.suggest("em", k=10)
    extending = [e for e in entries if e.startswith("em")]
    assert sorted(s.text for s in found) == sorted(extending)  # only entries, all of them
    want = sorted(extending, key=lambda e: -entry_logprob(names_ckpt, e))
    assert [s.text for s in found] == want
    assert completer.suggest("zz", k=5) == []


def _end_logits(ckpt: Checkpoint, text: str) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = ckpt.model(torch.tensor([[START, *ckpt.vocab.encode(text)]]), None)
    out = logits[0, -1].float()
    out[START] = -math.inf
    return out


def test_entry_scores_are_the_models_probability(names_ckpt: Checkpoint) -> None:
    lexicon = Lexicon.from_entries(["emma", "emily", "olivia"])
    completer = Completer(names_ckpt, lexicon=lexicon)
    for s in completer.suggest("e", k=5):
        # log p(rest of the entry + <end> | "e") = log p(entry + <end>) − log p("e" | ^)
        first = float(torch.log_softmax(_end_logits(names_ckpt, ""), -1)[names_ckpt.vocab.encode("e")[0]])
        assert s.logprob == pytest.approx(entry_logprob(names_ckpt, s.text) - first, abs=1e-4)


def test_weights_can_join_the_ranking(names_ckpt: Checkpoint) -> None:
    entries = [("emma", 1.0), ("emily", 1e6)]
    plain = Completer(names_ckpt, lexicon=Lexicon.from_entries(entries)).suggest("em", k=2)
    weighted = Completer(names_ckpt, lexicon=Lexicon.from_entries(entries), lexicon_weight=1.0).suggest("em", k=2)
    assert weighted[0].text == "emily"
    by_text = {s.text: s for s in plain}
    for s in weighted:  # score = model score + 1 · ln(weight)
        assert s.score == pytest.approx(by_text[s.text].score + math.log(dict(entries)[s.text]), abs=1e-6)


def test_entries_with_characters_the_model_never_saw(names_ckpt: Checkpoint) -> None:
    lexicon = Lexicon.from_entries(["emma", "emmaЖ", "em😀ji", "zoë"])
    completer = Completer(names_ckpt, lexicon=lexicon)
    texts = {s.text for s in completer.suggest("em", k=5)}
    assert texts == {"emma", "emmaЖ", "em😀ji"}
    assert [s.text for s in completer.suggest("zo", k=5)] == ["zoë"]


def test_word_mode_completes_the_current_word_from_the_lexicon(names_ckpt: Checkpoint) -> None:
    completer = Completer(names_ckpt, lexicon=Lexicon.from_entries(["emma", "emily", "olivia"]))
    found = completer.suggest("hello em", k=5, mode="word")
    assert sorted(s.text for s in found) == ["hello emily", "hello emma"]


def test_a_lexicon_keystroke_costs_no_more_model_steps_than_a_plain_one(
    names_ckpt: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk's latency stays in the plain beam's range: what a keystroke costs is its model
    steps, and walking the trie adds none (it prunes), only dictionary-cheap prefix questions,
    bounded by the beam and not by the lexicon's size."""
    made_up = [f"{a}{b}{c}" for a in "aeim" for b in "abcdefghijklm" for c in "aeiouy"]
    lexicon = Lexicon.from_entries(NAMES.split() + made_up)
    plain, walked = Completer(names_ckpt), Completer(names_ckpt, lexicon=lexicon)
    plain_calls, walked_calls = CallCounter(plain), CallCounter(walked)
    asked = prefix_questions(lexicon, monkeypatch)
    width, symbols = walked.config.beam_width, len(names_ckpt.vocab) + len(lexicon.alphabet)
    sessions = plain.session(), walked.session()
    for ch in "emil":
        before = len(asked)
        for session in sessions:
            session.type(ch)
            session.suggest(5)
        assert len(asked) - before <= (lexicon.max_len + 1) * width * symbols
        assert walked_calls.steps <= plain_calls.steps
        assert walked_calls.calls <= plain_calls.calls
    assert walked_calls.steps > 0 and asked
