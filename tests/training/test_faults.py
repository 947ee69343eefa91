"""Training (and preparing) under real faults: signals, second processes, overflow, full disks.

Each fault happens for real: SIGTERM and SIGKILL are sent to a `nextchar train` process, the
second writer and the reader are processes of their own, the divergence is floating-point
overflow in the model's own arithmetic, and a full disk is RLIMIT_FSIZE (with SIGXFSZ ignored,
so a write past it fails with EFBIG as one past a full disk fails with ENOSPC).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nextchar.checkpoint import load_checkpoint, read_bundle, write_bundle
from nextchar.cli.main import main
from tests.data.helpers import one_line_error
from tests.helpers import PROSE, TINY_TRAIN_FLAGS

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def flags(steps: int, eval_interval: int) -> list[str]:
    out = list(TINY_TRAIN_FLAGS)
    out[out.index("--steps") + 1] = str(steps)
    return [*out, "--eval-interval", str(eval_interval), "--no-memory"]


def start_training(corpus: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "nextchar", "train", str(corpus), "--out", str(out), *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until `path` exists (the run has saved something), or fail if the run ended first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL, and the process's pipes read to their end and closed."""
    proc.kill()
    proc.communicate()


def wait_for_progress(out: Path, proc: subprocess.Popen, step: int, timeout: float = 60.0) -> None:
    """Until the run has saved a resume state past `step`, or has ended."""
    deadline = time.monotonic() + timeout
    state = out / "resume" / "state.json"
    while proc.poll() is None and not (state.exists() and resume_step(out) > step):
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)


def metrics_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if line]


def resume_step(out: Path) -> int:
    return json.loads((out / "resume" / "state.json").read_text())["step"]


@pytest.fixture
def corpus(write_file) -> Path:
    return write_file("prose.txt", PROSE * 20)


