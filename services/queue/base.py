"""The job queue contract: :class:`JobQueue`, the entries it hands out and the error it raises.

Jobs wait in an append-only stream read by one consumer group (Redis Streams semantics): a
claimed entry stays *pending* on the consumer that claimed it until it is acked; a consumer that
stops touching (heartbeating) an entry for ``lease_s`` loses it to the next consumer that calls
:meth:`JobQueue.claim`. Delivery is therefore at-least-once: a job whose worker was merely slow
may run twice, so whoever finishes a job checks its state in the storage before writing results.

Implementations: :class:`~services.queue.memory.InMemoryQueue` (one process, tests) and
:class:`~services.queue.redis_queue.RedisQueue`.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["JobQueue", "QueueEntry", "QueueError", "describe_error", "entry_time_ms", "mask_url"]

_MAX_MESSAGE = 300  # characters of a QueueError message; redis-py messages can be long


@dataclass(frozen=True)
class QueueEntry:
    """One delivery of a queued job.

    Attributes:
        entry_id: the stream entry id, ``"<milliseconds>-<sequence>"`` (e.g. ``"1700000000000-0"``).
        job_id: the job to run (a storage job id).
        kind: what to run: ``"train_supernet"``, ``"search"``, ``"retrain"``, ``"deploy"`` (any str).
        deliveries: how many times this entry has been handed out: 1 on its first claim, one more
            on each re-claim after a lost lease.
    """

    entry_id: str
    job_id: int
    kind: str
    deliveries: int


class QueueError(RuntimeError):
    """The queue or event backend failed (unreachable, refused the command, ...).

    The message is one line and never contains a password.
    """


class JobQueue(abc.ABC):
    """Jobs wait in a stream consumed by a consumer group; each delivered entry is pending on one consumer
    until acked; a consumer that stops touching its entries for ``lease_s`` loses them to whoever calls
    :meth:`claim`.

    A typical worker loop::

        while running:
            entry = queue.claim(worker_name, block_s=1.0)
            if entry is None:
                continue
            run(entry, heartbeat=lambda: queue.touch(entry, worker_name))  # stop if it returns False
            queue.ack(entry)

    Queues are usable as context managers (``close()`` on exit). After :meth:`close` every other
    method raises :class:`QueueError`.

    Attributes:
        lease_s: seconds a pending entry may go untouched before another consumer may re-claim it.
        stream: the stream's name; stored with every job submitted on it.
    """

    lease_s: float
    stream: str

    # Producing
    @abc.abstractmethod
    def enqueue(self, job_id: int, kind: str) -> str:
        """Appends a job to the stream.

        Args:
            job_id: the job to run.
            kind: what to run (e.g. ``"search"``).

        Returns:
            The new entry's id (ids increase in enqueue order).

        Raises:
            QueueError: the backend failed.
        """
        raise NotImplementedError

    # Consuming
    @abc.abstractmethod
    def claim(self, consumer: str, *, block_s: float = 1.0) -> QueueEntry | None:
        """Hands one entry to ``consumer``, which must then touch it within every ``lease_s`` and ack it.

        First re-claims the oldest entry left idle for at least ``lease_s`` by any consumer
        (``consumer`` included), with its ``deliveries`` incremented; else takes the oldest entry
        never delivered (``deliveries == 1``), waiting up to ``block_s`` for one to be enqueued.

        Args:
            consumer: a name unique to the claiming worker (e.g. ``"<host>:<pid>"``).
            block_s: the longest to wait for a new entry; ``0`` does not wait. Implementations
                may cap it (Redis: 5 s), returning ``None`` earlier; callers loop anyway.

        Returns:
            The claimed entry, or ``None`` if there was nothing to claim.

        Raises:
            QueueError: the backend failed.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def touch(self, entry: QueueEntry, consumer: str) -> bool:
        """Heartbeat: restarts ``entry``'s lease if it is still pending on ``consumer``.

        Args:
            entry: an entry ``consumer`` claimed.
            consumer: the name it was claimed under.

        Returns:
            ``True`` if the lease was renewed; ``False`` if the entry was lost (re-claimed by
            another consumer, or acked), in which case the caller should stop working on it.

        Raises:
            QueueError: the backend failed.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def ack(self, entry: QueueEntry) -> None:
        """Marks ``entry`` done and removes it from the stream; acking twice is a no-op.

        Ownership is not checked: a consumer that lost its lease may still ack, which removes
        the entry for its new owner too (whose next :meth:`touch` then returns ``False``).

        Args:
            entry: a claimed entry.

        Raises:
            QueueError: the backend failed.
        """
        raise NotImplementedError

    # Monitoring
    @abc.abstractmethod
    def depth(self) -> int:
        """Entries not yet acked: never delivered plus pending.

        Raises:
            QueueError: the backend failed.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def pending(self) -> int:
        """Entries delivered and not yet acked.

        Raises:
            QueueError: the backend failed.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def oldest_age_s(self) -> float:
        """Seconds since the oldest un-acked entry was enqueued (from its id's timestamp); 0.0 if none.

        Raises:
            QueueError: the backend failed.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def job_ids(self) -> set[int]:
        """Ids of the jobs with an un-acked entry (waiting or pending), to find jobs that were never queued.

        Raises:
            QueueError: the backend failed.
        """

    # The cluster's device classes, as workers see them (the controller has no Ray)
    @abc.abstractmethod
    def set_device_classes(self, classes: dict[str, int], ttl_s: float) -> None:
        """Record the device classes of the workers' Ray cluster (class -> alive nodes) for ``ttl_s``.

        Raises:
            QueueError: the backend failed.
        """

    @abc.abstractmethod
    def device_classes(self) -> dict[str, int] | None:
        """The device classes last recorded and not expired; None when no worker recorded any lately.

        Raises:
            QueueError: the backend failed.
        """

    @abc.abstractmethod
    def ping(self) -> None:
        """Checks that the backend answers.

        Raises:
            QueueError: the backend is unreachable (or the queue is closed).
        """
        raise NotImplementedError

    @abc.abstractmethod
    def close(self) -> None:
        """Releases connections; idempotent."""
        raise NotImplementedError

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# -- helpers shared by the backends -----------------------------------------------------------
def entry_time_ms(entry_id: str) -> int:
    """The millisecond timestamp of a stream entry id ``"<ms>-<seq>"``."""
    return int(entry_id.partition("-")[0])


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, safe for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # unparsable port and the like: fall back to a pattern
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    if not password:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


def describe_error(exc: BaseException, url: str) -> str:
    """A one-line, password-free message for a backend error ``exc`` raised while talking to ``url``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    password = _password_of(url)
    if password:
        text = text.replace(password, "***")
    message = f"{mask_url(url)}: {type(exc).__name__}: {text}"
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _password_of(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        match = re.search(r"://[^:/@]*:([^@]*)@", url)
        return match.group(1) if match else None
