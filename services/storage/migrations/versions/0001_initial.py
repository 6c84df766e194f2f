"""Initial schema: searches, generations, individuals, evaluations, jobs.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

Hand-written to match ``services/storage/models.py`` exactly (constraint names follow the
models' naming convention); ``tests/services/test_storage.py`` compares the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEARCH_STATES = "'created', 'running', 'succeeded', 'failed', 'cancelled'"
_JOB_STATES = "'queued', 'running', 'succeeded', 'failed', 'cancelled'"


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the five tables and their indexes."""
    op.create_table(
        "searches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("reference_point", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_searches"),
        sa.CheckConstraint(f"state IN ({_SEARCH_STATES})", name="ck_searches_state"),
        sa.CheckConstraint("generation >= -1", name="ck_searches_generation"),
    )
    op.create_index(
        "uq_searches_owner_name",
        "searches",
        ["owner", "name"],
        unique=True,
        sqlite_where=sa.text("owner IS NOT NULL"),
        postgresql_where=sa.text("owner IS NOT NULL"),
    )
    op.create_index(
        "uq_searches_name_no_owner",
        "searches",
        ["name"],
        unique=True,
        sqlite_where=sa.text("owner IS NULL"),
        postgresql_where=sa.text("owner IS NULL"),
    )
    op.create_index("ix_searches_state", "searches", ["state"])

    op.create_table(
        "generations",
        sa.Column("search_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("hypervolume", sa.Double(), nullable=False),
        sa.Column("front", sa.JSON(), nullable=False),
        sa.Column("n_evaluated", sa.Integer(), nullable=False),
        sa.Column("n_new", sa.Integer(), nullable=False),
        sa.Column("algorithm_state", sa.LargeBinary(), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("search_id", "index", name="pk_generations"),
        sa.ForeignKeyConstraint(
            ["search_id"], ["searches.id"], name="fk_generations_search_id_searches", ondelete="CASCADE"
        ),
    )

    op.create_table(
        "individuals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("search_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("arch_hash", sa.String(), nullable=False),
        sa.Column("arch", sa.JSON(), nullable=False),
        sa.Column("num_branches", sa.Integer(), nullable=False),
        sa.Column("objectives", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_individuals"),
        sa.ForeignKeyConstraint(
            ["search_id", "generation"],
            ["generations.search_id", "generations.index"],
            name="fk_individuals_search_id_generation_generations",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_individuals_search_id_generation", "individuals", ["search_id", "generation"])

    op.create_table(
        "evaluations",
        sa.Column("cache_key", sa.String(), nullable=False),
        sa.Column("arch_hash", sa.String(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("cache_key", "arch_hash", name="pk_evaluations"),
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(), nullable=True),
        _timestamp("heartbeat_at", nullable=True),
        sa.Column("result", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.CheckConstraint(f"state IN ({_JOB_STATES})", name="ck_jobs_state"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_owner", "jobs", ["owner"])


def downgrade() -> None:
    """Drop everything :func:`upgrade` created."""
    op.drop_index("ix_jobs_owner", table_name="jobs")
    op.drop_index("ix_jobs_state", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("evaluations")
    op.drop_index("ix_individuals_search_id_generation", table_name="individuals")
    op.drop_table("individuals")
    op.drop_table("generations")
    op.drop_index("ix_searches_state", table_name="searches")
    op.drop_index("uq_searches_name_no_owner", table_name="searches")
    op.drop_index("uq_searches_owner_name", table_name="searches")
    op.drop_table("searches")
