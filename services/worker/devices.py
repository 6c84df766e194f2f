"""Latency timed only on nodes of a search's device class (:mod:`services.devices` says which
class a node is and which class a search targets).

A search's latency objective is only meaningful on one kind of device, so latency is measured
only in **timing slots**: one named actor per node of the target class (:class:`TimingSlot`),
pinned to its node (hard node affinity), holding one GPU on a GPU class; on a CPU class the
evaluator pool leaves a core per slot. Ray runs an actor's calls one at a time, and every search on the cluster shares
the node's slot (it is found by name), so two latency measurements never overlap on one node.
mIoU evaluation may run anywhere.

While no node of the target class is alive, :meth:`LatencyPlacement.slots` waits (calling
``on_wait`` so the job shows it) and re-checks every few seconds: a node that joins lets the
search go on; a slot whose node leaves is dropped and its work goes to another slot, or waits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from services.devices import device_classes, node_device_class
from services.queue.base import JobQueue

__all__ = ["LatencyPlacement", "TimingSlot", "cluster_device_classes", "publish_device_classes"]

log = logging.getLogger(__name__)

SLOT_NAMESPACE = "hyctas"


def cluster_device_classes() -> dict[str, list[str]]:
    """Device class -> ids of the alive nodes of the connected Ray cluster."""
    return device_classes(ray.nodes())  # type: ignore[no-untyped-call]


def publish_device_classes(queue: JobQueue, ttl_s: float) -> dict[str, int]:
    """Tell the controller (through the queue's backend) which device classes the cluster has."""
    classes = {k: len(v) for k, v in cluster_device_classes().items()}
    queue.set_device_classes(classes, ttl_s)
    return classes


def _is_gpu_class(node: dict[str, Any]) -> bool:
    return float(node.get("Resources", {}).get("GPU", 0)) > 0


@ray.remote(max_restarts=0)
class TimingSlot:
    """The one place latency is measured on a node: its calls run one at a time."""

    def __init__(self, device_class: str, use_gpu: bool) -> None:
        import torch

        self.device_class = device_class
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(1)
        self.node_id = ray.get_runtime_context().get_node_id()

    def ready(self) -> str:
        return str(self.node_id)

    def measure(
        self, model: dict[str, Any], input_size: list[int], arch: dict[str, Any], seconds: float
    ) -> dict[str, Any]:
        from hyctas_core.config import ModelConfig
        from hyctas_core.latency import MeasuredLatency
        from hyctas_core.search_space import Arch

        timer = MeasuredLatency(
            ModelConfig.from_dict(model),
            (int(input_size[0]), int(input_size[1])),
            duration_s=seconds,
            device=self.device,
            device_class=self.device_class,
        )
        ms, source = timer.latency_ms(Arch.from_official(arch))
        return {"latency_ms": ms, "latency_source": source, "latency_node": self.node_id}


class LatencyPlacement:
    """The timing slots of one device class; waits while the class has no node.

    Args:
        device_class: the class to time on.
        poll_s: how often to look for nodes while waiting.
    """

    def __init__(self, device_class: str, *, poll_s: float = 2.0) -> None:
        self.device_class = device_class
        self.poll_s = poll_s
        self._slots: dict[str, Any] = {}  # node id -> actor handle
        self._gpu_nodes: set[str] = set()

    @property
    def cpu_slots(self) -> int:
        """Slots that time on a CPU: the evaluator pool leaves each one a core."""
        return sum(1 for node in self._slots if node not in self._gpu_nodes)

    def _nodes(self) -> list[dict[str, Any]]:
        nodes = ray.nodes()  # type: ignore[no-untyped-call]
        return [n for n in nodes if n.get("Alive") and node_device_class(n.get("Resources", {})) == self.device_class]

    def _slot(self, node: dict[str, Any]) -> Any:
        node_id = node["NodeID"]
        use_gpu = _is_gpu_class(node)
        # No Ray CPU is reserved: a reservation can leave nothing for the evaluators (a Serve
        # replica holding part of a small node's CPUs was enough to stall a search). The pool
        # leaves a core per CPU slot instead (:attr:`LatencyPlacement.cpu_slots`).
        actor_cls: Any = TimingSlot
        return actor_cls.options(
            name=f"hyctas-timing-{node_id[:16]}",
            namespace=SLOT_NAMESPACE,
            get_if_exists=True,
            num_cpus=0,
            num_gpus=1 if use_gpu else 0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(self.device_class, use_gpu)

    def slots(
        self, *, should_stop: Callable[[], bool] | None = None, on_wait: Callable[[str | None], None] | None = None
    ) -> list[Any]:
        """The slots of the nodes of this class now alive (created as needed); waits for one.

        While it waits, ``on_wait(device_class)`` is called at every poll, and ``on_wait(None)``
        once when the wait ends (a node joined, or the wait was stopped).

        Raises:
            InterruptedError: ``should_stop()`` turned true while waiting.
        """
        waited = False
        try:
            while True:
                nodes = self._nodes()
                alive = {n["NodeID"] for n in nodes}
                for gone in set(self._slots) - alive:
                    del self._slots[gone]
                new = {n["NodeID"]: self._slot(n) for n in nodes if n["NodeID"] not in self._slots}
                self._gpu_nodes |= {n["NodeID"] for n in nodes if _is_gpu_class(n)}
                if new:  # started before the evaluators are placed (a GPU slot holds its GPU)
                    ready, _ = ray.wait([s.ready.remote() for s in new.values()], num_returns=len(new), timeout=60)
                    if len(ready) < len(new):
                        late = len(new) - len(ready)
                        log.warning("device class %s: %d timing slot(s) not placed yet", self.device_class, late)
                    self._slots.update(new)
                if self._slots:
                    if waited:
                        log.info("device class %s: %d node(s) now; latency goes on", self.device_class, len(nodes))
                    return list(self._slots.values())
                if not waited:
                    log.warning("device class %s has no node: latency waits for one", self.device_class)
                waited = True
                if on_wait is not None:
                    on_wait(self.device_class)
                if should_stop is not None and should_stop():
                    raise InterruptedError(f"stopped while waiting for a {self.device_class} node")
                time.sleep(self.poll_s)
        finally:
            if waited and on_wait is not None:
                on_wait(None)

    def drop(self, slot: Any) -> None:
        """Forget a slot whose actor died (its node left); the next :meth:`slots` re-checks."""
        self._slots = {k: v for k, v in self._slots.items() if v is not slot}

    def submit(self, jobs: list[dict[str, Any]], slots: list[Any], indices: list[int] | None = None) -> dict[Any, Any]:
        """Queue each job (``model``, ``input_size``, ``arch``, ``seconds``) on the slots, round
        robin, without waiting: Ray runs them one at a time per slot while evaluators compute
        mIoU elsewhere. Returns {ref: (job index, slot)} for :meth:`collect`."""
        pending = {}
        for k, i in enumerate(range(len(jobs)) if indices is None else indices):
            slot, job = slots[k % len(slots)], jobs[i]
            pending[slot.measure.remote(job["model"], job["input_size"], job["arch"], job["seconds"])] = (i, slot)
        return pending

    def collect(
        self,
        jobs: list[dict[str, Any]],
        pending: dict[Any, Any],
        *,
        should_stop: Callable[[], bool] | None = None,
        on_wait: Callable[[str | None], None] | None = None,
        poll_s: float = 0.5,
    ) -> list[dict[str, Any]]:
        """The latency of each job, in order; a job whose slot died is measured again on another
        slot of the class (waiting for one if none is left).

        Raises:
            InterruptedError: ``should_stop()`` turned true (checked about every ``poll_s``).
        """
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        pending = dict(pending)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
            if should_stop is not None and should_stop():
                raise InterruptedError("stopped while timing latency")
            redo = []
            for ref in done:
                i, slot = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except RayActorError:
                    log.warning("timing slot lost (its node left?): measuring again elsewhere")
                    self.drop(slot)
                    redo.append(i)
            if redo:
                slots = self.slots(should_stop=should_stop, on_wait=on_wait)
                pending.update(self.submit(jobs, slots, redo))
        return [r for r in results if r is not None]
