"""Models, deployments and API keys."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import (
    IntegrityError,
)

from hyctas_core.storage import (
    DuplicateName,
    IllegalTransition,
    utcnow,
)
from services.storage.base import (
    MODEL_TRANSITIONS,
    ApiKeyRecord,
    DeploymentRecord,
    JobState,
    ModelRecord,
    check_deployment_state,
    check_page,
)
from services.storage.models import (
    ApiKeyRow,
    DeploymentRow,
    JobRow,
    ModelRow,
)
from services.storage.sql.core import SQLCore
from services.storage.sql.records import api_key_record, deployment_record, model_record


class CatalogTables(SQLCore):
    """Models, deployments and API keys."""

    def create_model(
        self,
        name: str,
        arch: dict[str, Any],
        arch_hash: str,
        *,
        owner: str | None = None,
        job_id: int | None = None,
        task: str = "semantic",
        source: dict[str, Any] | None = None,
    ) -> int:
        with self._session_scope(write=True) as session:
            if job_id is not None and session.get(JobRow, job_id) is None:
                raise KeyError(f"unknown job id {job_id}")
            now = utcnow()
            row = ModelRow(
                owner=owner,
                job_id=job_id,
                name=name,
                arch=arch,
                arch_hash=arch_hash,
                task=task,
                source=source or {},
                state=JobState.QUEUED.value,
                metrics={},
                checkpoint_uri=None,
                error=None,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return row.id

    def get_model(self, model_id: int) -> ModelRecord:
        return self._get(ModelRow, model_id, "model", model_record)

    def list_models(
        self, *, owner: str | None = None, job_id: int | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[ModelRecord], int]:
        check_page(offset, limit)
        conditions = self._filters(ModelRow, JobState, owner, None)
        if job_id is not None:
            conditions.append(ModelRow.job_id == job_id)
        return self._page(ModelRow, conditions, offset, limit, model_record)

    def update_model(
        self,
        model_id: int,
        *,
        state: JobState | None = None,
        metrics: dict[str, Any] | None = None,
        checkpoint_uri: str | None = None,
        error: str | None = None,
    ) -> None:
        with self._session_scope(write=True) as session:
            row = session.get(ModelRow, model_id, with_for_update=True)
            if row is None:
                raise KeyError(f"unknown model id {model_id}")
            if state is not None:
                new, current = JobState(state), JobState(row.state)
                if new is not current and new not in MODEL_TRANSITIONS[current]:
                    raise IllegalTransition(f"model {model_id}: cannot move {current.value} -> {new.value}")
                row.state = new.value
            if metrics is not None:
                row.metrics = {**row.metrics, **metrics}
            if checkpoint_uri is not None:
                row.checkpoint_uri = checkpoint_uri
            if error is not None:
                row.error = error
            row.updated_at = utcnow()

    def create_deployment(
        self, name: str, model_id: int, options: dict[str, Any], *, owner: str | None = None, public: bool = False
    ) -> int:
        with self._session_scope(write=True) as session:
            if session.get(ModelRow, model_id) is None:
                raise KeyError(f"unknown model id {model_id}")
            live = select(DeploymentRow.id).where(DeploymentRow.name == name, DeploymentRow.state != "deleted")
            if session.scalar(live) is not None:
                raise DuplicateName(f"a deployment named {name!r} exists")
            now = utcnow()
            row = DeploymentRow(
                owner=owner, name=name, model_id=model_id, options=options, state="deploying", public=public,
                error=None, created_at=now, updated_at=now,
            )  # fmt: skip
            session.add(row)
            try:
                session.flush()
            except IntegrityError:  # a concurrent create won the race
                raise DuplicateName(f"a deployment named {name!r} exists") from None
            return row.id

    def get_deployment(self, deployment_id: int) -> DeploymentRecord:
        return self._get(DeploymentRow, deployment_id, "deployment", deployment_record)

    def find_deployment(self, name: str) -> DeploymentRecord | None:
        with self._session_scope() as session:
            row = session.scalar(
                select(DeploymentRow).where(DeploymentRow.name == name, DeploymentRow.state != "deleted")
            )
            return None if row is None else deployment_record(row)

    def list_deployments(self, *, owner: str | None = None, include_deleted: bool = False) -> list[DeploymentRecord]:
        conditions = []
        if owner is not None:
            conditions.append(DeploymentRow.owner == owner)
        if not include_deleted:
            conditions.append(DeploymentRow.state != "deleted")
        with self._session_scope() as session:
            rows = session.scalars(select(DeploymentRow).where(*conditions).order_by(DeploymentRow.id)).all()
            return [deployment_record(r) for r in rows]

    def record_serving_latency(self, deployment_id: int, summary: dict[str, Any]) -> None:
        with self._session_scope(write=True) as session:
            row = session.get(DeploymentRow, deployment_id)
            if row is None:
                raise KeyError(f"unknown deployment id {deployment_id}")
            row.serving_latency = {**summary, "at": utcnow().isoformat()}

    def update_deployment(
        self,
        deployment_id: int,
        *,
        state: str | None = None,
        options: dict[str, Any] | None = None,
        model_id: int | None = None,
        public: bool | None = None,
        error: str | None = None,
    ) -> None:
        check_deployment_state(state)
        with self._session_scope(write=True) as session:
            row = session.get(DeploymentRow, deployment_id, with_for_update=True)
            if row is None:
                raise KeyError(f"unknown deployment id {deployment_id}")
            if row.state == "deleted":
                raise IllegalTransition(f"deployment {deployment_id} is deleted")
            if options is not None or (model_id is not None and model_id != row.model_id):
                row.serving_latency = None  # measured on what served before
            if model_id is not None:
                if session.get(ModelRow, model_id) is None:
                    raise KeyError(f"unknown model id {model_id}")
                row.model_id = model_id
            if state is not None:
                row.state = state
            if options is not None:
                row.options = options
            if public is not None:
                row.public = public
            if error is not None:
                row.error = error or None
            row.updated_at = utcnow()

    def create_api_key(self, user: str, key_hash: str, *, name: str = "", prefix: str = "") -> int:
        with self._session_scope(write=True) as session:
            row = ApiKeyRow(user=user, key_hash=key_hash, name=name, prefix=prefix, created_at=utcnow())
            session.add(row)
            try:
                session.flush()
            except IntegrityError:  # the unique key_hash
                raise DuplicateName("an API key with this hash exists") from None
            return row.id

    def get_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        with self._session_scope() as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash))
            return None if row is None else api_key_record(row)

    def list_api_keys(self, user: str | None = None) -> list[ApiKeyRecord]:
        conditions = [] if user is None else [ApiKeyRow.user == user]
        with self._session_scope() as session:
            rows = session.scalars(select(ApiKeyRow).where(*conditions).order_by(ApiKeyRow.id)).all()
            return [api_key_record(r) for r in rows]

    def revoke_api_key(self, key_id: int) -> None:
        with self._session_scope(write=True) as session:
            row = session.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None:
                raise KeyError(f"unknown API key id {key_id}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
