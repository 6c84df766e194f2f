"""Storage backends: the shared contract, SQL specifics (migrations, races, kills, connection errors).

The core's search-store contract (``hyctas_core.testing.storage_contract``) runs against
``InMemorySearchStore``; the service's full contract (``tests/services/storage_contract.py``, which
extends it) against ``SQLStorage`` on SQLite (a fresh file per test, copied from a migrated template) and
``SQLStorage`` on PostgreSQL (``integration``: a throw-away database created for the session
through the ``postgres`` maintenance database from ``TEST_DATABASE_URL``, dropped at the end,
tables emptied before each test). Without ``TEST_DATABASE_URL`` the PostgreSQL cases skip;
with ``CI=true`` a missing variable or an unreachable server fails them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, create_engine, insert, inspect, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from hyctas_core.storage import IllegalTransition, SearchState, SearchStore, StorageError
from hyctas_core.storage_memory import InMemorySearchStore
from hyctas_core.testing import SearchStoreContract, make_evaluations, make_generation, make_individuals
from services.storage import SQLStorage, current_revision, head_revision, upgrade_database
from services.storage.base import JobState, Storage
from services.storage.migrate import alembic_config
from services.storage.models import Base, GenerationRow, JobRow
from services.storage.sql import create_storage_engine, mask_url, one_line
from tests.services.storage_contract import StorageContract

ROOT = Path(__file__).resolve().parents[2]
TABLES = (
    "searches",
    "generations",
    "individuals",
    "evaluations",
    "jobs",
    "models",
    "deployments",
    "api_keys",
)  # parents first
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    """Skip locally, fail in CI (integration tests never skip there)."""
    if IN_CI:
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite database file (checkpointed: no -wal file) to copy per test."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade_database(_sqlite_url(path))
    assert not Path(f"{path}-wal").exists()
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh migrated SQLite database of this test."""
    path = tmp_path / "hyctas.db"
    shutil.copyfile(sqlite_template, path)
    return _sqlite_url(path)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """URL of a throw-away, migrated PostgreSQL database for this session (dropped afterwards)."""
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        _unavailable("TEST_DATABASE_URL is not set")
        return
    parsed = make_url(base)
    name = f"hyctas_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(
        parsed.set(database="postgres"), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            # Throw-away data: skip the WAL flush at commit (atomicity and visibility are unchanged).
            conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit TO off'))
    except SQLAlchemyError as exc:
        admin.dispose()
        _unavailable(f"cannot create a test database on {mask_url(parsed)}: {one_line(exc)}")
        return
    url = parsed.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_database(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_cleaner(pg_database: str) -> Iterator[Engine]:
    """An engine on the session database, used to empty it between tests."""
    engine = create_engine(pg_database)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_database: str, pg_cleaner: Engine) -> str:
    """The session PostgreSQL database, emptied for this test (DELETE: much faster than TRUNCATE here)."""
    with pg_cleaner.begin() as conn:
        for table in TABLES[::-1]:  # children first
            conn.execute(text(f"DELETE FROM {table}"))
    return pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def sql_url(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database URL, once for SQLite and once for PostgreSQL."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


# -- the contract -----------------------------------------------------------------------------
class TestInMemorySearchStore(SearchStoreContract):
    """The core's contract on its in-process search store."""

    @pytest.fixture
    def storage(self) -> Iterator[SearchStore]:
        yield InMemorySearchStore()


class TestSQLiteStorage(StorageContract):
    """The contract on SQLStorage over a SQLite file."""

    @pytest.fixture
    def storage(self, sqlite_url: str) -> Iterator[Storage]:
        with SQLStorage(sqlite_url) as storage:
            yield storage


@pytest.mark.integration
class TestPostgresStorage(StorageContract):
    """The contract on SQLStorage over PostgreSQL (TEST_DATABASE_URL)."""

    @pytest.fixture
    def storage(self, pg_url: str) -> Iterator[Storage]:
        with SQLStorage(pg_url) as storage:
            yield storage


# -- migrations -------------------------------------------------------------------------------
def _schema_diff(url: str, metadata: MetaData) -> list[object]:
    engine = create_storage_engine(url, pooled=False)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata))
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(sql_url: str) -> None:
    """After the migrations the database equals models.py (Alembic autogenerate finds no difference)."""
    assert current_revision(sql_url) == head_revision() == "0005"
    assert _schema_diff(sql_url, Base.metadata) == []
    # The comparison is not vacuous: a model change would be reported.
    changed = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["jobs"].append_column(Column("priority", Integer, nullable=True))
    diff = _schema_diff(sql_url, changed)
    assert len(diff) == 1 and diff[0][0] == "add_column"  # type: ignore[index]


