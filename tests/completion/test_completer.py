"""Completer and TypingSession: scores, modes, the state stack, reuse, bad input, any script."""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import pytest
import torch

from nextchar.checkpoint import Checkpoint, load_checkpoint
from nextchar.completion.chars import is_boundary, is_extender, is_regional_indicator, needs_continuation
from nextchar.completion.completer import Completer, Suggestion
from nextchar.completion.config import DEFAULTS, K_MAX, CompleterConfig, ConfigOverrides
from nextchar.completion.search import GRAPHEME_SLACK
from nextchar.completion.session import safe_start
from nextchar.errors import UserError
from nextchar.models import KINDS
from nextchar.text import END, START
from nextchar.training.loop import train
from tests.helpers import NAMES, PROSE, CallCounter, model_config, train_config, train_on_prose


@pytest.fixture(scope="module", params=KINDS)
def lines_ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    """A tiny model of every kind trained briefly on NAMES (lines format)."""
    out = tmp_path_factory.mktemp(f"names-{request.param}")
    train(NAMES, "mia\nemma\n", out, train_config(steps=30), model_config(request.param), "lines", progress=False)
    return load_checkpoint(out)


@pytest.fixture(scope="module")
def text_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    return load_checkpoint(train_on_prose(tmp_path_factory.mktemp("prose-gru"), "gru", steps=30))


def reference_logprob(ckpt: Checkpoint, text: str, completion: str) -> tuple[float, torch.Tensor]:
    """log p(completion | text) by one plain forward over "^" + text + completion, and the
    next-symbol log-probabilities after it (to add an end event)."""
    vocab = ckpt.vocab
    prefix = [START, *vocab.encode(vocab.prepare(text))]
    idx = prefix + vocab.encode(completion)
    with torch.no_grad():
        logits, _ = ckpt.model(torch.tensor([idx]), None)
    logits = logits[0].float()
    logits[:, START] = -math.inf
    lp = torch.log_softmax(logits, dim=-1)
    total = sum(float(lp[len(prefix) - 1 + i, idx[len(prefix) + i]]) for i in range(len(completion)))
    return total, lp[-1]


# ---------------------------------------------------------------------------------- scores and modes


@pytest.mark.parametrize("text", ["", "e", "em", "isab"])
def test_line_suggestions_are_ranked_and_scored_exactly(lines_ckpt: Checkpoint, text: str) -> None:
    completer = Completer(lines_ckpt, reuse=False)
    found = completer.suggest(text, k=5, mode="line")
    assert 1 <= len(found) <= 5
    assert [s.score for s in found] == sorted((s.score for s in found), reverse=True)
    for s in found:
        assert isinstance(s, Suggestion) and not s.corrected
        assert s.text == text + s.completion and s.completion
        body, after = reference_logprob(lines_ckpt, text, s.completion)
        assert s.logprob == pytest.approx(body + float(after[END]), abs=1e-4)  # <end> included
        assert s.score == pytest.approx(s.logprob, abs=1e-6)  # α = 0 by default
    assert len({s.text.rstrip() for s in found}) == len(found)


def test_beam_finds_the_most_probable_short_lines(tmp_path: Path) -> None:
    """With a wide beam and α = 0, the top suggestion beats every other line the model can end
    (checked exhaustively over all completions of up to 3 characters)."""
    train(
        "ab\nabc\nabd\nb\n" * 5, "ab\n", tmp_path, train_config(steps=60), model_config("gru"), "lines", progress=False
    )
    ckpt = load_checkpoint(tmp_path)
    completer = Completer(ckpt, beam_width=64, max_chars=3, min_chars=1)  # one character may be best
    best = completer.suggest("a", k=1)[0]
    chars = ckpt.vocab.chars
    candidates = [a + b + c for a in chars for b in ["", *chars] for c in ["", *chars] if b or not c]

    def whole(completion: str) -> float:
        body, after = reference_logprob(ckpt, "a", completion)
        return body + float(after[END])

    assert best.logprob >= max(map(whole, candidates)) - 1e-4


