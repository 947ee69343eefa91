"""`nextchar type`: an interactive prompt with live suggestions (prompt_toolkit).

As you type, a drop-down lists the k suggestions (with their probabilities; corrections are
marked) and the best one shows as grey ghost text after the cursor. Keys:

    Tab        accept: the highlighted suggestion, else the ghost text, else the best one
    Up/Down    choose in the drop-down (opens it if closed)
    Esc        dismiss the drop-down and the ghost text
    Enter      finish the line (it is printed; a new prompt starts)
    Ctrl-D/C   quit (a line not finished with Enter is dropped)

In word and phrase mode a suggestion ends where a word does, so accepting one also types the
space after it when that is the model's likeliest way to end the word (rather than a comma, a
full stop or the end of the line): the suggestions then go on with the next word instead of
lengthening this one. Every edit (typing, Backspace, Delete, Ctrl-W, an accepted suggestion)
recomputes the drop-down and the ghost text.

The bottom bar shows the next-character distribution. One TypingSession follows the text
before the cursor (`set_text` keeps the common prefix), so a keystroke costs one model step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prompt_toolkit import PromptSession
from prompt_toolkit.application.current import get_app
from prompt_toolkit.auto_suggest import Suggestion as GhostText
from prompt_toolkit.buffer import Buffer, CompletionState
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output

from nextchar.completion.completer import Completer as NextcharCompleter
from nextchar.completion.completer import Suggestion
from nextchar.completion.config import K_MAX
from nextchar.completion.search import is_boundary


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

    def ghost(self, text: str) -> str | None:
        """The grey text after the cursor: the best suggestion's completion (not a correction)."""
        found = self.suggestions(text) if text else []
        if found and not found[0].corrected and found[0].completion:
            return found[0].completion
        return None

    def separator(self, text: str) -> str:
        """What to type after an accepted suggestion that ends `text`: in word and phrase mode
        (whose suggestions end where a word does) a space, when the model's likeliest way to end
        the word is a space rather than punctuation or the end of the line; else nothing."""
        if self.mode == "line" or not text or text[-1].isspace():
            return ""
        ending = next((ch for ch, _ in self.next_chars(text, K_MAX) if is_boundary(ch)), "")
        return " " if ending == " " else ""

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


def _follow_edits(buffer: Buffer, suggester: Suggester) -> None:
    """Recompute the drop-down and the ghost text after every change of the buffer's text.

    prompt_toolkit's own while-typing completion and auto-suggestion start only on inserted
    text, so that Backspace, Delete or Ctrl-W left the prompt bare until the next key. Why a
    background task: the change event fires inside the edit, before the cursor's own event
    clears the drop-down, and keys that arrive together (a paste) are all handled before it
    runs, so that only the last text is searched.
    """

    async def refresh(text: str, cursor: int) -> None:
        if not text or buffer.text != text or buffer.cursor_position != cursor:
            return  # empty (nothing to show), or edited again since: that edit's refresh follows
        state = buffer.complete_state
        if state is not None and state.complete_index is not None:
            return  # choosing in the drop-down puts the highlighted entry in the buffer: keep the menu
        document = buffer.document
        completions = suggester.completions(document)
        buffer.complete_state = CompletionState(document, completions) if completions else None
        ghost = suggester.ghost(text) if document.is_cursor_at_the_end else None
        buffer.suggestion = GhostText(ghost) if ghost is not None else None
        get_app().invalidate()

    def changed(_: Buffer) -> None:
        app = get_app()
        if app.is_running:  # (PromptSession resets the buffer between prompts)
            app.create_background_task(refresh(buffer.text, buffer.cursor_position))

    buffer.on_text_changed += changed


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
        elif buffer.suggestion is not None and buffer.suggestion.text and buffer.document.is_cursor_at_the_end:
            buffer.insert_text(buffer.suggestion.text)
        else:
            found = suggester.suggestions(buffer.document.text_before_cursor)
            if not found:
                return
            after = buffer.document.text_after_cursor
            buffer.cancel_completion()
            buffer.document = Document(found[0].text + after, cursor_position=len(found[0].text))
        # The accepted word is finished: type what ends it, so that the next suggestions are
        # for the next word (without it they would only lengthen this one).
        separator = suggester.separator(buffer.text) if buffer.document.is_cursor_at_the_end else ""
        if separator:
            buffer.insert_text(separator)

    @kb.add("down")
    def _next(event: KeyPressEvent) -> None:
        open_menu(event.current_buffer)
        event.current_buffer.complete_next()

    @kb.add("up")
    def _previous(event: KeyPressEvent) -> None:
        open_menu(event.current_buffer)
        event.current_buffer.complete_previous()

    @kb.add("c-d")
    def _quit(event: KeyPressEvent) -> None:
        # prompt_toolkit quits on Ctrl-D only in an empty buffer (else it deletes forward).
        event.app.exit(exception=EOFError, style="class:exiting")

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
        text = get_app().current_buffer.document.text_before_cursor
        shown = "  ".join(
            f"{'⏎' if ch == chr(10) else '␣' if ch == ' ' else ch} {p:.0%}" for ch, p in suggester.next_chars(text)
        )
        return f" next: {shown}   [Tab accept · ↑↓ choose · Esc dismiss · Ctrl-D quit]"

    # complete_while_typing is off and there is no auto_suggest: _follow_edits does both, on
    # every edit (the completer stays for prompt_toolkit's own Ctrl-Space).
    session: PromptSession[str] = PromptSession(
        "> ",
        completer=_DropDown(suggester),
        complete_while_typing=False,
        key_bindings=_bindings(suggester),
        bottom_toolbar=toolbar,
        input=input,
        output=output,
    )
    _follow_edits(session.default_buffer, suggester)
    return session


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
