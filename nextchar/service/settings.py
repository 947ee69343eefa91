"""What a deployment of the service chooses: `ServiceSettings`, and how worker processes get them.

`nextchar serve` fills in a ServiceSettings from its options; with `--workers N` it writes them
to the environment (`to_env`, under ENV_SETTINGS) before the workers start, and each worker
reads them back (`from_env`, in nextchar.service.app.app_from_env), so that every process
serves the same thing. The completer's defaults come from nextchar.completion.config, written
down once there. Torch-free: `serve`'s parser reads its defaults from here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from nextchar.completion.config import DEFAULT_K, DEFAULTS, SERVING_PRECISION

ENV_SETTINGS = "NEXTCHAR_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process


@dataclass
class ServiceSettings:
    """What `nextchar serve` configures; JSON-able, so that worker processes get the same."""

    model: str | None = None  # checkpoint directory; None: the bundled model
    lexicon: str | None = None  # suggest only entries of this file (see nextchar.completion.lexicon)
    cache_mb: float = 256.0  # memory bound of both caches (states and responses), per process
    max_query: int = 1000  # longest q in characters (longer: 422)
    max_query_bytes: int = 16384  # longest raw query string in bytes (longer: 413), before any decoding
    max_pending: int = 64  # model jobs queued at once; more are refused with 503 (load shedding)
    default_k: int = DEFAULT_K  # suggestions when k is not given
    default_mode: str | None = None  # None: "line" for `lines` models (whole entries), "phrase" for `text`
    beam_width: int = DEFAULTS.beam_width  # Completer settings (see nextchar.completion.config)
    max_chars: int = DEFAULTS.max_chars
    max_words: int = DEFAULTS.max_words
    typo_penalty: float = DEFAULTS.typo_penalty
    public_url: str | None = None  # base URL in /opensearch.xml and /suggest's links (default: from the request)
    threads: int | None = None  # torch threads, set by app_from_env in each worker process (None: leave as is)
    personal_users: int = 0  # >0: per-user adapted weights for this many people (nextchar.service.personal)
    max_batch: int = 16  # searches run together on the model thread at most (1: one at a time)
    precision: str = SERVING_PRECISION  # of the search's matrix products: one of PRECISIONS (nextchar.stepper)

    def to_env(self) -> str:
        """The settings as one JSON string, for an environment variable."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> ServiceSettings:
        """The settings `to_env` wrote; unknown keys (from another version) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})
