"""Benchmark: `nextchar serve` under people typing, on loopback (not a test).

Each simulated person ("typist") types search queries one character at a time, sending
GET /suggest?q=<what is typed so far> after every keystroke and the next keystroke as soon as
the answer arrives (closed loop, no think time unless --think-ms: this measures capacity, not
a human pace). Queries come from phrases of the embedded corpus (what the bundled model was
trained on), drawn Zipf-like from a pool — a few are popular, most are rare — like a real
search box; each concurrency level draws from its own pool, so the caches start cold for it.
A query's keystrokes go over one keep-alive connection, and the next query opens a new one, as
a new visitor would (--keep-connections: one connection per typist for the whole run, which
leaves each worker's share of the typists to how the connections happened to be accepted).

The load comes from Debian's `wrk` with a generated Lua script (wrk -c N: N typists); without
wrk, from a small asyncio client (slower: it eats the cores the server needs). Both report
requests/s, p50/p99 latency, errors (non-200 answers, socket errors, timeouts) and the cache
hit rate, counted from each answer's X-Nextchar-Cache header (hit: not read from scratch).

    python -m bench.load --quick                  # ~25 s: 1, 10, 50 typists, 4 s each
    python -m bench.load                          # 1, 10, 50 typists, 30 s each
    python -m bench.load -m runs/demo --workers 2 --clients 10,50 --duration 20
    python -m bench.load --url http://127.0.0.1:8000   # a server that is already running

Replay mode (--replay FILE, a list of queries, one per line): the queries not yet typed. The
file's distinct queries are shuffled (seed 0); the last --unseen of them (default 1,000) are
held out, and a model is trained on the rest for --train-seconds (default 300; the default
model, a `lines` corpus, with its memory, as `train` builds it; kept in --work and reused), or
-m gives one. Each level then types only the held-out queries, twice: drawn uniformly, and
Zipf-drawn (--zipf); the server is restarted before each run so that no run finds the
caches the one before it warmed. Beside the load, the suggestions' quality on the same queries:
eval-complete's KSR of the served model at the serving deadline, of the model alone and of the
trie of the training queries (in the served mode, k as asked).

    python -m bench.load --replay ../shared/data/names.txt --workers 2 --clients 10 --duration 20

The results go to bench/results/ (or --json FILE) with the command, commit and machine (bench.record).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from bench.record import write_result

ROOT = Path(__file__).resolve().parents[1]

QUERY_WORDS = (1, 4)  # words per query


def query_pool(n: int, seed: int, path: str | None = None) -> list[str]:
    """n distinct search-like phrases: the first few words of the corpus's lines (or FILE's lines)."""
    if path:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    else:
        from nextchar.text import embedded_corpus

        lines = embedded_corpus().splitlines()
    rng = random.Random(seed)
    phrases: set[str] = set()
    for line in lines:
        words = re.findall(r"[A-Za-z][A-Za-z'-]*", line)
        if len(words) >= QUERY_WORDS[0]:
            phrase = " ".join(words[: rng.randint(*QUERY_WORDS)])
            if 3 <= len(phrase) <= 40:
                phrases.add(phrase if path is None else line.strip())
    pool = sorted(phrases)
    rng.shuffle(pool)
    return pool[:n]


def replay_split(path: str, unseen: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """The file's distinct queries, shuffled: (the ones a model trains on, the last `unseen`)."""
    queries = list(dict.fromkeys(q.strip() for q in Path(path).read_text(encoding="utf-8").splitlines()))
    queries = [q for q in queries if q]
    if len(queries) < 2 * unseen:
        raise SystemExit(f"{path}: {len(queries):,} distinct queries; --unseen {unseen:,} needs twice as many")
    random.Random(seed).shuffle(queries)
    return queries[:-unseen], queries[-unseen:]


