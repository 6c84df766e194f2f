"""Ray evaluator actors: same results as in-process evaluation, survive a dead actor."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from hyctas_core.evaluate import EvaluatorSpec, LocalEvaluator  # noqa: E402
from hyctas_core.search_space import sample_arch  # noqa: E402
from services.worker.ray_pool import RayEvaluatorPool  # noqa: E402
from tests.fixtures import tiny_supernet  # noqa: E402

KEYS = ("miou", "gmacs", "params_m")


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> EvaluatorSpec:
    spec: EvaluatorSpec = tiny_supernet(tmp_path_factory.mktemp("supernet"), calib_images=4)
    return spec


@pytest.mark.slow
def test_ray_pool_matches_in_process_and_retries(spec: EvaluatorSpec) -> None:
    rng = np.random.default_rng(0)
    archs = [sample_arch(rng, 6) for _ in range(5)]
    local = LocalEvaluator(spec).evaluate(archs)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a running cluster
    try:
        pool = RayEvaluatorPool(replace(spec), workers=2)
        assert pool.size == 2 and pool.cache_key == LocalEvaluator(spec).cache_key
        remote = pool.evaluate(archs)
        for a, b in zip(local, remote, strict=True):
            assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}
        ray.kill(pool.actors[0], no_restart=True)  # a node / actor dies: its work goes elsewhere
        again = pool.evaluate(archs[:3])
        assert [r["miou"] for r in again] == [r["miou"] for r in local[:3]]
        assert pool.size >= 1
        pool.close()
    finally:
        ray.shutdown()
