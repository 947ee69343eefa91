"""Property-based fuzzing of the service's OpenAPI schema (schemathesis, in-process): whatever
the generated parameters — valid or deliberately invalid — no response is a 5xx, and every
response matches the schema (status code, content type, body)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")

from nextchar.checkpoint import load_checkpoint  # noqa: E402
from nextchar.service.app import ServiceSettings, create_app  # noqa: E402

# Tests are collected before fixtures run, and schemathesis needs the app at collection time:
# the app is built lazily and trains its own tiny model (the same recipe as conftest's).


def _app():  # type: ignore[no-untyped-def]
    import tempfile

    from conftest import train_on_prose

    out = train_on_prose(Path(tempfile.mkdtemp(prefix="nextchar-fuzz-")), "gru", steps=5)
    return create_app(ckpt=load_checkpoint(out), settings=ServiceSettings(cache_mb=2, max_chars=12))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_server_errors_and_responses_match_the_schema(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate()