def test_sigterm_saves_the_resume_state_at_the_current_step_and_exits_143(tmp_path, corpus):
    out = tmp_path / "run"
    proc = start_training(corpus, out, *flags(100_000, 20))
    wait_for(out / "resume" / "state.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    stopped = resume_step(out)
    assert 20 <= stopped < 100_000 and f"stopped by SIGTERM at step {stopped}" in err
    assert metrics_steps(out)[-1] == stopped  # evaluated at the step it stopped in
    load_checkpoint(out)
    # It goes on from there.
    assert main(["train", "--resume", str(out), "--steps", str(stopped + 5), "--quiet"]) == 0
    assert resume_step(out) == stopped + 5


def test_a_crash_loop_of_sigkills_always_leaves_a_consistent_run(tmp_path, corpus):
    """20 SIGKILLs at random moments, each followed by --resume: the checkpoint always loads,
    the metrics' steps strictly increase, and at the end the checkpoint's validation BPC is the
    least of the history."""
    import random

    out, rng = tmp_path / "run", random.Random(0)
    total = 400
    proc = start_training(corpus, out, *flags(total, 10))
    for _ in range(20):
        wait_for_progress(out, proc, resume_step(out) if (out / "resume" / "state.json").exists() else -1)
        time.sleep(rng.uniform(0.0, 0.3))  # a moment into the next steps, evaluations or saves
        kill(proc)
        load_checkpoint(out)
        steps = metrics_steps(out)
        assert steps == sorted(set(steps)), steps
        if resume_step(out) >= total:
            break
        proc = start_training(corpus, out, "--resume", str(out), "--steps", str(total), "--quiet")
    else:  # the run the last kill was followed by: let it finish
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    steps = metrics_steps(out)
    assert steps == sorted(set(steps)) and steps[-1] == total
    history = [json.loads(line)["val_bpc"] for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    assert load_checkpoint(out).meta["metrics"]["val"]["bpc"] == min(history)


def test_a_second_run_into_the_same_directory_is_refused_while_the_first_lives(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    proc = start_training(corpus, out, *flags(100_000, 20))
    try:
        wait_for(out / "resume" / "state.json", proc)
        line = one_line_error(capsys, ["train", str(corpus), "--out", str(out), "--overwrite", *flags(3, 3)])
        assert "is being written by another `train` or `index`" in line
        line = one_line_error(capsys, ["train", "--resume", str(out), "--steps", "3", "--quiet"])
        assert "is being written by another `train` or `index`" in line
        line = one_line_error(capsys, ["index", str(corpus), "-m", str(out)])  # adding a memory: the same lock
        assert "is being written by another `train` or `index`" in line
    finally:
        kill(proc)
    # The lock goes with the process, however it ended.
    assert main(["train", "--resume", str(out), "--steps", str(resume_step(out) + 2), "--quiet"]) == 0


def test_a_new_run_over_an_old_one_is_refused_without_overwrite(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(["train", str(corpus), "--out", str(out), *flags(4, 2)]) == 0
    before = (out / "metrics.jsonl").read_text()
    line = one_line_error(capsys, ["train", str(corpus), "--out", str(out), *flags(4, 2)])
    assert "holds a training run already" in line and "--resume" in line and "--overwrite" in line
    assert (out / "metrics.jsonl").read_text() == before  # nothing truncated
    assert main(["train", str(corpus), "--out", str(out), "--overwrite", *flags(2, 2)]) == 0
    assert metrics_steps(out) == [2]


@pytest.mark.parametrize("state", ['{"step": 1' + "9" * 5000 + "}", "[1, 2]"], ids=["huge integer", "not an object"])
def test_a_damaged_resume_state_is_one_line(tmp_path, corpus, capsys, state):
    out = tmp_path / "run"
    assert main(["train", str(corpus), "--out", str(out), *flags(2, 2)]) == 0
    (out / "resume" / "state.json").write_text(state)
    line = one_line_error(capsys, ["train", "--resume", str(out), "--steps", "4", "--quiet"])
    assert "damaged resume state" in line


def test_divergence_stops_the_run_and_saves_nothing_of_it(tmp_path, corpus, capsys):
    """Weights drawn from ±1e38 (finite, so they load) overflow in the next step's forward pass:
    the run stops with one line naming the step, and leaves the checkpoint and resume state as
    they were."""
    out = tmp_path / "run"
    assert main(["train", str(corpus), "--out", str(out), *flags(4, 2)]) == 0
    meta, tensors = read_bundle(out / "resume", "state.json")
    torch.manual_seed(0)
    for name, tensor in tensors.items():
        if name.startswith("model.") and tensor.is_floating_point():
            tensor.uniform_(-1e38, 1e38)
    meta.pop("weights")
    write_bundle(out / "resume", meta, tensors, "state.json", stem="state")
    before = {path.name: path.read_bytes() for path in [*out.iterdir(), *(out / "resume").iterdir()] if path.is_file()}
    line = one_line_error(capsys, ["train", "--resume", str(out), "--steps", "8", "--quiet"])
    assert "training diverged at step 5" in line and "lower --lr" in line
    after = {path.name: path.read_bytes() for path in [*out.iterdir(), *(out / "resume").iterdir()] if path.is_file()}
    assert after == before
    assert torch.isfinite(next(load_checkpoint(out).model.parameters())).all()


LOADER = """
import sys, pathlib
from nextchar.checkpoint import load_checkpoint
from nextchar.errors import UserError
directory, stop = sys.argv[1], pathlib.Path(sys.argv[2])
load_checkpoint(directory)
print("ready", flush=True)
loads = failures = 0
last = ""
while not stop.exists():
    try:
        load_checkpoint(directory)
        loads += 1
    except UserError as exc:
        failures += 1
        last = str(exc)
print(loads, failures, last)
"""


def test_a_reader_in_another_process_never_sees_a_half_swapped_checkpoint(tmp_path):
    from nextchar.checkpoint import save_checkpoint
    from nextchar.models import build_model
    from nextchar.text import Vocabulary
    from tests.helpers import model_config

    directory, stop = tmp_path / "ckpt", tmp_path / "stop"
    vocab = Vocabulary.from_text(PROSE)
    model = build_model(model_config("gru", vocab_size=len(vocab)))
    save_checkpoint(directory, model, vocab, "text")
    reader = subprocess.Popen(
        [sys.executable, "-c", LOADER, str(directory), str(stop)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert reader.stdout is not None and reader.stdout.readline() == "ready\n"  # it loads from now on
    for _ in range(300):
        with torch.no_grad():
            next(model.parameters()).add_(0.01)  # new weights: a new file each save
        save_checkpoint(directory, model, vocab, "text")
    stop.touch()
    out, _ = reader.communicate(timeout=60)
    loads, failures, *last = out.strip().split(" ", 2)
    assert int(failures) == 0, last
    assert int(loads) > 20


def file_size_limit(limit: int):
    """A child process's preexec_fn: writes past `limit` bytes fail (EFBIG) instead of killing it."""

    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_writes


def nextchar_limited(limit: int, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nextchar", *argv],
        preexec_fn=file_size_limit(limit),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("nextchar:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_full_disk_while_training_is_one_line_and_loses_nothing(tmp_path, corpus):
    out = tmp_path / "run"
    assert main(["train", str(corpus), "--out", str(out), *flags(4, 2)]) == 0
    weights = load_checkpoint(out).meta["weights"]
    line = one_error_line(nextchar_limited(2048, "train", "--resume", str(out), "--steps", "8", "--quiet"))
    assert "could not be written (File too large)" in line and str(out) in line
    assert not [path for path in out.rglob("*") if path.name.endswith(".tmp")]
    assert load_checkpoint(out).meta["weights"] == weights and resume_step(out) == 4
    assert main(["train", "--resume", str(out), "--steps", "8", "--quiet"]) == 0  # once there is room
    assert resume_step(out) == 8


def test_a_full_disk_while_preparing_again_leaves_the_good_directory_in_use(tmp_path, write_file):
    from nextchar.data.prepared import PreparedCorpus

    out = tmp_path / "prepared"
    small, large = write_file("small.txt", PROSE), write_file("large.txt", PROSE * 200)
    assert main(["prepare", str(small), "--out", str(out), "--quiet"]) == 0
    tokens = len(PreparedCorpus.open(out).tokens)
    line = one_error_line(nextchar_limited(64 * 1024, "prepare", str(large), "--out", str(out), "--quiet"))
    assert "could not be written (File too large)" in line and str(out) in line
    assert not [path for path in out.iterdir() if path.name.endswith(".tmp")]
    assert len(PreparedCorpus.open(out).tokens) == tokens  # the directory prepared before, whole
