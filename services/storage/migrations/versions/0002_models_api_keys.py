"""Models to retrain, API keys, and live job progress.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Hand-written to match ``services/storage/models.py`` (``ModelRow``, ``ApiKeyRow``,
``JobRow.progress``); ``tests/services/test_storage.py`` compares the migrated schema with
the models. Purely additive: no existing row changes, so upgrading a live database loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOB_STATES = "'queued', 'running', 'succeeded', 'failed', 'cancelled'"


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Add ``jobs.progress`` and the ``models`` and ``api_keys`` tables."""
    op.add_column("jobs", sa.Column("progress", sa.JSON(none_as_null=True), nullable=True))

    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("arch", sa.JSON(), nullable=False),
        sa.Column("arch_hash", sa.String(), nullable=False),
        sa.Column("task", sa.String(length=16), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("checkpoint_uri", sa.String(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_models_job_id_jobs", ondelete="SET NULL"),
        sa.CheckConstraint(f"state IN ({_JOB_STATES})", name="ck_models_state"),
    )
    op.create_index("ix_models_owner", "models", ["owner"])
    op.create_index("ix_models_job_id", "models", ["job_id"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user", sa.String(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        _timestamp("created_at"),
        _timestamp("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_user", "api_keys", ["user"])


def downgrade() -> None:
    """Drop everything :func:`upgrade` added."""
    op.drop_index("ix_api_keys_user", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index("ix_models_job_id", table_name="models")
    op.drop_index("ix_models_owner", table_name="models")
    op.drop_table("models")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("progress")
