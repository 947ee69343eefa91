"""What a deployment of the service chooses: `ServiceSettings`, and how worker processes get them.

`nextchar serve` fills in a ServiceSettings from its options; with `--workers N` it writes them
to the environment (`to_env`, under ENV_SETTINGS) before the workers start, and each worker
reads them back (`from_env`, in nextchar.service.app.app_from_env), so that every process
serves the same thing. The completer's defaults come from nextchar.completion.config, written
down once there. Torch-free: `serve`'s parser reads its defaults from here.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields

from nextchar.completion.config import DEFAULT_K, DEFAULTS, SERVING_PRECISION
from nextchar.errors import UserError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
ENV_SETTINGS = "NEXTCHAR_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process


@dataclass
class ServiceSettings:
    """What `nextchar serve` configures; JSON-able, so that worker processes get the same."""

    model: str | None = None  # checkpoint directory; None: the bundled model
    lexicon: str | None = None  # suggest only entries of this file (see nextchar.completion.lexicon)
    cache_mb: float = 256.0  # memory bound of both caches (states and responses), per process
    max_query: int = 1000  # longest q in characters (longer: 422)
    max_query_bytes: int = 16384  # longest raw query string in bytes (longer: 413), before any decoding
    max_body_bytes: int = 262144  # longest request body in bytes (longer: 413), refused before it is read
    max_pending: int = 64  # model jobs queued at once; more are refused with 503 (load shedding)
    max_pending_per_client: int = 16  # … of one client (address); more of theirs get 429 (nextchar.service.fairness)
    default_k: int = DEFAULT_K  # suggestions when k is not given
    default_mode: str | None = None  # None: "line" for `lines` models (whole entries), "phrase" for `text`
    beam_width: int = DEFAULTS.beam_width  # Completer settings (see nextchar.completion.config)
    max_chars: int = DEFAULTS.max_chars
    max_words: int = DEFAULTS.max_words
    typo_penalty: float = DEFAULTS.typo_penalty
    public_url: str | None = None  # base URL in /opensearch.xml and /suggest's links (default: from the request)
    threads: int | None = None  # torch threads, set by app_from_env in each worker process (None: leave as is)
    personal_users: int = 0  # >0: per-user adapted weights for this many people (nextchar.service.personal)
    # With personal routes: the SHA-256 of the secret that creating a person needs (None: none is
    # needed; `serve` requires one where it listens beyond this machine: nextchar.service.identity) …
    personal_issuer_sha256: str | None = None
    # … and the Host headers answered (others: 400), so that no page reaches them by DNS rebinding
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_HOSTS))
    max_batch: int = 16  # searches run together on the model thread at most (1: one at a time)
    precision: str = SERVING_PRECISION  # of the search's matrix products: one of PRECISIONS (nextchar.stepper)
    memory: bool = True  # mix the model with the checkpoint's memory when it has one (nextchar.completion.recall)
    deadline_ms: float = 0.0  # a search returns its best so far after this long (0: none; `serve`: 8)
    # /healthz says "degraded" (503) past either: a job waiting this long for the model thread,
    # or one batch of searches running this long (a stuck model thread, or a machine far too slow)
    head_timeout_s: float = 10.0  # a connection's request head must arrive within this (nextchar.service.protocol)
    queue_wait_limit_s: float = 2.0
    batch_time_limit_s: float = 10.0
    # Web pages of these origins may read /suggest and /api/complete (CORS); "*": any page. [] (the
    # default): no CORS headers, so only pages of this server's own origin may (docs/embed.md).
    cors_origins: list[str] = field(default_factory=list)

    def to_env(self) -> str:
        """The settings as one JSON string, for an environment variable."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> ServiceSettings:
        """The settings `to_env` wrote; unknown keys (from another version) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def check_cors_origins(origins: Iterable[str]) -> list[str]:
    """The origins as browsers write them in their Origin header (lower case, no default port),
    or a UserError naming the first that is not `scheme://host[:port]`, or not `*` alone.

    Why `*` is accepted: /suggest and /api/complete read nothing but the query and need no
    credentials, so for a server on the open internet `*` lets pages do what curl does already
    (Wikipedia's own suggestion API allows any origin the same way). It is refused beside other
    origins, where it would make them meaningless.
    """
    chosen = [_origin(text) for text in origins]
    if "*" in chosen and len(chosen) > 1:
        raise UserError("cors_origins: '*' allows every origin; give it alone or not at all", parameter="cors_origins")
    return list(dict.fromkeys(chosen))  # repeats dropped, order kept


def _origin(text: str) -> str:
    """One origin, normalised; a UserError saying what is wrong with it otherwise."""
    if text == "*":
        return text

    def refuse(why: str, hint: str = "write scheme://host[:port], e.g. 'https://example.org'") -> UserError:
        return UserError(f"cors_origins: {text!r} is not an origin ({why}); {hint}", parameter="cors_origins")

    try:
        parts = urllib.parse.urlsplit(text.strip())
    except ValueError:  # an unclosed [IPv6 address
        raise refuse("its host is not a host name or an address") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not text.strip().lower().startswith(scheme + "://"):
        raise refuse("it must start with http:// or https://")
    if "*" in text:
        raise refuse("'*' is allowed only alone, for every origin", "list each origin instead")
    if not text.isascii():
        raise refuse("the host is not ASCII", "write it in its punycode form (xn--…)")
    try:
        port = parts.port
    except ValueError:
        raise refuse("the port is not a number 1 … 65535") from None
    host = parts.hostname or ""
    if parts.username is not None or parts.password is not None:
        raise refuse("it has a user name")
    if not host:
        raise refuse("it has no host")
    if parts.path or parts.query or parts.fragment or text.rstrip().endswith(("?", "#")):
        bare = f"{scheme}://{parts.netloc.lower()}"
        raise refuse("an origin has no path, query or fragment", f"try {bare!r}")
    if ":" in host:  # an IPv6 address: urlsplit has checked it and dropped its brackets
        host = f"[{host}]"
    elif not _HOST.fullmatch(host):
        raise refuse("the host has characters a host name cannot have")
    if port == 0:
        raise refuse("the port is not a number 1 … 65535")
    shown_port = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{shown_port}"
