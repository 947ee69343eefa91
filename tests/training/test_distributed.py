"""Data-parallel training with torchrun: 2 CPU processes (gloo) on this machine (distributed.py).

Each test launches `python -m torch.distributed.run --standalone --nproc_per_node 2` (torchrun)
as a subprocess and checks what DDP promises: replicas identical after every step, the same
trajectory as one process with the same global batch, resuming on another number of
processes, one-line errors, and a clean stop with an intact checkpoint when a rank dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nextchar.checkpoint import load_checkpoint
from nextchar.cli.main import main
from nextchar.data.batches import split_validation
from nextchar.data.prepare import prepare
from nextchar.training.loop import train
from nextchar.training.resume import RESUME_DIR
from tests.helpers import NAMES, PROSE, model_config, train_config

pytestmark = [
    pytest.mark.slow,  # every test launches torchrun
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="this PyTorch has no gloo backend",
    ),
]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# A tiny model and exact arithmetic (fp32, no dropout), so trajectories can be compared.
TINY = [
    "--kind",
    "lstm",
    "--hidden",
    "16",
    "--layers",
    "1",
    "--embedding",
    "8",
    "--dropout",
    "0",
    "--embedding-dropout",
    "0",
    "--precision",
    "fp32",
    "--device",
    "cpu",
    "--lr",
    "0.01",
    "--warmup",
    "2",
    "--quiet",
]

# Trains with the library inside torchrun, then every rank saves its own final weights.
REPLICA_SCRIPT = """
import json, sys
import torch
from safetensors.torch import save_file
from nextchar.training import distributed
from nextchar.models import ModelConfig
from nextchar.training.config import TrainConfig
from nextchar.training.loop import train

train_text, val_text, out, config, model, corpus_format = sys.argv[1:]
distributed.init(torch.device("cpu"))
result = train(open(train_text).read(), open(val_text).read(), out, TrainConfig.from_json(json.loads(config)),
               ModelConfig.from_json(json.loads(model)), corpus_format, progress=False)
