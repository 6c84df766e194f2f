"""Alembic revisions of the storage schema (Alembic skips this file)."""
