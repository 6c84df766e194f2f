"""Persistent storage for searches and jobs: SQLAlchemy over SQLite or PostgreSQL, Alembic migrations.

``SQLStorage`` implements :class:`services.storage.base.Storage`; the schema lives in
:mod:`services.storage.models` and is created / upgraded by :func:`upgrade_database`.
"""

from __future__ import annotations

from services.storage.migrate import current_revision, head_revision, upgrade_database
from services.storage.sql import SQLStorage

__all__ = ["SQLStorage", "current_revision", "head_revision", "upgrade_database"]