def test_word_mode_stops_at_a_boundary(text_ckpt: Checkpoint) -> None:
    completer = Completer(text_ckpt)
    table = completer.table
    for text in ["It was the be", "the ", "", "wisdom, it w"]:
        found = completer.suggest(text, k=5, mode="word")
        assert found
        for s in found:
            assert s.completion and not any(is_boundary(ch) for ch in s.completion)
            body, after = reference_logprob(text_ckpt, text, s.completion)
            end = float(torch.logsumexp(after[table.boundary_idx], dim=0))  # any boundary ends the word
            assert s.logprob == pytest.approx(body + end, abs=1e-4)


def test_line_and_phrase_modes_of_a_text_model(text_ckpt: Checkpoint) -> None:
    completer = Completer(text_ckpt, max_chars=30, max_words=2)
    for s in completer.suggest("it was the ", k=5, mode="line"):
        assert "\n" not in s.completion and len(s.completion) <= 30
    for s in completer.suggest("it was the ag", k=5, mode="phrase"):
        words = [w for w in "".join(" " if is_boundary(c) else c for c in s.text[len("it was the ") :]).split()]
        assert len(words) <= 2, s  # the word being typed counts as the first


def test_length_normalisation(lines_ckpt: Checkpoint) -> None:
    completer = Completer(lines_ckpt, length_alpha=1.0)
    for s in completer.suggest("a", k=5):
        assert s.score == pytest.approx(s.logprob / (len(s.completion) + 1), abs=1e-6)


def test_next_chars_is_the_models_distribution(lines_ckpt: Checkpoint) -> None:
    completer = Completer(lines_ckpt)
    top = completer.next_chars("em", k=100)
    _, after = reference_logprob(lines_ckpt, "em", "")
    probs = after.exp()
    assert all(0 < p <= 1 for _, p in top)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    for ch, p in top:
        index = END if ch == "\n" else lines_ckpt.vocab.encode(ch)[0]
        assert p == pytest.approx(float(probs[index]), abs=1e-5)
    never = float(probs[2]) + sum(float(probs[i]) for i in lines_ckpt.vocab.encode("\n") if i > 2)
    assert sum(p for _, p in top) == pytest.approx(1.0 - never, abs=1e-4)  # all but <unk> and a newline
    assert completer.session().next_chars(3) == completer.next_chars("", 3)


# ---------------------------------------------------------------------------------- the session


def test_session_matches_stateless_suggestions(lines_ckpt: Checkpoint) -> None:
    session = Completer(lines_ckpt).session()
    fresh = Completer(lines_ckpt, reuse=False)
    for i, ch in enumerate("isabella"):
        session.type(ch)
        assert session.text == "isabella"[: i + 1]
        got = session.suggest(5)
        want = fresh.suggest(session.text, 5)
        assert [s.text for s in got] == [s.text for s in want]
        assert [s.logprob for s in got] == pytest.approx([s.logprob for s in want], abs=1e-4)
    session.backspace(3)
    assert session.text == "isabe"
    assert [s.text for s in session.suggest(5)] == [s.text for s in fresh.suggest("isabe", 5)]
    session.set_text("isadora")
    assert [s.text for s in session.suggest(5, "word")] == [s.text for s in fresh.suggest("isadora", 5, "word")]
    session.set_text("")
    assert [s.text for s in session.suggest(3)] == [s.text for s in fresh.suggest("", 3)]
    session.backspace(10)  # more than there is: clamped
    assert session.text == ""


def test_a_keystroke_costs_one_model_step_whatever_the_length(text_ckpt: Checkpoint) -> None:
    completer = Completer(text_ckpt)
    counter = CallCounter(completer)
    session = completer.session()
    for length in (10, 1000):
        session.set_text(PROSE[:length])
        counter.reset()
        session.type("x")
        assert (counter.calls, counter.steps) == (1, 1)
        counter.reset()
        session.backspace()  # pops the stack: no model call at all
        assert counter.calls == 0
        counter.reset()
        session.type("xy")
        assert counter.steps == 2


def test_typing_a_character_the_beam_already_explored_is_free(lines_ckpt: Checkpoint) -> None:
    completer = Completer(lines_ckpt)
    counter = CallCounter(completer)
    session = completer.session()
    session.type("is")
    first = session.suggest(5)
    ch = first[0].completion[0]
    counter.reset()
    session.type(ch)  # the previous beam computed this state already
    assert counter.calls == 0
    reused = session.suggest(5)
    reused_calls = counter.calls
    plain = Completer(lines_ckpt, reuse=False)
    counter_plain = CallCounter(plain)
    want = plain.suggest("is" + ch, 5)
    assert [s.text for s in reused] == [s.text for s in want]
    assert reused_calls < counter_plain.calls


