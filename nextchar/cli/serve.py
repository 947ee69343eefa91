"""The `serve` command: the suggestion service and its page on uvicorn (see docs/service.md)."""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from nextchar.cli.options import (
    add_memory_option,
    add_model_option,
    add_search_options,
    add_threads_option,
    require_extra,
)
from nextchar.cli.options import finite_number as _number
from nextchar.cli.options import whole_number as _int
from nextchar.completion.config import K_MAX, MODES, SERVING_DEADLINE_MS
from nextchar.errors import UserError
from nextchar.service.identity import digest
from nextchar.service.settings import LOOPBACK_HOSTS, ServiceSettings, check_cors_origins

if TYPE_CHECKING:
    from nextchar.checkpoint import Checkpoint

SERVED = ServiceSettings()  # the defaults (torch-free: building the parser loads nothing)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve suggestions over HTTP, with a search-box and email page",
        description="Serve a model over HTTP: GET / (a search box with a drop-down, a next-character chart, an "
        "email editor with ghost text), /suggest (OpenSearch suggestions), /api/complete, "
        "/opensearch.xml, /healthz, /metrics, /docs. Binds to 127.0.0.1 unless told otherwise.",
    )
    add_model_option(p)
    add_memory_option(p)
    p.add_argument(
        "--lexicon",
        metavar="FILE",
        help="suggest only entries of FILE (one per line, optional tab + weight) that extend the text",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)",
    )
    p.add_argument("--port", type=_int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--workers",
        type=_int,
        default=1,
        help="processes sharing the port, each with its own model and caches (default 1)",
    )
    p.add_argument(
        "--cache-mb",
        type=_number,
        default=SERVED.cache_mb,
        metavar="MB",
        help="memory bound, in bytes, of everything each process keeps between requests: states, search "
        f"trees, answers, responses, memory caches, personal state (default {SERVED.cache_mb:g})",
    )
    p.add_argument(
        "--max-query",
        type=_int,
        default=SERVED.max_query,
        metavar="N",
        help=f"longest q in characters; longer gets 422 (default {SERVED.max_query})",
    )
    p.add_argument(
        "--k",
        type=_int,
        default=SERVED.default_k,
        dest="default_k",
        metavar="N",
        help=f"suggestions when a request gives no k (default {SERVED.default_k})",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="completion mode when a request gives none (default: line for line-list models, phrase for prose)",
    )
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="the URL people reach this server at, for /opensearch.xml behind a proxy "
        "(default: from each request's Host)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        metavar="ORIGIN",
        help="let pages of ORIGIN (scheme://host[:port]) call /suggest and /api/complete from the browser; "
        "repeat for more; * for any page (default: none, only pages of this server; docs/embed.md)",
    )
    g = add_search_options(p, SERVING_DEADLINE_MS)  # --beam, --max-chars, --max-words, --precision, --deadline-ms
    g.add_argument(
        "--max-batch",
        type=_int,
        default=SERVED.max_batch,
        metavar="N",
        help=f"queued searches run together, sharing model calls (default {SERVED.max_batch}; 1: one at a time)",
    )
    _add_server_options(p.add_argument_group("server"))
    p.set_defaults(run=run)


