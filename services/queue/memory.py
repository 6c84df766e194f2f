"""An in-process :class:`~services.queue.base.JobQueue` with the Redis queue's semantics.

For tests and single-process runs: thread-safe (one lock; a condition wakes blocked claims),
with an injectable clock so lease expiry can be tested without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from services.queue.base import JobQueue, QueueEntry, QueueError, entry_time_ms

__all__ = ["InMemoryQueue"]


@dataclass
class _Pending:
    consumer: str
    touched_at: float  # clock() of the last delivery or touch
    deliveries: int


class InMemoryQueue(JobQueue):
    """A job queue held in this process.

    Entry ids have the Redis format ``"<ms>-<seq>"`` with ``ms`` taken from ``clock`` (so with the
    default monotonic clock they are not wall-clock times; only their order and ages matter).

    Args:
        lease_s: seconds a pending entry may go untouched before another consumer may re-claim it.
        clock: seconds, non-decreasing; leases and ages use it. ``claim``'s ``block_s`` is always
            real time, so a fake clock never makes a claim wait forever.

    Raises:
        ValueError: ``lease_s`` is not positive.
    """

    def __init__(
        self, lease_s: float = 30.0, *, clock: Callable[[], float] = time.monotonic, stream: str = "memory"
    ) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        self.lease_s = lease_s
        self.stream = stream
        self._clock = clock
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # notified on enqueue
        self._jobs: dict[str, tuple[int, str]] = {}  # un-acked entries (the stream), in id order
        self._new: deque[str] = deque()  # never delivered, in id order
        self._pel: dict[str, _Pending] = {}  # delivered, not acked; in id order (delivered in id order)
        self._last_ms = -1
        self._seq = 0
        self._closed = False
        self._devices: tuple[dict[str, int], float] | None = None  # device classes, expiry

    # Producing
    def enqueue(self, job_id: int, kind: str) -> str:
        with self._arrived:
            self._check_open()
            ms = max(int(self._clock() * 1000), self._last_ms)
            self._seq = self._seq + 1 if ms == self._last_ms else 0
            self._last_ms = ms
            entry_id = f"{ms}-{self._seq}"
            self._jobs[entry_id] = (job_id, kind)
            self._new.append(entry_id)
            self._arrived.notify()
            return entry_id

    # Consuming
    def claim(self, consumer: str, *, block_s: float = 1.0) -> QueueEntry | None:
        deadline = time.monotonic() + max(block_s, 0.0)
        with self._arrived:
            while True:
                self._check_open()
                entry = self._reclaim(consumer) or self._take_new(consumer)
                if entry is not None:
                    return entry
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._arrived.wait(remaining)

    def touch(self, entry: QueueEntry, consumer: str) -> bool:
        with self._lock:
            self._check_open()
            pending = self._pel.get(entry.entry_id)
            if pending is None or pending.consumer != consumer:
                return False
            pending.touched_at = self._clock()
            return True

    def ack(self, entry: QueueEntry) -> None:
        with self._lock:
            self._check_open()
            delivered = self._pel.pop(entry.entry_id, None) is not None
            if self._jobs.pop(entry.entry_id, None) is not None and not delivered:
                self._new.remove(entry.entry_id)  # acked before any delivery (an entry built by hand)

    # Monitoring
    def job_ids(self) -> set[int]:
        with self._lock:
            self._check_open()
            return {job_id for job_id, _ in self._jobs.values()}

    def depth(self) -> int:
        with self._lock:
            self._check_open()
            return len(self._jobs)

    def set_device_classes(self, classes: dict[str, int], ttl_s: float) -> None:
        with self._lock:
            self._check_open()
            self._devices = (dict(classes), self._clock() + ttl_s)

    def device_classes(self) -> dict[str, int] | None:
        with self._lock:
            self._check_open()
            if self._devices is None or self._clock() >= self._devices[1]:
                return None
            return dict(self._devices[0])

    def pending(self) -> int:
        with self._lock:
            self._check_open()
            return len(self._pel)

    def oldest_age_s(self) -> float:
        with self._lock:
            self._check_open()
            oldest = next(iter(self._jobs), None)
            if oldest is None:
                return 0.0
            return max(self._clock() - entry_time_ms(oldest) / 1000, 0.0)

    def ping(self) -> None:
        with self._lock:
            self._check_open()

    def close(self) -> None:
        with self._arrived:
            self._closed = True
            self._arrived.notify_all()  # blocked claims wake up and raise

    # -- internals (called with the lock held) --------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise QueueError("in-memory queue is closed")

    def _reclaim(self, consumer: str) -> QueueEntry | None:
        now = self._clock()
        for entry_id, pending in self._pel.items():
            if now - pending.touched_at >= self.lease_s:
                pending.consumer, pending.touched_at = consumer, now
                pending.deliveries += 1
                return self._entry(entry_id, pending.deliveries)
        return None

    def _take_new(self, consumer: str) -> QueueEntry | None:
        if not self._new:
            return None
        entry_id = self._new.popleft()
        self._pel[entry_id] = _Pending(consumer, self._clock(), deliveries=1)
        return self._entry(entry_id, 1)

    def _entry(self, entry_id: str, deliveries: int) -> QueueEntry:
        job_id, kind = self._jobs[entry_id]
        return QueueEntry(entry_id=entry_id, job_id=job_id, kind=kind, deliveries=deliveries)
