"""Schemathesis against the OpenAPI: nothing a client sends may produce a 5xx or break the schema.

Runs in process (ASGI) against in-memory backends, authenticated as a user who owns a trained
supernet, a search and a retrain job, so that generated ids sometimes hit real rows. The event
stream (endless by design) is left out. Bounded: a few dozen cases per operation.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from hyctas_core.storage import JobState
from hyctas_core.storage_memory import InMemoryStorage
from services.auth import issue_api_key
from services.controller.main import create_app
from services.queue import InMemoryEventBus, InMemoryQueue
from services.settings import Settings

_storage = InMemoryStorage()
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


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    """Every generated request gets a documented, non-5xx answer."""
    response = case.call(headers={"Authorization": f"Bearer {_KEY}"})
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
