"""``SQLStorage``: :class:`~services.storage.base.Storage` over SQLAlchemy (SQLite or PostgreSQL).

URLs: ``sqlite:///path/to/hyctas.db`` (the embedded default) or
``postgresql+psycopg://user:password@host:5432/db``. The schema comes from the Alembic
migrations (:func:`services.storage.migrate.upgrade_database`); ``SQLStorage(url, create=True)``
runs them, :meth:`SQLStorage.connect` checks the connection and the schema revision eagerly.

Concurrency:

- Every method is one transaction (:meth:`SQLStorage._session_scope`), so a process killed at
  any point leaves either the whole write or nothing.
- Writes that read then modify a row lock it first: ``SELECT ... FOR UPDATE`` on PostgreSQL;
  on SQLite write transactions start with ``BEGIN IMMEDIATE`` (one writer at a time, waiting up
  to the busy timeout) while readers use plain ``BEGIN`` and, with WAL, never block.
- ``(search_id, index)`` is the primary key of ``generations``: two writers can never both
  commit the same generation; the loser gets :class:`~hyctas_core.storage.IllegalTransition`.
- Evaluation-cache inserts are ``ON CONFLICT DO NOTHING`` in key order (first write wins, no
  deadlock between searches that share a cache key).

JSON payloads are serialised strictly (NaN and infinity are refused, as PostgreSQL's JSON type
would refuse them). The rules of search records are :class:`~hyctas_core.storage.SearchStore`'s;
this module implements its hooks and the reads.
All backend failures surface as :class:`~hyctas_core.storage.StorageError` with a one-line
message; passwords never appear in messages.
"""

from __future__ import annotations

from services.storage.engine import create_storage_engine, mask_url, one_line
from services.storage.sql.catalog import CatalogTables
from services.storage.sql.jobs import JobTables
from services.storage.sql.searches import SearchTables

__all__ = ["SQLStorage", "create_storage_engine", "mask_url", "one_line"]


class SQLStorage(SearchTables, JobTables, CatalogTables):
    """:class:`~hyctas_core.storage.Storage` over a SQL database (SQLite or PostgreSQL).

    Thread-safe (one session per call over a connection pool); several processes may share
    one database. Records are built from freshly loaded rows, so they are independent copies.

    Args:
        url: ``sqlite:///path.db`` or ``postgresql+psycopg://user:password@host/db``.
        create: Bring the schema up to date first (:func:`~services.storage.migrate.upgrade_database`).
        connect_timeout_s: How long to wait for a network database to accept a connection.
        busy_timeout_s: How long a SQLite writer waits for another writer.

    Raises:
        StorageError: invalid URL, or (with ``create``) the migration failed.
    """
