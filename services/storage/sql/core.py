"""The connection side of :class:`~services.storage.sql.SQLStorage`: the engine, the schema check,
one transaction per call, and the row locks."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import (
    SQLAlchemyError,
)
from sqlalchemy.orm import Session

from hyctas_core.storage import (
    IllegalTransition,
    StorageError,
    StorageUnavailable,
)
from services.storage.base import (
    JobState,
    Storage,
)
from services.storage.engine import UNAVAILABLE, WRITE_OPTION, create_storage_engine, mask_url, one_line
from services.storage.migrate import UPGRADE_HINT, check_revision, revision_of, upgrade_database
from services.storage.models import (
    JobRow,
    SearchRow,
)
from services.storage.sql.records import R


class SQLCore(Storage):
    """The engine, transactions and locks every part of :class:`~services.storage.sql.SQLStorage` uses."""

    def __init__(
        self, url: str, *, create: bool = False, connect_timeout_s: float = 5.0, busy_timeout_s: float = 30.0
    ) -> None:
        self._display_url = mask_url(url)
        if create:
            upgrade_database(url, connect_timeout_s=connect_timeout_s)
        self._engine = create_storage_engine(url, connect_timeout_s=connect_timeout_s, busy_timeout_s=busy_timeout_s)
        # Reads on PostgreSQL run in autocommit: no BEGIN and COMMIT round trips around them. At
        # READ COMMITTED each statement takes its own snapshot inside a transaction anyway, so a
        # read sees what it saw before. (SQLite's BEGIN / COMMIT are local calls: left as they are.)
        postgres = self._engine.url.get_backend_name() == "postgresql"
        self._read_engine = self._engine.execution_options(isolation_level="AUTOCOMMIT") if postgres else self._engine

    @classmethod
    def connect(
        cls, url: str, *, create: bool = False, connect_timeout_s: float = 5.0, busy_timeout_s: float = 30.0
    ) -> Self:
        """A storage whose connection and schema revision were checked (see :meth:`verify`).

        Raises:
            StorageError: ``cannot connect to <url>: <reason>`` within about ``connect_timeout_s``
                when the database is unreachable; a request to run the migrations when the schema
                is missing or behind.
        """
        storage = cls(url, create=create, connect_timeout_s=connect_timeout_s, busy_timeout_s=busy_timeout_s)
        try:
            storage.verify()
        except BaseException:
            storage.close()
            raise
        return storage

    @property
    def url(self) -> str:
        """The database URL, password masked."""
        return self._display_url

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for health checks and tests; do not write through it)."""
        return self._engine

    def verify(self) -> None:
        """Connect and check that the schema is at the migrations' head revision.

        A SQLite file that does not exist is reported, not created.

        Raises:
            StorageError: unreachable database, missing / old schema (run ``hyctas db upgrade``),
                or a schema newer than this code.
        """
        url = self._engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            if not url.query.get("uri") and not Path(url.database).exists():  # connecting would create it
                raise StorageError(f"cannot connect to {self._display_url}: the file does not exist ({UPGRADE_HINT})")
        try:
            with self._engine.connect() as conn:
                revision = revision_of(conn)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot connect to {self._display_url}: {one_line(exc)}") from exc
        check_revision(revision, self._display_url)

    def close(self) -> None:
        """Close the pooled connections (the storage reconnects if used again)."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLCore({self._display_url!r})"

    @contextmanager
    def _session_scope(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction (for a read on PostgreSQL: autocommit statements): commit on success,
        roll back on any error, always close.

        SQLAlchemy / DBAPI errors become :class:`StorageError` with a one-line message; the
        storage's own errors (KeyError, IllegalTransition, ...) pass through unchanged.

        Args:
            write: The transaction will write: on SQLite it starts with ``BEGIN IMMEDIATE``.
                Without it, the block must only read.
        """
        session = Session(self._engine if write else self._read_engine, autoflush=False, expire_on_commit=False)
        try:
            if write:
                session.connection(execution_options={WRITE_OPTION: True})
            yield session
            session.commit()
        except BaseException as exc:
            try:
                session.rollback()
            except SQLAlchemyError:
                pass  # the connection is gone; the database rolls back on its own
            if isinstance(exc, UNAVAILABLE):
                raise StorageUnavailable(f"database {self._display_url}: {one_line(exc)}") from exc
            if isinstance(exc, SQLAlchemyError):
                raise StorageError(f"database {self._display_url}: {one_line(exc)}") from exc
            raise
        finally:
            session.close()

    def _page(
        self, table: Any, conditions: list[Any], offset: int, limit: int, record: Callable[[Any], R]
    ) -> tuple[list[R], int]:
        """(records of one page of ``table`` rows matching ``conditions``, by id; total count)."""
        with self._session_scope() as session:
            total = session.scalar(select(func.count()).select_from(table).where(*conditions)) or 0
            rows = session.scalars(select(table).where(*conditions).order_by(table.id).offset(offset).limit(limit))
            return [record(r) for r in rows.all()], total

    def _get(self, table: Any, key: int, what: str, record: Callable[[Any], R]) -> R:
        """The record of ``table``'s row ``key``. Raises: KeyError: ``unknown {what} id {key}``."""
        with self._session_scope() as session:
            row = session.get(table, key)
            if row is None:
                raise KeyError(f"unknown {what} id {key}")
            return record(row)

    @staticmethod
    def _filters(table: Any, states: type[enum.StrEnum], owner: str | None, state: str | None) -> list[Any]:
        """WHERE conditions of a listing: one owner's rows (None: everyone's), of one state."""
        conditions = []
        if owner is not None:
            conditions.append(table.owner == owner)
        if state is not None:
            conditions.append(table.state == states(state).value)
        return conditions

    @staticmethod
    def _owner_is(column: Any, owner: str | None) -> Any:
        return column.is_(None) if owner is None else column == owner

    @staticmethod
    def _locked_search(session: Session, search_id: int) -> SearchRow:
        row = session.get(SearchRow, search_id, with_for_update=True)
        if row is None:
            raise KeyError(f"unknown search id {search_id}")
        return row

    @staticmethod
    def _locked_job(session: Session, job_id: int) -> JobRow:
        row = session.get(JobRow, job_id, with_for_update=True)
        if row is None:
            raise KeyError(f"unknown job id {job_id}")
        return row

    @classmethod
    def _locked_running_job(cls, session: Session, job_id: int, worker: str) -> JobRow:
        """The job's row, locked, if it is RUNNING on ``worker``. Raises KeyError, IllegalTransition."""
        row = cls._locked_job(session, job_id)
        if row.state != JobState.RUNNING.value or row.worker != worker:
            raise IllegalTransition(f"job {job_id} is {row.state} on worker {row.worker!r}, not running on {worker!r}")
        return row

    @staticmethod
    def _require_search(session: Session, search_id: int) -> None:
        if session.scalar(select(SearchRow.id).where(SearchRow.id == search_id)) is None:
            raise KeyError(f"unknown search id {search_id}")
