"""Reads scale: the statements one request sends to the database do not grow with the data.

Counted with SQLAlchemy's ``before_cursor_execute`` event on the storage's engine. Transaction
control (BEGIN / COMMIT / ROLLBACK) is not a query, and the API-key lookup of authentication
(one statement when a key is not remembered; see ``test_a_remembered_key_costs_no_query``) is
left out: what is counted is what the route reads. The limits are the issue's: ``GET /searches``
at most 3 per page whatever its size, ``/pareto`` at most 3, a Prometheus scrape a constant
number that loads no algorithm state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from hyctas_core.storage import SearchState
from hyctas_core.testing import commit_next
from services.metrics import StateCollector
from services.storage.base import JobState
from services.storage.sql import SQLStorage
from tests.services.controller.conftest import Api

SEARCH = {"supernet_id": 0, "objective": "flops", "population": 4, "generations": 9}
_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


@contextmanager
def statements(storage: SQLStorage, *, keys: bool = False) -> Iterator[list[str]]:
    """The SQL statements sent through ``storage``'s engine inside the block (see the module doc;
    ``keys``: the API-key lookups too)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        text = " ".join(statement.split())
        if not text.upper().startswith(_CONTROL) and (keys or "api_keys" not in text):
            seen.append(text)

    event.listen(storage.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(storage.engine, "before_cursor_execute", record)


def _search(api: Api, supernet_id: int, name: str, generations: int) -> int:
    """A finished search of alice's, submitted through the API, with ``generations`` committed."""
    r = api.client.post(
        "/api/v1/searches", json={**SEARCH, "name": name, "supernet_id": supernet_id}, headers=api.alice
    )
    assert r.status_code == 201, r.text
    search_id, job_id = int(r.json()["id"]), int(r.json()["job"]["id"])
    api.storage.start_job(job_id, "w")
    api.storage.set_search_state(search_id, SearchState.RUNNING)
    for _ in range(generations):
        commit_next(api.storage, search_id, n=6, prefix=name)
    api.storage.set_search_state(search_id, SearchState.SUCCEEDED)
    api.storage.finish_job(job_id, JobState.SUCCEEDED, result={"search_id": search_id})
    return search_id


def _count(api: Api, path: str) -> tuple[int, Any]:
    assert isinstance(api.storage, SQLStorage)
    api.client.get("/api/v1/jobs", headers=api.alice)  # authenticate once: the key is cached
    with statements(api.storage) as seen:
        r = api.client.get(f"/api/v1{path}", headers=api.alice)
    assert r.status_code == 200, r.text
    return len(seen), r.json()


def test_listing_searches_takes_three_queries_whatever_the_page_size(api: Api) -> None:
    supernet_id = api.trained_supernet()
    _search(api, supernet_id, "first", 1)
    one, body = _count(api, "/searches?limit=100")
    assert body["count"] == 1
    for k in range(1, 30):
        _search(api, supernet_id, f"more{k}", 4)
    many, body = _count(api, "/searches?limit=100")
    assert body["count"] == 30 and len(body["data"]) == 30
    assert one <= 3 and many == one, (one, many)
    # The summaries are right, not only cheap: progress, timings and the job of each search.
    later = body["data"][-1]
    assert later["generation"] == 4 and later["front_size"] == 2 and later["hypervolume"] is not None
    assert later["timings"]["eval_s"] == pytest.approx(sum(1.25 * (i + 1) for i in range(4)))
    assert later["timings"]["mean_generation_s"] == pytest.approx((later["timings"]["eval_s"] + 4 * 0.5) / 4)
    assert later["job"]["kind"] == "search" and later["job"]["state"] == "succeeded"
    assert body["data"][0]["generation"] == 1 and body["data"][0]["n_evaluated"] == 6


def test_one_search_and_its_front_take_at_most_three_queries(api: Api) -> None:
    search_id = _search(api, api.trained_supernet(), "s", 8)
    n, body = _count(api, f"/searches/{search_id}")
    assert n <= 3 and body["generation"] == 8
    n, body = _count(api, f"/searches/{search_id}/pareto")
    assert n <= 3, n
    latest = api.storage.latest_generation(search_id)
    assert latest is not None
    assert [p["arch_hash"] for p in body["data"]] == latest.front
    assert body["hypervolume"] == pytest.approx(latest.hypervolume)
    # No statement reads a pickled algorithm state.
    with statements(api.storage) as seen:
        api.client.get(f"/api/v1/searches/{search_id}/pareto", headers=api.alice)
        api.client.get("/api/v1/searches", headers=api.alice)
    assert not [s for s in seen if "algorithm_state" in s]


def test_a_scrape_takes_a_constant_number_of_queries_and_no_algorithm_state(api: Api) -> None:
    assert isinstance(api.storage, SQLStorage)
    collector = StateCollector(api.storage, None)
    sid = api.storage.create_search("direct", {"search": {}}, owner="alice")
    api.storage.set_search_state(sid, SearchState.RUNNING)
    commit_next(api.storage, sid, n=3, prefix="direct")
    with statements(api.storage) as few:
        small = {m.name: m.samples for m in collector.collect()}
    _search(api, api.trained_supernet(), "done", 2)  # a finished search is not a running one
    for k in range(12):
        sid = api.storage.create_search(f"direct{k}", {"search": {}}, owner="alice")
        api.storage.set_search_state(sid, SearchState.RUNNING)
        commit_next(api.storage, sid, n=3, prefix=f"d{k}")
    with statements(api.storage) as many:
        large = {m.name: m.samples for m in collector.collect()}
    assert len(few) == len(many) <= 2, (few, many)
    assert not [s for s in few + many if "algorithm_state" in s]
    assert len(small["hyctas_search_hypervolume"]) == 1 and len(large["hyctas_search_hypervolume"]) == 13
    jobs = {s.labels["state"]: s.value for s in large["hyctas_jobs"]}
    assert jobs["succeeded"] == 2 and jobs["queued"] == 0  # a trained supernet and the search's job


def test_a_remembered_key_costs_no_query(api: Api) -> None:
    """Authentication queries the key once, then answers from the key cache until it expires."""
    assert isinstance(api.storage, SQLStorage)
    now = [100.0]
    api.client.app.state.keys.clock = lambda: now[0]  # type: ignore[attr-defined]
    lookups = []
    for step in (0.0, 0.5, 0.6):  # t = 100 (query), 100.5 (cached), 101.1 (expired: query again)
        now[0] += step
        with statements(api.storage, keys=True) as seen:
            assert api.client.get("/api/v1/jobs", headers=api.alice).status_code == 200
        lookups.append(sum("api_keys" in s for s in seen))
    assert lookups == [1, 0, 1]
