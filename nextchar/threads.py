"""How many CPU threads a command computes with, and whether training runs as fast as it can here.

PyTorch starts one intra-op thread per core. On a machine where other jobs hold some of the
cores that is a bad default: its threads wait for each other at every parallel operation, and
a thread that the kernel has parked behind another job stalls all of them (on 2 cores beside
one busy single-threaded job, training on 2 threads runs many times slower than on 1). So:

  default_threads()   the cores this process may run on, less the load of the other jobs
                      (OMP_NUM_THREADS, when set, is the user's or torchrun's choice and wins);
  set_threads(n)      apply it before any torch work;
  probe_threads(...)  train's check that its threads beat one thread on work like its own
                      (skipped when the user chose the number);
  SpeedWatch          compares a run's chars/s with the best this machine has recorded for the
                      same settings (a small JSON cache), and says so in one line when the run
                      is far slower — the sign of other jobs on the cores.

Imports torch only inside the functions that need it, so that a parser can use this module.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from nextchar.files import atomic_write_json

THREADS_VARIABLE = "OMP_NUM_THREADS"
PROBE_SECONDS = 0.3  # the probe stops timing after a round that brings its total past this
PROBE_ROUNDS = 3  # timings of each thread count (after one untimed warm-up call each)
CLEARLY_FASTER = 1.25  # one thread wins only when the other count's median is this much slower
PROBE_FLOP = 3e8  # floating-point operations of one timed call (a few ms on one core)
SLOW_FRACTION = 0.5  # warn below this fraction of the recorded best chars/s
# An evaluation's chars/s counts once the run is this far in (past the warm-up and any evaluation
# at its start) and its window of steps this long (enough steps to measure):
MIN_RUN_SECONDS = 5.0
MIN_WINDOW_SECONDS = 1.0
CACHE_FORMAT = 1

_interop_set = False  # torch accepts the inter-op thread count once, before any parallel work


# ------------------------------------------------------------------------------ how many threads


def threads_for(cores: int, load: float) -> int:
    """The threads to compute with on `cores` cores whose other jobs keep `load` of them busy
    (the 1-minute load average, rounded half up): what is left, never below 1."""
    return max(1, cores - math.floor(max(load, 0.0) + 0.5))


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or a container's
    cpuset), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def other_load(loadavg: str | None = None) -> float:
    """How many cores other jobs keep busy (0 if unknown): the 1-minute load average, but never
    more than the tasks running at this moment besides this one. The average lags by a minute: a
    job that has just stopped (the previous training run, the test suite) would still count, and
    a run started right after it would take one thread where two are free.

    `loadavg`: the text of /proc/loadavg ("0.97 0.61 0.40 2/311 4242": averages, then running/all
    tasks), read when not given; elsewhere than Linux, os.getloadavg() alone."""
    if loadavg is None:
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                loadavg = f.read()
        except OSError:
            try:
                return os.getloadavg()[0]
            except (AttributeError, OSError):
                return 0.0
    try:
        fields = loadavg.split()
        average, running = float(fields[0]), int(fields[3].split("/")[0])
    except (IndexError, ValueError):
        return 0.0
    return max(0.0, min(average, running - 1))  # the running count includes this process


def threads_from_environment(environ: Mapping[str, str] | None = None) -> int | None:
    """OMP_NUM_THREADS when it is a whole number ≥ 1 (set by the user, or by torchrun: 1 per
    process), else None."""
    value = (os.environ if environ is None else environ).get(THREADS_VARIABLE, "").strip()
    try:
        threads = int(value)
    except ValueError:
        return None
    return threads if threads >= 1 else None


def default_threads(environ: Mapping[str, str] | None = None) -> int:
    """The threads a command computes with when --threads is not given: OMP_NUM_THREADS if it is
    set, else the cores this process may use less the load of other jobs (threads_for)."""
    return threads_from_environment(environ) or threads_for(available_cores(), other_load())


def set_threads(threads: int) -> None:
    """Make torch compute with `threads` intra-op threads; the inter-op pool too, the first time
    in a process (torch refuses a second setting, or one after parallel work began: then it keeps
    its own, which eager training hardly uses)."""
    import torch

    global _interop_set
    torch.set_num_threads(threads)
    if not _interop_set:
        _interop_set = True
        with suppress(RuntimeError):
            torch.set_num_interop_threads(threads)


@contextmanager
def computing_with(threads: int) -> Iterator[None]:
    """set_threads(threads) for the block, torch's intra-op count as it was afterwards (a command
    run inside a longer-lived process, e.g. a test, leaves the process as it found it)."""
    import torch

    before = torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------ the probe

Timer = Callable[[Callable[[], object], int], float]


def time_with(work: Callable[[], object], threads: int) -> float:
    """Seconds that one call of `work` takes with `threads` torch threads."""
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def faster_count(timings: Mapping[int, Sequence[float]], threads: int) -> int:
    """1 when one thread was clearly faster than `threads` (its median time CLEARLY_FASTER times
    shorter), else `threads`: a close call keeps the threads."""
    many, one = timings.get(threads), timings.get(1)
    if threads <= 1 or not many or not one:
        return threads
    return 1 if statistics.median(one) * CLEARLY_FASTER < statistics.median(many) else threads


def probe_threads(
    work: Callable[[], object],
    threads: int,
    timer: Timer = time_with,
    seconds: float = PROBE_SECONDS,
    rounds: int = PROBE_ROUNDS,
) -> int:
    """Time `work` with `threads` threads and with 1, alternately, and return the faster count
    (faster_count). `timer(work, n)` runs it once with n threads and returns the seconds it took
    (time_with); each count first gets an untimed warm-up call. Stops after a round that brings
    the total past `seconds`. Leaves torch's thread count as the timer left it: set it after."""
    if threads <= 1:
        return threads
    spent = sum(timer(work, n) for n in (threads, 1))  # warm-up: threads start, memory is touched
    timings: dict[int, list[float]] = {threads: [], 1: []}
    for _ in range(rounds):
        for n in (threads, 1):
            took = timer(work, n)
            timings[n].append(took)
            spent += took
        if spent >= seconds:
            break
    return faster_count(timings, threads)