def test_downgrade_removes_everything_and_upgrade_is_idempotent(sql_url: str) -> None:
    """downgrade to base drops all tables; upgrading twice is a no-op; the schema is back."""
    engine = create_storage_engine(sql_url, pooled=False)
    try:
        with engine.begin() as conn:
            config = alembic_config(sql_url)
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    assert current_revision(sql_url) is None
    upgrade_database(sql_url)
    upgrade_database(sql_url)
    assert current_revision(sql_url) == head_revision()
    assert _schema_diff(sql_url, Base.metadata) == []


# -- connection and schema checks -------------------------------------------------------------
def test_connect_to_unreachable_database_fails_fast_with_one_line() -> None:
    """An unreachable server raises StorageError("cannot connect to <url>: ...") quickly, password masked."""
    url = "postgresql+psycopg://hyctas:s3cret@127.0.0.1:1/hyctas"
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        SQLStorage.connect(url, connect_timeout_s=2)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert message.startswith("cannot connect to postgresql+psycopg://hyctas:***@127.0.0.1:1/hyctas: ")
    assert "\n" not in message and "s3cret" not in message and "[SQL" not in message


def test_connect_to_missing_sqlite_file_fails_without_creating_it(tmp_path: Path) -> None:
    """A SQLite path that does not exist is a one-line StorageError pointing at the upgrade; no file appears."""
    path = tmp_path / "missing" / "x.db"
    with pytest.raises(StorageError, match=r"^cannot connect to sqlite:///.*does not exist.*hyctas db upgrade") as info:
        SQLStorage.connect(_sqlite_url(path))
    assert "\n" not in str(info.value)
    with pytest.raises(StorageError, match=r"^cannot connect to sqlite:///.*x\.db: the file does not exist"):
        SQLStorage.connect(_sqlite_url(tmp_path / "x.db"))
    assert list(tmp_path.iterdir()) == []


def test_connect_to_unopenable_sqlite_file_fails_with_one_line(tmp_path: Path) -> None:
    """A path SQLite cannot open (a directory) is a one-line 'cannot connect' StorageError."""
    with pytest.raises(
        StorageError, match=r"^cannot connect to sqlite:///.*: OperationalError: unable to open"
    ) as info:
        SQLStorage.connect(_sqlite_url(tmp_path))
    assert "\n" not in str(info.value)


def test_connect_without_migrations_asks_for_the_upgrade(tmp_path: Path) -> None:
    """An empty database is refused with the upgrade command; after the upgrade connect works."""
    (tmp_path / "empty.db").touch()
    url = _sqlite_url(tmp_path / "empty.db")
    with pytest.raises(StorageError, match="hyctas db upgrade") as info:
        SQLStorage.connect(url)
    assert "\n" not in str(info.value)
    upgrade_database(url)
    with SQLStorage.connect(url) as storage:
        assert storage.list_searches() == ([], 0)


def test_connect_with_create_migrates(tmp_path: Path) -> None:
    """SQLStorage.connect(url, create=True) creates the schema itself."""
    url = _sqlite_url(tmp_path / "created.db")
    with SQLStorage.connect(url, create=True) as storage:
        assert storage.create_search("s", {}) == 1
    assert current_revision(url) == head_revision()


def test_connect_refuses_unknown_schema_revision(sqlite_url: str) -> None:
    """A database migrated by a newer version (unknown revision) is refused with a clear message."""
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StorageError, match="unknown to this version of hyctas"):
        SQLStorage.connect(sqlite_url)


@pytest.mark.integration
def test_connect_accepts_the_postgres_database(pg_url: str) -> None:
    """connect() succeeds on the migrated PostgreSQL database."""
    with SQLStorage.connect(pg_url) as storage:
        assert storage.list_searches() == ([], 0)


