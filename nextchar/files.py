"""Atomic file writes: a kill at any moment leaves either the old file or the new one whole.

Every file nextchar writes (checkpoints, prepared corpora, plots, results) goes through here:
the bytes go to a temporary file in the same directory, are flushed to disk, and the temporary
file is renamed over the target, which POSIX makes atomic.

And one writer at a time (`exclusive_lock`): a directory that one process writes for a while (a
training run) is locked with flock(2), which the kernel releases when the process ends however
it ends, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nextchar.errors import UserError


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write a file so that a kill at any moment leaves either the old or the new file whole.
    A write that fails (a full disk, a file-size limit, a read-only directory) leaves no
    temporary file and the old file as it was, and is one UserError naming the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        # mkstemp makes owner-only files; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


# The errors of a write that failed for want of room or permission (not of a file being read).
WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES)


class WriteError(UserError, OSError):
    """A write that failed: one line for the user (a UserError), and still the OSError it was
    for callers that tolerate failed writes (a cache, a plot)."""


def write_error(path: Path, exc: OSError) -> WriteError:
    """One line for a write that failed: the path, the system's reason, what to do."""
    return WriteError(
        f"{path}: could not be written ({exc.strerror or exc}); what was there is as it was: free some "
        "space, or name a directory you can write to"
    )


def atomic_write_json(path: Path, obj: Any) -> None:
    """`obj` as indented UTF-8 JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


@contextmanager
def exclusive_lock(path: Path, refusal: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (made if need be) while the block runs; if
    another process holds it, a UserError: `refusal` (what is locked, and what to do)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(refusal) from None
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
