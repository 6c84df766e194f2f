"""Jobs: the durable side of the queue (leases, heartbeats, takeovers, failures)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from hyctas_core.storage import (
    IllegalTransition,
    utcnow,
)
from services.storage.base import (
    JOB_TRANSITIONS,
    JobRecord,
    JobState,
    check_page,
)
from services.storage.models import (
    JobRow,
)
from services.storage.sql.core import SQLCore
from services.storage.sql.records import job_record


class JobTables(SQLCore):
    """Jobs: the durable side of the queue."""

    def job_counts(self) -> dict[JobState, int]:
        with self._session_scope() as session:
            counts = dict(session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all())
        return {state: int(counts.get(state.value, 0)) for state in JobState}

    def create_job(
        self, kind: str, payload: dict[str, Any], *, owner: str | None = None, stream: str | None = None
    ) -> int:
        with self._session_scope(write=True) as session:
            now = utcnow()
            row = JobRow(
                kind=kind,
                owner=owner,
                state=JobState.QUEUED.value,
                payload=payload,
                attempts=0,
                failures=0,
                stream=stream,
                worker=None,
                heartbeat_at=None,
                result=None,
                error=None,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return row.id

    def get_job(self, job_id: int) -> JobRecord:
        return self._get(JobRow, job_id, "job", job_record)

    def list_jobs(
        self,
        *,
        owner: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[list[JobRecord], int]:
        check_page(offset, limit)
        conditions = self._filters(JobRow, JobState, owner, state)
        if kind is not None:
            conditions.append(JobRow.kind == kind)
        return self._page(JobRow, conditions, offset, limit, job_record)

    def start_job(self, job_id: int, worker: str, *, stale_after_s: float | None = None) -> JobRecord:
        with self._session_scope(write=True) as session:
            row = self._locked_job(session, job_id)
            now = utcnow()
            stale = (
                stale_after_s is not None
                and row.state == JobState.RUNNING.value
                and (row.heartbeat_at is None or row.heartbeat_at < now - timedelta(seconds=stale_after_s))
            )
            if row.state != JobState.QUEUED.value and not stale:
                raise IllegalTransition(f"job {job_id} is {row.state}, not queued: cannot start it")
            row.state = JobState.RUNNING.value
            row.attempts += 1
            row.worker = worker
            row.heartbeat_at = now
            row.updated_at = now
            session.flush()
            return job_record(row)

    def heartbeat_job(self, job_id: int, worker: str, *, progress: dict[str, Any] | None = None) -> None:
        with self._session_scope(write=True) as session:
            row = self._locked_running_job(session, job_id, worker)
            now = utcnow()
            if progress is not None:
                row.progress = progress
            row.heartbeat_at = now
            row.updated_at = now

    def release_job(self, job_id: int, worker: str) -> None:
        with self._session_scope(write=True) as session:
            row = self._locked_running_job(session, job_id, worker)
            row.state = JobState.QUEUED.value
            row.worker = None
            row.heartbeat_at = None
            row.updated_at = utcnow()

    def record_job_failure(self, job_id: int, worker: str, *, progress: dict[str, Any] | None = None) -> JobRecord:
        with self._session_scope(write=True) as session:
            row = self._locked_running_job(session, job_id, worker)
            row.failures += 1
            if progress is not None:
                row.progress = progress
            row.updated_at = utcnow()
            session.flush()
            return job_record(row)

    def finish_job(
        self, job_id: int, state: JobState, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        state = JobState(state)
        with self._session_scope(write=True) as session:
            row = self._locked_job(session, job_id)
            current = JobState(row.state)
            if not state.is_finished() or state not in JOB_TRANSITIONS[current]:
                raise IllegalTransition(f"job {job_id}: cannot finish {current.value} -> {state.value}")
            row.state = state.value
            row.result = result
            row.error = error
            row.updated_at = utcnow()

    def requeue_stale_jobs(self, older_than_s: float) -> list[int]:
        with self._session_scope(write=True) as session:
            now = utcnow()
            cutoff = now - timedelta(seconds=older_than_s)
            rows = session.scalars(
                select(JobRow)
                .where(JobRow.state == JobState.RUNNING.value, JobRow.heartbeat_at < cutoff)
                .order_by(JobRow.id)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.state = JobState.QUEUED.value
                row.worker = None
                row.updated_at = now
            return [row.id for row in rows]
