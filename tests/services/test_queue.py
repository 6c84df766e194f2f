"""Job queue and event bus: the shared contracts on both backends, then Redis specifics and errors.

``TestQueueContract`` and ``TestEventBusContract`` run once per backend through a parametrized
fixture (add a backend by adding a param). The in-memory queue runs on a fake clock; the Redis
queue (``integration``, ``TEST_REDIS_URL``, e.g. ``redis://127.0.0.1:6379/15``) uses a short lease
and real sleeps, and every test gets its own stream, group and channel (uuid), deleted at the end.
Without ``TEST_REDIS_URL`` the Redis cases skip; with ``CI=true`` a missing variable or an
unreachable server fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from services.queue import (
    EventBus,
    InMemoryEventBus,
    InMemoryQueue,
    JobQueue,
    QueueEntry,
    QueueError,
    RedisEventBus,
    RedisQueue,
)
from services.queue.base import mask_url

UNREACHABLE_URL = "redis://:secret@127.0.0.1:1/0"  # nothing listens on port 1
REDIS_LEASE_S = 0.5  # short enough to sleep through, long enough for a loaded CI runner

pytestmark = pytest.mark.timeout(120)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A raw client on the test database, for poking behind the queue's back."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@dataclass
class QueueBackend:
    """One test's queue and how to make time pass for it.

    ``open(lease_s=...)`` returns a handle on the test's queue: the same object for the in-memory
    backend (the first call's lease wins), a new client on the same stream and group for Redis (as
    separate worker processes would have). ``lease_s`` is the default lease; ``advance(seconds)``
    moves the fake clock (memory) or sleeps (Redis).
    """

    name: str
    lease_s: float
    open: Callable[..., JobQueue]
    advance: Callable[[float], None]
    raw: redis.Redis | None = None  # Redis only
    stream: str = ""


def _redis_backend(request: pytest.FixtureRequest) -> Iterator[QueueBackend]:
    """A RedisQueue backend on a stream and group of its own, deleted afterwards."""
    url: str = request.getfixturevalue("redis_url")
    raw: redis.Redis = request.getfixturevalue("redis_client")
    name = uuid.uuid4().hex
    stream, group = f"test:hyctas:jobs:{name}", f"workers-{name}"
    opened: list[RedisQueue] = []

    def open_redis(lease_s: float = REDIS_LEASE_S) -> JobQueue:
        queue = RedisQueue(url, stream=stream, group=group, lease_s=lease_s)
        opened.append(queue)
        return queue

    yield QueueBackend("redis", REDIS_LEASE_S, open_redis, time.sleep, raw=raw, stream=stream)
    for queue in opened:
        queue.close()
    raw.delete(stream)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> Iterator[QueueBackend]:
    """A fresh, empty queue per test, on each backend."""
    if request.param == "memory":
        clock = FakeClock()
        queues: list[InMemoryQueue] = []

        def open_memory(lease_s: float = 30.0) -> JobQueue:
            if not queues:
                queues.append(InMemoryQueue(lease_s, clock=clock))
            return queues[0]

        yield QueueBackend("memory", 30.0, open_memory, clock.advance)
        for queue in queues:
            queue.close()
        return

    yield from _redis_backend(request)


# -- the queue contract -----------------------------------------------------------------------
class TestQueueContract:
    """What every JobQueue guarantees (see :class:`services.queue.base.JobQueue`).

    Reusable: subclass it and override the ``backend`` fixture to run it on another implementation.
    """

    def test_enqueue_claim_ack_fifo(self, backend: QueueBackend) -> None:
        queue = backend.open()
        jobs = [(1, "train_supernet"), (2, "search"), (2**40, "retrain"), (4, "déploiement ✓")]
        ids = [queue.enqueue(job_id, kind) for job_id, kind in jobs]
        assert ids == sorted(ids, key=_id_key) and len(set(ids)) == len(ids)
        claimed = [queue.claim("a", block_s=0) for _ in jobs]
        assert claimed == [QueueEntry(i, job_id, kind, 1) for i, (job_id, kind) in zip(ids, jobs, strict=True)]
        for entry in claimed:
            assert entry is not None
            queue.ack(entry)
        assert queue.depth() == 0 and queue.pending() == 0
        assert queue.claim("a", block_s=0) is None

    def test_claim_on_empty_returns_none_after_block_s(self, backend: QueueBackend) -> None:
        queue = backend.open()
        start = time.monotonic()
        assert queue.claim("a", block_s=0) is None
        assert time.monotonic() - start < 0.5
        start = time.monotonic()
        assert queue.claim("a", block_s=0.3) is None
        assert 0.25 <= time.monotonic() - start < 1.5

    def test_blocked_claim_wakes_on_enqueue(self, backend: QueueBackend) -> None:
        queue, producer = backend.open(), backend.open()
        timer = threading.Timer(0.2, producer.enqueue, args=(7, "search"))
        timer.start()
        try:
            start = time.monotonic()
            entry = queue.claim("a", block_s=4.0)
            elapsed = time.monotonic() - start
        finally:
            timer.join()
        assert entry is not None and entry.job_id == 7
        assert elapsed < 3.0

    def test_concurrent_consumers_never_share_an_entry(self, backend: QueueBackend) -> None:
        producer = backend.open(lease_s=60.0)  # no lease may run out while a thread is descheduled
        for job_id in range(50):
            producer.enqueue(job_id, "search")
        claimed: list[QueueEntry] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        start = threading.Barrier(4)

        def work(consumer: str) -> None:
            queue = backend.open(lease_s=60.0)
            try:
                start.wait()
                while (entry := queue.claim(consumer, block_s=0.05)) is not None:
                    with lock:
                        claimed.append(entry)
                    queue.ack(entry)
            except BaseException as exc:  # reported below, from the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(f"c{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        assert sorted(entry.job_id for entry in claimed) == list(range(50))
        assert len({entry.entry_id for entry in claimed}) == 50
        assert all(entry.deliveries == 1 for entry in claimed)
        assert producer.depth() == 0 and producer.pending() == 0

    def test_untouched_entry_is_reclaimed_after_lease(self, backend: QueueBackend) -> None:
        worker_a, worker_b = backend.open(), backend.open()
        worker_a.enqueue(1, "search")
        first = worker_a.claim("a", block_s=0)
        assert first is not None and first.deliveries == 1
        assert worker_b.claim("b", block_s=0) is None  # still leased to a

        backend.advance(backend.lease_s * 1.2)
        second = worker_b.claim("b", block_s=0)
        assert second == QueueEntry(first.entry_id, 1, "search", deliveries=2)
        assert worker_a.touch(first, "a") is False  # a lost it ...
        assert worker_b.touch(second, "b") is True  # ... b holds it
        assert worker_a.depth() == 1 and worker_a.pending() == 1

        backend.advance(backend.lease_s * 1.2)  # b goes silent too; a consumer may re-claim its own
        third = worker_b.claim("b", block_s=0)
        assert third is not None and third.entry_id == first.entry_id and third.deliveries == 3
        worker_b.ack(third)
        assert worker_a.depth() == 0 and worker_a.pending() == 0

    def test_touched_entry_is_not_reclaimed(self, backend: QueueBackend) -> None:
        worker_a, worker_b = backend.open(), backend.open()
        worker_a.enqueue(1, "retrain")
        entry = worker_a.claim("a", block_s=0)
        assert entry is not None
        for _ in range(3):  # 1.2 leases in all, never 0.4 without a heartbeat
            backend.advance(backend.lease_s * 0.4)
            assert worker_a.touch(entry, "a") is True
        backend.advance(backend.lease_s * 0.4)
        assert worker_b.claim("b", block_s=0) is None
        assert worker_a.touch(entry, "a") is True
        assert worker_a.touch(entry, "b") is False  # a touch only counts from the owner

        backend.advance(backend.lease_s * 1.2)
        taken = worker_b.claim("b", block_s=0)
        assert taken is not None and taken.entry_id == entry.entry_id and taken.deliveries == 2

    def test_reclaim_comes_before_new_entries(self, backend: QueueBackend) -> None:
        queue = backend.open()
        queue.enqueue(1, "search")
        lost = queue.claim("a", block_s=0)
        queue.enqueue(2, "search")
        backend.advance(backend.lease_s * 1.2)
        assert lost is not None
        assert queue.claim("b", block_s=0) == QueueEntry(lost.entry_id, 1, "search", 2)
        fresh = queue.claim("b", block_s=0)
        assert fresh is not None and (fresh.job_id, fresh.deliveries) == (2, 1)

    def test_ack_is_idempotent(self, backend: QueueBackend) -> None:
        queue = backend.open()
        queue.enqueue(1, "deploy")
        queue.enqueue(2, "deploy")
        entry = queue.claim("a", block_s=0)
        assert entry is not None
        assert queue.depth() == 2
        queue.ack(entry)
        queue.ack(entry)
        assert queue.depth() == 1 and queue.pending() == 0
        assert queue.touch(entry, "a") is False
        backend.advance(backend.lease_s * 1.2)
        nxt = queue.claim("a", block_s=0)
        assert nxt is not None and nxt.job_id == 2  # the acked entry never comes back

    def test_job_ids_lists_waiting_and_pending_entries(self, backend: QueueBackend) -> None:
        queue = backend.open()
        assert queue.job_ids() == set()
        for job_id in (5, 6, 7):
            queue.enqueue(job_id, "search")
        first = queue.claim("a", block_s=0)
        assert first is not None and first.job_id == 5
        assert queue.job_ids() == {5, 6, 7}  # pending and waiting entries both count
        queue.ack(first)
        assert queue.job_ids() == {6, 7}

    def test_depth_pending_and_oldest_age(self, backend: QueueBackend) -> None:
        queue = backend.open()
        assert (queue.depth(), queue.pending(), queue.oldest_age_s()) == (0, 0, 0.0)
        for job_id in range(3):
            queue.enqueue(job_id, "search")
        wait_s = backend.lease_s * 0.4
        backend.advance(wait_s)
        assert (queue.depth(), queue.pending()) == (3, 0)
        assert wait_s - 0.01 <= queue.oldest_age_s() <= wait_s + 1.0

        first = queue.claim("a", block_s=0)
        second = queue.claim("a", block_s=0)
        assert first is not None and second is not None
        assert (queue.depth(), queue.pending()) == (3, 2)
        queue.ack(first)
        assert (queue.depth(), queue.pending()) == (2, 1)
        assert wait_s - 0.01 <= queue.oldest_age_s() <= wait_s + 1.0  # second: enqueued with first
        queue.ack(second)
        assert (queue.depth(), queue.pending()) == (1, 0)
        last = queue.claim("a", block_s=0)
        assert last is not None
        queue.ack(last)
        assert (queue.depth(), queue.pending(), queue.oldest_age_s()) == (0, 0, 0.0)

    def test_device_classes_are_shared_and_expire(self, backend: QueueBackend) -> None:
        worker, controller = backend.open(), backend.open()
        assert controller.device_classes() is None  # no worker has said anything yet
        worker.set_device_classes({"V100": 2, "cpu": 1}, ttl_s=backend.lease_s)
        assert controller.device_classes() == {"V100": 2, "cpu": 1}
        backend.advance(backend.lease_s * 1.2)
        assert controller.device_classes() is None  # the workers went quiet: not known any more

    def test_ping_and_close(self, backend: QueueBackend) -> None:
        queue = backend.open()
        queue.ping()
        queue.close()
        queue.close()  # idempotent
        with pytest.raises(QueueError):
            queue.ping()
        with pytest.raises(QueueError):
            queue.enqueue(1, "search")

    def test_lease_must_be_positive(self, backend: QueueBackend) -> None:
        with pytest.raises(ValueError, match="lease_s"):
            backend.open(lease_s=0.0)


# -- Redis specifics --------------------------------------------------------------------------
@pytest.mark.integration
class TestRedisQueue:
    """Behaviour only a shared Redis stream can show: entries changed behind the queue's back."""

    @pytest.fixture
    def backend(self, request: pytest.FixtureRequest) -> Iterator[QueueBackend]:
        yield from _redis_backend(request)

    def test_entry_deleted_while_pending_is_never_handed_out(self, backend: QueueBackend) -> None:
        assert backend.raw is not None
        worker_a, worker_b = backend.open(), backend.open()
        gone_id = worker_a.enqueue(1, "search")
        worker_a.enqueue(2, "search")
        worker_a.enqueue(3, "search")
        gone, kept = worker_a.claim("a", block_s=0), worker_a.claim("a", block_s=0)
        assert gone is not None and kept is not None and gone.entry_id == gone_id
        backend.raw.xdel(backend.stream, gone_id)  # still in the PEL, no longer in the stream

        backend.advance(backend.lease_s * 1.2)
        reclaimed = worker_b.claim("b", block_s=0)  # XAUTOCLAIM reports gone_id as deleted first
        assert reclaimed == QueueEntry(kept.entry_id, 2, "search", deliveries=2)
        fresh = worker_b.claim("b", block_s=0)
        assert fresh is not None and (fresh.job_id, fresh.deliveries) == (3, 1)
        assert worker_b.claim("b", block_s=0) is None
        assert worker_a.touch(gone, "a") is False
        assert (worker_b.depth(), worker_b.pending()) == (2, 2)  # the deleted entry left the PEL too

    def test_malformed_entries_are_dropped(self, backend: QueueBackend) -> None:
        assert backend.raw is not None
        queue = backend.open()
        backend.raw.xadd(backend.stream, {"job_id": "not-a-number", "kind": "search"})
        backend.raw.xadd(backend.stream, {"something": "else"})
        queue.enqueue(5, "search")
        entry = queue.claim("a", block_s=0)
        assert entry is not None and entry.job_id == 5
        assert (queue.depth(), queue.pending()) == (1, 1)

    def test_entries_added_before_the_group_exists_are_delivered(self, backend: QueueBackend) -> None:
        assert backend.raw is not None
        backend.raw.xadd(backend.stream, {"job_id": "1", "kind": "search"})  # no group yet
        entry = backend.open().claim("a", block_s=0)  # creates the group from id 0, not "$"
        assert entry is not None and entry.job_id == 1

    def test_group_lost_by_redis_is_recreated(self, backend: QueueBackend) -> None:
        assert backend.raw is not None
        queue = backend.open()
        queue.enqueue(1, "search")
        backend.raw.delete(backend.stream)  # as after a restart without persistence
        backend.raw.xadd(backend.stream, {"job_id": "2", "kind": "search"})
        entry = queue.claim("a", block_s=0)  # NOGROUP -> group re-created -> claim retried
        assert entry is not None and entry.job_id == 2
        assert queue.pending() == 1