def test_the_stateless_cache_makes_text_plus_one_character_one_step(lines_ckpt: Checkpoint) -> None:
    completer = Completer(lines_ckpt)
    counter = CallCounter(completer)
    completer.state_after("isabel")
    counter.reset()
    state, logprobs = completer.state_after("isabell")
    assert (counter.calls, counter.steps) == (1, 1)
    _, want = reference_logprob(lines_ckpt, "isabell", "")
    assert torch.allclose(logprobs, want, atol=1e-5)
    assert isinstance(state, tuple)


def test_a_long_paste_keeps_few_states_and_backspace_is_exact(text_ckpt: Checkpoint) -> None:
    completer = Completer(text_ckpt, max_context=5000)
    session = completer.session()
    text = PROSE * 3
    session.type(text)
    assert session.stack_size < 120  # sparse: one state per chunk, dense only at the end
    session.backspace(100)  # into the sparse stretch: re-reads the gap only
    assert session.text == text[:-100]
    _, want = reference_logprob(text_ckpt, text[:-100], "")
    assert torch.allclose(session.current_state()[1], want, atol=1e-4)


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("k", [0, -3])
def test_k_must_be_positive(lines_ckpt: Checkpoint, k: int) -> None:
    completer = Completer(lines_ckpt)
    with pytest.raises(UserError, match="k must be at least 1"):
        completer.suggest("a", k=k)
    with pytest.raises(UserError):
        completer.session().suggest(k=k)
    with pytest.raises(UserError):
        completer.next_chars("a", k=k)


def test_absurd_k_is_clamped(lines_ckpt: Checkpoint) -> None:
    found = Completer(lines_ckpt).suggest("a", k=10**9)
    assert 1 <= len(found) <= K_MAX


@pytest.mark.parametrize("bad", [{"mode": "sentence"}, {"k": 2.5}, {"k": "5"}])
def test_bad_arguments_are_user_errors(lines_ckpt: Checkpoint, bad: dict) -> None:
    with pytest.raises(UserError):
        Completer(lines_ckpt).suggest("a", **{"k": 5, **bad})


@pytest.mark.parametrize(
    "setting",
    [{"beam_width": 0}, {"max_chars": -1}, {"length_alpha": math.nan}, {"typo_penalty": -1.0}, {"max_context": 0}],
)
def test_bad_settings_are_user_errors(lines_ckpt: Checkpoint, setting: dict) -> None:
    with pytest.raises(UserError):
        Completer(lines_ckpt, **setting)


def test_keyword_settings_override_the_config(lines_ckpt: Checkpoint) -> None:
    from typing import get_type_hints

    assert get_type_hints(ConfigOverrides) == get_type_hints(CompleterConfig)  # the same names and types
    assert Completer(lines_ckpt).config == DEFAULTS
    assert Completer(lines_ckpt, beam_width=16).config == CompleterConfig(beam_width=16)
    given = CompleterConfig(max_chars=20, beam_width=4)
    assert Completer(lines_ckpt, config=given).config is given
    both = Completer(lines_ckpt, config=given, beam_width=6)
    assert both.config == CompleterConfig(max_chars=20, beam_width=6) and given.beam_width == 4
    assert both.settings.beam_width == 6 and both.settings.max_chars == 20
    both.cache_size = 3  # the service sizes the cache to its memory budget
    assert both.cache_size == both.config.cache_size == both.states.capacity == 3
    with pytest.raises(TypeError):
        Completer(lines_ckpt, beam=3)  # type: ignore[call-arg]


def test_text_made_only_of_unknown_characters(lines_ckpt: Checkpoint) -> None:
    completer = Completer(lines_ckpt)
    for mode in ("line", "phrase"):
        found = completer.suggest("ЖЖ😀", k=3, mode=mode)
        assert found and all(s.text.startswith("ЖЖ😀") for s in found)
    # the word being typed is Cyrillic, and the model knows no Cyrillic letter to go on with
    assert all(not any(c.isalpha() for c in s.completion) for s in completer.suggest("ЖЖ😀", k=3, mode="word"))
    session = completer.session()
    session.type("Ж")
    assert session.suggest(3)


