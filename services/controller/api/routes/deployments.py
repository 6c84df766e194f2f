"""Deployments: serve retrained models on Ray Serve (``POST /models/{id}/deploy``), list, undeploy."""

from __future__ import annotations

from fastapi import APIRouter, status

from services.controller import service
from services.controller.api.responses import CONFLICT, NOT_FOUND
from services.controller.deps import CurrentUser, EventsDep, QueueDep, RowId, StorageDep
from services.controller.schemas import DeploymentCreate, DeploymentPublic, DeploymentsPublic, LatencyComparison
from services.storage.base import DeploymentRecord, Storage

router = APIRouter(tags=["deployments"])


def owned_deployment(storage: Storage, name: str, user: str) -> DeploymentRecord:
    return service.owned(lambda: storage.find_deployment(name), user, f"deployment {name!r}")


@router.post(
    "/models/{model_id}/deploy",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeploymentPublic,
    responses={**NOT_FOUND, **CONFLICT},
)
def deploy_model(
    model_id: RowId, body: DeploymentCreate, user: CurrentUser, storage: StorageDep, queue: QueueDep, events: EventsDep
) -> DeploymentPublic:
    """Serve a retrained model (or update your deployment of that name in place, without dropping requests)."""
    return DeploymentPublic.model_validate(service.deploy_model(storage, queue, events, user, model_id, body))


@router.get("/deployments", response_model=DeploymentsPublic)
def list_deployments(user: CurrentUser, storage: StorageDep) -> DeploymentsPublic:
    """The caller's live deployments with state, options (replicas, batching, backend) and route."""
    rows = storage.list_deployments(owner=user)
    return DeploymentsPublic(data=[DeploymentPublic.model_validate(d) for d in rows], count=len(rows))


@router.get("/deployments/{name}", response_model=DeploymentPublic, responses=NOT_FOUND)
def get_deployment(name: str, user: CurrentUser, storage: StorageDep) -> DeploymentPublic:
    """One deployment, with its measured serving latency beside the search's prediction."""
    deployment = owned_deployment(storage, name, user)
    public = DeploymentPublic.model_validate(deployment)
    comparison = service.serving_latency(storage, deployment)  # None before a replica reported
    public.latency = LatencyComparison.model_validate(comparison) if comparison is not None else None
    return public


@router.delete(
    "/deployments/{name}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeploymentPublic,
    responses={**NOT_FOUND, **CONFLICT},
)
def delete_deployment(
    name: str, user: CurrentUser, storage: StorageDep, queue: QueueDep, events: EventsDep
) -> DeploymentPublic:
    """Undeploy (asynchronously: the state goes ``deleting`` then ``deleted``)."""
    deployment = owned_deployment(storage, name, user)
    return DeploymentPublic.model_validate(service.delete_deployment(storage, queue, events, deployment))
