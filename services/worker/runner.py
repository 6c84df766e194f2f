"""``Worker``: claims jobs from the queue, runs them on Ray, heartbeats, and never loses one.

Protocol, per job (see DESIGN.md section 2):

1. ``queue.claim()`` returns a stream entry: a new one, or one whose consumer went silent for
   a lease (``XAUTOCLAIM``).
2. ``storage.start_job(stale_after_s=lease)`` moves the row to RUNNING on this worker: a QUEUED
   job, or a RUNNING one whose heartbeat is older than the lease (its worker died). A job that
   is finished is acknowledged and dropped; one that is alive elsewhere is left alone.
3. A heartbeat thread renews both leases (``heartbeat_job`` with live progress, ``queue.touch``)
   every ``heartbeat_s``. If the row is no longer ours (cancelled, or taken over), the job is
   told to stop: a search within one evaluation, training within one checkpoint interval.
4. Success: ``finish_job(SUCCEEDED)`` then ``ack``. A handler error is counted
   (``record_job_failure``); under ``max_attempts`` failures the row stays RUNNING and the
   entry un-acked: after one lease another worker (or this one) takes it over with
   ``attempts + 1`` and resumes from the last committed generation or checkpoint. At
   ``max_attempts`` failures the job is FAILED with the error, and so are its search or models.

A worker killed with SIGKILL at any moment is a takeover, not a failure: it costs one lease
and never fails the job, unless it happens ``max_takeovers`` times (a job that kills its
worker every time).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from hyctas_core.storage import IllegalTransition, SearchState, StorageError
from services.metrics import JOBS_FINISHED, WORKER_HEARTBEATS
from services.queue import EventBus, JobQueue, QueueEntry, QueueError
from services.settings import Settings
from services.storage.base import JobRecord, JobState, Storage
from services.worker.context import Handler, JobContext, JobStopped
from services.worker.jobs import default_handlers

__all__ = ["Handler", "JobContext", "JobStopped", "Worker", "default_worker_name"]

log = logging.getLogger(__name__)


def default_worker_name() -> str:
    """``host-pid-random``: unique per process, readable in the API."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _exit_stuck(ctx: JobContext) -> None:
    """The default for a handler that ignores its stop: the job is handed back; end the process."""
    log.critical(
        "job %s: handler stuck after being stopped (%s); exiting so the worker restarts", ctx.job.id, ctx.reason
    )
    logging.shutdown()
    os._exit(3)