def replay_model(args: argparse.Namespace, train_queries: list[str]) -> str:
    """The checkpoint served in replay mode: -m, or one trained on the queries (and reused)."""
    if args.model:
        return args.model
    from nextchar.checkpoint import load_checkpoint, read_memory
    from nextchar.data.batches import split_validation
    from nextchar.training.config import TrainConfig
    from nextchar.training.loop import train
    from nextchar.training.memory import remember

    out = Path(args.work) / f"replay-{Path(args.replay).stem}-{args.unseen}-{args.train_seconds:g}s"
    train_text, val_text = split_validation("\n".join(train_queries) + "\n", "lines", 0.1)
    if not (out / "config.json").is_file():
        print(f"training the default model on {len(train_queries):,} queries for {args.train_seconds:g} s", flush=True)
        train(train_text, val_text, out, TrainConfig(time_budget=args.train_seconds), corpus_format="lines")
    if read_memory(load_checkpoint(out)) is None:
        remember(out, train_text, val_text)
    return str(out)


def replay_quality(model: str, train_queries: list[str], unseen: list[str], k: int) -> list[dict]:
    """KSR on the held-out queries: the model as served (mixed with its memory, at the serving
    deadline), the model alone, the trie of the training queries; in the served model's mode."""
    from nextchar.checkpoint import load_checkpoint
    from nextchar.completion.completer import Completer
    from nextchar.completion.config import SERVING_DEADLINE_MS
    from nextchar.evaluation.keystrokes import CompleterPredictor, TriePredictor, evaluate_completion

    ckpt = load_checkpoint(model)
    mode = "line" if ckpt.format == "lines" else "phrase"  # what /suggest answers in (service/engine.py)
    served = Completer(ckpt, deadline_ms=SERVING_DEADLINE_MS)
    systems = [
        CompleterPredictor(served, mode, k, name="as served" + (" (model + memory)" if served.recall else "")),
        CompleterPredictor(Completer(ckpt, memory=False, deadline_ms=SERVING_DEADLINE_MS), mode, k, name="model alone"),
        TriePredictor.from_lines(train_queries, mode, k),
    ]
    out = []
    for system in systems:
        r = evaluate_completion(unseen, system, mode, k)
        out.append({"name": system.name, "mode": mode, "ksr": r.ksr, "p99_ms": r.latency_ms["p99"]})
        print(f"KSR on the {len(unseen):,} held-out queries, {system.name}: {r.ksr:.3f} ({mode}, k {k})", flush=True)
    return out


def typing_paths(
    pool: list[str], typists: int, per_typist: int, zipf: float, seed: int, k: int, endpoint: str = "/suggest"
) -> list[list[tuple[str, bool]]]:
    """For each typist, the request paths of `per_typist` queries typed one character at a time,
    each with whether it is the last keystroke of its query."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** zipf for rank in range(len(pool))]
    out = []
    for _ in range(typists):
        paths = []
        for query in rng.choices(pool, weights=weights, k=per_typist):
            for n in range(1, len(query) + 1):
                paths.append((f"{endpoint}?q={urllib.parse.quote(query[:n], safe='')}&k={k}", n == len(query)))
        out.append(paths)
    return out


# ---------------------------------------------------------------------------------- wrk

LUA = r"""
-- Generated by bench/load.py: each wrk thread has one connection and one typist, whose request
-- paths (one keystroke each) are read from %(dir)s/<thread id>.txt: "path last", last = 1 on
-- the last keystroke of a query, which then asks to close the connection (unless kept: one
-- connection per typist).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  paths = {}
  lasts = {}
  for line in io.lines("%(dir)s/" .. id .. ".txt") do
    local path, last = line:match("^(%%S+) (%%d)$")
    table.insert(paths, path)
    table.insert(lasts, last == "1" and %(close)s)
  end
  pos = 1
  cache = {response = 0, hit = 0, step = 0, read = 0, none = 0}
  bad = 0
end

function request()
  local path, last = paths[pos], lasts[pos]
  pos = pos %% #paths + 1
  if last then return wrk.format("GET", path, {["Connection"] = "close"}) end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
  local c = headers["X-Nextchar-Cache"] or headers["x-nextchar-cache"] or "none"
  cache[c] = (cache[c] or 0) + 1
end

%(delay)s

