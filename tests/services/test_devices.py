"""Latency timed only on nodes of a search's device class (``services.worker.devices``), on a local
``ray.cluster_utils.Cluster`` whose nodes advertise device classes.

The "V100" nodes here advertise a GPU and ``accelerator_type:V100`` as Ray resources (the labels
Ray gives such nodes) but run on this CPU: what is tested is where latency runs, not the GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from hyctas_core.evaluate import EvaluatorSpec  # noqa: E402
from hyctas_core.search_space import sample_arch  # noqa: E402
from services.devices import MixedCluster, device_classes, node_device_class, resolve_target  # noqa: E402
from services.worker.devices import LatencyPlacement  # noqa: E402
from services.worker.ray_pool import RayEvaluatorPool  # noqa: E402
from tests.fixtures import tiny_supernet  # noqa: E402

pytestmark = pytest.mark.slow  # a three-node local cluster: about a minute

V100 = {"num_cpus": 1, "num_gpus": 1, "resources": {"accelerator_type:V100": 1}}


def test_a_node_class_comes_from_its_label_its_accelerator_or_cpu() -> None:
    assert node_device_class({"CPU": 8}) == "cpu"
    assert node_device_class({"CPU": 8, "GPU": 1, "accelerator_type:V100": 1}) == "V100"
    assert node_device_class({"CPU": 8, "GPU": 1, "accelerator_type:G": 1, "hyctas_device:RTX3090": 1}) == "RTX3090"
    nodes = [
        {"Alive": True, "NodeID": "a", "Resources": {"CPU": 4}},
        {"Alive": True, "NodeID": "b", "Resources": {"GPU": 1, "accelerator_type:V100": 1}},
        {"Alive": False, "NodeID": "c", "Resources": {"hyctas_device:A100": 1}},
    ]
    classes = device_classes(nodes)
    assert classes == {"cpu": ["a"], "V100": ["b"]}  # the dead node counts for nothing
    assert resolve_target("V100", classes) == "V100"
    assert resolve_target(None, {"cpu": ["a"]}) == "cpu"
    assert resolve_target("A100", classes) == "A100"  # asked for: the search waits for one
    with pytest.raises(MixedCluster, match=r"several device classes \(V100, cpu\): name the search's target_device"):
        resolve_target(None, classes)
    with pytest.raises(ValueError, match="letters, digits"):
        resolve_target("V100; rm -rf", classes)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> EvaluatorSpec:
    base: EvaluatorSpec = tiny_supernet(tmp_path_factory.mktemp("supernet"), calib_images=2)
    return EvaluatorSpec.from_dict(
        {**base.to_dict(), "defer_latency": True, "device_class": "V100", "latency_seconds": 0.05, "threads": 1}
    )


@pytest.fixture()
def cluster() -> Iterator[Cluster]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _archs(n: int, seed: int) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [sample_arch(rng, 6) for _ in range(n)]


def test_latency_lands_only_on_the_target_class_and_waits_for_it(
    cluster: Cluster, spec: EvaluatorSpec, tmp_path: Path
) -> None:
    waits: list[str | None] = []
    added: list[Any] = []

    def waiting(device_class: str | None) -> None:
        """Called (in this thread) while latency waits: after a few polls a V100 node joins."""
        waits.append(device_class)
        if len(waits) == 3:
            added.append(cluster.add_node(**V100))

    # No V100 node yet: the pool waits (visibly), and a node that joins lets it go on.
    pool = RayEvaluatorPool(spec, workers=1, latency=LatencyPlacement("V100", poll_s=0.2), on_wait=waiting)
    assert waits == ["V100"] * 3 + [None] and len(added) == 1  # None: the wait is over
    try:
        results = pool.evaluate(_archs(4, seed=1))
        assert len(results) == 4
        assert {r["latency_node"] for r in results} == {added[0].node_id}  # never on the head (cpu) node
        assert all(r["latency_source"] == "measured:V100" and r["latency_ms"] > 0 for r in results)
        assert all(0 <= r["miou"] <= 1 for r in results)  # mIoU ran on the head's evaluator

        # The V100 node leaves: its timing slot goes with it; the next batch waits for another
        # V100 node and goes on there (the search is not lost).
        cluster.remove_node(added[0])
        waits.clear()
        again = pool.evaluate(_archs(2, seed=2))
        assert waits == ["V100"] * 3 + [None] and len(added) == 2 and len(again) == 2
        assert {r["latency_node"] for r in again} == {added[1].node_id}
    finally:
        pool.close()


def test_waiting_for_a_class_can_be_stopped(cluster: Cluster, spec: EvaluatorSpec) -> None:
    placement = LatencyPlacement("A100", poll_s=0.1)
    calls: list[str | None] = []
    with pytest.raises(InterruptedError, match="waiting for a A100 node"):
        placement.slots(should_stop=lambda: len(calls) >= 3, on_wait=calls.append)
    assert calls == ["A100"] * 3 + [None]  # a stopped wait is over too
