"""Fixtures shared by the service tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from services.queue.base import mask_url

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI (integration tests never skip there)."""
    if IN_CI:
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """A local Ray with 2 CPUs for a module's tests."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """TEST_REDIS_URL, checked to answer (skip locally / fail in CI otherwise)."""
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        unavailable("TEST_REDIS_URL is not set")
        raise AssertionError("unreachable")  # unavailable always raises; this keeps mypy informed
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {mask_url(url)} is unreachable: {exc}")
    finally:
        client.close()
    return url