def test_a_million_characters_cost_bounded_model_steps(text_ckpt: Checkpoint) -> None:
    completer = Completer(text_ckpt, max_context=512)
    counter = CallCounter(completer)
    huge = "the season of light " * 50_000
    found = completer.suggest(huge, k=3, mode="word")
    session = completer.session()
    session.type(huge)
    session.type("a")
    session.suggest(3, "word")
    session.backspace(5000)  # below what the stack holds: reads at most max_context again
    assert session.text == huge[:-4999]
    session.suggest(3, "word")
    # Three reads from scratch (the suggest, the paste, the backspace below the stack) of at most
    # "^" + the last max_context characters each, two single steps (a new session's "^" and the
    # "a"), and three searches of at most max_chars + GRAPHEME_SLACK steps: not a million.
    search = completer.config.max_chars + GRAPHEME_SLACK
    assert counter.steps <= 3 * (512 + 1) + 2 + 3 * search
    assert found and all(s.text.startswith(huge) for s in found)
    assert session.stack_size <= 512 + 2


# ---------------------------------------------------------------------------------- any script

SCRIPTS = (
    "привет мир\nпривет друг\nкошка\n"
    "東京都\n東京タワー\n北京市\n"
    "café crème\nnaïve résumé\n"
    "family 👨\u200d👩\u200d👧 flag 🇫🇷🇩🇪\nthumbs 👍🏽 up\n"
    "e\u0323\u0302 combining\n"
) * 3


@pytest.fixture(scope="module")
def scripts_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    out = tmp_path_factory.mktemp("scripts")
    train(
        SCRIPTS,
        SCRIPTS[:200],
        out,
        train_config(steps=40),
        model_config("gru", hidden_size=48),
        "lines",
        progress=False,
    )
    return load_checkpoint(out)


@pytest.mark.parametrize("text", ["прив", "東", "caf", "family 👨", "flag 🇫", "thumbs 👍", "e", ""])
@pytest.mark.parametrize("mode", ["word", "line", "phrase"])
def test_suggestions_never_split_a_character(scripts_ckpt: Checkpoint, text: str, mode: str) -> None:
    completer = Completer(scripts_ckpt, max_chars=6, beam_width=12)
    for s in completer.suggest(text, k=10, mode=mode):
        assert s.text.startswith(text)
        assert unicodedata.is_normalized("NFC", s.completion)
        assert not needs_continuation(s.text)  # never ends after a ZWJ or inside a flag
        assert not s.completion or not is_extender(s.completion[0]) or text  # nothing dangling at the start
        trailing_ri = len(s.text) - len(s.text.rstrip("".join(chr(c) for c in range(0x1F1E6, 0x1F200))))
        assert trailing_ri % 2 == 0 or not is_regional_indicator(s.text[-1])


def test_cjk_words_are_a_fixed_number_of_characters(scripts_ckpt: Checkpoint) -> None:
    completer = Completer(scripts_ckpt, cjk_word_chars=2)
    found = completer.suggest("東", k=5, mode="word")
    assert found
    for s in found:
        assert len(s.completion) <= 2 or any(is_extender(c) for c in s.completion)


def test_input_is_nfc_normalised(scripts_ckpt: Checkpoint) -> None:
    completer = Completer(scripts_ckpt)
    composed = [s.completion for s in completer.suggest("café", 5)]
    decomposed = completer.suggest("cafe\u0301", 5)
    assert [s.completion for s in decomposed] == composed
    assert all(s.text.startswith("cafe\u0301") for s in decomposed)  # extends exactly what was typed
    session = completer.session()
    session.type("cafe")
    session.type("\u0301")  # the accent composes with the e typed before it
    assert session.prepared == "café"
    assert [s.completion for s in session.suggest(5)] == composed


