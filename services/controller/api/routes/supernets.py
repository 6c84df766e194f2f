"""Supernets: submit a supernet-training job, follow it."""

from __future__ import annotations

from fastapi import APIRouter, status

from services.controller import service
from services.controller.api.responses import NOT_FOUND
from services.controller.deps import CurrentUser, EventsDep, Limit, Offset, QueueDep, RowId, SettingsDep, StorageDep
from services.controller.schemas import SupernetCreate, SupernetPublic, SupernetsPublic

router = APIRouter(prefix="/supernets", tags=["supernets"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SupernetPublic)
def create_supernet(
    body: SupernetCreate, user: CurrentUser, storage: StorageDep, queue: QueueDep, events: EventsDep,
    settings: SettingsDep,
) -> SupernetPublic:  # fmt: skip
    """Submit a supernet-training job (its id is the supernet id)."""
    return SupernetPublic.model_validate(service.submit_supernet(storage, queue, events, user, body, limits=settings))


@router.get("", response_model=SupernetsPublic)
def list_supernets(
    user: CurrentUser,
    storage: StorageDep,
    offset: Offset = 0,
    limit: Limit = 20,
) -> SupernetsPublic:
    """The caller's supernets, oldest first."""
    page, count = storage.list_jobs(owner=user, kind="train_supernet", offset=offset, limit=limit)
    return SupernetsPublic(data=[SupernetPublic.model_validate(j) for j in page], count=count)


@router.get("/{supernet_id}", response_model=SupernetPublic, responses=NOT_FOUND)
def get_supernet(supernet_id: RowId, user: CurrentUser, storage: StorageDep) -> SupernetPublic:
    """State, training progress and checkpoint of one supernet."""
    return SupernetPublic.model_validate(service.owned_supernet(storage, supernet_id, user))
