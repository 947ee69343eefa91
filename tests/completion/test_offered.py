"""What a completer offers: never only whitespace or punctuation, never shorter than min_chars,
phrases across a hard wrap, words in the script of the text they continue.

Most tests run on stand-in models whose next-symbol distribution is a fixed table (row: the
symbol just read), so that what the search must find is known exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from nextchar.checkpoint import BUNDLED_DIR, Checkpoint
from nextchar.completion.chars import offered, script
from nextchar.completion.completer import Completer
from nextchar.models import ModelConfig
from nextchar.text import END, START, Vocabulary


class Bigram(torch.nn.Module):
    """A stand-in model: the logits after a symbol are the row of `table` for that symbol."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.config = ModelConfig(kind="window", vocab_size=table.shape[1])
        self.register_buffer("table", table)

    def initial_state(self, batch_size: int, device: object = None) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(batch_size, 1),)

    def forward(self, idx: torch.Tensor, state: object = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        return self.table[idx].clone(), (torch.zeros(idx.shape[0], 1),)


def fixed_completer(chars: str, probs: dict[str, dict[str, float]], corpus_format: str, **settings: int) -> Completer:
    """A completer over `chars` whose model gives p(next | last symbol read) = probs[last][next];
    a row missing from `probs` (or the key "*") is uniform over `chars` (and <end> for `lines`)."""
    vocab = Vocabulary(tuple(chars))
    size = len(vocab)
    table = torch.full((size, size), -math.inf)
    names = {START: "^", END: "$"}
    for row in range(size):
        name = names.get(row, vocab.symbol(row) if row >= 3 else "?")
        dist = probs.get(name, probs.get("*"))
        if dist is None:
            dist = {ch: 1.0 for ch in chars} | ({"$": 1.0} if corpus_format == "lines" else {})
        for symbol, p in dist.items():
            table[row, END if symbol == "$" else vocab.encode(symbol)[0]] = math.log(p)
    ckpt = Checkpoint(Bigram(table).eval(), vocab, corpus_format)
    return Completer(ckpt, reuse=False, **settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- what is worth offering


@pytest.mark.parametrize("mode", ["word", "line", "phrase"])
@pytest.mark.parametrize("text", ["", "x", "x ", "我们"])
def test_no_completion_is_only_whitespace_or_punctuation(mode: str, text: str) -> None:
    completer = fixed_completer("a .!。", {}, "lines", beam_width=32, max_chars=3, min_chars=1)
    found = completer.suggest(text, k=30, mode=mode)
    assert found or (mode == "word" and text == "我们")  # no CJK letters to continue 我们 with
    for s in found:
        if mode == "line":  # the rest of a line may close with punctuation, but not one character of it
            assert any(ch.isalnum() for ch in s.completion) or len(s.completion.rstrip()) >= 2, s
        else:
            assert any(ch.isalnum() for ch in s.completion), s
        assert s.completion.strip(), s


def test_the_rest_of_a_line_may_be_closing_punctuation() -> None:
    probs = {"b": {":": 0.5, ")": 0.4, "$": 0.1}, ")": {'"': 1.0}, '"': {".": 1.0}, ".": {"$": 1.0}, ":": {"$": 1.0}}
    completer = fixed_completer('ab)".:', probs, "lines", min_chars=1)
    found = [s.completion for s in completer.suggest("ab", k=5, mode="line")]
    assert ')".' in found and ":" not in found  # the likelier ":" alone says nothing
    assert not completer.suggest("ab", k=5, mode="phrase")  # a phrase is words


@pytest.fixture(scope="module")
def bundled() -> Completer:
    if not (BUNDLED_DIR / "config.json").is_file():
        pytest.skip("no bundled model in this checkout")
    return Completer(max_chars=16)


# what a search box showed: "how to" + ":" or " "; " " for the empty query (the service's
# phrase mode, 8 suggestions); "free " + "a", "how to" + "p" (one-letter stubs)
@pytest.mark.parametrize(("text", "mode"), [("how to", "line"), ("", "phrase"), ("free ", "word"), ("how to", "word")])
def test_the_bundled_model_offers_no_blank_punctuation_or_one_letter_completion(
    bundled: Completer, text: str, mode: str
) -> None:
    found = bundled.suggest(text, k=8, mode=mode)
    assert found
    for s in found:
        assert offered(s.completion, 2, closing=mode == "line"), (text, mode, s)


def test_completions_shorter_than_min_chars_are_not_offered() -> None:
    shown = {}
    for min_chars in (1, 2, 3):
        completer = fixed_completer("ab ", {}, "lines", beam_width=32, max_chars=4, min_chars=min_chars)
        shown[min_chars] = {s.completion for s in completer.suggest("x", k=40, mode="line")}
        assert shown[min_chars] and all(len(c.rstrip()) >= min_chars for c in shown[min_chars])
    assert "a" in shown[1] and "a" not in shown[2] and "ab" in shown[2] and "ab" not in shown[3]
    default = fixed_completer("ab ", {}, "lines", beam_width=32, max_chars=4)
    assert all(len(s.completion.rstrip()) >= default.config.min_chars for s in default.suggest("x", k=40))


def test_helpers() -> None:
    assert offered("ab", 2) and offered(" a.", 2) and offered("🙂x", 1)
    assert not offered("a", 2) and not offered("   ", 1) and not offered(" .", 1) and not offered("。", 1)
    assert offered(')".', 2, closing=True) and not offered(')".', 2) and not offered(".", 1, closing=True)
    assert script("a") == script("é") == script("Ａ") == "LATIN"
    assert script("я") == "CYRILLIC" and script("α") == "GREEK"
    assert script("東") == script("ひ") == script("カ") == script("ー") == script("々") == "CJK"
    assert script("1") is None and script("\u0301") is None and script(" ") is None


# ---------------------------------------------------------------------------------- phrases across a wrap

# Hard-wrapped prose: "ab ab ab\nab ab\n…": after b a space (0.3) or a wrap (0.7); after a
# wrap mostly more text (0.95), rarely a blank line (0.05).
WRAPPED = {"^": {"a": 1.0}, "a": {"b": 1.0}, "b": {" ": 0.3, "\n": 0.7}, " ": {"a": 1.0}, "\n": {"a": 0.95, "\n": 0.05}}


def test_phrase_mode_runs_across_a_wrap_of_a_text_model() -> None:
    completer = fixed_completer("ab \n", WRAPPED, "text", max_words=3)
    lines = completer.suggest("ab", k=3, mode="line")
    phrases = completer.suggest("ab", k=3, mode="phrase")
    assert lines[0].completion == " ab"  # the line ends at its newline
    # the phrase goes on across the wrap, shown as a space: "ab" + two more words
    assert phrases[0].completion == " ab ab"
    assert phrases[0].logprob == pytest.approx(2 * math.log(0.7 * 0.95))  # wrap, a, b, wrap, a, b; then a boundary
    assert [s.completion for s in lines] != [s.completion for s in phrases]
    for s in phrases:
        assert "\n" not in s.completion and len(s.completion.split()) <= 2


def test_a_blank_line_ends_a_phrase() -> None:
    completer = fixed_completer("ab \n", WRAPPED, "text", max_words=50, max_chars=40)
    found = completer.suggest("ab", k=3, mode="phrase")
    assert found
    # 50 words never fit in 40 characters: each phrase ended at a blank line
    best = found[0]
    assert best.completion == " ab"  # "ab\nab" then the blank line
    assert best.logprob == pytest.approx(math.log(0.7 * 0.95 * 0.7 * 0.05))
    after_newline = completer.suggest("ab\n", k=3, mode="phrase")
    assert after_newline and all(s.completion[:1] == "a" for s in after_newline)  # no second newline


def test_a_lines_model_is_unchanged_by_wraps() -> None:
    completer = fixed_completer("ab \n", {"*": {"a": 0.5, "b": 0.2, " ": 0.2, "$": 0.1}}, "lines")
    for s in completer.suggest("ab", k=5, mode="phrase"):
        assert "\n" not in s.completion


# ---------------------------------------------------------------------------------- words keep their script


def test_a_word_keeps_the_script_of_the_text_it_continues() -> None:
    completer = fixed_completer("ab我们 1", {}, "lines", beam_width=16, max_chars=4)
    cjk = completer.suggest("我们", k=10, mode="word")
    latin = completer.suggest("ab", k=10, mode="word")
    after_space = completer.suggest("a ", k=10, mode="word")
    assert cjk and latin and after_space
    assert all(set(s.completion) <= set("我们") for s in cjk)  # no letters of another script, no digits
    assert all(set(s.completion) <= set("ab1") for s in latin)  # digits may end a Latin word
    assert any("1" in s.completion for s in latin)
    assert all(set(s.completion) <= set("ab1") for s in after_space)  # the last letter typed was Latin
    anything = completer.suggest("", k=30, mode="word")
    assert {ch for s in anything for ch in s.completion} >= set("ab我们")


def test_the_bundled_model_offers_no_latin_after_chinese(bundled: Completer) -> None:
    for s in bundled.suggest("我们", k=8, mode="word"):
        assert not any(script(ch) == "LATIN" for ch in s.completion), s
