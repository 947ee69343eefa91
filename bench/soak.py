"""Soak benchmark: the service for minutes under typists who learn, a worker killed and restarted,
and slow clients trickling (not a test).

    python -m bench.soak --minutes 5                 # 50 typists, 2 workers, a kill a minute
    python -m bench.soak --minutes 1 --typists 10    # a quick look
    python -m bench.soak -m runs/names --corpus ../shared/data/names.txt

Workers are separate `nextchar serve` processes, each on its own port, and each typist is
routed to one of them for good (sticky, as a load balancer routes a person by their token:
personal state lives in the process that holds it). Each typist connects from an address of
its own (127.0.0.x), as people do, so the queue's per-client fairness sees them apart.

- A typist creates their person (POST /api/personal/people), then types lines of the corpus a
  character at a time, `--think-ms` apart: GET /api/personal/complete with their token at each
  keystroke, GET /api/complete at every other; at the end of a line they POST it to
  /api/personal/learn and check that the answer's `learned` is what they have taught since
  their person was created. A mismatch, or a 401 for a person that should exist, on a worker
  that was never killed is lost personal state.
- Worker 0 is the victim: every `--kill-every` seconds it gets SIGKILL and is started again on
  its port. Its typists meet refused connections while it is down and a 401 after (their
  person died with the process); they create a new person and go on.
- A trickler keeps `--tricklers` connections sending a request head a byte a second; the
  server's `--head-timeout` answers each 408 and closes it, and the trickler reconnects.
- Every `--sample-s` seconds: requests, 5xx, other errors, p50/p99 latency over the window,
  and each worker's resident memory (VmRSS).

Goal: zero 5xx; zero lost personal state on the surviving workers; each surviving worker's
RSS flat within 10% after the warm-up (`--warmup-s`). The table and a JSON record (command,
commit, machine: bench.record) go to bench/results/ (or --json FILE).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.record import write_result

REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass
class Window:
    """What happened during one sampling window (appended to from every thread)."""

    latencies: list[float] = field(default_factory=list)
    five_xx: int = 0
    refused: int = 0  # 429s: people created faster than the service allows, or a client's queue share
    errors: int = 0  # broken connections, timeouts, 4xx other than 401s and 429s
    down: int = 0  # connections refused by the victim while it is down (expected)


@dataclass
class Soak:
    """The shared state of one run: its windows and its verdicts."""

    args: argparse.Namespace
    urls: list[str]
    window: Window = field(default_factory=Window)
    lost: int = 0  # personal state lost on a surviving worker
    recreated: int = 0  # people created again after the victim's restart
    learned_ok: int = 0  # learn answers whose total matched
    cut_off: int = 0  # trickling connections answered 408
    victim_down: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Worker:
    """One `nextchar serve` process on a fixed port."""

    def __init__(self, args: argparse.Namespace, port: int = 0) -> None:
        self.args, self.port = args, port
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> None:
        a = self.args
        command = [sys.executable, "-m", "nextchar", "serve", "--port", str(self.port)]
        command += ["--personal-users", str(a.people_per_worker), "--cache-mb", str(a.cache_mb)]
        command += ["--head-timeout", str(a.head_timeout)]
        if a.model:
            command += ["-m", a.model]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"(http://\S+?):(\d+)/ ", line)
        if not match:
            self.proc.kill()
            raise SystemExit(f"a worker did not start: {line!r}")
        self.url, self.port = f"{match.group(1)}:{match.group(2)}", int(match.group(2))
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise SystemExit(f"the worker at {self.url} did not answer /healthz")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def rss_mb(self) -> float:
        if self.proc is None or self.proc.poll() is not None:
            return math.nan
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return math.nan
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        return int(found.group(1)) / 1024 if found else math.nan


def typist(soak: Soak, n: int, lines: list[str]) -> None:
    """One person typing on their worker (see the module docstring)."""
    worker = n % len(soak.urls)
    victim = worker == 0
    rng = random.Random(n)
    transport = httpx.HTTPTransport(local_address=f"127.0.0.{2 + n % 250}")
    with httpx.Client(base_url=soak.urls[worker], transport=transport, timeout=30) as client:
        token, taught = None, 0
        while not soak.stop.is_set():
            try:
                if token is None:
                    token, taught = _new_person(soak, client), 0
                    if token is None:
                        continue
                taught = _type_a_line(soak, client, token, taught, rng.choice(lines), victim)
            except _PersonGone:
                token = None
                if victim:
                    with soak.lock:
                        soak.recreated += 1
                else:
                    with soak.lock:
                        soak.lost += 1
            except httpx.HTTPError:
                with soak.lock:
                    if victim and soak.victim_down:
                        soak.window.down += 1
                    else:
                        soak.window.errors += 1
                time.sleep(0.2)


class _PersonGone(Exception):
    """A 401 for the typist's person: the process that held them is not the one answering."""


