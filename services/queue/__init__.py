"""The job queue and the progress-event bus: one ABC each, a Redis and an in-process implementation.

:class:`JobQueue` (``InMemoryQueue``, ``RedisQueue``) hands jobs to workers at least once, with
leases renewed by heartbeats; :class:`EventBus` (``InMemoryEventBus``, ``RedisEventBus``) fans
progress events out to whoever listens. Both raise :class:`QueueError` when the backend fails.
"""

from __future__ import annotations

from services.queue.base import JobQueue, QueueEntry, QueueError
from services.queue.events import EventBus, InMemoryEventBus, RedisEventBus
from services.queue.memory import InMemoryQueue
from services.queue.redis_queue import RedisQueue

__all__ = [
    "EventBus",
    "InMemoryEventBus",
    "InMemoryQueue",
    "JobQueue",
    "QueueEntry",
    "QueueError",
    "RedisEventBus",
    "RedisQueue",
]
