"""The worker's job protocol with fake handlers: success, retries, give-up, cancel, take-over, orphans.

In-memory storage and queue, short leases, real threads; the handlers are plain functions,
so each test isolates one rule of :mod:`services.worker.runner`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hyctas_core.storage import IllegalTransition, SearchState
from services.queue import InMemoryEventBus, InMemoryQueue
from services.settings import Settings
from services.storage.base import JobState
from services.storage.sql import SQLStorage
from services.worker.runner import JobContext, Worker
from tests.services.sqlite import set_job_updated_at, sqlite_storage

LEASE_S = 0.6


@pytest.fixture
def settings() -> Settings:
    return Settings(lease_s=LEASE_S, heartbeat_s=0.1, max_attempts=2)


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[tuple[SQLStorage, InMemoryQueue, InMemoryEventBus]]:
    with sqlite_storage(tmp_path) as storage:
        yield storage, InMemoryQueue(lease_s=LEASE_S), InMemoryEventBus()


def _submit(storage: SQLStorage, queue: InMemoryQueue, kind: str = "fake", payload: Any = None) -> int:
    job_id = storage.create_job(kind, payload or {}, owner="alice")
    queue.enqueue(job_id, kind)
    return job_id


@pytest.fixture
def running() -> Iterator[Callable[[Worker], threading.Event]]:
    """Start workers in threads; stop them all at the end."""
    stops: list[tuple[threading.Event, threading.Thread]] = []

    def start(worker: Worker) -> threading.Event:
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"block_s": 0.05}, daemon=True)
        thread.start()
        stops.append((stop, thread))
        return stop

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(10)


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_success_stores_the_result_and_acks(settings: Settings, backends: Any, running: Any) -> None:
    storage, queue, events = backends

    def handler(ctx: JobContext) -> dict[str, Any]:
        ctx.report(force=True, step=1)
        return {"answer": 42}

    job_id = _submit(storage, queue)
    running(Worker(storage, queue, events, settings, handlers={"fake": handler}, name="w1"))
    _wait_for(lambda: storage.get_job(job_id).state is JobState.SUCCEEDED)
    job = storage.get_job(job_id)
    assert (job.result, job.attempts, job.worker) == ({"answer": 42}, 1, "w1")
    _wait_for(lambda: queue.depth() == 0)


def test_a_failed_attempt_is_retried_then_failed_for_good(settings: Settings, backends: Any, running: Any) -> None:
    """attempt 1 fails -> taken over after the lease (attempt 2) -> fails -> FAILED with the error; search too."""
    storage, queue, events = backends
    attempts: list[int] = []

    def handler(ctx: JobContext) -> dict[str, Any]:
        attempts.append(ctx.job.attempts)
        raise RuntimeError(f"boom {ctx.job.attempts}")

    storage.create_search("s", {"search": {}}, owner="alice")
    job_id = _submit(storage, queue, "search", {"search_name": "s"})
    running(Worker(storage, queue, events, settings, handlers={"search": handler}, name="w1"))
    _wait_for(lambda: storage.get_job(job_id).state is JobState.FAILED, timeout=15)
    job = storage.get_job(job_id)
    assert attempts == [1, 2] and (job.attempts, job.failures) == (2, 2)
    assert job.error == "failed 2 times; last: RuntimeError: boom 2"
    # The search is failed in the worker's next transaction, just after the job.
    _wait_for(lambda: storage.find_search("s", owner="alice").state.is_finished())
    search = storage.find_search("s", owner="alice")
    assert search is not None and search.state is SearchState.FAILED and search.error == job.error
    _wait_for(lambda: queue.depth() == 0)


def test_cancel_stops_the_handler_and_acks(settings: Settings, backends: Any, running: Any) -> None:
    storage, queue, events = backends
    started = threading.Event()
    stopped_after: list[float] = []

    def handler(ctx: JobContext) -> dict[str, Any]:
        started.set()
        while True:
            if ctx.should_stop():
                stopped_after.append(time.monotonic())
            ctx.check()
            time.sleep(0.01)

    job_id = _submit(storage, queue)
    running(Worker(storage, queue, events, settings, handlers={"fake": handler}, name="w1"))
    assert started.wait(10)
    cancelled_at = time.monotonic()
    storage.finish_job(job_id, JobState.CANCELLED, error="cancelled by user")
    _wait_for(lambda: bool(stopped_after))
    assert stopped_after[0] - cancelled_at < 1.0  # within a couple of heartbeats
    _wait_for(lambda: queue.depth() == 0)
    assert storage.get_job(job_id).state is JobState.CANCELLED


def test_a_silent_workers_job_is_taken_over(settings: Settings, backends: Any, running: Any) -> None:
    """A worker that claimed a job and died (no heartbeats): after the lease another worker resumes it."""
    storage, queue, events = backends
    job_id = _submit(storage, queue)
    entry = queue.claim("dead", block_s=0)
    assert entry is not None
    storage.start_job(job_id, "dead")
    seen: list[tuple[int, str]] = []

    def handler(ctx: JobContext) -> dict[str, Any]:
        seen.append((ctx.job.attempts, ctx.worker))
        return {}

    running(Worker(storage, queue, events, settings, handlers={"fake": handler}, name="alive"))
    _wait_for(lambda: storage.get_job(job_id).state is JobState.SUCCEEDED)
    assert seen == [(2, "alive")]
    with pytest.raises(IllegalTransition):
        storage.heartbeat_job(job_id, "dead")


def _die_while_running(storage: SQLStorage, queue: InMemoryQueue, job_id: int, times: int) -> None:
    """``times`` workers each claim the job after the lease, start it and die (no heartbeat, no ack)."""
    for i in range(times):
        entry = None
        deadline = time.monotonic() + 10
        while entry is None:
            assert time.monotonic() < deadline, "the entry was never re-claimable"
            entry = queue.claim(f"dead{i}", block_s=0)
            time.sleep(0.02)
        while True:
            try:
                storage.start_job(job_id, f"dead{i}", stale_after_s=0.9 * LEASE_S)
                break
            except IllegalTransition:  # the previous dead worker's heartbeat is not stale yet
                assert time.monotonic() < deadline
                time.sleep(0.02)


def test_dead_workers_are_takeovers_not_failures(settings: Settings, backends: Any, running: Any) -> None:
    """Five workers die while running the job (max_attempts=2): the sixth finishes it, no failure counted."""
    storage, queue, events = backends
    job_id = _submit(storage, queue)
    _die_while_running(storage, queue, job_id, 5)
    assert (storage.get_job(job_id).attempts, storage.get_job(job_id).failures) == (5, 0)
    running(Worker(storage, queue, events, settings, handlers={"fake": lambda ctx: {"ok": True}}, name="alive"))
    _wait_for(lambda: storage.get_job(job_id).state.is_finished(), timeout=15)
    job = storage.get_job(job_id)
    assert (job.state, job.result, job.attempts, job.failures, job.takeovers) == (
        JobState.SUCCEEDED,
        {"ok": True},
        6,
        0,
        5,
    )


def test_errors_and_takeovers_are_bounded_apart(backends: Any, running: Any) -> None:
    """One handler error and two deaths (max_attempts=2): still retried; a third error-free death is a poison job."""
    storage, queue, events = backends
    settings = Settings(lease_s=LEASE_S, heartbeat_s=0.1, max_attempts=2, max_takeovers=2)
    calls: list[int] = []

    def flaky(ctx: JobContext) -> dict[str, Any]:
        calls.append(ctx.job.attempts)
        if len(calls) == 1:
            raise RuntimeError("transient")
        return {"ok": True}

    job_id = _submit(storage, queue)
    _die_while_running(storage, queue, job_id, 2)
    stop = running(Worker(storage, queue, events, settings, handlers={"fake": flaky}, name="w"))
    _wait_for(lambda: storage.get_job(job_id).state.is_finished(), timeout=15)
    job = storage.get_job(job_id)
    assert (job.state, job.attempts, job.failures, job.takeovers) == (JobState.SUCCEEDED, 4, 1, 2)
    assert calls == [3, 4]
    stop.set()

    poison = _submit(storage, queue)
    _die_while_running(storage, queue, poison, 3)
    running(Worker(storage, queue, events, settings, handlers={"fake": flaky}, name="w2"))
    _wait_for(lambda: storage.get_job(poison).state.is_finished(), timeout=15)
    job = storage.get_job(poison)
    assert job.state is JobState.FAILED and job.failures == 0 and calls == [3, 4]  # never ran again
    assert job.error == (
        "its worker died or went silent 3 times while running it; stopped as a poison job (HYCTAS_MAX_TAKEOVERS=2)"
    )


def test_shutdown_hands_the_job_back_at_once(backends: Any, running: Any) -> None:
    """worker.shutdown() (SIGTERM): the handler stops, the job is QUEUED again and another worker runs it now,
    not after the 30 s lease."""
    storage, queue, events = backends
    settings = Settings(lease_s=30.0, heartbeat_s=0.1, max_attempts=2)
    queue = InMemoryQueue(lease_s=30.0)
    started = threading.Event()

    def long(ctx: JobContext) -> dict[str, Any]:
        started.set()
        while True:
            ctx.report(step=1)
            ctx.check()
            time.sleep(0.01)

    job_id = _submit(storage, queue)
    first = Worker(storage, queue, events, settings, handlers={"fake": long}, name="first")
    running(first)
    assert started.wait(10)
    t0 = time.monotonic()
    first.shutdown()
    _wait_for(lambda: storage.get_job(job_id).state is JobState.QUEUED, timeout=5)
    assert storage.get_job(job_id).worker is None and queue.job_ids() == {job_id}
    running(Worker(storage, queue, events, settings, handlers={"fake": lambda ctx: {"by": ctx.worker}}, name="next"))
    _wait_for(lambda: storage.get_job(job_id).state is JobState.SUCCEEDED, timeout=5)
    job = storage.get_job(job_id)
    assert time.monotonic() - t0 < 5 and job.result == {"by": "next"}
    assert (job.attempts, job.failures, job.takeovers) == (2, 0, 1)
    assert first.current is None and first.stopping.is_set()


def test_a_job_without_progress_is_stopped_and_handed_back(backends: Any, running: Any) -> None:
    """No report() for stall_s: a cooperative handler stops at once; a stuck one is handed back after
    stop_grace_s and on_stuck is called (the CLI worker then exits for its supervisor to restart it)."""
    storage, _, events = backends
    settings = Settings(lease_s=30.0, heartbeat_s=0.05, stall_s=0.5, stop_grace_s=0.5, max_attempts=2)
    stuck: list[str] = []
    release = threading.Event()

    def silent_but_polite(ctx: JobContext) -> dict[str, Any]:
        while True:
            ctx.check()
            time.sleep(0.01)

    def hung(ctx: JobContext) -> dict[str, Any]:
        release.wait(30)  # ignores its stop, like a call that never returns
        return {}

    q1 = InMemoryQueue(lease_s=30.0)
    polite = _submit(storage, q1, "polite")
    w1 = Worker(storage, q1, events, settings, handlers={"polite": silent_but_polite}, name="w1",
                on_stuck=lambda ctx: stuck.append(ctx.reason))  # fmt: skip
    stop1 = running(w1)
    _wait_for(lambda: storage.get_job(polite).attempts >= 2)  # handed back, then claimed again (a takeover)
    stop1.set()
    w1.shutdown()
    _wait_for(lambda: storage.get_job(polite).state is JobState.QUEUED and w1.current is None)
    assert stuck == [] and storage.get_job(polite).failures == 0
    running(Worker(storage, q1, events, settings, handlers={"polite": lambda ctx: {"ok": 1}}, name="w3"))
    _wait_for(lambda: storage.get_job(polite).state is JobState.SUCCEEDED, timeout=5)

    q2 = InMemoryQueue(lease_s=30.0)
    hung_id = _submit(storage, q2, "hung")
    w2 = Worker(storage, q2, events, settings, handlers={"hung": hung}, name="w2",
                on_stuck=lambda ctx: stuck.append(ctx.reason))  # fmt: skip
    stop2 = running(w2)
    _wait_for(lambda: bool(stuck), timeout=10)
    assert stuck == ["no progress for 0.5 s (HYCTAS_STALL_S)"]
    stop2.set()
    job = storage.get_job(hung_id)
    assert job.state is JobState.QUEUED and job.failures == 0 and hung_id in q2.job_ids()
    release.set()
    running(Worker(storage, q2, events, settings, handlers={"hung": lambda ctx: {"ok": 2}}, name="w4"))
    _wait_for(lambda: storage.get_job(hung_id).state is JobState.SUCCEEDED, timeout=5)
    assert storage.get_job(hung_id).result == {"ok": 2}


def test_a_live_workers_job_is_not_taken_over(settings: Settings, backends: Any, running: Any) -> None:
    """Two workers, one long job: the second never runs it while the first heartbeats."""
    storage, queue, events = backends
    runs: list[str] = []
    release = threading.Event()

    def handler(ctx: JobContext) -> dict[str, Any]:
        runs.append(ctx.worker)
        release.wait(10)
        return {}

    job_id = _submit(storage, queue)
    running(Worker(storage, queue, events, settings, handlers={"fake": handler}, name="a"))
    running(Worker(storage, queue, events, settings, handlers={"fake": handler}, name="b"))
    _wait_for(lambda: bool(runs))
    time.sleep(4 * LEASE_S)
    release.set()
    _wait_for(lambda: storage.get_job(job_id).state is JobState.SUCCEEDED)
    assert len(runs) == 1 and storage.get_job(job_id).attempts == 1


def test_unknown_kind_and_duplicate_entries(settings: Settings, backends: Any) -> None:
    storage, queue, events = backends
    worker = Worker(storage, queue, events, settings, handlers={}, name="w")
    job_id = _submit(storage, queue, "mystery")
    queue.enqueue(job_id, "mystery")  # a duplicate entry
    assert worker.run(max_jobs=2, block_s=0.05) == 2
    job = storage.get_job(job_id)
    assert job.state is JobState.FAILED and "no handler" in (job.error or "")
    assert queue.depth() == 0  # the duplicate of a finished job is acknowledged


def test_sweep_requeues_jobs_without_an_entry(settings: Settings, backends: Any) -> None:
    storage, queue, events = backends
    orphan = storage.create_job("fake", {}, owner="alice")  # the controller died before enqueueing
    fresh = storage.create_job("fake", {}, owner="alice")
    queued = _submit(storage, queue)
    worker = Worker(storage, queue, events, settings, handlers={}, name="w")
    assert worker.sweep() == []  # too recent: the controller may still be enqueueing
    old = datetime.now(UTC) - timedelta(seconds=10 * LEASE_S)
    set_job_updated_at(storage, orphan, old)  # as if minutes had passed
    assert worker.sweep() == [orphan]
    assert queue.job_ids() == {orphan, queued}
    assert fresh not in queue.job_ids()


def test_sweep_touches_only_its_own_stream(settings: Settings, backends: Any) -> None:
    """An orphan submitted on another stream is left to that stream's workers."""
    storage, queue, events = backends
    mine = storage.create_job("fake", {}, owner="alice", stream=queue.stream)
    theirs = storage.create_job("fake", {}, owner="alice", stream="hyctas:gpu-jobs")
    for job_id in (mine, theirs):
        set_job_updated_at(storage, job_id, datetime.now(UTC) - timedelta(seconds=10 * LEASE_S))
    worker = Worker(storage, queue, events, settings, handlers={}, name="w")
    assert worker.sweep() == [mine] and queue.job_ids() == {mine}
    other = InMemoryQueue(lease_s=LEASE_S, stream="hyctas:gpu-jobs")
    assert Worker(storage, other, events, settings, handlers={}, name="g").sweep() == [theirs]


