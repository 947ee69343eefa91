"""The one exception type for mistakes a user can fix (bad file, bad argument, bad checkpoint).

The CLI catches it once and prints its message on one line with exit status 2; library
callers can catch it too. Programming errors stay ordinary exceptions with tracebacks.

Library code names what the caller passed as the caller spelled it: the Python parameter
(`seq_len`, `encoding_errors="replace"`, `AdaptConfig.lr`), never a command-line flag, and says
which parameters the message names in `parameter`. The CLI (nextchar.cli.main) turns those
names into the flags of the command that ran (`seq_len` → `--seq-len`), so the person at the
terminal reads flags and a Python caller reads parameters.
"""


class UserError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do.

    `parameter` is the parameter the message names, as it appears in the message (or a tuple
    of them, when the message names several); None when it names none.
    """

    def __init__(self, message: str, parameter: str | tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter

    @property
    def parameters(self) -> tuple[str, ...]:
        """The parameters the message names (none, one or several), as a tuple."""
        if self.parameter is None:
            return ()
        return (self.parameter,) if isinstance(self.parameter, str) else self.parameter


class MissingExtra(UserError):
    """A command needs an optional group of dependencies (a pip "extra") that is not installed.

    Its message names the extra and the install command, which is all a user needs (the CLI
    prints it after the command's name, as every error; the command and the missing module
    itself are kept in `command` and `module` for callers).
    """

    def __init__(self, command: str, extra: str, module: str) -> None:
        self.command, self.extra, self.module = command, extra, module
        super().__init__(f"needs the [{extra}] extra: pip install 'nextchar[{extra}]'")
