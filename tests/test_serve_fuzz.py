"""A schema-driven fuzz of `tailorkd serve` (Schemathesis against the app's own /openapi.json, in process): for
every operation, requests that fit the schema and requests that break it, with the tiny trained student
behind the service. Every answer must be below 500, match what the schema documents for its status, and any
4xx must be the documented error: ``{"error": {"type": ..., "message": ...}}``, one bounded line.

The budget comes from the Hypothesis profile (tests/conftest.py): deterministic and small by default (CI),
larger under HYPOTHESIS_PROFILE=long (`make fuzz`).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import response_schema_conformance

from helpers import write_signals
from tailorkd.serve.app import ServeOptions, create_app

TOKEN = "fuzz-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_MESSAGE = 400  # characters: a message names the field at fault and echoes a bounded excerpt of it
OPERATIONS = 4  # POST /v1/classify, GET /healthz, /metrics, /dashboard: the profile's budget for each


@pytest.fixture(scope="module")
def api_cases(model, tmp_path_factory):  # noqa: F811
    """Schemathesis's strategy of requests to every operation of the service's own OpenAPI schema, valid and
    invalid ones, for an app with the tiny trained student (reached in process, not over a socket)."""
    folder = write_signals(tmp_path_factory.mktemp("fuzz") / "signals")
    app = create_app(model, ServeOptions(max_texts=8, max_chars=500, signals_dir=folder), token=TOKEN)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = {result.ok().label for result in schema.get_all_operations()}
    assert len(operations) == OPERATIONS, operations
    yield st.one_of(*(schema.as_strategy(mode) for mode in GenerationMode))
    shutdown_lifespans()  # Schemathesis keeps the app's lifespan (its batcher) running until told


def documented_error(ctx, response, case) -> None:
    """A refused request gets the documented error body: one bounded line naming what is wrong."""
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message and "\n" not in message, body
    assert len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:200]}"
    assert body["error"]["type"] and body["error"]["type"].isidentifier(), body


@given(data=st.data())
@settings(max_examples=OPERATIONS * settings.default.max_examples, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_5xx_or_an_undocumented_error(api_cases, data):
    case = data.draw(api_cases, label="request")
    # The token goes with every request (the auth rules have their own tests): the fuzz reaches the bodies.
    response = case.call(headers=AUTH)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance, documented_error])