save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, f"{out}/rank{distributed.rank()}.st")
del result
distributed.teardown()
"""


def torchrun(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *argv], capture_output=True, text=True, timeout=timeout, env=ENV)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_trajectory(got: list[dict], expected: list[dict]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["train_bpc"] == pytest.approx(b["train_bpc"], abs=1e-4), (a, b)
        assert a["val_bpc"] == pytest.approx(b["val_bpc"], abs=1e-4), (a, b)


# (text format, carried state and the LSTM: test_cli_two_processes_equal_one_… below)
@pytest.mark.parametrize(("corpus_format", "kind", "batch_size"), [("lines", "rnn", 5)])
def test_replicas_stay_identical_and_equal_one_process(tmp_path, write_file, corpus_format, kind, batch_size):
    content = PROSE * 2 if corpus_format == "text" else NAMES * 2
    train_text, val_text = split_validation(content, corpus_format, 0.1)
    # 5 lines: ranks get 3 and 2; the evaluations score a moving average of the weights (--ema)
    config = train_config(steps=8, batch_size=batch_size, eval_interval=4, ema=0.9)
    model = model_config(kind, num_layers=2 if kind == "lstm" else 1)
    script = write_file("replicas.py", REPLICA_SCRIPT)
    done = torchrun(
        str(script),
        str(write_file("train.txt", train_text)),
        str(write_file("val.txt", val_text)),
        str(tmp_path / "ddp"),
        json.dumps(config.to_json()),
        json.dumps(model.to_json()),
        corpus_format,
    )
    assert done.returncode == 0, done.stderr
    rank0, rank1 = (load_file(tmp_path / "ddp" / f"rank{r}.st") for r in (0, 1))
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)  # DDP: bitwise the same
    single = train(train_text, val_text, tmp_path / "single", config, model, corpus_format, progress=False)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(rank0[name], value, atol=2e-5, rtol=1e-4)
    assert_same_trajectory(metrics(tmp_path / "ddp"), metrics(tmp_path / "single"))
    assert load_checkpoint(tmp_path / "ddp").meta["training"]["processes"] == 2


def test_cli_two_processes_equal_one_and_resume_on_the_other_count(tmp_path, write_file, capsys):
    prepare([str(write_file("prose.txt", PROSE * 4))], tmp_path / "data", progress=False)
    data = str(tmp_path / "data")
    # The warm-up outlasts the run, so the learning rate does not depend on --steps, which grows on resume.
    common = [*TINY, "--batch-size", "4", "--seq-len", "16", "--eval-interval", "2", "--warmup", "100", "--lr", "0.05"]
    # 2 processes for 6 steps, then 1 process to step 12; and the other way round.
    done = torchrun("-m", "nextchar", "train", data, "--out", str(tmp_path / "two-then-one"), "--steps", "6", *common)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("trained 6 steps") == 1 and "on 2 processes" in done.stdout  # rank 0 alone prints
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr
    assert main(["train", data, "--out", str(tmp_path / "one-then-two"), "--steps", "6", *common]) == 0
    assert main(["train", "--resume", str(tmp_path / "two-then-one"), "--steps", "12", "--quiet"]) == 0
    done = torchrun("-m", "nextchar", "train", "--resume", str(tmp_path / "one-then-two"), "--steps", "12", "--quiet")
    assert done.returncode == 0, done.stderr
    assert main(["train", data, "--out", str(tmp_path / "one"), "--steps", "12", *common]) == 0
    reference = metrics(tmp_path / "one")
    assert_same_trajectory(metrics(tmp_path / "two-then-one"), reference)
    assert_same_trajectory(metrics(tmp_path / "one-then-two"), reference)


def test_two_processes_evaluate_by_rank_0s_clock_together(tmp_path, write_file):
    # Evaluations by the clock are decided on rank 0 and agreed on at a step: a rank that
    # evaluated alone would leave the other waiting for it forever (the timeout would fire).
    prepare([str(write_file("prose.txt", PROSE * 4))], tmp_path / "data", progress=False)
    out = tmp_path / "run"
    options = ["--time-budget", "8", "--eval-interval", "1000000", "--batch-size", "4", "--seq-len", "16"]
    done = torchrun("-m", "nextchar", "train", str(tmp_path / "data"), "--out", str(out), *options, *TINY)
    assert done.returncode == 0, done.stderr
    assert "on 2 processes" in done.stdout
    points = metrics(out)
    assert len(points) >= 2, points  # at least one by the clock before the final one
    assert points[-1]["elapsed"] <= 8.0


def test_more_processes_than_rows_is_a_one_line_error(tmp_path, write_file):
    prepare([str(write_file("tiny.txt", PROSE))], tmp_path / "data", progress=False)
    done = torchrun(
        "-m",
        "nextchar",
        "train",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--seq-len",
        "300",
        *TINY,
        timeout=90,
    )
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("nextchar: error: ")]
    assert ours, done.stderr
    assert all(
        "2 processes, but the training data fills only 1 of the 8 rows of a batch (each row is a stream "
        "of --seq-len 300 windows)" in line
        for line in ours
    )
    assert "nextchar/" not in done.stderr.split("ChildFailedError")[0]  # no traceback of ours before torchrun's


def worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """rank → pid of the processes torchrun started (its children)."""
    ranks: dict[int, int] = {}
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in map(int, children):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = [e for e in environ if e.startswith(b"RANK=")]
        if rank:
            ranks[int(rank[0][5:])] = pid
    return ranks


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the workers through Linux's /proc")
def test_a_dead_rank_stops_the_run_with_its_last_checkpoint_intact(tmp_path, write_file, capsys):
    prepare([str(write_file("prose.txt", PROSE * 4))], tmp_path / "data", progress=False)
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [
            *TORCHRUN,
            "-m",
            "nextchar",
            "train",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--steps",
            "1000000",
            "--eval-interval",
            "5",
            "--batch-size",
            "4",
            "--seq-len",
            "16",
            *TINY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 90
        while not ((out / "metrics.jsonl").exists() and len(metrics(out)) >= 2):
            assert time.monotonic() < deadline and launcher.poll() is None, "the run did not get going"
            time.sleep(0.2)
        os.kill(worker_pids(launcher)[1], signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode != 0
    assert "nextchar: error: train: rank 0 lost contact with the other processes" in stderr, stderr
    assert f"the last checkpoint in {out} is intact: resume with --resume {out}" in stderr
    # The checkpoint and the resume state are whole, and the run goes on from there.
    load_checkpoint(out)
    step = json.loads((out / RESUME_DIR / "state.json").read_text())["step"]
    assert step >= 5 and step % 5 == 0  # the last evaluation point whose state was saved
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--steps", str(step + 3), "--quiet"]) == 0
    assert f"trained {step + 3} steps" in capsys.readouterr().out
