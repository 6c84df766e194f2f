"""Searches: the verification record; jobs: failed attempts counted apart from takeovers.

- ``searches.verification``: front points retrained after the search and the rank agreement;
- ``jobs.failures``: attempts that ended in the handler's own error (a worker that died is a
  takeover, not a failure), so that ``max_attempts`` bounds real errors only;
- ``jobs.stream``: the queue stream a job was submitted on: a worker sweeps only its own.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

Hand-written to match ``services/storage/models.py``; additive only.
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
    """Add ``searches.verification`` (JSON, null when none was asked for), ``jobs.failures`` and ``jobs.stream``."""
    op.add_column("searches", sa.Column("verification", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.add_column("jobs", sa.Column("stream", sa.String(), nullable=True))


def downgrade() -> None:
    """Drop the three columns."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("stream")
        batch.drop_column("failures")
    with op.batch_alter_table("searches") as batch:
        batch.drop_column("verification")
