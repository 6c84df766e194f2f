"""Schemathesis against the OpenAPI, with every check that applies to a stateless run.

No 5xx; responses, status codes, content types and headers as documented; requests that
violate the schema (wrong types, unknown query parameters, a missing key) refused; the key
really checked; undeclared methods refused. Left out: positive_data_acceptance (a valid body
can still be refused by a business rule, e.g. an unknown supernet is a 422 or a finished job a
409, each declared) and the stateful checks (use_after_free, ensure_resource_availability).

Runs in process (ASGI) against in-memory backends, authenticated as a user who owns a trained
supernet, a search and a retrain job, so that generated ids sometimes hit real rows. The event
stream (endless by design) is left out. Bounded and reproducible: a fixed seed, 25 cases per operation.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, seed, settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from services.auth import issue_api_key
from services.controller.main import create_app
from services.queue import InMemoryEventBus, InMemoryQueue
from services.settings import Settings
from services.storage.base import JobState
from tests.services.sqlite import sqlite_storage

_storage = sqlite_storage()
_KEY = issue_api_key(_storage, "fuzzer")
_supernet = _storage.create_job(
    "train_supernet",
    {"name": "s", "dataset": {"kind": "synthetic"}, "train": {"model": {"num_layers": 6}}, "device": "cpu"},
    owner="fuzzer",
)
_storage.start_job(_supernet, "w")
_storage.finish_job(_supernet, JobState.SUCCEEDED, result={"checkpoint": "/nowhere/supernet.pt"})
APP = create_app(Settings(max_body_bytes=20_000), storage=_storage, queue=InMemoryQueue(), events=InMemoryEventBus())
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path="/api/v1/events")


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
    missing_required_header,
    unsupported_method,
]


@schema.parametrize()
@seed(20261206)
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_api_holds_every_check(case: schemathesis.Case) -> None:
    """Every generated request gets a documented answer; every schema-violating one is refused."""
    # A valid key where the case sends one; a case that drops the header must meet a 401.
    headers = {"Authorization": f"Bearer {_KEY}"} if "Authorization" in (case.headers or {}) else {}
    response = case.call(headers=headers)
    case.validate_response(response, checks=CHECKS)


def test_the_openapi_shows_the_enforced_limits_and_statuses() -> None:
    """population / generations maxima come from the settings; error statuses are declared."""
    spec = APP.openapi()
    search = spec["components"]["schemas"]["SearchCreate"]["properties"]
    assert (search["population"]["maximum"], search["generations"]["maximum"]) == (512, 500)
    cancel = spec["paths"]["/api/v1/searches/{search_id}/cancel"]["post"]["responses"]
    assert {"200", "400", "401", "404", "409", "413", "422", "503"} <= set(cancel)
    search_id = spec["paths"]["/api/v1/searches/{search_id}"]["get"]["parameters"][0]["schema"]
    assert (search_id["minimum"], search_id["maximum"]) == (1, 2**31 - 1)
