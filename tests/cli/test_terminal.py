"""`nextchar type`: the prompt_toolkit app driven through a pipe (Tab, arrows, Esc, Enter)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from nextchar.checkpoint import load_checkpoint
from nextchar.cli.terminal import Suggester, run_terminal
from nextchar.completion.completer import Completer
from nextchar.completion.lexicon import Lexicon

DOWN, UP, ESC, TAB, ENTER, CTRL_D = "\x1b[B", "\x1b[A", "\x1b", "\t", "\r", "\x04"


@pytest.fixture(scope="module")
def completer(lines_model_dir: Path) -> Completer:
    return Completer(load_checkpoint(lines_model_dir))


def drive(completer: Completer, keys: str, **options: object) -> list[str]:
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        return run_terminal(completer, input=pipe, output=DummyOutput(), **options)


def test_tab_accepts_the_best_suggestion(completer: Completer) -> None:
    best = completer.suggest("em", 5)[0].text
    assert drive(completer, "em" + TAB + ENTER + CTRL_D) == [best]


def test_arrows_choose(completer: Completer) -> None:
    found = [s.text for s in completer.suggest("em", 5)]
    assert drive(completer, "em" + DOWN + DOWN + TAB + ENTER + CTRL_D) == [found[1]]
    assert drive(completer, "em" + UP + TAB + ENTER + CTRL_D) == [found[-1]]


def test_escape_dismisses(completer: Completer) -> None:
    assert drive(completer, "em" + DOWN + ESC + ENTER + CTRL_D) == ["em"]


def test_several_lines_and_word_mode(completer: Completer) -> None:
    lines = drive(completer, "a" + ENTER + "mi" + TAB + ENTER + CTRL_D, mode="word", k=3)
    assert lines[0] == "a" and lines[1] == completer.suggest("mi", 3, "word")[0].text


def test_lexicon_in_the_terminal(lines_model_dir: Path) -> None:
    lexicon_completer = Completer(load_checkpoint(lines_model_dir), lexicon=Lexicon.from_entries(["emmanuel"]))
    assert drive(lexicon_completer, "em" + TAB + ENTER + CTRL_D) == ["emmanuel"]


def test_suggester_shows_probabilities_and_next_characters(completer: Completer) -> None:
    suggester = Suggester(completer, k=3)
    shown = suggester.completions(Document("em"))
    assert len(shown) == 3
    assert all(c.text.startswith("em") and c.start_position == -2 for c in shown)
    assert all("%" in c.display_meta_text for c in shown)
    got, want = suggester.next_chars("em"), completer.next_chars("em", 6)
    assert [ch for ch, _ in got] == [ch for ch, _ in want]
    assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-6)
