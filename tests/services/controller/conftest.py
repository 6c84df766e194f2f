"""An in-process controller over in-memory backends, with two users and their keys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.auth import issue_api_key
from services.controller.main import create_app
from services.queue import InMemoryEventBus, InMemoryQueue
from services.settings import Settings
from services.storage.base import JobState
from services.storage.sql import SQLStorage
from tests.services.sqlite import sqlite_storage


@dataclass
class Api:
    client: TestClient
    storage: SQLStorage
    queue: InMemoryQueue
    events: InMemoryEventBus
    alice: dict[str, str]
    bob: dict[str, str]

    def let_read_cache_expire(self) -> None:
        """Moves the read cache's clock past ``read_cache_s``: what a client sees once a write that
        no event announces (a test writing the storage directly, as a worker would) shows."""
        cache = self.client.app.state.read_cache  # type: ignore[attr-defined]
        clock, step = cache.clock, cache.ttl_s
        cache.clock = lambda: clock() + step

    def trained_supernet(self, owner: str = "alice", checkpoint: str = "/ckpt/supernet.pt") -> int:
        """A supernet job marked as trained (the worker's part is tested elsewhere)."""
        headers = self.alice if owner == "alice" else self.bob
        r = self.client.post("/api/v1/supernets", json=SUPERNET, headers=headers)
        assert r.status_code == 201, r.text
        job_id = int(r.json()["id"])
        self.storage.start_job(job_id, "w")
        self.storage.finish_job(job_id, JobState.SUCCEEDED, result={"checkpoint": checkpoint})
        return job_id


SUPERNET = {
    "name": "tiny",
    "dataset": {"kind": "synthetic", "train": 8, "val": 4, "size": [64, 128]},
    "epochs": 1,
    "steps_per_epoch": 2,
    "batch_size": 2,
    "base_channels": 4,
    "num_layers": 6,
}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    storage = sqlite_storage(tmp_path)
    queue = InMemoryQueue()
    events = InMemoryEventBus()
    settings = Settings(artifact_dir=tmp_path, data_dir=tmp_path, max_body_bytes=64_000)
    alice = {"Authorization": "Bearer " + issue_api_key(storage, "alice")}
    bob = {"Authorization": "Bearer " + issue_api_key(storage, "bob")}
    app = create_app(settings, storage=storage, queue=queue, events=events)
    with storage, TestClient(app) as client:
        yield Api(client, storage, queue, events, alice, bob)
