"""nextchar.threads: the default thread count, train's probe (decided on fake timings, never on
the clock), the speed cache and the slow-run warning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from nextchar import threads
from nextchar.threads import (
    SpeedWatch,
    best_speed,
    computing_with,
    default_threads,
    faster_count,
    probe_threads,
    probe_training_threads,
    record_speed,
    recurrent_work,
    speed_cache_path,
    threads_for,
    threads_from_environment,
    training_settings,
)

# ------------------------------------------------------------------------------ the default


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [
        (2, 0.0, 2),  # an idle machine: every core
        (2, 0.4, 2),  # a little background noise rounds away
        (2, 0.5, 1),  # half up
        (2, 1.0, 1),  # one other single-threaded job: the core that is left
        (2, 1.6, 1),  # never below 1
        (2, 7.0, 1),
        (8, 2.5, 5),
        (8, 0.0, 8),
        (1, 0.0, 1),
        (4, -1.0, 4),  # a nonsense load counts as none
    ],
)
def test_threads_for_the_cores_left_by_other_jobs(cores, load, expected):
    assert threads_for(cores, load) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("3", 3), (" 1 ", 1), ("0", None), ("-2", None), ("two", None), ("", None)]
)
def test_omp_num_threads_counts_only_as_a_whole_number(value, expected):
    assert threads_from_environment({"OMP_NUM_THREADS": value}) == expected
    assert threads_from_environment({}) is None


@pytest.mark.parametrize(
    ("loadavg", "expected"),
    [
        ("1.93 1.40 0.90 1/311 4242", 0.0),  # a job that has just stopped: only this process runs
        ("1.93 1.40 0.90 2/311 4242", 1.0),  # one other job running now
        ("0.97 0.61 0.40 3/311 4242", 0.97),  # two running now, for a moment: the average decides
        ("0.00 0.00 0.00 0/12 7", 0.0),
        ("garbage", 0.0),
        ("", 0.0),
    ],
)
def test_other_load_is_the_average_but_no_more_than_what_runs_now(loadavg, expected):
    assert threads.other_load(loadavg) == pytest.approx(expected)
    assert threads_for(2, threads.other_load(loadavg)) == (2 if expected < 0.5 else 1)


def test_the_default_is_omp_num_threads_when_set_else_the_cores_left():
    assert default_threads({"OMP_NUM_THREADS": "5"}) == 5
    chosen = default_threads({"OMP_NUM_THREADS": "nonsense"})
    assert 1 <= chosen <= threads.available_cores()
    assert chosen == default_threads({})


def test_computing_with_sets_the_threads_for_the_block_only():
    before = torch.get_num_threads()
    with computing_with(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------------------ the probe


def fake_timer(seconds: dict[int, list[float]]):
    """A timer that reports the given seconds for each thread count in turn (the last one again
    when they run out) and records the calls."""
    calls: list[int] = []

    def timer(work, n):
        calls.append(n)
        times = seconds[n]
        return times[min(calls.count(n) - 1, len(times) - 1)]

    return timer, calls


@pytest.mark.parametrize(
    ("two", "one", "expected"),
    [
        ([0.100], [0.010], 1),  # contention: two threads 10× slower
        ([0.030], [0.020], 1),  # 1.5× slower is clearly slower
        ([0.010], [0.020], 2),  # two threads faster: keep them
        ([0.022], [0.020], 2),  # a close call keeps the threads
        ([0.010, 0.200, 0.011, 0.012], [0.015], 2),  # one stalled timing does not decide (median)
    ],
)
def test_probe_keeps_the_threads_unless_one_is_clearly_faster(two, one, expected):
    timer, calls = fake_timer({2: two, 1: one})
    assert probe_threads(lambda: None, 2, timer) == expected
    assert set(calls) == {1, 2} and calls.count(1) == calls.count(2)


def test_probe_stops_once_its_time_is_spent():
    timer, calls = fake_timer({4: [0.2], 1: [0.02]})
    probe_threads(lambda: None, 4, timer, seconds=0.3, rounds=10)
    assert calls == [4, 1, 4, 1]  # the warm-up (0.22 s) and one round bring it past 0.3 s
    timer, calls = fake_timer({4: [0.001], 1: [0.001]})
    probe_threads(lambda: None, 4, timer, seconds=0.3, rounds=3)
    assert len(calls) == 2 + 2 * 3  # quick work: every round


def test_probe_of_one_thread_times_nothing():
    timer, calls = fake_timer({1: [0.01]})
    assert probe_threads(lambda: None, 1, timer) == 1
    assert calls == []


def test_faster_count_without_timings_keeps_the_threads():
    assert faster_count({}, 2) == 2
    assert faster_count({2: [0.1], 1: []}, 2) == 2


def test_the_real_timer_runs_the_work_on_each_thread_count():
    seen: list[int] = []
    before = torch.get_num_threads()
    try:
        probe_threads(lambda: seen.append(torch.get_num_threads()), 2, rounds=1)
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1, 2, 1]


def test_the_probe_work_leaves_the_global_random_numbers_alone():
    state = torch.get_rng_state()
    work = recurrent_work(rows=4, size=8)
    work()
    assert torch.equal(torch.get_rng_state(), state)


def test_training_probe_says_in_one_line_when_it_drops_to_one_thread(capsys):
    before = torch.get_num_threads()
    try:
        slow, _ = fake_timer({2: [0.05], 1: [0.01]})
        assert probe_training_threads(2, rows=4, size=8, timer=slow) == 1
        assert torch.get_num_threads() == 1
        err = capsys.readouterr().err
        assert err == (
            "nextchar train: 2 threads ran slower than 1 (other jobs are using the cores); "
            "training with 1 — set --threads to choose\n"
        )
        fast, _ = fake_timer({2: [0.01], 1: [0.02]})
        assert probe_training_threads(2, rows=4, size=8, timer=fast) == 2
        assert torch.get_num_threads() == 2
        assert capsys.readouterr().err == ""
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------ the speed cache

SETTINGS = {"cpu": "a CPU", "model": {"kind": "lstm", "hidden_size": 512}, "batch": "32x128", "threads": 2}


def test_speed_cache_round_trip(tmp_path):
    path = tmp_path / "cache" / "nextchar" / "speed.json"
    assert best_speed(path, SETTINGS) is None
    assert record_speed(path, SETTINGS, 20_000.0)
    assert best_speed(path, SETTINGS) == 20_000.0
    other = {**SETTINGS, "threads": 1}
    assert record_speed(path, other, 9_000.0)
    assert record_speed(path, SETTINGS, 15_000.0)  # slower: the best stays
    assert best_speed(path, SETTINGS) == 20_000.0
    assert record_speed(path, SETTINGS, 25_000.0)
    assert (best_speed(path, SETTINGS), best_speed(path, other)) == (25_000.0, 9_000.0)
    assert len(json.loads(path.read_text())["best"]) == 2


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe not even UTF-8",
        b"{ half a JSON object",
        b"[1, 2, 3]",
        b'{"format": 99, "best": []}',
        b'{"format": 1, "best": [7, {"settings": "x"}, {"settings": {}, "chars_per_s": "fast"}]}',
    ],
)
def test_a_corrupt_cache_reads_as_empty_and_is_replaced(tmp_path, content):
    path = tmp_path / "speed.json"
    path.write_bytes(content)
    assert best_speed(path, SETTINGS) is None
    assert record_speed(path, SETTINGS, 1_000.0)
    assert best_speed(path, SETTINGS) == 1_000.0


def test_a_cache_under_a_regular_file_is_skipped(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache's directory would go")
    path = blocker / "nextchar" / "speed.json"
    assert best_speed(path, SETTINGS) is None
    assert record_speed(path, SETTINGS, 1_000.0) is False
    assert blocker.read_text() == "a file where the cache's directory would go"


def test_a_read_only_cache_directory_is_skipped(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only directory (the test under a regular file covers it)")
    directory = tmp_path / "nextchar"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        assert record_speed(directory / "speed.json", SETTINGS, 1_000.0) is False
        assert list(directory.iterdir()) == []
    finally:
        directory.chmod(0o700)


def test_the_cache_lives_under_xdg_cache_home():
    assert speed_cache_path({"XDG_CACHE_HOME": "/var/cache/me"}) == Path("/var/cache/me/nextchar/speed.json")
    home = Path.home() / ".cache" / "nextchar" / "speed.json"
    assert speed_cache_path({}) == home
    assert speed_cache_path({"XDG_CACHE_HOME": "relative/dir"}) == home  # the spec ignores relative paths


def test_training_settings_name_what_the_speed_depends_on():
    model = {"kind": "gru", "hidden_size": 64, "num_layers": 2, "embedding_size": 16, "context": 8, "dropout": 0.3}
    settings = training_settings(model, 32, 128, "text", "auto", False, 2)
    assert settings["model"] == {"kind": "gru", "hidden_size": 64, "num_layers": 2, "embedding_size": 16, "context": 8}
    assert settings["batch"] == "32x128" and settings["threads"] == 2 and settings["cpu"]
    assert settings != training_settings(model, 32, 128, "text", "auto", False, 1)
    # the output layer grows with the alphabet: a Chinese corpus is not measured against English
    chinese = training_settings({**model, "vocab_size": 4618, "output": "tied"}, 32, 128, "text", "auto", False, 2)
    assert chinese["model"]["vocab_size"] == 4618 and chinese["model"]["output"] == "tied"
    assert chinese != training_settings({**model, "vocab_size": 99}, 32, 128, "text", "auto", False, 2)


# ------------------------------------------------------------------------------ the slow-run warning


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watch(tmp_path: Path, best: float | None) -> tuple[SpeedWatch, Clock, list[str]]:
    path = tmp_path / "speed.json"
    if best is not None:
        record_speed(path, SETTINGS, best)
    clock, lines = Clock(), []
    return SpeedWatch(SETTINGS, path, lines.append, clock), clock, lines


def test_a_run_at_under_half_the_recorded_speed_is_warned_about_once(tmp_path):
    speed, clock, lines = watch(tmp_path, best=8_541.0)
    clock.now += 10
    speed.on_evaluation({"step": 16, "chars_per_s": 722.0})
    assert lines == [
        "nextchar train: 722 chars/s, under half the 8,541 chars/s this machine has trained these "
        "settings at on 2 threads; other jobs are probably using the cores (see --threads)"
    ]
    clock.now += 10
    speed.on_evaluation({"step": 32, "chars_per_s": 700.0})
    assert len(lines) == 1
    assert best_speed(tmp_path / "speed.json", SETTINGS) == 8_541.0  # a slow run does not lower the best


def test_a_run_at_its_usual_speed_is_not_warned_about_and_raises_the_best(tmp_path):
    speed, clock, lines = watch(tmp_path, best=8_000.0)
    clock.now += 10
    speed.on_evaluation({"chars_per_s": 4_100.0})  # above half
    clock.now += 10
    speed.on_evaluation({"chars_per_s": 9_000.0})
    assert lines == []
    assert best_speed(tmp_path / "speed.json", SETTINGS) == 9_000.0


def test_the_first_run_only_records(tmp_path):
    speed, clock, lines = watch(tmp_path, best=None)
    clock.now += 10
    speed.on_evaluation({"chars_per_s": 5_000.0})
    assert lines == [] and best_speed(tmp_path / "speed.json", SETTINGS) == 5_000.0


def test_the_start_of_a_run_and_short_windows_count_for_nothing(tmp_path):
    speed, clock, lines = watch(tmp_path, best=8_000.0)
    for seconds in (0.5, 2.0, 2.0, 0.2):  # the first step's evaluation, warm-up, a few steps
        clock.now += seconds
        speed.on_evaluation({"chars_per_s": 100.0})
    assert lines == [] and best_speed(tmp_path / "speed.json", SETTINGS) == 8_000.0
    clock.now += 1.0  # 5.7 s in, a window of a second: it counts
    speed.on_evaluation({"chars_per_s": 100.0})
    assert len(lines) == 1


def test_an_unwritable_cache_does_not_stop_the_watch(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    lines: list[str] = []
    clock = Clock()
    speed = SpeedWatch(SETTINGS, blocker / "speed.json", lines.append, clock)
    clock.now += 10
    speed.on_evaluation({"chars_per_s": 5_000.0})  # nothing raised
    assert lines == []


def test_the_warning_goes_to_stderr_by_default(tmp_path, capsys):
    record_speed(tmp_path / "speed.json", SETTINGS, 10_000.0)
    clock = Clock()
    speed = SpeedWatch(SETTINGS, tmp_path / "speed.json", clock=clock)
    clock.now += 10
    speed.on_evaluation({"chars_per_s": 1_000.0})
    out, err = capsys.readouterr()
    assert (
        out == ""
        and err.startswith("nextchar train: 1,000 chars/s, under half the 10,000 chars/s")
        and err.count("\n") == 1
    )
