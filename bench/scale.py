"""Benchmark: scaling out — prepare throughput and memory, chars/s on 1 and 2 processes, bf16 vs fp32.

On a corpus built by repeating the texts in ../shared/data (Tiny Shakespeare and the names):
  1. `nextchar prepare` of the whole corpus: MB/s and peak resident memory, total and above
     what the imports alone take (constant memory: the corpus is never held);
  2. training chars/s of the default model from the prepared directory with 1 process
     (PyTorch's default threads, and 1 thread) and with 2 processes under torchrun (gloo,
     1 thread each, the same global batch): the scaling efficiency is
     chars/s(2 processes) / (2 × chars/s(1 process, 1 thread));
  3. bf16 autocast against fp32 on the CPU: chars/s ratio and validation BPC after the same
     steps from the same seed (1 process, default threads).

Every run is a fresh `python -m nextchar` subprocess (or torchrun), as a user would run it.

    python -m bench.scale             # full: a 1 GB corpus, about 10 minutes
    python -m bench.scale --quick     # a 20 MB corpus and a small model: about a minute

The results go to bench/results/ (or --json FILE) with the command, commit and machine (bench.record).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.record import write_result

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
SOURCES = [DATA / "tinyshakespeare.txt", DATA / "names.txt"]

# Runs `prepare` after the imports, with the peak resident memory (VmHWM) reset to the
# current size, so it reports what preparing itself holds on top of the imports.
PREPARE_PROBE = """
import re, resource, sys, time
from pathlib import Path
from nextchar.data.prepare import prepare

def status(field):
    return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

after_imports = status("VmRSS")
try:
    Path("/proc/self/clear_refs").write_text("5")
    resettable = True
except OSError:
    resettable = False
started = time.perf_counter()
result = prepare([sys.argv[1]], sys.argv[2], progress=False)
seconds = time.perf_counter() - started
print(after_imports, status("VmHWM") if resettable else 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      seconds, result.bytes_read, result.format)
"""


def build_corpus(path: Path, size: int, sources: list[Path]) -> int:
    """Repeat the source texts (each ending in a newline) until the file holds `size` bytes."""
    texts = []
    for source in sources:
        text = source.read_bytes()
        texts.append(text if text.endswith(b"\n") else text + b"\n")
    block = b"".join(texts)
    written = 0
    with open(path, "wb") as f:
        while written < size:
            f.write(block)
            written += len(block)
    return written


def measure_prepare(corpus: Path, out: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PREPARE_PROBE, str(corpus), str(out)], capture_output=True, text=True, check=True
    )
    after_imports, peak, maxrss, seconds, size, corpus_format = done.stdout.split()
    return {
        "corpus_mb": int(size) / 1e6,
        "format": corpus_format,
        "seconds": float(seconds),
        "mb_per_s": int(size) / 1e6 / float(seconds),
        "rss_after_imports_mb": int(after_imports) / 1e6,
        "peak_rss_mb": int(maxrss) / 1e6,
        "peak_above_imports_mb": (int(peak) - int(after_imports)) / 1e6 if int(peak) else None,
    }


def train_once(
    data: Path,
    out: Path,
    steps: int,
    model: list[str],
    processes: int,
    threads: int | None,
    precision: str,
    extra: list[str],
) -> dict:
    """One training run from the prepared directory; chars/s of its training steps (no evaluation)."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    argv = [
        "train",
        str(data),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--eval-interval",
        str(steps),
        "--precision",
        precision,
        "--device",
        "cpu",
        "--max-val-chars",
        "50000",
        "--quiet",
        *model,
        *extra,
    ]
    if processes == 1:
        command = [sys.executable, "-m", "nextchar", *argv]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            "-m",
            "nextchar",
            *argv,
        ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"training failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {
        "processes": processes,
        "threads": threads,
        "precision": precision,
        "steps": record["step"],
        "chars_per_s": record["chars_per_s"],
        "val_bpc": record["val_bpc"],
        "wall_s": time.perf_counter() - started,
    }