# -- errors -----------------------------------------------------------------------------------
def _assert_clean(exc: BaseException) -> None:
    message = str(exc)
    assert "\n" not in message and "secret" not in message and "***" in message, message


def test_unreachable_redis_raises_one_line_queue_errors() -> None:
    queue = RedisQueue(UNREACHABLE_URL, stream="s", group="g", lease_s=1.0)  # no I/O yet
    entry = QueueEntry("1-0", 1, "search", 1)
    calls: list[Callable[[], object]] = [
        queue.ping,
        lambda: queue.enqueue(1, "search"),
        lambda: queue.claim("a", block_s=0.1),
        lambda: queue.touch(entry, "a"),
        lambda: queue.ack(entry),
        queue.depth,
        queue.pending,
        queue.oldest_age_s,
    ]
    start = time.monotonic()
    for call in calls:
        with pytest.raises(QueueError) as info:
            call()
        _assert_clean(info.value)
    assert time.monotonic() - start < 30
    assert "secret" not in repr(queue)
    queue.close()


def test_unreachable_redis_publish_raises_queue_error() -> None:
    bus = RedisEventBus(UNREACHABLE_URL, channel="c")
    with pytest.raises(QueueError) as info:
        bus.publish({"type": "progress"})
    _assert_clean(info.value)
    bus.close()


