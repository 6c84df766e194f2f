"""A search on a Ray cluster that changes under it (``ray.cluster_utils.Cluster``, all local).

A node added mid-search adds evaluator actors at the next generation; a node removed mid-search
takes its actors with it, their evaluations are retried on the remaining ones, and the search
completes with every generation committed once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from hyctas_core.evaluate import EvaluatorSpec  # noqa: E402
from hyctas_core.search import SearchConfig  # noqa: E402
from hyctas_core.search_runner import GenerationProgress, create_search, run_search  # noqa: E402
from hyctas_core.storage import SearchState  # noqa: E402
from services.worker.ray_pool import RayEvaluatorPool  # noqa: E402
from tests.fixtures import tiny_supernet  # noqa: E402
from tests.services.sqlite import sqlite_storage  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> EvaluatorSpec:
    spec: EvaluatorSpec = tiny_supernet(tmp_path_factory.mktemp("supernet"), calib_images=2)
    return spec


def _cluster() -> Cluster:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
    return cluster


def test_nodes_join_and_leave_mid_search(spec: EvaluatorSpec, tmp_path: Path) -> None:
    storage = sqlite_storage()
    config = SearchConfig(objective="flops", pop_size=4, generations=4, seed=1, num_layers=6)
    search_id = create_search(storage, "elastic", config, spec.to_dict())
    cluster = _cluster()
    sizes: list[int] = []
    try:
        pool = RayEvaluatorPool(spec)  # sized to the cluster before every generation
        assert pool.size == 1
        added: list[Any] = []

        def on_generation(p: GenerationProgress) -> None:
            sizes.append(pool.size)
            if p.generation == 0:
                added.append(cluster.add_node(num_cpus=1))
                cluster.wait_for_nodes()
            elif p.generation == 1:
                # The new node's actor dies with it; its work is retried on the head's actor.
                cluster.remove_node(added[0])

        record = run_search(storage, search_id, pool, progress=on_generation)
        pool.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert record.state is SearchState.SUCCEEDED
    assert sizes[0] == 1 and sizes[1] == 2, sizes  # generation 1 ran on two actors
    assert sizes[2] == 1, sizes  # the removed node's actor failed over and left the pool
    assert [g.index for g in storage.list_generations(search_id)] == [0, 1, 2, 3]
    assert all(len(storage.list_individuals(search_id, generation=k)) == 4 for k in range(4))
