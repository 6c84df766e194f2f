"""Deployments: models served by Ray Serve.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Hand-written to match ``DeploymentRow`` in ``services/storage/models.py``; additive only.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATES = "'deploying', 'running', 'failed', 'deleting', 'deleted'"


def upgrade() -> None:
    """Create ``deployments``."""
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_deployments_model_id_models", ondelete="CASCADE"),
        sa.CheckConstraint(f"state IN ({_STATES})", name="ck_deployments_state"),
    )
    op.create_index(
        "uq_deployments_name_live",
        "deployments",
        ["name"],
        unique=True,
        sqlite_where=sa.text("state != 'deleted'"),
        postgresql_where=sa.text("state != 'deleted'"),
    )
    op.create_index("ix_deployments_owner", "deployments", ["owner"])


def downgrade() -> None:
    """Drop ``deployments``."""
    op.drop_index("ix_deployments_owner", table_name="deployments")
    op.drop_index("uq_deployments_name_live", table_name="deployments")
    op.drop_table("deployments")
