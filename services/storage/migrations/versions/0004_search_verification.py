"""Searches: the verification record (front points retrained after the search, rank agreement).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

Hand-written to match ``SearchRow.verification`` in ``services/storage/models.py``; additive only.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``searches.verification`` (JSON, null when a search asked for no verification)."""
    op.add_column("searches", sa.Column("verification", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop ``searches.verification``."""
    with op.batch_alter_table("searches") as batch:
        batch.drop_column("verification")
