"""SQLAlchemy ORM tables behind :class:`services.storage.sql.SQLStorage`.

Portable across SQLite and PostgreSQL: JSON columns use :class:`sqlalchemy.JSON` (:class:`StrictJSON`), timestamps
are timezone-aware and always come back in UTC (:class:`UTCDateTime`), enum states are stored
as their string values (with a CHECK constraint). The schema is created by the Alembic
migrations in ``services/storage/migrations``; ``tests/services/test_storage.py`` checks that
the migrated schema equals this metadata.

Uniqueness of a search name per owner: the owner is stored as NULL when there is none, and two
partial unique indexes (one for ``owner IS NOT NULL``, one for ``owner IS NULL``) make the name
unique in both cases (a plain unique (owner, name) would let NULL owners repeat a name).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from hyctas_core.storage import SearchState
from services.storage.base import DEPLOYMENT_STATES, JobState

__all__ = [
    "NAMING_CONVENTION",
    "ApiKeyRow",
    "Base",
    "DeploymentRow",
    "EvaluationRow",
    "GenerationRow",
    "IndividualRow",
    "JobRow",
    "ModelRow",
    "SearchRow",
    "StrictJSON",
    "UTCDateTime",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STATE_LEN = 16

_SEARCH_STATES = ", ".join(f"'{s.value}'" for s in SearchState)
_JOB_STATES = ", ".join(f"'{s.value}'" for s in JobState)
_DEPLOYMENT_STATES = ", ".join(f"'{s}'" for s in DEPLOYMENT_STATES)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp, stored in UTC, returned in UTC (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given: timestamps must carry a timezone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StrictJSON(TypeDecorator[Any]):
    """:class:`sqlalchemy.JSON` that refuses what strict JSON cannot hold (objects, NaN, infinity).

    The check runs inside SQLAlchemy for every driver, so such a value fails as a
    :class:`sqlalchemy.exc.StatementError` before anything is sent (psycopg would otherwise
    serialise, and fail, inside the driver with a bare ``TypeError``).
    """

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is not None:
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"value is not JSON-serialisable: {exc}") from None
        return value


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name every constraint."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SearchRow(Base):
    """One search: its config, state and the index of its last committed generation."""

    __tablename__ = "searches"
    __table_args__ = (
        Index(
            "uq_searches_owner_name",
            "owner",
            "name",
            unique=True,
            sqlite_where=text("owner IS NOT NULL"),
            postgresql_where=text("owner IS NOT NULL"),
        ),
        Index(
            "uq_searches_name_no_owner",
            "name",
            unique=True,
            sqlite_where=text("owner IS NULL"),
            postgresql_where=text("owner IS NULL"),
        ),
        Index("ix_searches_state", "state"),
        CheckConstraint(f"state IN ({_SEARCH_STATES})", name="state"),
        CheckConstraint("generation >= -1", name="generation"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String)
    owner: Mapped[str | None] = mapped_column(String)
    config: Mapped[dict[str, Any]] = mapped_column(StrictJSON)
    state: Mapped[str] = mapped_column(String(STATE_LEN))
    generation: Mapped[int] = mapped_column(Integer)
    reference_point: Mapped[list[float] | None] = mapped_column(StrictJSON(none_as_null=True))
    verification: Mapped[dict[str, Any] | None] = mapped_column(StrictJSON(none_as_null=True))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class GenerationRow(Base):
    """One committed generation; (search_id, index) is the primary key, so it is never stored twice."""

    __tablename__ = "generations"

    search_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hypervolume: Mapped[float] = mapped_column(Double)
    front: Mapped[list[str]] = mapped_column(StrictJSON)
    n_evaluated: Mapped[int] = mapped_column(Integer)
    n_new: Mapped[int] = mapped_column(Integer)
    algorithm_state: Mapped[bytes] = mapped_column(LargeBinary)
    timings: Mapped[dict[str, float]] = mapped_column(StrictJSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IndividualRow(Base):
    """One individual of one generation; it cannot exist without its generation row."""

    __tablename__ = "individuals"
    __table_args__ = (
        ForeignKeyConstraint(
            ["search_id", "generation"],
            ["generations.search_id", "generations.index"],
            ondelete="CASCADE",
        ),
        Index("ix_individuals_search_id_generation", "search_id", "generation"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[int] = mapped_column(Integer)
    generation: Mapped[int] = mapped_column(Integer)
    arch_hash: Mapped[str] = mapped_column(String)
    arch: Mapped[dict[str, Any]] = mapped_column(StrictJSON)
    num_branches: Mapped[int] = mapped_column(Integer)
    objectives: Mapped[dict[str, float]] = mapped_column(StrictJSON)
    status: Mapped[str] = mapped_column(String)


class EvaluationRow(Base):
    """A cached evaluation, shared by every search with the same ``cache_key``."""

    __tablename__ = "evaluations"

    cache_key: Mapped[str] = mapped_column(String, primary_key=True)
    arch_hash: Mapped[str] = mapped_column(String, primary_key=True)
    result: Mapped[dict[str, Any]] = mapped_column(StrictJSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobRow(Base):
    """A unit of work for a worker (train a supernet, run a search, ...)."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state", "state"),
        Index("ix_jobs_owner", "owner"),
        CheckConstraint(f"state IN ({_JOB_STATES})", name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String)
    owner: Mapped[str | None] = mapped_column(String)
    state: Mapped[str] = mapped_column(String(STATE_LEN))
    payload: Mapped[dict[str, Any]] = mapped_column(StrictJSON)
    attempts: Mapped[int] = mapped_column(Integer)
    failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    stream: Mapped[str | None] = mapped_column(String)
    worker: Mapped[str | None] = mapped_column(String)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result: Mapped[dict[str, Any] | None] = mapped_column(StrictJSON(none_as_null=True))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    progress: Mapped[dict[str, Any] | None] = mapped_column(StrictJSON(none_as_null=True))