class Worker:
    """Runs jobs from ``queue`` until stopped.

    Args:
        storage, queue, events: the backends (``events`` may be None).
        settings: leases, heartbeat period, attempts, artifact directory.
        handlers: job kind -> handler; defaults to :func:`services.worker.jobs.default_handlers`.
        name: consumer name in the stream and worker name in the database.
        maintenance: called between jobs at the sweep's cadence (every lease), e.g. to
            reconcile deployments with what the Ray cluster really serves.
        on_stuck: called when a handler told to stop has not returned within
            ``stop_grace_s`` (its job already handed back); the default exits the process
            (code 3) so that a supervisor restarts it: a stuck thread cannot be killed.
    """

    def __init__(
        self,
        storage: Storage,
        queue: JobQueue,
        events: EventBus | None,
        settings: Settings,
        *,
        handlers: dict[str, Handler] | None = None,
        name: str | None = None,
        on_stuck: Callable[[JobContext], None] | None = None,
        maintenance: Callable[[], object] | None = None,
    ) -> None:
        if handlers is None:
            handlers = default_handlers()
        self.storage = storage
        self.queue = queue
        self.events = events
        self.settings = settings
        self.handlers = handlers
        self.name = name or default_worker_name()
        self.current: JobContext | None = None
        self.on_stuck = on_stuck or _exit_stuck
        self.maintenance = maintenance
        self.stopping = threading.Event()
        self._release_lock = threading.Lock()

    def shutdown(self, reason: str = "worker shutting down") -> None:
        """Claim nothing more; stop the current job and hand it back at once (within ``stop_grace_s``)."""
        self.stopping.set()
        ctx = self.current
        if ctx is not None:
            self._stop_job(ctx, reason)

    def _stop_job(self, ctx: JobContext, reason: str) -> None:
        """Tell the handler to stop; hand its job back when it does, or after ``stop_grace_s`` regardless."""
        if ctx.stop.is_set() and ctx.hand_back:
            return
        ctx.reason, ctx.hand_back = reason, True
        ctx.stop.set()
        log.warning("job %s: %s; stopping it and handing it back", ctx.job.id, reason)

        def watchdog() -> None:
            if ctx.done.wait(self.settings.stop_grace_s):
                return
            log.error("job %s: the handler did not stop within %g s", ctx.job.id, self.settings.stop_grace_s)
            self._release(ctx)
            self.on_stuck(ctx)

        threading.Thread(target=watchdog, daemon=True, name=f"stop-watchdog-{ctx.job.id}").start()

    def _release(self, ctx: JobContext) -> None:
        """Give the job back at once (row QUEUED, entry replaced by a new one); once per run."""
        with self._release_lock:
            if ctx._released:
                return
            ctx._released = True
        try:
            self.storage.release_job(ctx.job.id, self.name)
        except IllegalTransition:  # cancelled or finished meanwhile (or taken over): nothing to hand back
            if self.storage.get_job(ctx.job.id).state.is_finished() and ctx.entry is not None:
                self.queue.ack(ctx.entry)
            return
        except StorageError as exc:  # the lease runs out and another worker takes it over instead
            log.warning("job %s: could not hand it back (%s); it is taken over after the lease", ctx.job.id, exc)
            return
        try:
            if ctx.entry is not None:
                self.queue.ack(ctx.entry)
            self.queue.enqueue(ctx.job.id, ctx.job.kind)
        except QueueError as exc:  # the row is QUEUED: the next sweep enqueues it
            log.warning("job %s: handed back, entry not replaced yet (%s)", ctx.job.id, exc)
        ctx.publish({"type": "job", "state": "queued", "reason": ctx.reason})
        log.info("job %s handed back (%s)", ctx.job.id, ctx.reason)

    # -- main loop --------------------------------------------------------------------------
    def sweep(self) -> list[int]:
        """Re-enqueue QUEUED jobs of this worker's stream that have no entry (e.g. the controller died
        between the row and the entry, or Redis lost its data); returns their ids. Duplicates are harmless:
        ``start_job`` lets one entry win and the others are acknowledged."""
        queued, _ = self.storage.list_jobs(state=JobState.QUEUED, limit=10_000)
        queued = [j for j in queued if j.stream in (None, self.queue.stream)]  # None: submitted before streams
        if not queued:
            return []
        present = self.queue.job_ids()
        cutoff = time.time() - 2 * self.settings.lease_s  # leave the controller time to enqueue
        orphans = [j for j in queued if j.id not in present and j.updated_at.timestamp() < cutoff]
        for job in orphans:
            self.queue.enqueue(job.id, job.kind)
            log.warning("job %s was queued without a stream entry; re-enqueued", job.id)
        return [j.id for j in orphans]

    def run(self, stop: threading.Event | None = None, *, max_jobs: int | None = None, block_s: float = 1.0) -> int:
        """Claim and run jobs until ``stop`` is set (or ``max_jobs`` entries were handled); returns that count."""
        stop = stop or threading.Event()
        handled = 0
        next_sweep = 0.0
        log.info("worker %s: waiting for jobs", self.name)
        while not stop.is_set() and not self.stopping.is_set() and (max_jobs is None or handled < max_jobs):
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.settings.lease_s
                try:
                    self.sweep()
                except (StorageError, QueueError) as exc:
                    log.warning("sweep failed: %s", exc)
                if self.maintenance is not None:
                    try:
                        self.maintenance()
                    except Exception as exc:  # never a reason to stop taking jobs
                        log.warning("maintenance failed: %s: %s", type(exc).__name__, exc)
            try:
                entry = self.queue.claim(self.name, block_s=block_s)
            except QueueError as exc:
                log.warning("queue unavailable (%s); retrying", exc)
                stop.wait(min(self.settings.heartbeat_s, 5.0))
                continue
            if entry is None:
                continue
            handled += 1
            try:
                self.process(entry)
            except (StorageError, QueueError) as exc:  # the backend failed: the lease logic retries later
                log.error("job %s: backend error: %s", entry.job_id, exc)
        return handled

    def process(self, entry: QueueEntry) -> None:
        """Run one claimed entry to its end (or until it must stop)."""
        try:
            job = self.storage.start_job(entry.job_id, self.name, stale_after_s=0.9 * self.settings.lease_s)
        except KeyError:
            log.warning("entry %s names unknown job %s; dropped", entry.entry_id, entry.job_id)
            self.queue.ack(entry)
            return
        except IllegalTransition:
            current = self.storage.get_job(entry.job_id)
            if current.state.is_finished():
                self.queue.ack(entry)  # a duplicate or late entry of a finished job
            # else: running and alive on another worker; its own heartbeats keep it
            return
        if job.failures >= self.settings.max_attempts:  # failed for good, but its worker died before saying so
            last = (job.progress or {}).get("last_error", "unknown")
            self._fail(job, f"gave up after {job.failures} failed attempts; last: {last}")
            self.queue.ack(entry)
            return
        if job.takeovers > self.settings.max_takeovers:
            self._fail(
                job,
                f"its worker died or went silent {job.takeovers} times while running it; stopped as a poison job "
                f"(HYCTAS_MAX_TAKEOVERS={self.settings.max_takeovers})",
            )
            self.queue.ack(entry)
            return
        handler = self.handlers.get(job.kind)
        if handler is None:
            self._fail(job, f"no handler for job kind {job.kind!r}")
            self.queue.ack(entry)
            return
        ctx = JobContext(
            job,
            self.name,
            self.storage,
            self.events,
            self.settings,
            progress=dict(job.progress or {}),
            queue=self.queue,
            entry=entry,
        )
        ctx.progress.pop("last_error", None) if job.attempts == 1 else None
        self.current = ctx
        beat = threading.Thread(target=self._heartbeat, args=(ctx, entry), daemon=True, name=f"heartbeat-{job.id}")
        beat.start()
        log.info("job %s (%s) attempt %d started", job.id, job.kind, job.attempts)
        ctx.publish({"type": "job", "state": "running", "attempt": job.attempts})
        try:
            result = handler(ctx)
        except JobStopped as exc:
            self._stopped(ctx, entry, str(exc))
        except Exception as exc:
            if ctx.hand_back:  # told to stop (shutdown, stall): whatever it raised then is no failure of its own
                log.warning("job %s raised while stopping (%s: %s)", job.id, type(exc).__name__, exc)
                self._release(ctx)
            else:
                self._failed_attempt(ctx, entry, exc)
        else:
            ctx.stop.set()
            beat.join()
            if ctx._released:  # handed back while it ran on (stuck): the next run owns the job now
                log.warning("job %s returned after it was handed back; its result is dropped", job.id)
                return
            try:
                # Still ours? (and the last progress, which the stopped heartbeat thread did not send)
                self.storage.heartbeat_job(job.id, self.name, progress=ctx.progress or None)
                self.storage.finish_job(job.id, JobState.SUCCEEDED, result=result)
            except IllegalTransition:  # cancelled (or taken over) in the very last moment: they win
                if self.storage.get_job(job.id).state.is_finished():
                    self.queue.ack(entry)
                return
            self.queue.ack(entry)
            JOBS_FINISHED.labels(job.kind, "succeeded").inc()
            ctx.publish({"type": "job", "state": "succeeded", "result": result})
            log.info("job %s succeeded", job.id)
        finally:
            ctx.done.set()
            ctx.stop.set()
            beat.join()
            self.current = None

    # -- leases -----------------------------------------------------------------------------
    def _heartbeat(self, ctx: JobContext, entry: QueueEntry) -> None:
        while not ctx.stop.wait(self.settings.heartbeat_s):
            if time.monotonic() - ctx.progress_at > self.settings.stall_s:
                self._stop_job(ctx, f"no progress for {self.settings.stall_s:g} s (HYCTAS_STALL_S)")
                return
            try:
                self.storage.heartbeat_job(ctx.job.id, self.name, progress=ctx.progress or None)
                WORKER_HEARTBEATS.labels(self.name).inc()
                if not self.queue.touch(entry, self.name):
                    log.warning("job %s: stream entry lost; continuing on the database lease", ctx.job.id)
            except IllegalTransition:
                state = self.storage.get_job(ctx.job.id).state
                ctx.reason = "cancelled" if state is JobState.CANCELLED else "lease lost to another worker"
                log.warning("job %s: %s; stopping", ctx.job.id, ctx.reason)
                ctx.stop.set()
                return
            except (StorageError, QueueError) as exc:
                log.warning("job %s: heartbeat failed (%s); retrying", ctx.job.id, exc)

    def _stopped(self, ctx: JobContext, entry: QueueEntry, reason: str) -> None:
        job = self.storage.get_job(ctx.job.id)
        if job.state is JobState.CANCELLED:
            self.queue.ack(entry)
            JOBS_FINISHED.labels(job.kind, "cancelled").inc()
            log.info("job %s cancelled", job.id)
        elif ctx.hand_back:
            self._release(ctx)
        else:
            log.warning("job %s stopped (%s); another worker owns it", job.id, reason)

    def _failed_attempt(self, ctx: JobContext, entry: QueueEntry, exc: BaseException) -> None:
        job = ctx.job
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        log.exception("job %s attempt %d failed: %s", job.id, job.attempts, message)
        ctx.stop.set()
        try:
            job = self.storage.record_job_failure(job.id, self.name, progress={**ctx.progress, "last_error": message})
        except IllegalTransition:  # cancelled, or taken over meanwhile: no longer ours to count
            return
        if job.failures >= self.settings.max_attempts:
            self._fail(job, message if job.failures == 1 else f"failed {job.failures} times; last: {message}")
            self.queue.ack(entry)
            return
        # Leave the row RUNNING and the entry pending: after one lease it is taken over (attempt + 1).
        ctx.publish({"type": "job", "state": "retrying", "error": message, "attempt": job.attempts})

    def _fail(self, job: JobRecord, message: str) -> None:
        """FAILED for good, with the error on the job and on its search or models."""
        try:
            self.storage.finish_job(job.id, JobState.FAILED, error=message)
        except IllegalTransition:
            return
        JOBS_FINISHED.labels(job.kind, "failed").inc()
        if job.kind == "search":
            search = self.storage.find_search(job.payload.get("search_name", ""), owner=job.owner)
            if search is not None and not search.state.is_finished():
                self.storage.set_search_state(search.id, SearchState.FAILED, error=message)
        for model in self.storage.list_models(job_id=job.id, limit=1000)[0]:
            if not model.state.is_finished():
                self.storage.update_model(model.id, state=JobState.FAILED, error=message)
        if job.kind == "verify":
            try:
                record = self.storage.get_search(int(job.payload["search_id"])).verification or {}
            except KeyError:
                record = None
            if record is not None and record.get("state") not in ("succeeded", "cancelled"):
                self.storage.set_search_verification(
                    int(job.payload["search_id"]), {**record, "state": "failed", "error": message}
                )
        if self.events is not None:
            try:
                self.events.publish(
                    {"type": "job", "owner": job.owner, "job_id": job.id, "kind": job.kind, "state": "failed",
                     "error": message}
                )  # fmt: skip
            except QueueError:
                pass
        log.error("job %s failed: %s", job.id, message)
