"""Alembic migration environment of the storage schema (a package so that it ships in the wheel)."""
