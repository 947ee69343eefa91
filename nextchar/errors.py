"""The one exception type for mistakes a user can fix (bad file, bad flag, bad checkpoint).

The CLI catches it once and prints its message on one line with exit status 2; library
callers can catch it too. Programming errors stay ordinary exceptions with tracebacks.
"""


class UserError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""


class MissingExtra(UserError):
    """A command needs an optional group of dependencies (a pip "extra") that is not installed.

    Its message is the whole line the CLI prints: it names the command and the install command,
    which is all a user needs (the missing module itself is kept in `module` for callers).
    """

    def __init__(self, command: str, extra: str, module: str) -> None:
        self.command, self.extra, self.module = command, extra, module
        super().__init__(f"nextchar {command}: needs the [{extra}] extra: pip install 'nextchar[{extra}]'")