def _add_server_options(g: argparse._ArgumentGroup) -> None:
    """How each process serves: threads, queue and connection limits, logging, personal routes."""
    add_threads_option(
        g, default=1, help_text="torch threads per process (default 1: a keystroke's small batches run fastest on one)"
    )
    g.add_argument(
        "--max-pending",
        type=_int,
        default=SERVED.max_pending,
        metavar="N",
        help=f"model jobs queued per process before new ones get 503 (default {SERVED.max_pending})",
    )
    g.add_argument(
        "--max-pending-per-client",
        type=_int,
        default=SERVED.max_pending_per_client,
        metavar="N",
        help="model jobs one client (address, or person on the personal routes) may have queued before "
        f"its next get 429; the queue serves clients in turn (default {SERVED.max_pending_per_client})",
    )
    g.add_argument(
        "--limit-concurrency",
        type=_int,
        default=1024,
        metavar="N",
        help="open connections + requests per process before new ones get 503 (default 1024)",
    )
    g.add_argument(
        "--keep-alive",
        type=_int,
        default=5,
        metavar="S",
        help="close idle keep-alive connections after S seconds (default 5)",
    )
    g.add_argument(
        "--head-timeout",
        type=_number,
        default=SERVED.head_timeout_s,
        metavar="S",
        help=f"close a connection whose request head has not all arrived after S seconds (408; default "
        f"{SERVED.head_timeout_s:g}: slow clients cannot hold every connection)",
    )
    g.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    g.add_argument(
        "--personal-users",
        type=int,
        default=0,
        metavar="N",
        help="serve per-user adapted suggestions (/api/personal/…) for up to N people per worker, each "
        "behind a token the service issues (default 0: off; see docs/service.md#personal-routes)",
    )
    g.add_argument(
        "--personal-issuer-secret",
        metavar="FILE",
        help="creating a person needs the secret in FILE as its bearer token (required with "
        "--personal-users where --host is not loopback)",
    )
    g.add_argument(
        "--allowed-host",
        action="append",
        metavar="HOST",
        help="with --personal-users: a Host header to answer besides 127.0.0.1, localhost and ::1 "
        "(repeatable; others get 400)",
    )


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is a one-line error, not a traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host!r}: not an address this machine can listen on ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    require_extra("serve", "fastapi", "uvicorn", "prometheus_client")
    import torch

    from nextchar.checkpoint import MEMORY_KEY, load_checkpoint
    from nextchar.completion.lexicon import Lexicon
    from nextchar.service.engine import plan_caches

    settings = _settings(args)
    torch.set_num_threads(args.threads)
    # Load once here, so that a bad model or lexicon is a one-line error before anything listens
    # (and a single worker serves what was loaded).
    ckpt = load_checkpoint(args.model)
    if args.lexicon:
        Lexicon.load(args.lexicon)
    plan_caches(settings, ckpt.model, MEMORY_KEY in ckpt.meta)  # --cache-mb too small for the people: one line
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    where = "the bundled model" if args.model is None else args.model
    print(
        f"nextchar: serving {where} at http://{shown}:{port}/ ({args.workers} worker"
        f"{'s' if args.workers > 1 else ''}, {args.cache_mb:g} MB of cache each); Ctrl-C stops",
        flush=True,
    )
    if args.host not in LOOPBACK_HOSTS:
        print(f"nextchar: note: listening on {args.host}, reachable from other machines", file=sys.stderr, flush=True)
    _serve(args, ckpt, settings, sock)
    return 0


def _check(args: argparse.Namespace) -> None:
    """Refuse out-of-range numbers in one line naming the flag, before anything loads."""
    for name in (
        "workers",
        "threads",
        "max_query",
        "max_pending",
        "max_pending_per_client",
        "limit_concurrency",
        "default_k",
        "beam",
        "max_chars",
        "max_words",
        "max_batch",
    ):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0 … 65535, not {args.port}")
    if args.keep_alive < 0:
        raise UserError(f"--keep-alive must be ≥ 0, not {args.keep_alive}")
    if not args.head_timeout > 0:
        raise UserError(f"--head-timeout must be positive, not {args.head_timeout}")
    if args.personal_users < 0:
        raise UserError(f"--personal-users must be ≥ 0, not {args.personal_users}")
    if args.personal_users and args.host not in LOOPBACK_HOSTS and not args.personal_issuer_secret:
        raise UserError(
            f"--host {args.host} with --personal-users: anyone who can reach the port could create people; "
            "give --personal-issuer-secret FILE (your backend creates people with it), or listen on 127.0.0.1"
        )
    if args.cache_mb <= 0:
        raise UserError(f"--cache-mb must be positive, not {args.cache_mb}")
    if args.deadline_ms < 0:
        raise UserError(f"--deadline-ms must be ≥ 0, not {args.deadline_ms}")
    if args.default_k > K_MAX:
        raise UserError(f"--k must be at most {K_MAX}, not {args.default_k}")


