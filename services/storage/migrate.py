"""Schema migrations (Alembic) for the storage database, configured in code.

The migration scripts ship inside the package (``services/storage/migrations``); no
``alembic.ini`` is needed::

    from services.storage.migrate import upgrade_database
    upgrade_database("sqlite:///hyctas.db")        # what `hyctas db upgrade` runs

For developers, :func:`alembic_config` returns a config usable with ``alembic.command``
(e.g. ``command.revision(cfg, "add x", autogenerate=True)`` with
``cfg.attributes["connection"]`` set to a connection to an up-to-date database).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from hyctas_core.storage import StorageError
from services.storage.engine import create_storage_engine, mask_url, one_line

__all__ = [
    "MIGRATIONS_DIR",
    "UPGRADE_HINT",
    "alembic_config",
    "check_revision",
    "current_revision",
    "head_revision",
    "revision_of",
    "upgrade_database",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
UPGRADE_HINT = "run `hyctas db upgrade` (or services.storage.migrate.upgrade_database(url))"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations.

    Args:
        url: Stored as ``sqlalchemy.url`` (used when no connection is passed in
            ``config.attributes["connection"]``, and for offline ``--sql`` output).
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolation
    return config


def head_revision() -> str:
    """The newest revision of the packaged migrations."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise StorageError(f"no migration found in {MIGRATIONS_DIR}")
    return head


def revision_of(connection: Connection) -> str | None:
    """The schema revision recorded in the database behind ``connection`` (None: no schema)."""
    return MigrationContext.configure(connection).get_current_revision()


def check_revision(revision: str | None, display_url: str) -> None:
    """Raise unless ``revision`` is the head revision.

    Raises:
        StorageError: no schema, an older schema (both: run the migrations), or a revision
            these migrations do not know (the database was migrated by a newer version).
    """
    head = head_revision()
    if revision == head:
        return
    if revision is None:
        raise StorageError(f"database {display_url} has no HyCTAS schema: {UPGRADE_HINT}")
    try:
        known = ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        known = False
    if known:
        raise StorageError(f"database {display_url} schema is at revision {revision}, behind {head}: {UPGRADE_HINT}")
    raise StorageError(
        f"database {display_url} schema is at revision {revision}, unknown to this version of hyctas"
        f" (head {head}): upgrade hyctas"
    )


def upgrade_database(url: str, revision: str = "head", *, connect_timeout_s: float = 5.0) -> None:
    """Migrate the database at ``url`` to ``revision`` (idempotent; creates the tables the first time).

    One transaction on PostgreSQL (serialised against concurrent upgrades by an advisory
    lock); on SQLite the write lock is taken first, so concurrent upgrades wait for each other.

    Raises:
        StorageError: unreachable database, unknown revision or a failing migration.
    """
    engine = create_storage_engine(url, connect_timeout_s=connect_timeout_s, pooled=False)
    config = alembic_config(url)
    try:
        with engine.connect() as conn:
            conn.execution_options(hyctas_write=True)  # SQLite: BEGIN IMMEDIATE
            with conn.begin():
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot upgrade database {mask_url(url)}: {one_line(exc)}") from exc
    except CommandError as exc:
        raise StorageError(f"cannot upgrade database {mask_url(url)}: {' '.join(str(exc).split())}") from exc
    finally:
        engine.dispose()


def current_revision(url: str, *, connect_timeout_s: float = 5.0) -> str | None:
    """The schema revision of the database at ``url`` (None: never migrated).

    Raises:
        StorageError: unreachable database.
    """
    engine = create_storage_engine(url, connect_timeout_s=connect_timeout_s, pooled=False)
    try:
        with engine.connect() as conn:
            return revision_of(conn)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot connect to {mask_url(url)}: {one_line(exc)}") from exc
    finally:
        engine.dispose()
