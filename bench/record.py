"""Where every benchmark's raw result goes, with the facts that let one of its figures be traced.

A figure quoted in docs/ is only as good as what is known about the run that produced it: the
exact command, the commit (and whether the working tree held uncommitted changes), the machine
(a CPU with AVX-512 BF16 or AMX runs bf16 products at another speed than one without; a process
allowed 2 of 64 cores is another machine than one allowed all 64), and the Python, torch and
NumPy it ran under. `write_result` writes the figures a benchmark printed together with these
facts as one JSON file, by default bench/results/<name>-<UTC date and time>-<short commit>.json
(the time too, so that two runs on one day do not overwrite each other), atomically
(`nextchar.files.atomic_write_json`): a run killed while writing leaves no half a file.

Nothing here imports torch or NumPy: bench/lecture_speed.py fixes NumPy's BLAS threads before
NumPy's first import, so versions are read from the installed distributions' metadata.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

from nextchar.files import atomic_write_json

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPOSITORY / "bench" / "results"
CPUINFO = Path("/proc/cpuinfo")
# The instruction sets the models' products depend on: AVX2 and AVX-512 for fp32 and int8,
# AVX-512 BF16 and AMX for bf16 (torch picks its kernels by what the CPU has).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# Thread counts fixed from outside: they change every timing.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
DISTRIBUTIONS = ("torch", "numpy", "nextchar")


class GitState(TypedDict):
    """The commit the benchmark ran on; all None where git or the repository is absent."""

    commit: str | None
    short: str | None
    dirty: bool | None  # tracked files changed since the commit (untracked ones are not counted)


class Machine(TypedDict):
    """The CPU and how much of it the process was allowed."""

    cpu_model: str
    architecture: str
    system: str
    flags: dict[str, bool | None]  # None: the flags could not be read (no /proc/cpuinfo)
    logical_cores: int | None
    affinity_cores: int | None  # the cores this process may run on (os.sched_getaffinity)
    thread_variables: dict[str, str | None]


class Record(TypedDict):
    """One result file: the benchmark's figures and where they came from."""

    benchmark: str
    results: Mapping[str, Any]
    argv: list[str]
    command: str
    cwd: str
    date: str
    git: GitState
    machine: Machine
    versions: dict[str, str | None]


def _git(root: Path, *args: str) -> str | None:
    """git's stdout, stripped, or None where git is missing or fails (not a repository, say)."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(root: Path = REPOSITORY) -> GitState:
    """The commit checked out at `root`, its short form, and whether tracked files differ from it."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "short": None, "dirty": None}
    short = _git(root, "rev-parse", "--short", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "short": short, "dirty": None if status is None else status != ""}


def _cpuinfo_fields(cpuinfo: Path) -> dict[str, str] | None:
    """The first processor's "key : value" lines of /proc/cpuinfo, or None where it cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def machine_info(cpuinfo: Path = CPUINFO) -> Machine:
    """The CPU model and flags (from /proc/cpuinfo, else `platform`), core counts, thread variables."""
    fields = _cpuinfo_fields(cpuinfo)
    model = None
    flags: dict[str, bool | None] = dict.fromkeys(CPU_FLAGS)
    if fields is not None:
        # x86 says "model name"; Arm kernels say "Model" or only "CPU part".
        model = fields.get("model name") or fields.get("Model") or fields.get("Hardware")
        present = set((fields.get("flags") or fields.get("Features") or "").split())
        if present:
            flags = {flag: flag in present for flag in CPU_FLAGS}
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "architecture": platform.machine(),
        "system": platform.platform(),
        "flags": flags,
        "logical_cores": os.cpu_count(),
        "affinity_cores": affinity,
        "thread_variables": {name: os.environ.get(name) for name in THREAD_VARIABLES},
    }


def versions() -> dict[str, str | None]:
    """Python's version and the installed torch, NumPy and nextchar (None where one is missing)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def make_record(name: str, results: Mapping[str, Any], now: datetime) -> Record:
    """The benchmark's figures with the command, date, commit, machine and versions they came from."""
    return {
        "benchmark": name,
        "results": results,
        "argv": list(sys.argv),
        "command": shlex.join(sys.orig_argv),  # the interpreter and its own options too (-m bench.x)
        "cwd": os.getcwd(),
        "date": now.isoformat(timespec="seconds"),
        "git": git_state(),
        "machine": machine_info(),
        "versions": versions(),
    }


def result_path(name: str, now: datetime, short_commit: str | None, results_dir: Path = RESULTS_DIR) -> Path:
    """results_dir/<name>-<UTC date>T<time>Z-<short commit, or "nogit">.json."""
    return results_dir / f"{name}-{now.astimezone(UTC):%Y-%m-%dT%H%M%SZ}-{short_commit or 'nogit'}.json"


def write_result(
    name: str, results: Mapping[str, Any], out: Path | str | None = None, results_dir: Path = RESULTS_DIR
) -> Path:
    """Write benchmark `name`'s `results` and their provenance as JSON to `out` (default: a new
    file under `results_dir`, see `result_path`), atomically; returns the path written."""
    now = datetime.now(UTC)
    record = make_record(name, results, now)
    path = Path(out) if out is not None else result_path(name, now, record["git"]["short"], results_dir)
    atomic_write_json(path, record)
    return path
