"""Rows to records: the storage's records are built from freshly loaded rows (independent copies)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
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
T = TypeVar("T")


_IN_CHUNK = 500  # bound on bind parameters per IN (...) clause


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def latest_of(generations: Any) -> Any:
    """Join condition: the row of ``generations`` (the table or an alias) that is its search's latest."""
    return and_(generations.search_id == SearchRow.id, generations.index == SearchRow.generation)


def _record(cls: type[T], row: Any, **overrides: Any) -> T:
    """``cls`` built from the row's columns of the same names (the records mirror the tables).

    ``overrides`` are not read from the row at all (a deferred column stays unloaded).
    """
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in overrides]  # type: ignore[arg-type]
    return cls(**{name: getattr(row, name) for name in fields}, **overrides)


def search_record(row: SearchRow) -> SearchRecord:
    return _record(SearchRecord, row, state=SearchState(row.state))


def generation_record(row: GenerationRow, *, with_state: bool) -> GenerationRecord:
    state = bytes(row.algorithm_state) if with_state else b""
    return _record(GenerationRecord, row, algorithm_state=state)


def individual_record(row: Any) -> IndividualRecord:
    """From an ``IndividualRow`` or a row of :data:`INDIVIDUAL_COLUMNS`."""
    return _record(IndividualRecord, row)


# The columns an IndividualRecord is built from: selecting these instead of the ORM entity skips
# building a mapped object per row (a quarter of a large ``/individuals`` read).
INDIVIDUAL_COLUMNS = tuple(getattr(IndividualRow, f.name) for f in dataclasses.fields(IndividualRecord))


def job_record(row: JobRow) -> JobRecord:
    return _record(JobRecord, row, state=JobState(row.state))


def model_record(row: ModelRow) -> ModelRecord:
    return _record(ModelRecord, row, state=JobState(row.state))


def deployment_record(row: DeploymentRow) -> DeploymentRecord:
    return _record(DeploymentRecord, row)


def api_key_record(row: ApiKeyRow) -> ApiKeyRecord:
    return _record(ApiKeyRecord, row)
