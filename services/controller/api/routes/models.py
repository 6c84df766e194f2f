"""Models: retrain chosen architectures from scratch (one Ray Tune trial each), follow them."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import FileResponse

from services.controller import service
from services.controller.api.responses import CONFLICT, NOT_FOUND
from services.controller.deps import CurrentUser, EventsDep, Limit, Offset, QueueDep, RowId, SettingsDep, StorageDep
from services.controller.schemas import ModelPublic, ModelsCreate, ModelsPublic

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelsPublic, responses=CONFLICT)
def create_models(
    body: ModelsCreate, user: CurrentUser, storage: StorageDep, queue: QueueDep, events: EventsDep,
    settings: SettingsDep,
) -> ModelsPublic:  # fmt: skip
    """Submit one retrain job for one or more architectures; returns the new models and the job id."""
    job, models = service.submit_models(storage, queue, events, user, body, limits=settings)
    return ModelsPublic(data=[ModelPublic.model_validate(m) for m in models], count=len(models), job_id=job.id)


@router.get("", response_model=ModelsPublic)
def list_models(
    user: CurrentUser,
    storage: StorageDep,
    job_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    offset: Offset = 0,
    limit: Limit = 20,
) -> ModelsPublic:
    """The caller's models, oldest first, optionally of one retrain job."""
    page, count = storage.list_models(owner=user, job_id=job_id, offset=offset, limit=limit)
    return ModelsPublic(data=[ModelPublic.model_validate(m) for m in page], count=count, job_id=job_id)


@router.get("/{model_id}", response_model=ModelPublic, responses=NOT_FOUND)
def get_model(model_id: RowId, user: CurrentUser, storage: StorageDep) -> ModelPublic:
    """State, metrics (mIoU, FPS, params, GMACs) and checkpoint of one model."""
    return ModelPublic.model_validate(service.owned(lambda: storage.get_model(model_id), user, f"model {model_id}"))


@router.get(
    "/{model_id}/export",
    response_class=FileResponse,
    responses={
        **NOT_FOUND,
        **CONFLICT,
        200: {"content": {"application/octet-stream": {}}, "description": "the exported network"},
    },
)
def export_model(
    model_id: RowId,
    user: CurrentUser,
    storage: StorageDep,
    settings: SettingsDep,
    format: Literal["onnx", "torchscript"] = "onnx",  # noqa: A002 - the query parameter's name
    input_size: Annotated[
        str | None, Query(pattern=r"^[1-9][0-9]{1,3}x[1-9][0-9]{1,3}$", description="HxW; default: the crop size")
    ] = None,
) -> FileResponse:
    """The trained network of a retrained model: ONNX (one file, weights inside) or TorchScript,
    input ``image`` 1x3xHxW (normalised RGB), output ``logits`` 1xCxHxW."""
    size = None
    if input_size is not None:
        h, w = input_size.split("x")
        size = (int(h), int(w))
    path = service.export_model(
        storage, user, model_id, fmt=format, input_size=size, out_dir=settings.artifact_dir / "exports"
    )
    return FileResponse(path, media_type="application/octet-stream", filename=path.name)