def _new_person(soak: Soak, client: httpx.Client) -> str | None:
    r = client.post("/api/personal/people")
    if r.status_code == 201:
        return str(r.json()["token"])
    _count(soak, r, 0.0)
    time.sleep(float(r.headers.get("retry-after", "1")))
    return None


def _type_a_line(soak: Soak, client: httpx.Client, token: str, taught: int, line: str, victim: bool) -> int:
    auth = {"Authorization": f"Bearer {token}"}
    think = soak.args.think_ms / 1000
    for i in range(1, len(line) + 1):
        if soak.stop.is_set():
            return taught
        started = time.monotonic()
        r = client.get("/api/personal/complete", params={"q": line[:i]}, headers=auth)
        if r.status_code == 401:
            raise _PersonGone
        _count(soak, r, time.monotonic() - started)
        if i % 2 == 0:
            started = time.monotonic()
            r = client.get("/api/complete", params={"q": line[:i]})
            _count(soak, r, time.monotonic() - started)
        time.sleep(think * random.uniform(0.5, 1.5))
    r = client.post("/api/personal/learn", json={"text": line + "\n"}, headers=auth)
    if r.status_code == 401:
        raise _PersonGone
    _count(soak, r, 0.0)
    if r.status_code != 200:
        return taught
    body = r.json()
    taught += int(body["chars"])
    with soak.lock:
        if int(body["learned"]) == taught:
            soak.learned_ok += 1
        elif not victim:
            soak.lost += 1
    return int(body["learned"])


def _count(soak: Soak, r: httpx.Response, seconds: float) -> None:
    with soak.lock:
        window = soak.window
        if r.status_code >= 500:
            window.five_xx += 1
        elif r.status_code == 429:
            window.refused += 1
        elif r.status_code >= 400:
            window.errors += 1
        elif seconds:
            window.latencies.append(seconds)


def trickler(soak: Soak, url: str) -> None:
    """One slow client: a request head a byte a second, again after each 408."""
    parts = httpx.URL(url)
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 200
    while not soak.stop.is_set():
        try:
            with socket.create_connection((parts.host, parts.port), timeout=60) as sock:
                for byte in head:
                    if soak.stop.is_set():
                        return
                    sock.sendall(bytes([byte]))
                    time.sleep(1.0)
                    sock.setblocking(False)
                    try:
                        answer = sock.recv(4096)
                    except BlockingIOError:
                        answer = None
                    sock.setblocking(True)
                    if answer is not None:
                        if answer.startswith(b"HTTP/1.1 408"):
                            with soak.lock:
                                soak.cut_off += 1
                        break
        except OSError:
            time.sleep(1.0)


def chaos(soak: Soak, victim: Worker) -> None:
    """Kill the victim every --kill-every seconds and start it again on its port."""
    while not soak.stop.wait(soak.args.kill_every):
        with soak.lock:
            soak.victim_down = True
        victim.kill()
        victim.start()
        with soak.lock:
            soak.victim_down = False


def quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(args: argparse.Namespace) -> dict[str, object]:
    lines = [line for line in Path(args.corpus).read_text(encoding="utf-8").splitlines() if 3 <= len(line) <= 60]
    if not lines:
        raise SystemExit(f"{args.corpus}: no lines of 3 to 60 characters to type")
    workers = [Worker(args) for _ in range(args.workers)]
    for worker in workers:
        worker.start()
    soak = Soak(args, [w.url for w in workers])
    threads = [threading.Thread(target=typist, args=(soak, n, lines), daemon=True) for n in range(args.typists)]
    threads += [
        threading.Thread(target=trickler, args=(soak, workers[i % len(workers)].url), daemon=True)
        for i in range(args.tricklers)
    ]
    threads.append(threading.Thread(target=chaos, args=(soak, workers[0]), daemon=True))
    for thread in threads:
        thread.start()
    samples = []
    started = time.monotonic()
    print(
        f"{'t s':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'5xx':>4} {'429':>4} {'errors':>6} {'down':>5} "
        + " ".join(f"{'rss' + str(i) + ' MB':>9}" for i in range(len(workers))),
        flush=True,
    )
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.sample_s)
            with soak.lock:
                window, soak.window = soak.window, Window()
            sample = {
                "t_s": round(time.monotonic() - started, 1),
                "requests": len(window.latencies),
                "rps": len(window.latencies) / args.sample_s,
                "p50_ms": 1000 * quantile(window.latencies, 0.5),
                "p99_ms": 1000 * quantile(window.latencies, 0.99),
                "five_xx": window.five_xx,
                "refused": window.refused,
                "errors": window.errors,
                "down": window.down,
                "rss_mb": [w.rss_mb() for w in workers],
            }
            samples.append(sample)
            print(
                f"{sample['t_s']:6.0f} {sample['rps']:7.1f} {sample['p50_ms']:7.1f} {sample['p99_ms']:7.1f} "
                f"{sample['five_xx']:4d} {sample['refused']:4d} {sample['errors']:6d} {sample['down']:5d} "
                + " ".join(f"{r:9.1f}" for r in sample["rss_mb"]),
                flush=True,
            )
    finally:
        soak.stop.set()
        for worker in workers:
            worker.kill()
    return summarise(soak, samples, args)


