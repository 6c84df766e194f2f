"""Who may call a deployment (``services.serve.app._Access``): owners, 401 and 404, and a cached
row and key that cost no query and no thread on the replica's event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException

from hyctas_core.presets import get_preset
from services.auth import issue_api_key
from services.serve import app as serve_app
from services.storage.base import JobState
from tests.services.controller.test_queries import statements
from tests.services.sqlite import sqlite_url


@pytest.fixture
def access(tmp_path: Path) -> Any:
    access = serve_app._Access(sqlite_url(tmp_path))
    storage = access.storage
    arch = get_preset("hyctas-s")
    model = storage.create_model("m", arch.to_official(), arch.hash, owner="alice", source={"preset": "hyctas-s"})
    storage.update_model(model, state=JobState.RUNNING)
    storage.update_model(model, state=JobState.SUCCEEDED, checkpoint_uri="file:///ckpt/m.pt")
    for name, public in (("private", False), ("open", True)):
        deployment = storage.create_deployment(name, model, {}, owner="alice", public=public)
        storage.update_deployment(deployment, state="running")
    access.keys_of = {user: f"Bearer {issue_api_key(storage, user)}" for user in ("alice", "bob")}  # type: ignore[attr-defined]
    yield access
    storage.close()


def _check(access: Any, deployment: str, authorization: str | None) -> Any:
    return asyncio.run(access.check_async(deployment, authorization))


def _status(access: Any, deployment: str, authorization: str | None) -> int:
    try:
        _check(access, deployment, authorization)
    except HTTPException as exc:
        return exc.status_code
    return 200


def test_owners_pass_others_get_404_and_no_key_401(access: Any) -> None:
    alice, bob = access.keys_of["alice"], access.keys_of["bob"]
    for _ in range(2):  # the first time from the database, the second from the caches
        assert _status(access, "private", alice) == 200
        assert _status(access, "private", bob) == 404
        assert _status(access, "private", None) == 401
        assert _status(access, "private", "Bearer hyk_not-a-key") == 401
        assert _status(access, "open", None) == 200
        assert _status(access, "missing", alice) == 404


def test_a_cached_row_and_key_run_no_query_and_no_thread(access: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = access.keys_of["alice"]
    assert _check(access, "private", alice).name == "private"

    def no_thread(*_: Any, **__: Any) -> Any:
        raise AssertionError("a thread hop for a cached row and key")

    monkeypatch.setattr("asyncio.to_thread", no_thread)
    with statements(access.storage, keys=True) as seen:
        assert _check(access, "private", alice).name == "private"
        assert _status(access, "private", None) == 401  # no key: nothing to look up
    assert seen == []


def test_a_revoked_key_is_refused_once_its_cache_time_passes(access: Any) -> None:
    now = [100.0]
    access._keys.clock = lambda: now[0]
    access._deployments.clock = lambda: now[0]
    bob = access.keys_of["bob"]
    key = issue_api_key(access.storage, "alice")
    assert _status(access, "private", f"Bearer {key}") == 200
    (record,) = [k for k in access.storage.list_api_keys("alice") if key.startswith(k.prefix)]
    access.storage.revoke_api_key(record.id)
    now[0] += 0.5
    assert _status(access, "private", f"Bearer {key}") == 200  # within the second
    now[0] += 0.6
    assert _status(access, "private", f"Bearer {key}") == 401
    assert _status(access, "private", bob) == 404
