"""Rows to records: the storage's records are built from freshly loaded rows (independent copies)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import and_

from hyctas_core.storage import (
    GenerationRecord,
    IndividualRecord,
    SearchRecord,
    SearchState,
)
from services.storage.base import (
    ApiKeyRecord,
    DeploymentRecord,
    JobRecord,
    JobState,
    ModelRecord,
)
from services.storage.models import (
    ApiKeyRow,
    DeploymentRow,
    GenerationRow,
    IndividualRow,
    JobRow,
    ModelRow,
    SearchRow,
)

R = TypeVar("R")


_IN_CHUNK = 500  # bound on bind parameters per IN (...) clause


def _now() -> datetime:
    return datetime.now(UTC)


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def latest_of(generations: Any) -> Any:
    """Join condition: the row of ``generations`` (the table or an alias) that is its search's latest."""
    return and_(generations.search_id == SearchRow.id, generations.index == SearchRow.generation)


def search_record(row: SearchRow) -> SearchRecord:
    return SearchRecord(
        id=row.id,
        name=row.name,
        owner=row.owner,
        config=row.config,
        state=SearchState(row.state),
        generation=row.generation,
        reference_point=row.reference_point,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        verification=row.verification,
    )


def generation_record(row: GenerationRow, *, with_state: bool) -> GenerationRecord:
    return GenerationRecord(
        index=row.index,
        hypervolume=row.hypervolume,
        front=row.front,
        n_evaluated=row.n_evaluated,
        n_new=row.n_new,
        algorithm_state=bytes(row.algorithm_state) if with_state else b"",
        timings=row.timings,
        created_at=row.created_at,
    )


def individual_record(row: IndividualRow) -> IndividualRecord:
    return IndividualRecord(
        generation=row.generation,
        arch_hash=row.arch_hash,
        arch=row.arch,
        num_branches=row.num_branches,
        objectives=row.objectives,
        status=row.status,
    )


def job_record(row: JobRow) -> JobRecord:
    return JobRecord(
        id=row.id,
        kind=row.kind,
        owner=row.owner,
        state=JobState(row.state),
        payload=row.payload,
        attempts=row.attempts,
        worker=row.worker,
        heartbeat_at=row.heartbeat_at,
        result=row.result,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        progress=row.progress,
        failures=row.failures,
        stream=row.stream,
    )


def model_record(row: ModelRow) -> ModelRecord:
    return ModelRecord(
        id=row.id,
        owner=row.owner,
        job_id=row.job_id,
        name=row.name,
        arch=row.arch,
        arch_hash=row.arch_hash,
        task=row.task,
        source=row.source,
        state=JobState(row.state),
        metrics=row.metrics,
        checkpoint_uri=row.checkpoint_uri,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def deployment_record(row: DeploymentRow) -> DeploymentRecord:
    return DeploymentRecord(
        id=row.id,
        owner=row.owner,
        name=row.name,
        model_id=row.model_id,
        options=row.options,
        state=row.state,
        public=row.public,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def api_key_record(row: ApiKeyRow) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id, user=row.user, name=row.name, prefix=row.prefix, created_at=row.created_at, revoked_at=row.revoked_at
    )
