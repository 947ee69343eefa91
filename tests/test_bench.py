"""The benchmarks' plumbing, without running a benchmark: bench.record writes a result with the
facts that trace it, every bench module imports without doing any work, and two benchmarks
answer `python -m bench.<name> --help` from the repository root."""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy
import pytest
import torch

from bench import record
from bench.record import CPU_FLAGS, git_state, machine_info, write_result

REPOSITORY = Path(__file__).resolve().parents[1]
BENCH = REPOSITORY / "bench"
HELPERS = {"__init__", "compressors", "record"}  # modules of bench/ that are not benchmarks


def in_git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    done = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.returncode == 0


def cpuinfo_flags() -> set[str] | None:
    """The flags of /proc/cpuinfo, read independently of bench.record; None where there are none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(match.group(1).split()) if match else None


def test_write_result_holds_the_figures_and_what_traces_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["bench/demo.py", "--quick", "--budget", "5"])
    before = datetime.now(UTC)
    path = write_result("demo", {"bpc": 1.25, "rows": [{"k": 5}]}, out=tmp_path / "sub" / "demo.json")
    assert path == tmp_path / "sub" / "demo.json"
    saved = json.loads(path.read_text(encoding="utf-8"))

    assert saved["benchmark"] == "demo"
    assert saved["results"] == {"bpc": 1.25, "rows": [{"k": 5}]}
    assert saved["argv"] == ["bench/demo.py", "--quick", "--budget", "5"]
    assert saved["command"]  # the interpreter's own command line
    date = datetime.fromisoformat(saved["date"])
    assert date.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= date <= datetime.now(UTC) + timedelta(seconds=1)

    git = saved["git"]
    if in_git_checkout():
        assert re.fullmatch(r"[0-9a-f]{40}", git["commit"])
        assert git["commit"].startswith(git["short"]) and len(git["short"]) >= 4
        assert isinstance(git["dirty"], bool)
    else:
        assert git == {"commit": None, "short": None, "dirty": None}

    machine = saved["machine"]
    assert isinstance(machine["cpu_model"], str) and machine["cpu_model"]
    assert set(machine["flags"]) == set(CPU_FLAGS)
    flags = cpuinfo_flags()
    if flags is None:
        assert all(value is None for value in machine["flags"].values())
    else:
        assert machine["flags"] == {flag: flag in flags for flag in CPU_FLAGS}
    assert machine["logical_cores"] == os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        assert machine["affinity_cores"] == len(os.sched_getaffinity(0))
    assert machine["thread_variables"]["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS")

    versions = saved["versions"]
    assert versions["python"] == platform.python_version()
    assert versions["torch"] == torch.__version__
    assert versions["numpy"] == numpy.__version__


def test_the_default_file_is_named_by_benchmark_utc_date_and_commit(tmp_path: Path) -> None:
    path = write_result("demo", {"x": 1}, results_dir=tmp_path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert path.parent == tmp_path
    short = saved["git"]["short"] or "nogit"
    stamp = datetime.fromisoformat(saved["date"]).strftime("%Y-%m-%dT%H%M%SZ")
    assert path.name == f"demo-{stamp}-{short}.json"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # atomic: no temporary file left behind


def test_outside_git_the_commit_is_null(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path
    assert git_state(tmp_path) == {"commit": None, "short": None, "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert git_state() == {"commit": None, "short": None, "dirty": None}
    path = write_result("demo", {}, results_dir=tmp_path)
    assert path.name.endswith("-nogit.json")
    assert json.loads(path.read_text(encoding="utf-8"))["git"]["commit"] is None


def test_machine_info_reads_the_model_and_flags_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2 amx_tile amx_bf16\n\n"
        "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2 amx_tile amx_bf16\n"
    )
    machine = machine_info(cpuinfo)
    assert machine["cpu_model"] == "Test CPU 9000"
    assert machine["flags"] == {
        "avx2": True,
        "avx512f": False,
        "avx512_bf16": False,
        "amx_tile": True,
        "amx_bf16": True,
        "amx_int8": False,
    }
    unknown = machine_info(tmp_path / "missing")  # no /proc/cpuinfo: flags unknown, the model from platform
    assert unknown["cpu_model"]
    assert set(unknown["flags"]) == set(CPU_FLAGS) and all(v is None for v in unknown["flags"].values())


def bench_modules() -> list[str]:
    return sorted("bench" if p.stem == "__init__" else f"bench.{p.stem}" for p in BENCH.glob("*.py"))


def test_every_bench_module_imports_without_running(capsys: pytest.CaptureFixture[str]) -> None:
    environment = dict(os.environ)
    results = sorted(record.RESULTS_DIR.glob("*.json")) if record.RESULTS_DIR.is_dir() else []
    modules = bench_modules()
    assert "bench.adapt" in modules and "bench.record" in modules
    for name in modules:
        module = importlib.import_module(name)
        assert module.__doc__, f"{name} has no docstring"
        if name.removeprefix("bench.") not in HELPERS | {"bench"}:
            assert callable(module.main), f"{name}: a benchmark's work belongs in main()"
    assert capsys.readouterr() == ("", "")  # nothing printed: no benchmark ran
    assert dict(os.environ) == environment  # lecture_speed pins BLAS threads only when run
    now = sorted(record.RESULTS_DIR.glob("*.json")) if record.RESULTS_DIR.is_dir() else []
    assert now == results  # and none wrote a result


@pytest.mark.slow
@pytest.mark.parametrize("name", ["load", "step"])
def test_a_benchmark_answers_help_from_the_repository_root(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--help"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "--help" in done.stdout
