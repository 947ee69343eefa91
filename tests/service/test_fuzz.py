"""Property-based fuzzing of the service's OpenAPI schema (schemathesis, in-process): whatever
the generated parameters — valid or deliberately invalid — no response is a 5xx, and every
response matches the schema (status code, content type, body). 200 examples per operation, with
Hypothesis's example database on (`.hypothesis/`), so a failure found once is tried first next
time; each example within 10 s, and the process's peak memory within 300 MB of where it began."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis")

from nextchar.checkpoint import load_checkpoint  # noqa: E402
from nextchar.service.app import create_app  # noqa: E402
from nextchar.service.settings import ServiceSettings  # noqa: E402
from tests.helpers import Bounded  # noqa: E402


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
    bound = Bounded(seconds=10, mb=300)
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case: Any) -> None:
            with bound.example():
                case.call_and_validate()

        no_server_error()
    bound.check()


@pytest.mark.slow
def test_any_text_typed_is_answered_or_refused_never_a_server_error(tmp_path_factory: pytest.TempPathFactory) -> None:
    """q of any code points, control characters and lone surrogates included (sent as the bytes
    Python's "surrogatepass" gives them, which are not UTF-8): a 200 or a 4xx, never a 5xx."""
    import urllib.parse

    from fastapi.testclient import TestClient
    from hypothesis import strategies as st

    from tests.helpers import train_on_prose

    out = train_on_prose(Path(tmp_path_factory.mktemp("fuzz-text")), "gru", steps=5)
    app = create_app(ckpt=load_checkpoint(out), settings=ServiceSettings(cache_mb=2, max_chars=8))
    bound = Bounded(seconds=10, mb=300)
    with TestClient(app) as client:

        @given(text=st.text(st.characters(codec=None, categories=None), max_size=40), k=st.integers(-2, 60))
        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        def answered(text: str, k: int) -> None:
            q = urllib.parse.quote_from_bytes(text.encode("utf-8", "surrogatepass"))
            for route in ("/api/complete", "/suggest"):
                with bound.example():
                    response = client.get(f"{route}?q={q}&k={k}")
                assert response.status_code < 500, (route, text, response.text)
                is_text = all(not 0xD800 <= ord(c) <= 0xDFFF for c in text)
                if is_text and 1 <= k <= 50:
                    assert response.status_code in (200, 422), response.text  # 422: q past --max-query

        answered()
    bound.check()