function done(summary, latency, requests)
  local total = {response = 0, hit = 0, step = 0, read = 0, none = 0}
  local non200 = 0
  for _, thread in ipairs(threads) do
    local c = thread:get("cache")
    for key, value in pairs(c) do total[key] = (total[key] or 0) + value end
    non200 = non200 + thread:get("bad")
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "max_us": %%d, ' ..
    '"non200": %%d, "connect": %%d, "read": %%d, "write": %%d, "timeout": %%d, ' ..
    '"cache": {"response": %%d, "hit": %%d, "step": %%d, "read": %%d, "none": %%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, non200, e.connect, e.read, e.write, e.timeout,
    total.response, total.hit, total.step, total.read, total.none))
end
"""


def run_wrk(
    wrk: str, url: str, paths: list[list[tuple[str, bool]]], duration: float, think_ms: float, keep: bool
) -> dict:
    clients = len(paths)
    delay = f"function delay() return {think_ms:g} end" if think_ms > 0 else ""
    with tempfile.TemporaryDirectory(prefix="nextchar-load-") as tmp:
        for i, typist in enumerate(paths):
            Path(tmp, f"{i}.txt").write_text("".join(f"{path} {int(last)}\n" for path, last in typist))
        script = Path(tmp, "typing.lua")
        script.write_text(LUA % {"dir": tmp, "delay": delay, "close": "false" if keep else "true"})
        # One wrk thread per connection and one typist per thread: a query's keystrokes all go
        # over one keep-alive connection, as a browser's do (and so to one worker of several).
        out = subprocess.run(
            [
                wrk,
                f"-t{clients}",
                f"-c{clients}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=duration + 60,
        )
    match = re.search(r"^RESULT (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not match:
        raise SystemExit(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    raw = json.loads(match.group(1))
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": seconds,
        "rps": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1e3,
        "p90_ms": raw["p90_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "max_ms": raw["max_us"] / 1e3,
        "errors": raw["non200"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        "cache": raw["cache"],
    }


# ---------------------------------------------------------------------------------- asyncio fallback


async def _typist(
    host: str,
    port: int,
    paths: list[tuple[str, bool]],
    stop: float,
    think_ms: float,
    keep: bool,
    latencies: list[float],
    cache: dict[str, int],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    pos = 0
    try:
        while time.perf_counter() < stop:
            path, last = paths[pos]
            pos = (pos + 1) % len(paths)
            if writer.is_closing():
                reader, writer = await asyncio.open_connection(host, port)
            close = "Connection: close\r\n" if last and not keep else ""
            start = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{close}\r\n".encode())
            status_line = await reader.readline()
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            await reader.readexactly(int(headers.get("content-length", "0")))
            latencies.append(time.perf_counter() - start)
            if not status_line.startswith(b"HTTP/1.1 200"):
                errors[0] += 1
            result = headers.get("x-nextchar-cache", "none")
            cache[result] = cache.get(result, 0) + 1
            if close:
                writer.close()
                await writer.wait_closed()
            if think_ms:
                await asyncio.sleep(think_ms / 1000)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        errors[0] += 1
    finally:
        writer.close()


def run_asyncio(url: str, paths: list[list[tuple[str, bool]]], duration: float, think_ms: float, keep: bool) -> dict:
    parts = urllib.parse.urlsplit(url)
    latencies: list[float] = []
    cache = {"response": 0, "hit": 0, "step": 0, "read": 0, "none": 0}
    errors = [0]

    async def main() -> float:
        start = time.perf_counter()
        stop = start + duration
        await asyncio.gather(
            *(_typist(parts.hostname, parts.port, p, stop, think_ms, keep, latencies, cache, errors) for p in paths)
        )
        return time.perf_counter() - start

    seconds = asyncio.run(main())
    latencies.sort()

    def pct(q: float) -> float:
        return 1e3 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {
        "requests": len(latencies),
        "seconds": seconds,
        "rps": len(latencies) / seconds,
        "p50_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "max_ms": 1e3 * latencies[-1] if latencies else float("nan"),
        "errors": errors[0],
        "cache": cache,
    }


# ---------------------------------------------------------------------------------- the server


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "nextchar",
        "serve",
        "--port",
        "0",
        "--workers",
        str(args.workers),
        "--cache-mb",
        str(args.cache_mb),
        "--limit-concurrency",
        "4096",
        "--max-pending",
        "1024",
        # Every simulated typist connects from 127.0.0.1, one client to the queue's fairness
        # (nextchar.service.fairness): let that one client have the whole queue.
        "--max-pending-per-client",
        "1024",
        "--precision",
        args.precision,
        "--max-batch",
        str(args.max_batch),
    ]
    if args.model:
        command += ["-m", args.model]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    line = proc.stdout.readline()
    match = re.search(r"(http://\S+?)/ ", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    url = match.group(1)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
                health = json.load(r)
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit(f"the server at {url} did not answer /healthz") from None
            time.sleep(0.2)
    print(
        f"server: {url} — model {health['model']} ({health['kind']}, {health['format']}, "
        f"default mode {health['default_mode']}), {args.workers} worker(s)",
        flush=True,
    )
    return proc, url


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 s per level (about 25 s in all)")
    parser.add_argument("-m", "--model", help="checkpoint directory (default: the bundled model)")
    parser.add_argument("--url", help="benchmark this running server instead of starting one")
    parser.add_argument("--clients", default="1,10,50", help="concurrent typists per level (default 1,10,50)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per level (default 30)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    parser.add_argument("--cache-mb", type=float, default=256.0, help="server cache bound (default 256)")
    parser.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch (default 16)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "int8"),
        default="auto",
        help="the server's --precision (default auto)",
    )
    parser.add_argument("-k", type=int, default=8, help="suggestions per request (default 8)")
    parser.add_argument("--pool", type=int, default=2000, help="distinct queries per level (default 2000)")
    parser.add_argument(
        "--zipf",
        type=float,
        default=1.0,
        help="query popularity exponent: weight 1/rank^s (default 1; 0: all equally likely)",
    )
    parser.add_argument("--queries", metavar="FILE", help="queries to type, one per line (default: corpus phrases)")
    parser.add_argument("--think-ms", type=float, default=0.0, help="pause between keystrokes (default 0)")
    parser.add_argument(
        "--endpoint",
        choices=("/suggest", "/api/complete"),
        default="/suggest",
        help="what each keystroke asks (default /suggest; the page asks /api/complete)",
    )
    parser.add_argument(
        "--keep-connections",
        action="store_true",
        help="a typist keeps one connection for all its queries (default: a new one per query)",
    )
    parser.add_argument("--replay", metavar="FILE", help="replay mode: hold out queries of FILE (module docstring)")
    parser.add_argument("--unseen", type=int, default=1000, help="replay: queries held out (default 1000)")
    parser.add_argument(
        "--train-seconds", type=float, default=300.0, help="replay: training budget of the served model (default 300)"
    )
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-load"), help="replay: where models are kept")
    parser.add_argument("--client", choices=("auto", "wrk", "asyncio"), default="auto")
    parser.add_argument("--json", metavar="FILE", help="write the results here (default: a new file in bench/results/)")
    args = parser.parse_args()
    if args.replay and args.url:
        parser.error("--replay starts its own servers (it restarts them between runs); drop --url")
    if args.quick:
        args.duration = min(args.duration, 4.0)
        args.pool = min(args.pool, 500)
        args.train_seconds = min(args.train_seconds, 20.0)
    return args


def run_levels(args: argparse.Namespace, levels: list[int], url: str, wrk: str | None) -> list[dict]:
    """Each concurrency level in turn against the server at `url`: its figures, printed as they come."""
    results = []
    pools = query_pool(args.pool * len(levels), seed=1, path=args.queries)
    for i, clients in enumerate(levels):
        pool = pools[i :: len(levels)]  # each level its own queries: cold caches for it
        per_typist = max(4, int(args.duration * 60 / clients))  # more than a typist can get through
        paths = typing_paths(pool, clients, per_typist, args.zipf, seed=100 + i, k=args.k, endpoint=args.endpoint)
        r = run_level(args, url, wrk, paths)
        r["clients"] = clients
        results.append(r)
        print_level(r)
    return results


def run_level(args: argparse.Namespace, url: str, wrk: str | None, paths: list[list[tuple[str, bool]]]) -> dict:
    """One level's figures (wrk or the asyncio client), with the cache's hit rates."""
    if wrk:
        r = run_wrk(wrk, url, paths, args.duration, args.think_ms, args.keep_connections)
    else:
        r = run_asyncio(url, paths, args.duration, args.think_ms, args.keep_connections)
    counted = sum(r["cache"].values()) - r["cache"].get("none", 0)
    r["hit_rate"] = 1 - r["cache"]["read"] / counted if counted else float("nan")
    r["response_share"] = r["cache"]["response"] / counted if counted else float("nan")
    return r


def print_level(r: dict) -> None:
    draw = f" {r['draw']:>7}" if "draw" in r else ""
    print(
        f"{r['clients']:>3} typists{draw}: {r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
        f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}  cache hit {100 * r['hit_rate']:.1f}% "
        f"(whole answers {100 * r['response_share']:.1f}%)",
        flush=True,
    )


def run_replay(args: argparse.Namespace, levels: list[int], wrk: str | None, unseen: list[str]) -> list[dict]:
    """Replay mode's levels: the held-out queries, uniform and Zipf-drawn, each on a fresh server."""
    results = []
    for i, clients in enumerate(levels):
        per_typist = max(4, int(args.duration * 60 / clients))
        for draw, zipf in (("uniform", 0.0), ("zipf", args.zipf)):
            paths = typing_paths(unseen, clients, per_typist, zipf, seed=100 + i, k=args.k, endpoint=args.endpoint)
            proc, url = start_server(args)
            try:
                r = run_level(args, url, wrk, paths)
            finally:
                stop_server(proc)
            r.update(clients=clients, draw=draw)
            results.append(r)
            print_level(r)
    return results


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def print_table(args: argparse.Namespace, client: str, results: list[dict]) -> None:
    replay = bool(results) and "draw" in results[0]
    drawn = (
        f"the {args.unseen:,} held-out queries, uniform or Zipf s={args.zipf:g}, a fresh server each"
        if replay
        else f"Zipf s={args.zipf:g} over {args.pool} queries per level"
    )
    print(
        f"\nclient: {client}; {args.endpoint}; {args.duration:g} s per level; queries typed one character at a "
        f"time; k={args.k}; {drawn}; workers={args.workers}; precision {args.precision}; max batch "
        f"{args.max_batch}; {'one connection per typist' if args.keep_connections else 'a new connection per query'}\n"
    )
    head = "requests/s | p50 ms | p99 ms | errors | cache hit rate | whole answers cached |"
    print(f"| typists |{' draw |' if replay else ''} {head}")
    print(f"|--:|{'---|' if replay else ''}--:|--:|--:|--:|--:|--:|")
    for r in results:
        draw = f" {r['draw']} |" if replay else ""
        print(
            f"| {r['clients']} |{draw} {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | "
            f"{100 * r['hit_rate']:.1f}% | {100 * r['response_share']:.1f}% |"
        )


