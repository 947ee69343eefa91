"""Lexicons: loading (and every way a file can be wrong), ranking, and the trie walk."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import marisa_trie
import pytest
import torch

from nextchar.checkpoint import Checkpoint, load_checkpoint
from nextchar.completion.completer import Completer
from nextchar.completion.lexicon import Lexicon
from nextchar.errors import UserError
from nextchar.text import END, START
from nextchar.training.loop import train
from tests.helpers import NAMES, model_config, train_config


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


# ---------------------------------------------------------------------------------- loading


def test_load_weights_duplicates_and_blank_lines(write_file: Callable[..., Path]) -> None:
    path = write_file("lex.txt", "new york\t8\n\n   \nnew orleans\t3.5\nnewcastle\nnew york\t2\n\ufeffx\n")
    lexicon = Lexicon.load(path)
    assert isinstance(lexicon._trie, marisa_trie.Trie)
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


def test_a_million_entries_load_in_seconds(tmp_path: Path, names_ckpt: Checkpoint) -> None:
    path = tmp_path / "big.txt"
    path.write_text("".join(f"{'abcdefghij'[i % 10]}{i:07d}x\t{1 + i % 97}\n" for i in range(1_000_000)))
    started = time.perf_counter()
    lexicon = Lexicon.load(path)
    loaded = time.perf_counter() - started
    assert len(lexicon) == 1_000_000
    assert loaded < 30, loaded  # typically 2–4 s on the 2-core reference machine
    completer = Completer(names_ckpt, lexicon=lexicon)
    started = time.perf_counter()
    found = completer.suggest("c000", k=5)
    assert time.perf_counter() - started < 5
    assert found and all(lexicon.has_prefix(s.text) and s.text in lexicon for s in found)


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


def test_lexicon_latency_is_in_the_same_range(names_ckpt: Checkpoint) -> None:
    made_up = [f"{a}{b}{c}" for a in "aeim" for b in "abcdefghijklm" for c in "aeiouy"]
    lexicon = Lexicon.from_entries(NAMES.split() + made_up)
    plain, walked = Completer(names_ckpt), Completer(names_ckpt, lexicon=lexicon)

    def per_keystroke(completer: Completer) -> float:
        best = math.inf
        for _ in range(3):
            session = completer.session()
            started = time.perf_counter()
            for ch in "emil":
                session.type(ch)
                session.suggest(5)
            best = min(best, time.perf_counter() - started)
        return best

    assert per_keystroke(walked) < 5 * per_keystroke(plain) + 0.05
