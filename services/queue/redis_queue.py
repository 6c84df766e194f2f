"""A :class:`~services.queue.base.JobQueue` on a Redis stream read by a consumer group (Redis >= 7).

Commands per method: ``enqueue`` = XADD; ``claim`` = XAUTOCLAIM (lost leases first, with the delivery
count read back from XPENDING) then XREADGROUP ``>``; ``touch`` = XPENDING + XCLAIM ``JUSTID`` in
one Lua script (so a touch can never steal back an entry that another consumer just re-claimed);
``ack`` = XACK + XDEL in one MULTI, so the stream holds exactly the un-acked entries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from services.queue.base import JobQueue, QueueEntry, QueueError, describe_error, entry_time_ms, mask_url

__all__ = ["RedisQueue"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_BLOCK_S = 5.0  # longest XREADGROUP BLOCK; claim() returns None after it and the caller loops
_SOCKET_TIMEOUT_S = 10.0  # must exceed _MAX_BLOCK_S, else a blocked read times out as an error
_CONNECT_TIMEOUT_S = 5.0
_RETRIES = 2  # on connection errors; XADD may then (rarely) enqueue twice: delivery is at-least-once
_MAX_SCANS = 100  # XAUTOCLAIM calls per claim(); each scans up to 10 pending entries (COUNT 1)

# KEYS[1] stream; ARGV[1] group, ARGV[2] entry id, ARGV[3] consumer. Returns 1 if the lease was renewed.
_TOUCH_SCRIPT = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then
    return 0
end
return #redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
"""