def _settings(args: argparse.Namespace) -> ServiceSettings:
    """The service's settings from the checked flags."""
    _check(args)
    return ServiceSettings(
        model=args.model,
        lexicon=args.lexicon,
        cache_mb=args.cache_mb,
        max_query=args.max_query,
        max_pending=args.max_pending,
        max_pending_per_client=args.max_pending_per_client,
        default_k=args.default_k,
        default_mode=args.mode,
        beam_width=args.beam,
        max_chars=args.max_chars,
        max_words=args.max_words,
        public_url=args.public_url,
        cors_origins=check_cors_origins(args.cors_origins or []),
        threads=args.threads,
        personal_users=args.personal_users,
        personal_issuer_sha256=_issuer_digest(args.personal_issuer_secret),
        allowed_hosts=[*LOOPBACK_HOSTS, *(args.allowed_host or []), *_named_host(args)],
        max_batch=args.max_batch,
        precision=args.precision,
        memory=args.memory,
        deadline_ms=args.deadline_ms,
        head_timeout_s=args.head_timeout,
    )


def _issuer_digest(path: str | None) -> str | None:
    """The SHA-256 of the issuer secret in `path` (at least 16 characters), or None."""
    if path is None:
        return None
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--personal-issuer-secret {path}: cannot be read ({exc}); give a UTF-8 text file") from None
    if len(secret) < 16:
        raise UserError(f"--personal-issuer-secret {path}: the secret is {len(secret)} characters; give 16 or more")
    return digest(secret)


def _named_host(args: argparse.Namespace) -> list[str]:
    """The host of --host (unless it is every interface) and of --public-url: Host headers to answer."""
    hosts = [] if args.host in ("0.0.0.0", "::") else [args.host]
    if args.public_url:
        hosts.append(urllib.parse.urlsplit(args.public_url).hostname or "")
    return [host for host in hosts if host]


def _serve(args: argparse.Namespace, ckpt: Checkpoint, settings: ServiceSettings, sock: socket.socket) -> None:
    """Run uvicorn on the bound socket: in this process, or in --workers processes sharing it."""
    import os

    import uvicorn

    from nextchar.collector import tune_for_latency
    from nextchar.service.app import create_app, serve_heads_within
    from nextchar.service.metrics import shared_metrics_dir
    from nextchar.service.protocol import HEAD_BYTES
    from nextchar.service.settings import ENV_SETTINGS

    common = dict(
        log_level="info" if args.access_log else "warning",
        access_log=args.access_log,
        http="nextchar.service.protocol:HeadTimeoutProtocol",  # a deadline and a cap for every request head
        h11_max_incomplete_event_size=HEAD_BYTES,
        timeout_keep_alive=args.keep_alive,
        limit_concurrency=args.limit_concurrency,
        proxy_headers=True,
        server_header=False,
    )
    try:
        if args.workers == 1:
            tune_for_latency()  # after the model loaded (ckpt): it is frozen, out of the collector's way
            serve_heads_within(settings.head_timeout_s)
            config = uvicorn.Config(create_app(ckpt=ckpt, settings=settings), lifespan="on", **common)
            uvicorn.Server(config).run(sockets=[sock])
        else:
            from uvicorn.supervisors import Multiprocess

            # Each worker process builds its own app (and loads the model once, in its lifespan)
            # from the settings handed down in the environment, and keeps its metrics in a shared
            # directory, so that /metrics counts every worker's requests (nextchar.service.metrics).
            os.environ[ENV_SETTINGS] = settings.to_env()
            config = uvicorn.Config(
                "nextchar.service.app:app_from_env", factory=True, workers=args.workers, lifespan="on", **common
            )
            with shared_metrics_dir():
                Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
