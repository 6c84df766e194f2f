"""Prometheus metrics of the controller and the workers, defined once (names carry units; counters end ``_total``).

Counters and histograms live in the default registry (one per process). Gauges that describe
shared state (jobs by state, queue depth, hypervolume of running searches) are computed when
scraped, by :class:`StateCollector`, from the database and the queue: every controller replica
reports the same truth and nothing goes stale.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hyctas_core.storage import StorageError
from services.storage.base import Storage

if TYPE_CHECKING:
    from services.queue import JobQueue

__all__ = [
    "EVALUATIONS",
    "EVALUATION_SECONDS",
    "GENERATION_SECONDS",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_SECONDS",
    "JOBS_FINISHED",
    "SEARCHES_WAITING",
    "WORKER_HEARTBEATS",
    "StateCollector",
]

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(
    "hyctas_http_requests_total", "HTTP requests handled by the controller", ["method", "route", "status"]
)
HTTP_REQUEST_SECONDS = Histogram(
    "hyctas_http_request_duration_seconds",
    "Controller request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
READ_CACHE = Counter(
    "hyctas_http_read_cache_total",
    "GETs of the API by how the read cache answered: hit (from memory), shared (waited for the same "
    "read in flight), miss (ran the route)",
    ["result"],
)
EVALUATIONS = Counter("hyctas_evaluations_total", "Sub-network evaluations run by workers", ["status"])
EVALUATION_SECONDS = Histogram(
    "hyctas_evaluation_duration_seconds",
    "Time to evaluate one sub-network (BN recalibration, mIoU, latency)",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160),
)
GENERATION_SECONDS = Histogram(
    "hyctas_generation_duration_seconds",
    "Time from ask to committed generation",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 3600),
)
JOBS_FINISHED = Counter("hyctas_jobs_finished_total", "Jobs a worker finished", ["kind", "state"])
WORKER_HEARTBEATS = Counter("hyctas_worker_heartbeats_total", "Heartbeats sent by workers", ["worker"])
SEARCHES_WAITING = Gauge(
    "hyctas_searches_waiting_for_device",
    "1 while this worker's search waits for a node of its device class (latency is timed only there)",
    ["device_class"],
)


class StateCollector(Collector):
    """Scrape-time gauges: jobs by state, queue depth and oldest-entry age, hypervolume per running
    search, nodes per device class (as the workers last reported the cluster)."""

    def __init__(self, storage: Storage, queue: JobQueue | None) -> None:
        self.storage = storage
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("hyctas_jobs", "Jobs by state", labels=["state"])
        hv = GaugeMetricFamily("hyctas_search_hypervolume", "Hypervolume of running searches", labels=["search_id"])
        try:
            for state, count in self.storage.job_counts().items():
                jobs.add_metric([state.value], count)
            for search_id, hypervolume in self.storage.running_hypervolumes().items():
                hv.add_metric([str(search_id)], hypervolume)
        except StorageError as exc:
            log.warning("metrics: database unavailable: %s", exc)
        yield jobs
        yield hv
        if self.queue is None:
            return
        depth = GaugeMetricFamily("hyctas_queue_depth", "Jobs in the stream not yet acknowledged")
        age = GaugeMetricFamily("hyctas_queue_oldest_entry_age_seconds", "Age of the oldest unacknowledged job")
        try:
            depth.add_metric([], self.queue.depth())
            age.add_metric([], self.queue.oldest_age_s())
        except Exception as exc:  # a scrape must never fail because Redis is down
            log.warning("metrics: queue unavailable: %s", exc)
            return
        yield depth
        yield age
        nodes = GaugeMetricFamily("hyctas_device_class_nodes", "Alive Ray nodes per device class", labels=["class"])
        try:
            for device_class, count in sorted((self.queue.device_classes() or {}).items()):
                nodes.add_metric([device_class], count)
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("metrics: device classes unavailable: %s", exc)
            return
        yield nodes
