"""Throw-away SQL storages for the service tests: SQLite files copied from one migrated template.

The service has one full storage backend (:class:`~services.storage.sql.SQLStorage`); its tests
run it over a fresh SQLite file each (a copy of a template migrated once per process: about a
millisecond instead of a migration) rather than over a second, in-memory implementation.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from datetime import datetime
from pathlib import Path

from sqlalchemy import update

from services.storage.migrate import upgrade_database
from services.storage.models import JobRow
from services.storage.sql import SQLStorage

__all__ = ["set_job_updated_at", "sqlite_storage", "sqlite_url"]

_lock = threading.Lock()
_root: Path | None = None
_count = 0


def _template() -> Path:
    """The migrated, checkpointed template (no -wal file), made on first use in a private temp dir."""
    global _root
    with _lock:
        if _root is None:
            _root = Path(tempfile.mkdtemp(prefix="hyctas-sqlite-"))
            atexit.register(shutil.rmtree, _root, ignore_errors=True)
            upgrade_database(f"sqlite:///{_root / 'template.db'}")
            assert not (_root / "template.db-wal").exists()
        return _root / "template.db"


def sqlite_url(directory: Path | None = None) -> str:
    """The URL of a fresh, migrated SQLite database in ``directory`` (default: a private temp dir)."""
    global _count
    template = _template()
    with _lock:
        _count += 1
        path = (directory or template.parent) / f"hyctas-{_count}.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def sqlite_storage(directory: Path | None = None) -> SQLStorage:
    """A :class:`SQLStorage` on a fresh, migrated SQLite database (see :func:`sqlite_url`)."""
    return SQLStorage(sqlite_url(directory))


def set_job_updated_at(storage: SQLStorage, job_id: int, when: datetime) -> None:
    """Age a job's row as if time had passed (what the sweep and the stale checks read)."""
    with storage.engine.begin() as conn:
        conn.execute(update(JobRow).where(JobRow.id == job_id).values(updated_at=when))