class RedisQueue(JobQueue):
    """A job queue on a Redis stream.

    Nothing is sent to Redis until the first call; the consumer group is then created (from the
    start of the stream, with MKSTREAM) if missing, and re-created if Redis loses it (a restart
    without persistence).

    Args:
        url: ``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        stream: the stream key.
        group: the consumer group all workers share.
        lease_s: seconds a pending entry may go untouched before another consumer may re-claim it
            (millisecond resolution).

    Raises:
        ValueError: ``lease_s`` is not positive, or ``url`` is not a Redis URL.
    """

    def __init__(self, url: str, *, stream: str = "hyctas:jobs", group: str = "workers", lease_s: float = 30.0) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        self.lease_s = lease_s
        self.stream = stream
        self.group = group
        self._url = url
        try:
            self._client = redis.Redis.from_url(
                url,
                decode_responses=True,
                protocol=2,  # the reply shapes parsed below are RESP2's
                socket_timeout=_SOCKET_TIMEOUT_S,
                socket_connect_timeout=_CONNECT_TIMEOUT_S,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
            )
        except ValueError as exc:
            raise ValueError(f"invalid Redis URL {mask_url(url)}: {describe_error(exc, url)}") from None
        self._touch_script = self._client.register_script(_TOUCH_SCRIPT)
        self._group_ready = False
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisQueue({mask_url(self._url)!r}, stream={self.stream!r}, group={self.group!r})"

    # Producing
    def enqueue(self, job_id: int, kind: str) -> str:
        return self._call(lambda: str(self._client.xadd(self.stream, {"job_id": str(job_id), "kind": kind})))

    # Consuming
    def claim(self, consumer: str, *, block_s: float = 1.0) -> QueueEntry | None:
        return self._call(lambda: self._reclaim(consumer) or self._read_new(consumer, block_s))

    def touch(self, entry: QueueEntry, consumer: str) -> bool:
        args = [self.group, entry.entry_id, consumer]
        return self._call(lambda: bool(self._touch_script(keys=[self.stream], args=args)))

    def ack(self, entry: QueueEntry) -> None:
        self._call(lambda: self._drop(entry.entry_id))

    # Monitoring
    def job_ids(self) -> set[int]:
        def scan() -> set[int]:
            ids: set[int] = set()
            entries: Any = self._client.xrange(self.stream, count=100_000)
            for _, fields in entries:
                try:
                    ids.add(int(fields["job_id"]))
                except (KeyError, ValueError, TypeError):
                    continue
            return ids

        return self._call(scan)

    def depth(self) -> int:
        # Acked entries are deleted, so the stream holds exactly the un-acked ones.
        return self._call(lambda: int(self._client.xlen(self.stream)))

    def pending(self) -> int:
        return self._call(lambda: int(self._client.xpending(self.stream, self.group)["pending"]))

    def oldest_age_s(self) -> float:
        return self._call(self._oldest_age_s)

    def set_device_classes(self, classes: dict[str, int], ttl_s: float) -> None:
        text = json.dumps({str(k): int(v) for k, v in classes.items()}, sort_keys=True)
        self._call(lambda: self._client.set(self._devices_key, text, px=max(int(ttl_s * 1000), 1)))

    def device_classes(self) -> dict[str, int] | None:
        raw: Any = self._call(lambda: self._client.get(self._devices_key))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else None

    @property
    def _devices_key(self) -> str:
        return f"{self.stream}:device_classes"

    def ping(self) -> None:
        self._check_open()
        try:
            self._client.ping()
        except redis.RedisError as exc:
            raise QueueError(describe_error(exc, self._url)) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    # -- internals ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise QueueError(f"{mask_url(self._url)}: queue is closed")

    def _call(self, op: Callable[[], T]) -> T:
        """Runs ``op`` with the group in place; Redis errors become one-line QueueErrors."""
        self._check_open()
        try:
            if not self._group_ready:
                self._create_group()
            try:
                return op()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("consumer group %r of %r vanished; re-creating it", self.group, self.stream)
                self._create_group()
                return op()
        except redis.RedisError as exc:
            raise QueueError(describe_error(exc, self._url)) from exc

    def _create_group(self) -> None:
        try:
            # From id 0, not "$": jobs enqueued before the first worker started must be delivered.
            self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _reclaim(self, consumer: str) -> QueueEntry | None:
        """XAUTOCLAIM one entry idle for >= lease_s, scanning the whole PEL if need be."""
        lease_ms = max(int(self.lease_s * 1000), 1)
        cursor = "0-0"
        for _ in range(_MAX_SCANS):
            reply: list[Any] = self._client.xautoclaim(
                self.stream, self.group, consumer, lease_ms, start_id=cursor, count=1
            )
            cursor, claimed = str(reply[0]), reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                # Entries XDEL'd while pending: Redis >= 7 already dropped them from the PEL; the
                # XACK only makes sure, and they are never handed out.
                self._client.xack(self.stream, self.group, *deleted)
            for entry_id, fields in claimed:
                if entry_id is None or fields is None:  # a deleted entry, as Redis 6.2 reports it
                    continue
                deliveries = self._deliveries(str(entry_id), consumer)
                if deliveries is None:  # acked by its previous owner in between
                    continue
                entry = self._parse(str(entry_id), fields, deliveries)
                if entry is not None:
                    return entry
            if cursor == "0-0":
                return None
        return None

    def _deliveries(self, entry_id: str, consumer: str) -> int | None:
        """The delivery count XAUTOCLAIM just incremented, or None if ``consumer`` no longer holds it."""
        rows = self._client.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        if not rows or rows[0]["consumer"] != consumer:
            return None
        return int(rows[0]["times_delivered"])

    def _read_new(self, consumer: str, block_s: float) -> QueueEntry | None:
        block_ms: int | None = None  # no BLOCK argument: return at once (BLOCK 0 would wait forever)
        if block_s > 0:
            block_ms = max(round(min(block_s, _MAX_BLOCK_S) * 1000), 1)
        while True:
            reply: Any = self._client.xreadgroup(self.group, consumer, {self.stream: ">"}, count=1, block=block_ms)
            if not reply or not reply[0][1]:
                return None
            entry_id, fields = reply[0][1][0]
            entry = self._parse(str(entry_id), fields, deliveries=1)
            if entry is not None:
                return entry
            block_ms = None  # a malformed entry was dropped: look at the next without waiting again

    def _parse(self, entry_id: str, fields: dict[str, str], deliveries: int) -> QueueEntry | None:
        """The entry, or None after dropping a malformed one (not written by enqueue())."""
        try:
            return QueueEntry(
                entry_id=entry_id, job_id=int(fields["job_id"]), kind=fields["kind"], deliveries=deliveries
            )
        except (KeyError, ValueError, TypeError):
            log.warning("dropping malformed entry %s of %r: %.200r", entry_id, self.stream, fields)
            self._drop(entry_id)
            return None

    def _drop(self, entry_id: str) -> None:
        with self._client.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, entry_id)
            pipe.xdel(self.stream, entry_id)
            pipe.execute()

    def _oldest_age_s(self) -> float:
        with self._client.pipeline(transaction=False) as pipe:
            pipe.xrange(self.stream, count=1)
            pipe.time()
            first, (seconds, micros) = pipe.execute()
        if not first:
            return 0.0
        now_ms = int(seconds) * 1000 + int(micros) / 1000  # Redis' clock, the one that stamped the id
        return max(now_ms - entry_time_ms(str(first[0][0])), 0.0) / 1000
