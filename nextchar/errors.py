"""The one exception type for mistakes a user can fix (bad file, bad flag, bad checkpoint).

The CLI catches it once and prints its message on one line with exit status 2; library
callers can catch it too. Programming errors stay ordinary exceptions with tracebacks.
"""


class UserError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""