def main() -> None:
    args = parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    wrk = shutil.which("wrk") if args.client in ("auto", "wrk") else None
    if args.client == "wrk" and not wrk:
        raise SystemExit("wrk not found: apt-get install wrk (or --client asyncio)")
    client = "wrk" if wrk else "asyncio"

    record: dict = {"client": client, "settings": vars(args)}
    if args.replay:
        train_queries, unseen = replay_split(args.replay, args.unseen)
        args.model = replay_model(args, train_queries)
        record["quality"] = replay_quality(args.model, train_queries, unseen, args.k)
        results = run_replay(args, levels, wrk, unseen)
    else:
        proc = None
        url = args.url.rstrip("/") if args.url else None
        if url is None:
            proc, url = start_server(args)
        results = []
        try:
            results = run_levels(args, levels, url, wrk)
        finally:
            if proc is not None:
                stop_server(proc)

    print_table(args, client, results)
    if args.replay:
        print(f"\nqueries: the {args.unseen:,} held out of {args.replay}, each server fresh (cold caches)")
        for q in record["quality"]:
            print(f"KSR ({q['mode']}, k {args.k}) {q['name']}: {q['ksr']:.3f}")
    path = write_result("load", {**record, "results": results}, args.json)
    print(f"results: {path}", file=sys.stderr)
    if any(r["errors"] for r in results):
        print(f"\nerrors: {sum(r['errors'] for r in results)}", file=sys.stderr)


if __name__ == "__main__":
    main()
