"""--threads of every command that computes: parsed and checked alike, applied before the command
runs (torch's count inside the run), put back after it; train's probe only when no one chose."""

from __future__ import annotations

import pytest
import torch

import nextchar.sampling
import nextchar.threads
import nextchar.training.run
from nextchar.cli.main import build_parser, main
from tests.helpers import PROSE

# Each computing command with what it needs besides --threads, and its default count
# (None: chosen by the machine; the completing commands keep one thread, their fastest).
COMMANDS = {
    "train": (["train"], None),
    "eval": (["eval", "corpus.txt"], None),
    "sample": (["sample"], None),
    "predict": (["predict", "a"], None),
    "complete": (["complete", "a"], 1),
    "type": (["type"], 1),
    "eval-complete": (["eval-complete", "lines.txt"], 1),
    "serve": (["serve"], 1),
}

TINY = ["--kind", "gru", "--hidden", "16", "--embedding", "8", "--batch-size", "4", "--seq-len", "16"]
TINY += ["--steps", "2", "--warmup", "1", "--precision", "fp32", "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("command", COMMANDS)
def test_threads_parse_with_each_commands_default(command):
    argv, default = COMMANDS[command]
    assert build_parser().parse_args(argv).threads == default
    assert build_parser().parse_args([*argv, "--threads", "3"]).threads == 3


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be at least 1, got 0"),
        ("-2", "must be at least 1, got -2"),
        ("many", "expected a whole number, got 'many'"),
    ],
)
def test_a_bad_thread_count_is_a_one_line_usage_error(capsys, command, value, message):
    argv, _ = COMMANDS[command]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--threads", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threads" in err and message in err


def counting_threads(monkeypatch, module, name):
    """Wrap module.name so that each call records torch's thread count, then runs as it was."""
    seen: list[int] = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


@pytest.fixture
def corpus(write_file, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the speed cache stays in here
    return str(write_file("prose.txt", PROSE * 3))


@pytest.mark.parametrize("count", [1, 2])
def test_train_runs_on_the_threads_asked_for_and_puts_them_back(monkeypatch, corpus, tmp_path, count):
    torch.set_num_threads(3 - count)  # not what is asked for
    try:
        seen = counting_threads(monkeypatch, nextchar.training.run, "train_on")
        probes = counting_threads(monkeypatch, nextchar.threads, "probe_training_threads")
        assert main(["train", corpus, "--out", str(tmp_path / "m"), "--threads", str(count), *TINY]) == 0
        assert seen == [count] and probes == []  # chosen by the user: no probe
        assert torch.get_num_threads() == 3 - count
    finally:
        torch.set_num_threads(1)


def test_train_takes_omp_num_threads_as_chosen(monkeypatch, corpus, tmp_path, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    seen = counting_threads(monkeypatch, nextchar.training.run, "train_on")
    probes = counting_threads(monkeypatch, nextchar.threads, "probe_training_threads")
    assert main(["train", corpus, "--out", str(tmp_path / "m"), *TINY]) == 0
    assert seen == [2] and probes == []
    assert "ran slower" not in capsys.readouterr().err


def test_train_probes_the_threads_it_chose_itself(monkeypatch, corpus, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    probed: list[int] = []

    def probe(threads, rows, size, *args, **kwargs):
        probed.append(threads)
        assert (rows, size) == (4, 16)  # the run's batch and state
        return threads

    monkeypatch.setattr(nextchar.threads, "probe_training_threads", probe)
    seen = counting_threads(monkeypatch, nextchar.training.run, "train_on")
    assert main(["train", corpus, "--out", str(tmp_path / "m"), *TINY]) == 0
    assert probed == seen and 1 <= probed[0] <= nextchar.threads.available_cores()  # main's choice
    assert torch.get_num_threads() == 1  # the process's count again


def test_a_short_run_records_no_speed(corpus, tmp_path):
    assert main(["train", corpus, "--out", str(tmp_path / "m"), "--threads", "1", *TINY]) == 0
    assert not (tmp_path / "cache" / "nextchar" / "speed.json").exists()  # too few steps to measure


def test_sample_and_predict_run_on_the_threads_asked_for(monkeypatch, text_model_dir, capsys):
    sampled = counting_threads(monkeypatch, nextchar.sampling, "sample")
    predicted = counting_threads(monkeypatch, nextchar.sampling, "predict")
    assert main(["sample", "-m", str(text_model_dir), "--length", "5", "--seed", "1", "--threads", "2"]) == 0
    assert main(["predict", "it", "-m", str(text_model_dir), "--threads", "2"]) == 0
    assert sampled == predicted == [2]
    assert torch.get_num_threads() == 1