def recurrent_work(rows: int, size: int) -> Callable[[], None]:
    """Work like a recurrent model's training steps: a chain of (rows × size) @ (size × 4·size)
    products, each followed by a tanh (the LSTM's gates), about PROBE_FLOP operations a call."""
    import torch

    generator = torch.Generator().manual_seed(0)  # the global RNG stays the run's
    a = torch.randn(rows, size, generator=generator)
    w = torch.randn(size, 4 * size, generator=generator)
    out = torch.empty(rows, 4 * size)
    repeats = min(64, max(2, round(PROBE_FLOP / (2 * rows * size * 4 * size))))

    def work() -> None:
        for _ in range(repeats):
            torch.mm(a, w, out=out)
            out.tanh_()

    return work


def probe_training_threads(
    threads: int, rows: int, size: int, timer: Timer = time_with, command: str = "nextchar train"
) -> int:
    """train's probe on recurrent_work of its batch's rows and its state's size: `threads`,
    unless one thread was clearly faster, which it says in one line on stderr before returning 1.
    Sets torch to the count it returns."""
    if threads <= 1:
        set_threads(threads)
        return threads
    chosen = probe_threads(recurrent_work(rows, size), threads, timer)
    if chosen < threads:
        print(
            f"{command}: {threads} threads ran slower than 1 (other jobs are using the cores); "
            f"training with 1 — set --threads to choose",
            file=sys.stderr,
        )
    set_threads(chosen)
    return chosen


# ------------------------------------------------------------------------------ the speed cache


