"""A run's directory: one writer at a time, no run over another, and its metrics file.

A training run writes its directory for as long as it lives: the checkpoint, `resume/`,
`metrics.jsonl`, `bpc.png`. Two processes writing one directory would interleave those files,
so a run holds an exclusive lock on `train.lock` (flock(2): the kernel drops it when the process
ends, however it ends, so a killed run leaves no stale lock). A new run refuses a directory
that holds another run unless told to replace it (`--overwrite`), instead of silently starting
its metrics afresh under the old checkpoint.

`metrics.jsonl` is one JSON object per evaluation, appended as each is taken. On resume it is
written again, whole, from the resume state's history: evaluations taken after the last resume
state (and lost with the process that took them) are taken again, and must not appear twice.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from nextchar.checkpoint import CONFIG_NAME
from nextchar.errors import UserError
from nextchar.files import atomic_write_bytes, exclusive_lock, write_error
from nextchar.training import distributed
from nextchar.training.resume import RESUME_DIR, STATE_NAME

METRICS_NAME = "metrics.jsonl"
LOCK_NAME = "train.lock"  # held by the run writing the directory (nextchar.files.exclusive_lock)


def one_writer(out: Path) -> AbstractContextManager[None]:
    """The run's lock on `out` (rank 0 writes it; the other ranks only read): a second run, or
    an `index` of the same directory, is refused while this one lives, instead of both writing it."""
    if distributed.rank() != 0:
        return nullcontext()
    return exclusive_lock(
        out / LOCK_NAME,
        f"{out} is being written by another `train` or `index` (it holds {out / LOCK_NAME}); wait for it to "
        "end, or name another directory",
    )


def refuse_another_run(out: Path) -> None:
    """A UserError if `out` holds a run already: a new one would replace its metrics and then,
    at its first evaluation, its checkpoint."""
    found = [name for name in (CONFIG_NAME, f"{RESUME_DIR}/{STATE_NAME}") if (out / name).is_file()]
    metrics = out / METRICS_NAME
    if metrics.is_file() and metrics.stat().st_size:
        found.append(METRICS_NAME)
    if found:
        raise UserError(
            f"out={out} holds a training run already ({', '.join(found)}); continue it with --resume {out}, "
            "name another directory, or give --overwrite to start a new run there",
            parameter="out",
        )


def write_metrics(out: Path, records: list[dict[str, Any]]) -> None:
    """metrics.jsonl holding exactly `records` (atomically)."""
    lines = "".join(json.dumps(record) + "\n" for record in records)
    atomic_write_bytes(out / METRICS_NAME, lines.encode("utf-8"))


def append_metrics(out: Path, record: dict[str, Any]) -> None:
    """One evaluation more in metrics.jsonl (one write of one line)."""
    try:
        with open(out / METRICS_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise write_error(out / METRICS_NAME, exc) from None


def diverged(out: Path, step: int, what: str) -> UserError:
    """The error that stops a diverged run. It is raised before anything of the step is saved,
    so `out` keeps the checkpoint and the resume state of the last evaluation before it."""
    return UserError(
        f"training diverged at step {step}: the {what}; {out} keeps the checkpoint and resume state of the "
        f"last evaluation before it; start again with a lower --lr (or --resume {out} to retry from there)"
    )
