"""Property-based fuzzing of the service's OpenAPI schema (schemathesis, in-process): whatever
the generated parameters — valid or deliberately invalid — no response is a 5xx, and every
response matches the schema (status code, content type, body)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis")

from nextchar.checkpoint import load_checkpoint  # noqa: E402
from nextchar.service.app import create_app  # noqa: E402
from nextchar.service.settings import ServiceSettings  # noqa: E402


@pytest.fixture(scope="module")
def service_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The schema of an app over its own tiny model, built when the test runs, not at import."""
    from tests.helpers import train_on_prose

    out = train_on_prose(Path(tmp_path_factory.mktemp("fuzz-model")), "gru", steps=5)
    app = create_app(ckpt=load_checkpoint(out), settings=ServiceSettings(cache_mb=2, max_chars=12))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.slow
def test_no_server_errors_and_responses_match_the_schema(service_schema: Any) -> None:
    operations = [result.ok() for result in service_schema.get_all_operations()]
    assert len(operations) >= 5  # every route of the schema is fuzzed, not an empty list
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case: Any) -> None:
            case.call_and_validate()

        no_server_error()
