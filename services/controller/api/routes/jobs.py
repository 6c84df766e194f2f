"""Jobs: the unit of work behind every supernet, search and retrain."""

from __future__ import annotations

from fastapi import APIRouter

from services.controller import service
from services.controller.api.responses import CONFLICT, NOT_FOUND
from services.controller.deps import CurrentUser, EventsDep, Limit, Offset, RowId, StorageDep
from services.controller.schemas import JobPublic, JobsPublic
from services.storage.base import JobRecord, JobState, Storage

router = APIRouter(prefix="/jobs", tags=["jobs"])


def owned_job(storage: Storage, job_id: int, user: str) -> JobRecord:
    return service.owned(lambda: storage.get_job(job_id), user, f"job {job_id}")


@router.get("", response_model=JobsPublic)
def list_jobs(
    user: CurrentUser,
    storage: StorageDep,
    state: JobState | None = None,
    offset: Offset = 0,
    limit: Limit = 20,
) -> JobsPublic:
    """The caller's jobs, oldest first, optionally of one state."""
    page, count = storage.list_jobs(owner=user, state=state, offset=offset, limit=limit)
    return JobsPublic(data=[JobPublic.model_validate(j) for j in page], count=count)


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
def get_job(job_id: RowId, user: CurrentUser, storage: StorageDep) -> JobPublic:
    """State, attempts, worker, live progress, result or error of one job."""
    return JobPublic.model_validate(owned_job(storage, job_id, user))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses={**NOT_FOUND, **CONFLICT})
def cancel_job(job_id: RowId, user: CurrentUser, storage: StorageDep, events: EventsDep) -> JobPublic:
    """Cancel a queued or running job. 409 if it already finished."""
    return JobPublic.model_validate(service.cancel_job(storage, events, owned_job(storage, job_id, user)))
