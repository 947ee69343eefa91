"""`nextchar type`: the prompt_toolkit app driven through a pipe (Tab, arrows, Esc, Enter, Backspace,
Delete, Ctrl-D)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.document import Document
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

from nextchar.checkpoint import load_checkpoint
from nextchar.cli.terminal import Suggester, build_prompt, run_terminal
from nextchar.completion.completer import Completer
from nextchar.completion.lexicon import Lexicon
from nextchar.completion.search import is_boundary

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


# ------------------------------------------------------------------ live: keys one at a time
# The prompt runs on its event loop while the keys arrive, so that the drop-down and the ghost
# text it computes between keys can be looked at (drive() sends every key at once).

BACKSPACE, LEFT, DELETE = "\x7f", "\x1b[D", "\x1b[3~"


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Let the prompt run until check() holds (False after `timeout` seconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


Script = Callable[[PipeInput, Buffer, "asyncio.Future[str]"], Awaitable[None]]


def live(completer: Completer, script: Script, **options: Any) -> None:
    """Run the prompt with a pipe for its keyboard and `script` typing into it."""

    async def main() -> None:
        with create_pipe_input() as pipe:
            prompt = build_prompt(completer, input=pipe, output=DummyOutput(), **options)
            answer = asyncio.ensure_future(prompt.prompt_async())
            try:
                await script(pipe, prompt.default_buffer, answer)
            finally:
                if not answer.done():
                    prompt.app.exit(result="")
                await asyncio.gather(answer, return_exceptions=True)

    asyncio.run(main())


def shown(buffer: Buffer) -> list[str]:
    """The texts in the drop-down."""
    state = buffer.complete_state
    return [c.text for c in state.completions] if state is not None else []


def ghost(buffer: Buffer) -> str | None:
    return buffer.suggestion.text if buffer.suggestion is not None else None


def test_tab_after_a_word_adds_the_space_and_suggests_the_next_word(text_model_dir: Path) -> None:
    completer = Completer(load_checkpoint(text_model_dir))
    best = completer.suggest("it wa", 5, "word")[0].text
    boundary = next(ch for ch, _ in completer.next_chars(best, 50) if is_boundary(ch))
    assert boundary == " ", "the tiny model should end this word with a space"

    async def script(pipe: PipeInput, buffer: Buffer, answer: asyncio.Future[str]) -> None:
        pipe.send_text("it wa")
        assert await _until(lambda: ghost(buffer) is not None and bool(shown(buffer)))
        pipe.send_text(TAB)
        assert await _until(lambda: buffer.text == best + " " and ghost(buffer) is not None and bool(shown(buffer)))
        # what follows the word: the next word, not more of this one
        assert shown(buffer) == [s.text for s in completer.suggest(best + " ", 5, "word")]
        assert all(text.startswith(best + " ") and len(text) > len(best) + 1 for text in shown(buffer))
        assert buffer.text + (ghost(buffer) or "") == shown(buffer)[0]

    live(completer, script, mode="word")


def test_no_space_after_a_whole_line(completer: Completer) -> None:
    best = completer.suggest("em", 5)[0].text
    assert drive(completer, "em" + TAB + ENTER + CTRL_D) == [best]  # line mode: nothing is added
    word = completer.suggest("mi", 5, "word")[0].text
    assert drive(completer, "mi" + TAB + ENTER + CTRL_D, mode="word") == [word]  # a name ends the line


def test_backspace_and_delete_update_the_suggestions(completer: Completer) -> None:
    for_em = [s.text for s in completer.suggest("em", 5)]
    best = completer.suggest("em", 5)[0]

    async def script(pipe: PipeInput, buffer: Buffer, answer: asyncio.Future[str]) -> None:
        pipe.send_text("emm")
        assert await _until(lambda: ghost(buffer) is not None and bool(shown(buffer)))
        pipe.send_text(BACKSPACE)
        assert await _until(lambda: buffer.text == "em" and shown(buffer) == for_em)
        assert ghost(buffer) == best.completion
        pipe.send_text("m" + LEFT)
        assert await _until(lambda: buffer.text == "emm" and buffer.cursor_position == 2)
        pipe.send_text(DELETE)
        assert await _until(lambda: buffer.text == "em" and shown(buffer) == for_em)
        assert ghost(buffer) == best.completion

    live(completer, script)


def test_ctrl_d_quits_with_text_in_the_buffer(completer: Completer) -> None:
    async def script(pipe: PipeInput, buffer: Buffer, answer: asyncio.Future[str]) -> None:
        pipe.send_text("em")
        assert await _until(lambda: buffer.text == "em")
        pipe.send_text(CTRL_D)
        assert await _until(answer.done), "Ctrl-D did not quit"
        assert isinstance(answer.exception(), EOFError)

    live(completer, script)
    with create_pipe_input() as pipe:  # run_terminal: the finished lines, the unfinished one dropped
        pipe.send_text("a" + ENTER + "em" + CTRL_D)
        assert run_terminal(completer, input=pipe, output=DummyOutput()) == ["a"]


def test_choosing_in_the_drop_down_keeps_it(completer: Completer) -> None:
    found = [s.text for s in completer.suggest("em", 5)]

    async def script(pipe: PipeInput, buffer: Buffer, answer: asyncio.Future[str]) -> None:
        pipe.send_text("em")
        assert await _until(lambda: shown(buffer) == found)
        pipe.send_text(DOWN)
        assert await _until(lambda: buffer.text == found[0])
        pipe.send_text(DOWN)  # the highlighted entry is in the buffer; the menu stays the one for "em"
        assert await _until(lambda: buffer.text == found[1])
        await asyncio.sleep(0.05)
        assert shown(buffer) == found and buffer.complete_state is not None
        assert buffer.complete_state.complete_index == 1
        pipe.send_text(TAB + ENTER)
        assert await _until(answer.done) and answer.result() == found[1]

    live(completer, script)