def print_table(results: dict, bf16_steps: int) -> None:
    """The summary table of every measurement."""
    print()
    print("| measurement | result |")
    print("|---|---|")
    for r in results["prepare"]:
        print(
            f"| prepare {r['corpus_mb']:,.0f} MB ({r['format']} format) | {r['mb_per_s']:.1f} MB/s; peak RSS "
            f"{r['peak_rss_mb']:.0f} MB, of which {r['peak_above_imports_mb']:.0f} MB above the imports |"
        )
    labels = ["1 process, default threads", "1 process, 1 thread", "2 processes (torchrun, gloo), 1 thread each"]
    for label, run in zip(labels, results["scaling"], strict=True):
        print(f"| train chars/s: {label} | {run['chars_per_s']:,.0f} |")
    print(f"| scaling efficiency: 2 processes / (2 × 1 process, 1 thread) | {results['scaling_efficiency']:.0%} |")
    print(f"| 2 processes / 1 process with default threads | {results['two_processes_vs_default']:.2f}× |")
    print(f"| bf16 / fp32 chars/s (1 process) | {results['bf16_speedup']:.2f}× |")
    print(
        f"| validation BPC after {bf16_steps} steps: fp32 / bf16 | {results['precision']['fp32']['val_bpc']:.4f} / "
        f"{results['precision']['bf16']['val_bpc']:.4f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small corpus and model: about a minute")
    parser.add_argument("--size-mb", type=float, help="corpus size (default 1024, quick 20)")
    parser.add_argument("--steps", type=int, help="steps per chars/s run (default 120, quick 6)")
    parser.add_argument("--bf16-steps", type=int, help="steps per precision run (default 400, quick 10)")
    parser.add_argument("--workdir", type=Path, help="where to build the corpus (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="write the results here (default: a new file in bench/results/)")
    args = parser.parse_args()
    missing = [str(s) for s in SOURCES if not s.exists()]
    if missing:
        raise SystemExit(f"bench/scale.py needs {', '.join(missing)} (see ../shared/data/README.md)")
    size = int((args.size_mb or (20 if args.quick else 1024)) * 1e6)
    steps = args.steps or (6 if args.quick else 120)
    bf16_steps = args.bf16_steps or (10 if args.quick else 400)
    # The default model (see nextchar.models.ModelConfig); a small one for --quick.
    model = ["--hidden", "128", "--batch-size", "16", "--seq-len", "64"] if args.quick else []

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        corpus = work / "corpus.txt"
        build_corpus(corpus, size, SOURCES)
        lines_corpus = work / "names.txt"
        build_corpus(lines_corpus, size // 4, [DATA / "names.txt"])
        results: dict = {"machine": {"cpus": os.cpu_count()}, "quick": args.quick}
        print(f"corpus: {corpus.stat().st_size / 1e6:,.0f} MB (Tiny Shakespeare + names, repeated)", flush=True)
        results["prepare"] = [
            measure_prepare(corpus, work / "prepared"),
            measure_prepare(lines_corpus, work / "prepared-lines"),
        ]
        for r in results["prepare"]:
            print(
                f"prepare {r['corpus_mb']:,.0f} MB ({r['format']}): {r['mb_per_s']:.1f} MB/s, peak RSS "
                f"{r['peak_rss_mb']:.0f} MB ({r['peak_above_imports_mb']:.0f} MB above the imports)",
                flush=True,
            )

        data = work / "prepared"
        runs = []
        for processes, threads in [(1, None), (1, 1), (2, 1)]:
            run = train_once(data, work / f"run-{processes}-{threads}", steps, model, processes, threads, "auto", [])
            runs.append(run)
            print(
                f"train {processes} process(es) × {threads or 'default'} thread(s): {run['chars_per_s']:,.0f} chars/s",
                flush=True,
            )
        results["scaling"] = runs
        one_thread, two = runs[1]["chars_per_s"], runs[2]["chars_per_s"]
        results["scaling_efficiency"] = two / (2 * one_thread)
        results["two_processes_vs_default"] = two / runs[0]["chars_per_s"]

        precision = {}
        for name in ("fp32", "bf16"):
            precision[name] = train_once(data, work / f"run-{name}", bf16_steps, model, 1, None, name, [])
            print(
                f"{name}: {precision[name]['chars_per_s']:,.0f} chars/s, validation BPC "
                f"{precision[name]['val_bpc']:.4f} after {bf16_steps} steps",
                flush=True,
            )
        results["precision"] = precision
        results["bf16_speedup"] = precision["bf16"]["chars_per_s"] / precision["fp32"]["chars_per_s"]

    print_table(results, bf16_steps)
    print(f"results: {write_result('scale', results, args.json)}", file=sys.stderr)


if __name__ == "__main__":
    main()
