"""`nextchar type`: an interactive prompt with live suggestions (prompt_toolkit).

As you type, a drop-down lists the k suggestions (with their probabilities; corrections are
marked) and the best one shows as grey ghost text after the cursor. Keys:

    Tab        accept: the highlighted suggestion, else the ghost text, else the best one
    Up/Down    choose in the drop-down (opens it if closed)
    Esc        dismiss the drop-down and the ghost text
    Enter      finish the line (it is printed; a new prompt starts)
    Ctrl-D/C   quit

The bottom bar shows the next-character distribution. One TypingSession follows the text
before the cursor (`set_text` keeps the common prefix), so a keystroke costs one model step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggest
from prompt_toolkit.auto_suggest import Suggestion as GhostText
from prompt_toolkit.buffer import Buffer, CompletionState
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output

from nextchar.completion.completer import Completer as NextcharCompleter
from nextchar.completion.completer import Suggestion


class Suggester:
    """The typing session behind the prompt: suggestions and next characters for a text."""

    def __init__(self, completer: NextcharCompleter, k: int = 5, mode: str = "line", typos: bool = False):
        self.session = completer.session()
        self.k, self.mode, self.typos = k, mode, typos

    def suggestions(self, text: str) -> list[Suggestion]:
        self.session.set_text(text)
        return self.session.suggest(self.k, self.mode, self.typos)

    def next_chars(self, text: str, k: int = 6) -> list[tuple[str, float]]:
        self.session.set_text(text)
        return self.session.next_chars(k)

    def completions(self, document: Document) -> list[Completion]:
        typed = document.text_before_cursor
        out = []
        for s in self.suggestions(typed):
            meta = f"{math.exp(s.logprob):.1%}" + (" corrected" if s.corrected else "")
            out.append(Completion(s.text, start_position=-len(typed), display=s.text, display_meta=meta))
        return out


class _DropDown(Completer):
    def __init__(self, suggester: Suggester):
        self.suggester = suggester

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        yield from self.suggester.completions(document)


class _Ghost(AutoSuggest):
    def __init__(self, suggester: Suggester):
        self.suggester = suggester

    def get_suggestion(self, buffer: Buffer, document: Document) -> GhostText | None:
        if not document.is_cursor_at_the_end or not document.text:
            return None
        found = self.suggester.suggestions(document.text)
        if found and not found[0].corrected and found[0].completion:
            return GhostText(found[0].completion)
        return None


def _bindings(suggester: Suggester) -> KeyBindings:
    kb = KeyBindings()

    def open_menu(buffer: Buffer) -> None:
        if buffer.complete_state is None or not buffer.complete_state.completions:
            buffer.complete_state = CompletionState(buffer.document, suggester.completions(buffer.document))

    @kb.add("tab")
    def _accept(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        state = buffer.complete_state
        if state is not None and state.current_completion is not None:
            buffer.apply_completion(state.current_completion)
            return
        if buffer.suggestion is not None and buffer.suggestion.text and buffer.document.is_cursor_at_the_end:
            buffer.insert_text(buffer.suggestion.text)
            return
        found = suggester.suggestions(buffer.document.text_before_cursor)
        if found:
            after = buffer.document.text_after_cursor
            buffer.cancel_completion()
            buffer.document = Document(found[0].text + after, cursor_position=len(found[0].text))

    @kb.add("down")
    def _next(event: KeyPressEvent) -> None:
        open_menu(event.current_buffer)
        event.current_buffer.complete_next()

    @kb.add("up")
    def _previous(event: KeyPressEvent) -> None:
        open_menu(event.current_buffer)
        event.current_buffer.complete_previous()

    @kb.add("escape", eager=True)
    def _dismiss(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        buffer.cancel_completion()
        buffer.complete_state = None
        buffer.suggestion = None

    return kb


def build_prompt(
    completer: NextcharCompleter,
    k: int = 5,
    mode: str = "line",
    typos: bool = False,
    input: Input | None = None,
    output: Output | None = None,
) -> PromptSession[str]:
    """The prompt_toolkit session (input/output may be a pipe and DummyOutput, for tests)."""
    suggester = Suggester(completer, k, mode, typos)

    def toolbar() -> str:
        from prompt_toolkit.application.current import get_app

        text = get_app().current_buffer.document.text_before_cursor
        shown = "  ".join(
            f"{'⏎' if ch == chr(10) else '␣' if ch == ' ' else ch} {p:.0%}" for ch, p in suggester.next_chars(text)
        )
        return f" next: {shown}   [Tab accept · ↑↓ choose · Esc dismiss · Ctrl-D quit]"

    return PromptSession(
        "> ",
        completer=_DropDown(suggester),
        auto_suggest=_Ghost(suggester),
        complete_while_typing=True,
        key_bindings=_bindings(suggester),
        bottom_toolbar=toolbar,
        input=input,
        output=output,
    )


def run_terminal(
    completer: NextcharCompleter,
    k: int = 5,
    mode: str = "line",
    typos: bool = False,
    input: Input | None = None,
    output: Output | None = None,
) -> list[str]:
    """Prompt line after line until Ctrl-D or Ctrl-C; returns the lines entered."""
    prompt = build_prompt(completer, k, mode, typos, input, output)
    lines = []
    while True:
        try:
            lines.append(prompt.prompt())
        except (EOFError, KeyboardInterrupt):
            return lines
