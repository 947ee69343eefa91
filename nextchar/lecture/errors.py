"""The lecture engine's one error type: bad shapes, empty sequences, unknown characters."""

from nextchar.errors import UserError


class LectureInputError(UserError, ValueError):
    """Input the lecture engine cannot use; the message names the array, sequence or character.

    A UserError, so the CLI prints it as one line; a ValueError, so library callers can catch
    it the way they catch NumPy's own complaints.
    """
