"""Supernets: submit a supernet-training job, follow it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from services.controller import service
from services.controller.api.responses import NOT_FOUND
from services.controller.deps import CurrentUser, EventsDep, QueueDep, RowId, SettingsDep, StorageDep
from services.controller.schemas import SupernetCreate, SupernetPublic, SupernetsPublic
from services.storage.base import JobRecord, Storage

router = APIRouter(prefix="/supernets", tags=["supernets"])


def owned_supernet(storage: Storage, supernet_id: int, user: str) -> JobRecord:
    try:
        return service.owned_job(storage, supernet_id, user, "train_supernet")
    except KeyError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no supernet {supernet_id}") from None


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SupernetPublic)
def create_supernet(
    body: SupernetCreate, user: CurrentUser, storage: StorageDep, queue: QueueDep, events: EventsDep,
    settings: SettingsDep,
) -> SupernetPublic:  # fmt: skip
    """Submit a supernet-training job (its id is the supernet id)."""
    return SupernetPublic.from_record(service.submit_supernet(storage, queue, events, user, body, limits=settings))


@router.get("", response_model=SupernetsPublic)
def list_supernets(
    user: CurrentUser,
    storage: StorageDep,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SupernetsPublic:
    """The caller's supernets, oldest first."""
    jobs, _ = storage.list_jobs(owner=user, limit=100_000)
    supernets = [j for j in jobs if j.kind == "train_supernet"]
    page = supernets[offset : offset + limit]
    return SupernetsPublic(data=[SupernetPublic.from_record(j) for j in page], count=len(supernets))


@router.get("/{supernet_id}", response_model=SupernetPublic, responses=NOT_FOUND)
def get_supernet(supernet_id: RowId, user: CurrentUser, storage: StorageDep) -> SupernetPublic:
    """State, training progress and checkpoint of one supernet."""
    return SupernetPublic.from_record(owned_supernet(storage, supernet_id, user))