def test_unreachable_redis_listen_raises_queue_error() -> None:
    async def first_event() -> None:
        async with contextlib.aclosing(RedisEventBus(UNREACHABLE_URL).listen()) as events:
            async for _ in events:
                break

    with pytest.raises(QueueError) as info:
        asyncio.run(asyncio.wait_for(first_event(), timeout=60))
    _assert_clean(info.value)


@pytest.mark.parametrize("url", ["http://:secret@127.0.0.1/0", "redis://:secret@127.0.0.1:port/0"])
def test_invalid_url_is_a_value_error_without_password(url: str) -> None:
    with pytest.raises(ValueError) as queue_info:
        RedisQueue(url)
    with pytest.raises(ValueError) as bus_info:
        RedisEventBus(url)
    assert "secret" not in str(queue_info.value) and "secret" not in str(bus_info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:secret@host/0", "redis://user:***@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://:s3cr@t@host:6379/0", "redis://:***@host:6379/0"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_memory_queue_blocked_claim_raises_when_closed() -> None:
    queue = InMemoryQueue()
    threading.Timer(0.2, queue.close).start()
    with pytest.raises(QueueError):
        queue.claim("a", block_s=5.0)


# -- the event bus contract -------------------------------------------------------------------
@dataclass
class BusBackend:
    """One test's bus, a way to put raw text on its channel, and its subscriber count."""

    bus: EventBus
    send_raw: Callable[[str], None]
    subscribers: Callable[[], int]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def bus_backend(request: pytest.FixtureRequest) -> Iterator[BusBackend]:
    """A fresh bus per test (Redis: on a channel of its own)."""
    if request.param == "memory":
        memory_bus = InMemoryEventBus()
        yield BusBackend(memory_bus, memory_bus._send, lambda: len(memory_bus._listeners))
        memory_bus.close()
        return
    url: str = request.getfixturevalue("redis_url")
    raw: redis.Redis = request.getfixturevalue("redis_client")
    channel = f"test:hyctas:events:{uuid.uuid4().hex}"
    redis_bus = RedisEventBus(url, channel=channel)

    def send_raw(text: str) -> None:
        raw.publish(channel, text)

    def subscribers() -> int:
        return int(raw.pubsub_numsub(channel)[0][1])

    yield BusBackend(redis_bus, send_raw, subscribers)
    redis_bus.close()


class Listener:
    """Collects a listener's events in a task; probes (sent until one arrives) are counted apart."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[dict[str, Any]] = []
        self.probes = 0
        self.task = asyncio.create_task(self._run(bus))

    async def _run(self, bus: EventBus) -> None:
        async with contextlib.aclosing(bus.listen()) as events:
            async for event in events:
                if event["type"] == "probe":
                    self.probes += 1
                else:
                    self.events.append(event)


async def _eventually(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _listening(bus: EventBus, count: int = 1) -> list[Listener]:
    """``count`` listeners, returned once each has received a probe (so is subscribed)."""
    listeners = [Listener(bus) for _ in range(count)]
    deadline = time.monotonic() + 10.0
    while not all(listener.probes for listener in listeners):
        assert time.monotonic() < deadline, "listeners never subscribed"
        bus.publish({"type": "probe"})
        await asyncio.sleep(0.02)
    return listeners


async def _stop(listeners: list[Listener]) -> None:
    for listener in listeners:
        listener.task.cancel()
    results = await asyncio.gather(*(listener.task for listener in listeners), return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results), results


def _run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout=60))


def _events(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"type": "progress", "owner": "alice", "job_id": i, "search_id": 3, **extra} for i in range(n)]


class TestEventBusContract:
    """What every EventBus guarantees (see :class:`services.queue.events.EventBus`)."""

    def test_listener_receives_later_events_in_order(self, bus_backend: BusBackend) -> None:
        bus = bus_backend.bus
        published = _events(20, payload={"miou": 0.5, "archs": [[1, 2], None], "name": "résumé ✓"})

        async def main() -> None:
            bus.publish({"type": "before"})  # nobody listens yet: lost
            (listener,) = await _listening(bus)
            for event in published:
                await asyncio.to_thread(bus.publish, event)  # from another thread
            await _eventually(lambda: len(listener.events) >= len(published), "20 events")
            await asyncio.sleep(0.05)
            assert listener.events == published
            await _stop([listener])

        _run(main)

    def test_malformed_messages_are_skipped(self, bus_backend: BusBackend) -> None:
        async def main() -> None:
            (listener,) = await _listening(bus_backend.bus)
            for text in ["not json", "[1, 2]", '"text"', "3", '{"no": "type"}', '{"type": 1}', "{"]:
                bus_backend.send_raw(text)
            bus_backend.bus.publish({"type": "done", "job_id": 1})
            await _eventually(lambda: bool(listener.events), "the valid event")
            await asyncio.sleep(0.05)
            assert listener.events == [{"type": "done", "job_id": 1}]
            await _stop([listener])

        _run(main)

    def test_every_listener_receives_every_event(self, bus_backend: BusBackend) -> None:
        published = _events(5)

        async def main() -> None:
            listeners = await _listening(bus_backend.bus, count=2)
            for event in published:
                bus_backend.bus.publish(event)
            await _eventually(lambda: all(len(x.events) >= 5 for x in listeners), "both listeners")
            assert [x.events for x in listeners] == [published, published]
            await _stop(listeners)

        _run(main)

    def test_cancelled_listener_unsubscribes(self, bus_backend: BusBackend) -> None:
        async def main() -> None:
            listeners = await _listening(bus_backend.bus, count=2)
            assert bus_backend.subscribers() == 2
            await _stop(listeners)
            await _eventually(lambda: bus_backend.subscribers() == 0, "unsubscribe")
            bus_backend.bus.publish({"type": "nobody listens"})  # no error

        _run(main)

    @pytest.mark.parametrize(
        "event",
        [{"job_id": 1}, {"type": 3}, {"type": "x", "value": object()}, {"type": "x", "loss": math.nan}, ["type"]],
    )
    def test_publish_rejects_invalid_events(self, bus_backend: BusBackend, event: Any) -> None:
        with pytest.raises(ValueError):
            bus_backend.bus.publish(event)

    def test_publish_after_close_raises(self, bus_backend: BusBackend) -> None:
        bus_backend.bus.close()
        bus_backend.bus.close()  # idempotent
        with pytest.raises(QueueError):
            bus_backend.bus.publish({"type": "late"})