def summarise(soak: Soak, samples: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, object]:
    after = [s for s in samples if s["t_s"] > args.warmup_s]
    growth = []
    for i in range(1, args.workers):  # the survivors: worker 0 is killed and starts afresh
        rss = [s["rss_mb"][i] for s in after if not math.isnan(s["rss_mb"][i])]
        if len(rss) >= 2:
            growth.append(max(rss) / rss[0] - 1)
    latencies = [s["p99_ms"] for s in after if not math.isnan(s["p99_ms"])]
    summary = {
        "requests": sum(s["requests"] for s in samples),
        "five_xx": sum(s["five_xx"] for s in samples),
        "refused": sum(s["refused"] for s in samples),
        "errors": sum(s["errors"] for s in samples),
        "down": sum(s["down"] for s in samples),
        "lost_personal_state": soak.lost,
        "people_recreated_after_kills": soak.recreated,
        "learns_checked": soak.learned_ok,
        "tricklers_cut_off": soak.cut_off,
        "median_window_p99_ms": quantile(latencies, 0.5),
        "survivor_rss_growth": growth,
    }
    flat = all(g <= 0.10 for g in growth) and bool(growth)
    print(
        f"\n{summary['requests']:,} requests, {summary['five_xx']} 5xx, {summary['refused']} 429s, "
        f"{summary['errors']} other errors, "
        f"{summary['down']} refused while the victim was down; {soak.lost} lost personal states on survivors, "
        f"{soak.recreated} people created again on the victim, {soak.learned_ok} learns checked, "
        f"{soak.cut_off} tricklers cut off; median window p99 {summary['median_window_p99_ms']:.1f} ms; "
        f"survivors' RSS growth after {args.warmup_s:g} s: {', '.join(f'{100 * g:+.1f}%' for g in growth) or 'n/a'}"
    )
    met = summary["five_xx"] == 0 and soak.lost == 0 and flat
    print(f"goal (0 5xx, 0 lost state, RSS flat within 10%): {'met' if met else 'NOT met'}")
    return {"summary": summary, "samples": samples, "goal_met": met}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="how long (default 5)")
    parser.add_argument("--typists", type=int, default=50, help="simulated people (default 50)")
    parser.add_argument("--workers", type=int, default=2, help="server processes; worker 0 is killed (default 2)")
    parser.add_argument("-m", "--model", default=None, help="checkpoint directory (default: the bundled model)")
    parser.add_argument(
        "--corpus",
        default=str(REPOSITORY.parent / "shared" / "data" / "names.txt"),
        help="lines to type (default ../shared/data/names.txt)",
    )
    parser.add_argument("--think-ms", type=float, default=250.0, help="mean pause between keystrokes (default 250)")
    parser.add_argument("--kill-every", type=float, default=60.0, help="seconds between kills of worker 0 (default 60)")
    parser.add_argument("--tricklers", type=int, default=8, help="slow clients at once (default 8)")
    parser.add_argument("--head-timeout", type=float, default=5.0, help="the servers' --head-timeout (default 5)")
    parser.add_argument(
        "--cache-mb", type=float, default=160.0, help="each server's --cache-mb (default 160: full within the warm-up)"
    )
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds per sample (default 10)")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="RSS is compared after this (default 60)")
    parser.add_argument("--json", default=None, help="where the record goes (default bench/results/)")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("--workers must be at least 2: one is killed, the others survive")
    args.people_per_worker = math.ceil(args.typists / args.workers) + 8
    record = run(args)
    path = write_result("soak", {"settings": vars(args), **record}, args.json)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