def speed_cache_path(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_CACHE_HOME/nextchar/speed.json (~/.cache when XDG_CACHE_HOME is unset or relative)."""
    base = (os.environ if environ is None else environ).get("XDG_CACHE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "nextchar" / "speed.json"


def cpu_model() -> str:
    """The processor's name (Linux: /proc/cpuinfo's model name), else the platform's."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _entries(path: Path) -> list[dict[str, Any]]:
    """The cache's entries, each {"settings": {...}, "chars_per_s": x}; none if it is missing,
    unreadable or not what this module writes."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not UTF-8 or not JSON
        return []
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("best"), list):
        return []
    return [
        entry
        for entry in data["best"]
        if isinstance(entry, dict)
        and isinstance(entry.get("settings"), dict)
        and isinstance(entry.get("chars_per_s"), int | float)
    ]


def best_speed(path: Path, settings: Mapping[str, Any]) -> float | None:
    """The best chars/s recorded in the cache at `path` for exactly these settings, if any."""
    found = [float(e["chars_per_s"]) for e in _entries(path) if e["settings"] == dict(settings)]
    return max(found) if found else None


def record_speed(path: Path, settings: Mapping[str, Any], chars_per_s: float) -> bool:
    """Keep `chars_per_s` as the best for these settings if it beats the recorded one; written
    atomically. False (and nothing raised) when the cache cannot be written."""
    entries = [e for e in _entries(path) if e["settings"] != dict(settings)]
    previous = best_speed(path, settings)
    if previous is not None and previous >= chars_per_s:
        return True
    entries.append({"settings": dict(settings), "chars_per_s": round(chars_per_s, 1)})
    try:
        atomic_write_json(path, {"format": CACHE_FORMAT, "best": entries})
    except OSError:  # read-only, full, or a file where a directory should be: it is only a cache
        return False
    return True


def training_settings(
    model: Mapping[str, Any],
    batch_size: int,
    seq_len: int,
    corpus_format: str,
    precision: str,
    compiled: bool,
    threads: int,
) -> dict[str, Any]:
    """What a CPU training run's chars/s depends on, as the cache's key: the processor, the
    model's shape (`model`: ModelConfig.to_json(); the alphabet's size too, which the output
    layer grows with), B × T, the framing, the precision, whether
    the step is compiled, and the threads."""
    shape = ("kind", "vocab_size", "hidden_size", "num_layers", "embedding_size", "context", "output")
    return {
        "cpu": cpu_model(),
        "model": {name: model[name] for name in shape if name in model},
        "batch": f"{batch_size}x{seq_len}",
        "format": corpus_format,
        "precision": precision,
        "compile": compiled,
        "threads": threads,
    }


def _above_the_progress_bar(line: str) -> None:
    """A line on stderr that a running tqdm bar redraws below instead of running into."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


class SpeedWatch:
    """Watches a training run's chars/s, one metrics record per evaluation (`on_evaluation`).

    A record counts once the run is MIN_RUN_SECONDS in and its window is MIN_WINDOW_SECONDS
    long (by this watch's clock, from the previous record). The first one that falls below
    SLOW_FRACTION of the best recorded for the same settings gets one line on stderr; every
    counted figure that beats the recorded best becomes it.
    """

    def __init__(
        self,
        settings: Mapping[str, Any],
        path: Path | None = None,
        warn: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        command: str = "nextchar train",
    ) -> None:
        self.settings = dict(settings)
        self.path = speed_cache_path() if path is None else path
        self.best = best_speed(self.path, self.settings)  # what this machine did before this run
        self.recorded = self.best or 0.0
        self.warn = warn or _above_the_progress_bar
        self.clock = clock
        self.started = self.last = clock()
        self.command = command
        self.warned = False

    def on_evaluation(self, record: Mapping[str, Any]) -> None:
        now = self.clock()
        window, self.last = now - self.last, now
        speed = record.get("chars_per_s")
        if not isinstance(speed, int | float) or speed <= 0:
            return
        if now - self.started < MIN_RUN_SECONDS or window < MIN_WINDOW_SECONDS:
            return
        if self.best and speed < SLOW_FRACTION * self.best and not self.warned:
            self.warned = True
            threads = self.settings.get("threads")
            self.warn(
                f"{self.command}: {speed:,.0f} chars/s, under half the {self.best:,.0f} chars/s this "
                f"machine has trained these settings at on {threads} thread{'s' if threads != 1 else ''}; "
                "other jobs are probably using the cores (see --threads)"
            )
        if speed > self.recorded:
            self.recorded = speed
            record_speed(self.path, self.settings, speed)