def test_progress_events_reach_listeners(settings: Settings, backends: Any, running: Any) -> None:
    storage, queue, events = backends
    got: list[dict[str, Any]] = []

    def handler(ctx: JobContext) -> dict[str, Any]:
        for i in range(50):
            ctx.report(force=True, step=i)
            time.sleep(0.02)
        return {}

    async def listen() -> None:
        async for event in events.listen():
            got.append(event)
            if any(e.get("state") == "succeeded" for e in got):
                return

    job_id = _submit(storage, queue)

    async def main() -> None:
        task = asyncio.create_task(listen())
        await asyncio.sleep(0.1)
        running(Worker(storage, queue, events, settings, handlers={"fake": handler}, name="w"))
        await asyncio.wait_for(task, 15)

    asyncio.run(main())
    assert {e["job_id"] for e in got} == {job_id} and all(e["owner"] == "alice" for e in got)
    steps = [e["step"] for e in got if e["type"] == "progress"]
    assert steps and steps == sorted(steps)
    assert storage.get_job(job_id).state is JobState.SUCCEEDED


def test_deployments_whose_replicas_are_gone_are_marked_failed() -> None:
    """reconcile_deployments: running on this cluster but gone or replica-less -> failed with the reason;
    healthy ones, other clusters' and non-running ones are left alone; a redeploy is then possible."""
    from services.worker.jobs import reconcile_deployments

    storage = sqlite_storage()
    model = storage.create_model("m", {"ops": []}, "h", owner="alice")
    served = {"gone": None, "empty": ("UNHEALTHY", 0), "fine": ("RUNNING", 1), "rolling": ("DEPLOYING", 0)}
    ids = {}
    for name in [*served, "elsewhere", "stopped"]:
        ids[name] = storage.create_deployment(name, model, {"backend": "torch"}, owner="alice")
        cluster = "10.0.0.9:6379" if name == "elsewhere" else "10.0.0.1:6379"
        storage.update_deployment(ids[name], state="running", options={"backend": "torch", "ray_cluster": cluster})
    storage.update_deployment(ids["stopped"], state="deleted")

    def status(name: str) -> dict[str, Any]:
        found = served.get(name)
        return {"status": "NOT_FOUND", "replicas": 0} if found is None else {"status": found[0], "replicas": found[1]}

    assert sorted(reconcile_deployments(storage, status=status, cluster="10.0.0.1:6379")) == ["empty", "gone"]
    states = {name: storage.get_deployment(i).state for name, i in ids.items()}
    assert states == {"gone": "failed", "empty": "failed", "fine": "running", "rolling": "running",
                      "elsewhere": "running", "stopped": "deleted"}  # fmt: skip
    assert "gone" in (storage.get_deployment(ids["gone"]).error or "")
    assert "UNHEALTHY" in (storage.get_deployment(ids["empty"]).error or "")
    assert reconcile_deployments(storage, status=status, cluster="10.0.0.1:6379") == []  # idempotent


def test_maintenance_runs_between_jobs_and_its_errors_never_stop_the_worker(
    settings: Settings, backends: Any, running: Any
) -> None:
    storage, queue, events = backends
    calls: list[float] = []

    def flaky() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("Ray unreachable")

    running(Worker(storage, queue, events, settings, handlers={"fake": lambda ctx: {}}, name="m", maintenance=flaky))
    _wait_for(lambda: len(calls) >= 2, timeout=10)
    job_id = _submit(storage, queue)
    _wait_for(lambda: storage.get_job(job_id).state is JobState.SUCCEEDED)
