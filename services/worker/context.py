"""What a job handler gets (:class:`JobContext`) and how it is told to stop (:class:`JobStopped`).

Handlers (:mod:`services.worker.jobs`) and the :class:`~services.worker.runner.Worker` that runs
them both build on this module.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyctas_core.search_runner import StopSearch
from services.queue import EventBus, JobQueue, QueueEntry, QueueError
from services.settings import Settings
from services.storage.base import JobRecord, Storage

__all__ = ["Handler", "JobContext", "JobStopped"]

log = logging.getLogger(__name__)


class JobStopped(StopSearch):
    """The job must stop now: cancelled by its owner, or its lease went to another worker."""


@dataclass
class JobContext:
    """What a job handler gets: its job, the backends, where artifacts go, and a stop signal."""

    job: JobRecord
    worker: str
    storage: Storage
    events: EventBus | None
    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    queue: JobQueue | None = None  # for handlers that submit a follow-up job
    entry: QueueEntry | None = None  # the stream entry this run claimed
    hand_back: bool = False  # when stopped: give the job back at once (shutdown, no progress)
    progress_at: float = field(default_factory=time.monotonic)  # last report(), for the stall watchdog
    done: threading.Event = field(default_factory=threading.Event)  # the handler has returned
    _released: bool = False
    _last_publish: float = 0.0

    @property
    def artifact_dir(self) -> Path:
        return Path(self.settings.artifact_dir).resolve()

    def should_stop(self) -> bool:
        return self.stop.is_set()

    def check(self) -> None:
        """Raise :class:`JobStopped` if the job must stop."""
        if self.stop.is_set():
            raise JobStopped(self.reason or "stopped")

    def report(self, force: bool = False, **progress: Any) -> None:
        """Record live progress (sent with the next heartbeat) and publish it (at most ~2/s)."""
        self.progress.update(progress)
        now = time.monotonic()
        self.progress_at = now
        if force or now - self._last_publish >= 0.5:
            self._last_publish = now
            self.publish({"type": "progress", **self.progress})

    def publish(self, event: dict[str, Any]) -> None:
        if self.events is None:
            return
        try:
            self.events.publish({"owner": self.job.owner, "job_id": self.job.id, "kind": self.job.kind, **event})
        except QueueError as exc:
            log.debug("event not published: %s", exc)


Handler = Callable[[JobContext], dict[str, Any]]