@pytest.mark.parametrize("alphabet", ["corpus", "lecture"])
def test_incremental_preparation_matches_whole_text(tmp_path: Path, alphabet: str) -> None:
    train(
        PROSE, PROSE[-100:], tmp_path, train_config(steps=2), model_config("window"), "text", alphabet, progress=False
    )
    completer = Completer(load_checkpoint(tmp_path))
    session = completer.session()
    pieces = ["The ", "  Cafe", "\u0301", " NAÏVE", "\n", "  x", "ß", "\u0323", "e\u0323\u0302", "  ", "Ab"]
    for piece in pieces:
        session.type(piece)
        assert session.prepared == completer.prepare(session.text)
        session.backspace(1)
        assert session.prepared == completer.prepare(session.text)
        session.type(piece[-1:])
    session.set_text("Zz " + session.text)
    assert session.prepared == completer.prepare(session.text)
    assert safe_start("ab", 1, lecture=False) == 0


def test_custom_checkpoint_kinds_all_complete(lines_ckpt: Checkpoint) -> None:
    """Every model kind behind the same API (the fixture runs once per kind)."""
    completer = Completer(lines_ckpt)
    session = completer.session()
    session.type("mi")
    assert session.suggest(3, "word") and session.suggest(3, "phrase") and session.next_chars(3)


# ---------------------------------------------------------------------------------- fixed distributions


class Uniform(torch.nn.Module):
    """A stand-in model whose next-symbol distribution is fixed (the shared model interface)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        from nextchar.models import ModelConfig

        self.config = ModelConfig(kind="window", vocab_size=len(logits))
        self.register_buffer("logits", logits)

    def initial_state(self, batch_size: int, device: object = None) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(batch_size, 1),)

    def forward(self, idx: torch.Tensor, state: object = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        batch, steps = idx.shape
        return self.logits.expand(batch, steps, -1).clone(), (torch.zeros(batch, 1),)


def test_no_two_suggestions_differ_only_in_trailing_whitespace() -> None:
    from nextchar.text import Vocabulary

    vocab = Vocabulary(("a", " "))
    logits = torch.tensor([-math.inf, 0.0, -math.inf, 0.0, 0.0])  # <start> <end> <unk> a ␣: equally likely
    completer = Completer(Checkpoint(Uniform(logits).eval(), vocab, "lines"), beam_width=16, max_chars=3, min_chars=1)
    found = completer.suggest("x", k=20)
    stripped = [s.text.rstrip() for s in found]
    assert len(stripped) == len(set(stripped))
    assert "xa" in stripped and not any(s.text == "xa " for s in found)  # "xa " is "xa" again
    # a completion of n characters + <end> has probability (1/3)^(n+1); one cut at max_chars
    # has no end event: (1/3)^n
    assert [len(s.completion) for s in found] == sorted(len(s.completion) for s in found)
    for s in found:
        n = len(s.completion)
        assert s.logprob == pytest.approx((n + (n < 3)) * math.log(1 / 3))


def test_bundled_default_model() -> None:
    from nextchar.checkpoint import BUNDLED_DIR

    if not (BUNDLED_DIR / "config.json").is_file():
        pytest.skip("no bundled model in this checkout yet")
    completer = Completer()
    assert completer.suggest("The ", k=3, mode="word")


def test_cache_stats_clear_cache_and_with_model(lines_ckpt: Checkpoint) -> None:
    import copy

    model = copy.deepcopy(lines_ckpt.model)
    ckpt = Checkpoint(model, lines_ckpt.vocab, lines_ckpt.format)
    completer = Completer(ckpt, beam_width=6)
    completer.state_after("em")
    completer.state_after("em")
    completer.state_after("emm")
    assert completer.cache_stats == {"read": 1, "hit": 1, "step": 1}
    session = completer.session()
    session.type("em")
    session.suggest(3)

    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    clone = completer.with_model(other, cache_size=16)
    assert clone.cache_size == 16 and clone.settings.beam_width == 6 and clone.vocab is completer.vocab
    plain = Completer(Checkpoint(other, lines_ckpt.vocab, lines_ckpt.format), beam_width=6, reuse=False)
    assert [s.text for s in clone.suggest("em", 3)] == [s.text for s in plain.suggest("em", 3)]

    with torch.no_grad():  # the completer's own weights change (online adaptation): clear_cache
        for p, q in zip(model.parameters(), other.parameters(), strict=True):
            p.copy_(q)
    completer.clear_cache()
    assert len(completer.states) == 0
    assert [s.text for s in session.suggest(3)] == [s.text for s in plain.suggest("em", 3)]
    assert session.text == "em"
