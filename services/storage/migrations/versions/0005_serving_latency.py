"""Deployments: what their replicas measured.

- ``deployments.serving_latency``: the model's measured time per request (p50 / p90 / mean,
  input size, backend, device), written by the replicas, read beside the search's prediction.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

Hand-written to match ``services/storage/models.py``; additive only.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``deployments.serving_latency`` (JSON, null until a replica reports)."""
    op.add_column("deployments", sa.Column("serving_latency", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("serving_latency")