class ModelRow(Base):
    """One architecture to retrain from scratch, its job and its results (revision 0002)."""

    __tablename__ = "models"
    __table_args__ = (
        Index("ix_models_owner", "owner"),
        Index("ix_models_job_id", "job_id"),
        CheckConstraint(f"state IN ({_JOB_STATES})", name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str | None] = mapped_column(String)
    job_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("jobs.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String)
    arch: Mapped[dict[str, Any]] = mapped_column(StrictJSON)
    arch_hash: Mapped[str] = mapped_column(String)
    task: Mapped[str] = mapped_column(String(STATE_LEN))
    source: Mapped[dict[str, Any]] = mapped_column(StrictJSON)
    state: Mapped[str] = mapped_column(String(STATE_LEN))
    metrics: Mapped[dict[str, Any]] = mapped_column(StrictJSON)
    checkpoint_uri: Mapped[str | None] = mapped_column(String)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeploymentRow(Base):
    """A model served by Ray Serve; a name is unique among live (not deleted) deployments (revision 0003)."""

    __tablename__ = "deployments"
    __table_args__ = (
        Index(
            "uq_deployments_name_live",
            "name",
            unique=True,
            sqlite_where=text("state != 'deleted'"),
            postgresql_where=text("state != 'deleted'"),
        ),
        Index("ix_deployments_owner", "owner"),
        CheckConstraint(f"state IN ({_DEPLOYMENT_STATES})", name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str | None] = mapped_column(String)
    name: Mapped[str] = mapped_column(String)
    model_id: Mapped[int] = mapped_column(Integer, ForeignKey("models.id", ondelete="CASCADE"))
    options: Mapped[dict[str, Any]] = mapped_column(StrictJSON)
    state: Mapped[str] = mapped_column(String(STATE_LEN))
    public: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    serving_latency: Mapped[dict[str, Any] | None] = mapped_column(StrictJSON, nullable=True)  # revision 0005


class ApiKeyRow(Base):
    """An API key: the sha256 of the secret (never the secret), its user and a display prefix (revision 0002)."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_user", "user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
