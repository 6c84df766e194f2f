"""The read cache (``services/controller/read_cache.py``) with the default ``read_cache_s`` (1 s):
repeats cost no query, concurrent misses run the route once, and nobody sees what they should not
(another user's answers, a revoked key's) or misses what they should (their own writes, a
worker's progress that an event announces)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from hyctas_core.storage import SearchState
from hyctas_core.testing import commit_next
from services.auth import issue_api_key
from services.controller.main import create_app
from services.metrics import HTTP_REQUESTS
from services.queue import InMemoryEventBus, InMemoryQueue
from services.settings import Settings
from tests.services.controller.conftest import SUPERNET, Api
from tests.services.controller.test_queries import statements
from tests.services.sqlite import sqlite_storage

SEARCH = {"objective": "flops", "population": 4, "generations": 9}


def _running_search(api: Api) -> int:
    supernet_id = api.trained_supernet()
    r = api.client.post("/api/v1/searches", json={**SEARCH, "name": "s", "supernet_id": supernet_id}, headers=api.alice)
    assert r.status_code == 201, r.text
    search_id = int(r.json()["id"])
    api.storage.set_search_state(search_id, SearchState.RUNNING)
    commit_next(api.storage, search_id, n=4)
    return search_id


def test_settings_default_to_one_second() -> None:
    assert Settings().read_cache_s == 1.0


def test_a_repeated_read_costs_no_query_until_the_cache_time_passes(api: Api) -> None:
    search_id = _running_search(api)
    path = f"/api/v1/searches/{search_id}/pareto"
    first = api.client.get(path, headers=api.alice)
    assert first.status_code == 200
    with statements(api.storage, keys=True) as seen:
        again = api.client.get(path, headers=api.alice)
    assert seen == [] and again.status_code == 200 and again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    # A generation committed by a worker (no event here): shown once the cache time has passed.
    commit_next(api.storage, search_id, n=4)
    assert api.client.get(path, headers=api.alice).json()["generation"] == 0
    api.let_read_cache_expire()
    with statements(api.storage) as seen:
        later = api.client.get(path, headers=api.alice)
    assert seen and later.json()["generation"] == 1


def test_own_writes_show_at_once(api: Api) -> None:
    search_id = _running_search(api)
    assert api.client.get(f"/api/v1/searches/{search_id}", headers=api.alice).json()["state"] == "running"
    assert api.client.post(f"/api/v1/searches/{search_id}/cancel", headers=api.alice).status_code == 200
    assert api.client.get(f"/api/v1/searches/{search_id}", headers=api.alice).json()["state"] == "cancelled"


def test_an_event_shows_a_workers_progress_at_once(api: Api) -> None:
    """The controller listens on the event bus: an event of Alice's drops Alice's answers only."""
    search_id = _running_search(api)
    bob_search = api.client.post(
        "/api/v1/supernets", json={**SUPERNET, "name": "bobs"}, headers=api.bob
    ).json()["id"]  # fmt: skip
    cache = api.client.app.state.read_cache  # type: ignore[attr-defined]
    path = f"/api/v1/searches/{search_id}"
    before = api.client.get(path, headers=api.alice).json()["generation"]
    assert api.client.get(f"/api/v1/supernets/{bob_search}", headers=api.bob).status_code == 200
    assert len(cache) == 2
    commit_next(api.storage, search_id, n=4)
    api.events.publish({"type": "generation", "owner": "alice", "search_id": search_id})
    deadline = time.monotonic() + 10
    while len(cache) != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(cache) == 1  # Bob's answer stays
    assert api.client.get(path, headers=api.alice).json()["generation"] == before + 1


def test_users_never_share_answers(api: Api) -> None:
    search_id = _running_search(api)
    path = f"/api/v1/searches/{search_id}"
    assert api.client.get(path, headers=api.alice).status_code == 200
    assert api.client.get(path, headers=api.bob).status_code == 404
    assert api.client.get("/api/v1/searches", headers=api.bob).json()["count"] == 0
    assert api.client.get(path, headers={"Authorization": "Bearer hyk_not-a-key"}).status_code == 401
    assert api.client.get(path).status_code == 401


def test_errors_and_the_event_stream_are_not_kept(api: Api) -> None:
    cache = api.client.app.state.read_cache  # type: ignore[attr-defined]
    assert api.client.get("/api/v1/searches/999", headers=api.alice).status_code == 404
    assert api.client.get("/api/v1/searches?limit=-1", headers=api.alice).status_code == 422
    assert len(cache) == 0
    assert api.client.get("/health").status_code == 200  # outside /api/v1
    assert len(cache) == 0


def test_a_revoked_key_reads_nothing_from_the_cache(tmp_path: Path) -> None:
    """Even with answers kept longer than keys are remembered, a hit needs a key verified lately."""
    storage = sqlite_storage(tmp_path)
    key = issue_api_key(storage, "carol")
    headers = {"Authorization": f"Bearer {key}"}
    app = create_app(
        Settings(key_cache_s=1.0, read_cache_s=60.0), storage=storage, queue=InMemoryQueue(), events=InMemoryEventBus()
    )
    now = [100.0]
    app.state.keys.clock = app.state.read_cache.clock = lambda: now[0]
    with storage, TestClient(app) as client:
        assert client.get("/api/v1/jobs", headers=headers).status_code == 200
        (record,) = storage.list_api_keys("carol")
        storage.revoke_api_key(record.id)
        now[0] += 0.5
        assert client.get("/api/v1/jobs", headers=headers).status_code == 200  # within key_cache_s
        now[0] += 0.6
        assert client.get("/api/v1/jobs", headers=headers).status_code == 401


def test_concurrent_misses_run_the_route_once(api: Api) -> None:
    search_id = _running_search(api)
    app = api.client.app
    path = f"/api/v1/searches/{search_id}/individuals"
    assert api.client.get("/api/v1/jobs", headers=api.alice).status_code == 200  # the key is remembered
    with statements(api.storage) as alone:
        one = api.client.get(path, headers=api.alice)
    api.let_read_cache_expire()

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=api.alice) as client:
            return await asyncio.gather(*(client.get(path) for _ in range(20)))

    with statements(api.storage) as seen:
        answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200] * 20
    assert all(r.content == one.content for r in answers)
    assert len(seen) == len(alone)  # one route run for twenty requests


def test_a_hit_is_counted_under_its_route(api: Api) -> None:
    search_id = _running_search(api)
    labels = ("GET", "/api/v1/searches/{search_id}", "200")
    before = HTTP_REQUESTS.labels(*labels)._value.get()
    for _ in range(3):
        assert api.client.get(f"/api/v1/searches/{search_id}", headers=api.alice).status_code == 200
    assert HTTP_REQUESTS.labels(*labels)._value.get() == before + 3


def test_zero_turns_it_off(tmp_path: Path) -> None:
    storage = sqlite_storage(tmp_path)
    headers = {"Authorization": "Bearer " + issue_api_key(storage, "dave")}
    app = create_app(Settings(read_cache_s=0), storage=storage, queue=InMemoryQueue(), events=InMemoryEventBus())
    with storage, TestClient(app) as client:
        assert client.get("/api/v1/jobs", headers=headers).status_code == 200
        with statements(storage) as seen:
            assert client.get("/api/v1/jobs", headers=headers).status_code == 200
        assert seen and len(app.state.read_cache) == 0