@pytest.mark.integration
def test_a_dropped_connection_is_replaced(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server closes the pooled connections (a restart): an idle one is pinged and replaced
    at checkout, unseen by the caller; on a busy one the first read fails as unavailable (503)
    and the pool is renewed, so the next read works."""
    from hyctas_core.storage import StorageUnavailable
    from services.storage import engine as engine_module

    def drop_connections(storage: SQLStorage) -> None:
        """Terminate the storage's pooled connections (one: its calls run one at a time)."""
        with storage.engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        admin = create_engine(pg_url, poolclass=NullPool)
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
        admin.dispose()
        time.sleep(0.2)

    with SQLStorage.connect(pg_url) as storage:
        assert storage.list_searches() == ([], 0)
        monkeypatch.setattr(engine_module, "PING_IDLE_S", 0.0)  # every pooled connection counts as idle
        drop_connections(storage)
        assert storage.list_searches() == ([], 0)
        monkeypatch.setattr(engine_module, "PING_IDLE_S", 3600.0)  # none does: no ping
        drop_connections(storage)
        with pytest.raises(StorageUnavailable):
            storage.list_searches()
        assert storage.list_searches() == ([], 0)


def test_invalid_url_is_a_storage_error() -> None:
    """Garbage or an unknown driver in the URL raises StorageError, not a SQLAlchemy error."""
    with pytest.raises(StorageError, match="invalid database URL"):
        SQLStorage("not a url")
    with pytest.raises(StorageError, match="unsupported database URL"):
        SQLStorage("nosuchdb://u:pw@h/db")


def test_backend_errors_become_one_line_storage_errors(sqlite_url: str) -> None:
    """A failing statement (here: a dropped table) surfaces as a one-line StorageError without SQL."""
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE jobs"))
    engine.dispose()
    with SQLStorage(sqlite_url) as storage:
        with pytest.raises(StorageError) as info:
            storage.create_job("search", {})
        message = str(info.value)
        assert "no such table: jobs" in message
        assert "\n" not in message and "[SQL" not in message
        assert storage.create_search("still-works", {}) == 1  # the session was cleaned up


def test_mask_url_hides_passwords() -> None:
    """Passwords never reach messages, also for URLs SQLAlchemy cannot parse."""
    assert mask_url("postgresql+psycopg://u:pw@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert "pw" not in mask_url("weird://u:pw@h:notaport/db")


# -- concurrency and crashes ------------------------------------------------------------------
def _race_commit(sid: int, index: int, storages: dict[str, SQLStorage]) -> dict[str, object]:
    """Each storage commits generation ``index`` at the same moment: name -> "won" or the exception."""
    barrier = threading.Barrier(len(storages))
    outcomes: dict[str, object] = {}

    def commit(name: str, storage: SQLStorage) -> None:
        inds = make_individuals(index, 3, prefix=name)
        gen = make_generation(index, inds)
        barrier.wait()
        try:
            storage.commit_generation(sid, gen, inds, make_evaluations(inds))
            outcomes[name] = "won"
        except BaseException as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=commit, args=item) for item in storages.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


def test_two_sqlite_storages_race_for_one_generation(sqlite_url: str) -> None:
    """Two SQLStorage objects (own connections) on one file: each index is won exactly once."""
    with SQLStorage(sqlite_url) as first, SQLStorage(sqlite_url) as second:
        sid = first.create_search("race", {})
        for index in range(5):
            outcomes = _race_commit(sid, index, {"a": first, "b": second})
            assert sorted(outcomes) == ["a", "b"]
            won = [n for n, o in outcomes.items() if o == "won"]
            lost = [o for o in outcomes.values() if o != "won"]
            assert len(won) == 1 and len(lost) == 1, outcomes
            assert isinstance(lost[0], IllegalTransition), lost
            assert second.get_search(sid).generation == index
            assert {i.arch_hash.split("-")[0] for i in first.list_individuals(sid, generation=index)} == set(won)


def test_primary_key_backstop_turns_into_illegal_transition(sql_url: str) -> None:
    """If a generation row exists although the counter lags (a writer bypassing the lock), the
    (search_id, index) key refuses the second commit with IllegalTransition and rolls it back."""
    with SQLStorage(sql_url) as storage:
        sid = storage.create_search("backstop", {})
        gen = make_generation(0, [])
        with storage.engine.begin() as conn:
            conn.execute(
                insert(GenerationRow).values(
                    search_id=sid,
                    index=0,
                    hypervolume=0.0,
                    front=[],
                    n_evaluated=0,
                    n_new=0,
                    algorithm_state=b"other writer",
                    timings={},
                    created_at=storage.get_search(sid).created_at,
                )
            )
        inds = make_individuals(0)
        with pytest.raises(IllegalTransition, match="concurrently"):
            storage.commit_generation(sid, gen, inds, make_evaluations(inds, "backstop"))
        assert storage.get_search(sid).generation == -1
        assert storage.get_generation(sid, 0).algorithm_state == b"other writer"
        assert storage.list_individuals(sid) == []
        assert storage.get_evaluations("backstop", [i.arch_hash for i in inds]) == {}


_CHILD = textwrap.dedent(
    """
    import sys, time, types
    from pathlib import Path

    root, url, sid, hang_at, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    sys.path.insert(0, root)
    # Load hyctas_core.storage without hyctas_core/__init__.py (which imports torch): a fast start.
    package = types.ModuleType("hyctas_core")
    package.__path__ = [root + "/hyctas_core"]
    sys.modules["hyctas_core"] = package

    from sqlalchemy import event
    from hyctas_core.testing.storage_contract import make_evaluations, make_generation, make_individuals
    from services.storage.sql import SQLStorage

    storage = SQLStorage(url)
    armed = False

    def before_commit(conn):
        if armed:  # everything of this generation is written, not committed: wait to be killed
            marker.write_text("in commit")
            time.sleep(120)

    event.listen(storage.engine, "commit", before_commit)
    index = storage.get_search(sid).generation + 1
    while True:
        individuals = make_individuals(index, 20)
        state = bytes(range(256)) * 4096 + index.to_bytes(4, "big")  # 1 MB, distinct per generation
        armed = index == hang_at
        generation = make_generation(index, individuals, algorithm_state=state)
        storage.commit_generation(sid, generation, individuals, make_evaluations(individuals, "kill"))
        index += 1
    """
)


def _expected_state(index: int) -> bytes:
    return bytes(range(256)) * 4096 + index.to_bytes(4, "big")


def _assert_consistent(storage: SQLStorage, sid: int) -> int:
    """Counter == last generation row; every generation is complete; nothing beyond it."""
    last = storage.get_search(sid).generation
    generations = storage.list_generations(sid)
    assert [g.index for g in generations] == list(range(last + 1))
    individuals = storage.list_individuals(sid)
    assert len(individuals) == 20 * (last + 1)
    for index in range(last + 1):
        assert [i.arch_hash for i in individuals[20 * index : 20 * index + 20]] == [
            f"arch-g{index}-{k}" for k in range(20)
        ]
    if last >= 0:
        assert storage.get_generation(sid, last).algorithm_state == _expected_state(last)
    cached = storage.get_evaluations("kill", [f"arch-g{g}-{k}" for g in range(last + 3) for k in range(20)])
    assert len(cached) == 20 * (last + 1)
    return last


def _spawn(url: str, sid: int, hang_at: int, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    marker, log = tmp_path / f"marker-{hang_at}", tmp_path / f"child-{hang_at}.log"
    with log.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(ROOT), url, str(sid), str(hang_at), str(marker)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return child, marker, log


def _wait_for(
    condition: Callable[[], bool], child: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if child.poll() is not None:
            pytest.fail(f"the child exited with {child.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("the child made no progress")
        time.sleep(0.02)


def test_sigkill_during_commit_leaves_whole_generations_only(sql_url: str, tmp_path: Path) -> None:
    """A search process SIGKILLed inside commit_generation (rows written, COMMIT pending) or at a
    random point of a commit loop leaves only complete generations, and the search resumes."""
    with SQLStorage(sql_url) as storage:
        sid = storage.create_search("killed", {})
        storage.set_search_state(sid, SearchState.RUNNING)

        # 1. Deterministic: the child stops right before COMMIT of generation 2 and is killed.
        child, marker, log = _spawn(sql_url, sid, 2, tmp_path)
        _wait_for(marker.exists, child, log)
        assert _assert_consistent(storage, sid) == 1  # written but uncommitted: invisible to readers
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert _assert_consistent(storage, sid) == 1

        # 2. Random point: kill a free-running commit loop after a few generations.
        child, marker, log = _spawn(sql_url, sid, -1, tmp_path)
        _wait_for(lambda: storage.get_search(sid).generation >= 4, child, log)
        time.sleep(0.013)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        last = _assert_consistent(storage, sid)
        assert last >= 4

        # The killed writer left no lock behind: the search resumes from latest_generation().
        latest = storage.latest_generation(sid)
        assert latest is not None and latest.algorithm_state == _expected_state(last)
        inds = make_individuals(last + 1, 20)
        storage.commit_generation(
            sid,
            make_generation(last + 1, inds, algorithm_state=_expected_state(last + 1)),
            inds,
            make_evaluations(inds, "kill"),
        )
        assert _assert_consistent(storage, sid) == last + 1


def test_job_requeue_and_restart_across_storages(sql_url: str) -> None:
    """A job started through one storage object is requeued and restarted through another."""
    with SQLStorage(sql_url) as a, SQLStorage(sql_url) as b:
        jid = a.create_job("search", {"search_id": 1})
        a.start_job(jid, "w1")
        with a.engine.begin() as conn:  # age the heartbeat instead of sleeping
            old = a.get_job(jid).created_at.replace(year=2000)
            conn.execute(update(JobRow).where(JobRow.id == jid).values(heartbeat_at=old))
        assert b.requeue_stale_jobs(60.0) == [jid]
        assert b.start_job(jid, "w2").attempts == 2
        b.finish_job(jid, JobState.SUCCEEDED, result={"ok": True})
        assert a.get_job(jid).result == {"ok": True}
