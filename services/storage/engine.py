"""The SQLAlchemy engine of the storage: URL checks, SQLite pragmas and write locking, strict JSON,
and one-line error messages that never show a password."""

from __future__ import annotations

import functools
import json
import math
import re
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, InterfaceError, NoSuchModuleError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from hyctas_core.storage import StorageError

__all__ = [
    "POOL_CONNECTIONS",
    "UNAVAILABLE",
    "WRITE_OPTION",
    "create_storage_engine",
    "mask_url",
    "one_line",
]

# Errors that mean "the database cannot be reached now" (a 503 to clients), not a bad request.
UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)

WRITE_OPTION = "hyctas_write"  # execution option: the SQLite transaction starts with BEGIN IMMEDIATE
# A pooled PostgreSQL connection idle this long is pinged at checkout; a busier one is not (a
# round trip per checkout was an eighth of a read's cost). A restart is then noticed by the
# first statement on a busy connection, which invalidates the whole pool: one request fails.
PING_IDLE_S = 2.0
# A pooled PostgreSQL engine keeps up to POOL_SIZE connections open and opens up to POOL_OVERFLOW
# more under load (SQLAlchemy's defaults, also SQLite's: the controller sizes its thread pool by them).
POOL_SIZE, POOL_OVERFLOW = 5, 10
POOL_CONNECTIONS = POOL_SIZE + POOL_OVERFLOW
_MAX_MESSAGE = 400


def mask_url(url: str | URL) -> str:
    """``url`` with its password replaced by ``***`` (safe for messages and logs)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def one_line(exc: BaseException) -> str:
    """A one-line description of ``exc``: the DBAPI error's class and message, whitespace collapsed.

    SQLAlchemy's own messages carry the SQL, the parameters and a documentation link on extra
    lines; only the underlying reason is kept.
    """
    orig = getattr(exc, "orig", None)
    cause = orig if isinstance(orig, BaseException) else exc
    text = str(cause).split("\n[SQL:", 1)[0]
    text = " ".join(text.split()) or type(cause).__name__
    message = f"{type(cause).__name__}: {text}"
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _on_sqlite_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's implicit BEGIN is deferred
    # and would make a reader-turned-writer fail with SQLITE_BUSY instead of waiting).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a killed process never loses or tears a committed transaction; only an
        # OS crash / power loss may drop the last commits (never corrupting the file).
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Any) -> None:
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_storage_engine(
    url: str, *, connect_timeout_s: float = 5.0, busy_timeout_s: float = 30.0, pooled: bool = True
) -> Engine:
    """The engine :class:`SQLStorage` and the migrations use for ``url``.

    SQLite: WAL journal (``synchronous=NORMAL``), foreign keys on, ``busy_timeout_s`` for a writer waiting on another,
    ``BEGIN IMMEDIATE`` for transactions run with the ``hyctas_write`` execution option.
    PostgreSQL: ``connect_timeout_s``, a ping of pooled connections idle over PING_IDLE_S. Both: strict JSON.

    Args:
        url: A SQLAlchemy URL.
        connect_timeout_s: How long to wait for a network database to accept a connection.
        busy_timeout_s: How long a SQLite writer waits for the database lock.
        pooled: False for a throw-away engine (no connection pool).

    Raises:
        StorageError: the URL is invalid or names a driver that is not installed.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StorageError(f"invalid database URL {mask_url(url)!r}: {one_line(exc)}") from None
    kwargs: dict[str, Any] = {
        "json_serializer": functools.partial(json.dumps, allow_nan=False),
        "json_deserializer": json.loads,
    }
    if not pooled:
        kwargs["poolclass"] = NullPool
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": busy_timeout_s}
    elif backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": max(1, math.ceil(connect_timeout_s))}
        if pooled:
            kwargs.update(pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StorageError(f"unsupported database URL {mask_url(parsed)!r}: {one_line(exc)}") from None
    if backend == "sqlite":
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
    elif backend == "postgresql" and pooled:
        _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection at checkout when it sat in the pool over :data:`PING_IDLE_S`; a
    failed ping makes the pool replace it (SQLAlchemy's pessimistic disconnect handling, for
    idle connections only)."""

    def checkin(_dbapi: Any, record: ConnectionPoolEntry) -> None:
        record.info["checked_in_at"] = time.monotonic()

    def checkout(dbapi: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        since = record.info.get("checked_in_at")
        if since is not None and time.monotonic() - since < PING_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi)
        except Exception as exc:  # any driver error: the connection is gone
            raise DisconnectionError(f"stale pooled connection: {one_line(exc)}") from exc

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)
