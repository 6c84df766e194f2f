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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import Engine, and_, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import (
    IntegrityError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, aliased, defer

from hyctas_core.storage import (
    DuplicateName,
    EvaluationRecord,
    GenerationRecord,
    IllegalTransition,
    IndividualRecord,
    SearchEdit,
    SearchRecord,
    SearchState,
    StorageError,
    StorageUnavailable,
)
from services.storage.base import (
    JOB_TRANSITIONS,
    MODEL_TRANSITIONS,
    ApiKeyRecord,
    DeploymentRecord,
    JobRecord,
    JobState,
    ModelRecord,
    SearchSummary,
    Storage,
    check_deployment_state,
    check_page,
)
from services.storage.engine import UNAVAILABLE, WRITE_OPTION, create_storage_engine, mask_url, one_line
from services.storage.migrate import UPGRADE_HINT, check_revision, revision_of, upgrade_database
from services.storage.models import (
    ApiKeyRow,
    DeploymentRow,
    EvaluationRow,
    GenerationRow,
    IndividualRow,
    JobRow,
    ModelRow,
    SearchRow,
)

__all__ = ["SQLStorage", "create_storage_engine", "mask_url", "one_line"]

R = TypeVar("R")
_IN_CHUNK = 500  # bound on bind parameters per IN (...) clause


def _now() -> datetime:
    return datetime.now(UTC)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def _latest_of(generations: Any) -> Any:
    """Join condition: the row of ``generations`` (the table or an alias) that is its search's latest."""
    return and_(generations.search_id == SearchRow.id, generations.index == SearchRow.generation)


def _search_record(row: SearchRow) -> SearchRecord:
    return SearchRecord(
        id=row.id,
        name=row.name,
        owner=row.owner,
        config=row.config,
        state=SearchState(row.state),
        generation=row.generation,
        reference_point=row.reference_point,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        verification=row.verification,
    )


def _generation_record(row: GenerationRow, *, with_state: bool) -> GenerationRecord:
    return GenerationRecord(
        index=row.index,
        hypervolume=row.hypervolume,
        front=row.front,
        n_evaluated=row.n_evaluated,
        n_new=row.n_new,
        algorithm_state=bytes(row.algorithm_state) if with_state else b"",
        timings=row.timings,
        created_at=row.created_at,
    )


def _individual_record(row: IndividualRow) -> IndividualRecord:
    return IndividualRecord(
        generation=row.generation,
        arch_hash=row.arch_hash,
        arch=row.arch,
        num_branches=row.num_branches,
        objectives=row.objectives,
        status=row.status,
    )


def _job_record(row: JobRow) -> JobRecord:
    return JobRecord(
        id=row.id,
        kind=row.kind,
        owner=row.owner,
        state=JobState(row.state),
        payload=row.payload,
        attempts=row.attempts,
        worker=row.worker,
        heartbeat_at=row.heartbeat_at,
        result=row.result,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        progress=row.progress,
        failures=row.failures,
        stream=row.stream,
    )


def _model_record(row: ModelRow) -> ModelRecord:
    return ModelRecord(
        id=row.id,
        owner=row.owner,
        job_id=row.job_id,
        name=row.name,
        arch=row.arch,
        arch_hash=row.arch_hash,
        task=row.task,
        source=row.source,
        state=JobState(row.state),
        metrics=row.metrics,
        checkpoint_uri=row.checkpoint_uri,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _deployment_record(row: DeploymentRow) -> DeploymentRecord:
    return DeploymentRecord(
        id=row.id,
        owner=row.owner,
        name=row.name,
        model_id=row.model_id,
        options=row.options,
        state=row.state,
        public=row.public,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _api_key_record(row: ApiKeyRow) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id, user=row.user, name=row.name, prefix=row.prefix, created_at=row.created_at, revoked_at=row.revoked_at
    )


class SQLStorage(Storage):
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

    def __init__(
        self, url: str, *, create: bool = False, connect_timeout_s: float = 5.0, busy_timeout_s: float = 30.0
    ) -> None:
        self._display_url = mask_url(url)
        if create:
            upgrade_database(url, connect_timeout_s=connect_timeout_s)
        self._engine = create_storage_engine(url, connect_timeout_s=connect_timeout_s, busy_timeout_s=busy_timeout_s)

    @classmethod
    def connect(
        cls, url: str, *, create: bool = False, connect_timeout_s: float = 5.0, busy_timeout_s: float = 30.0
    ) -> SQLStorage:
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

    def __enter__(self) -> SQLStorage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLStorage({self._display_url!r})"

    # -- transactions ---------------------------------------------------------------------
    @contextmanager
    def _session_scope(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any error, always close.

        SQLAlchemy / DBAPI errors become :class:`StorageError` with a one-line message; the
        storage's own errors (KeyError, IllegalTransition, ...) pass through unchanged.

        Args:
            write: The transaction will write: on SQLite it starts with ``BEGIN IMMEDIATE``.
        """
        session = Session(self._engine, autoflush=False, expire_on_commit=False)
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

    # -- searches -------------------------------------------------------------------------
    # -- search hooks (the rules are SearchStore's) ------------------------------------------
    def _insert_search(self, name: str, owner: str | None, config: dict[str, Any], now: datetime) -> int:
        with self._session_scope(write=True) as session:
            existing = session.scalar(
                select(SearchRow.id).where(SearchRow.name == name, self._owner_is(SearchRow.owner, owner))
            )
            if existing is not None:
                raise DuplicateName(f"a search named {name!r} already exists for owner {owner!r}")
            row = SearchRow(
                name=name,
                owner=owner,
                config=config,
                state=SearchState.CREATED.value,
                generation=-1,
                reference_point=None,
                error=None,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            try:
                session.flush()
            except IntegrityError:  # a concurrent create won the race
                raise DuplicateName(f"a search named {name!r} already exists for owner {owner!r}") from None
            return row.id

    @contextmanager
    def _edit_search(self, search_id: int) -> Iterator[SearchEdit]:
        with self._session_scope(write=True) as session:
            row = self._locked_search(session, search_id)
            edit = SearchEdit(_search_record(row), tx=session)
            yield edit
            record = edit.record
            row.state = SearchState(record.state).value
            row.error = record.error
            row.generation = record.generation
            row.reference_point = record.reference_point
            row.verification = record.verification
            row.updated_at = record.updated_at

    def _append_generation(
        self,
        edit: SearchEdit,
        generation: GenerationRecord,
        individuals: list[IndividualRecord],
        evaluations: list[EvaluationRecord],
    ) -> None:
        session: Session = edit.tx
        search_id, index = edit.record.id, generation.index
        try:
            session.execute(
                insert(GenerationRow).values(
                    search_id=search_id,
                    index=index,
                    hypervolume=generation.hypervolume,
                    front=generation.front,
                    n_evaluated=generation.n_evaluated,
                    n_new=generation.n_new,
                    algorithm_state=generation.algorithm_state,
                    timings=generation.timings,
                    created_at=generation.created_at,
                )
            )
        except IntegrityError:  # the primary key (search_id, index): another writer was first
            raise IllegalTransition(
                f"search {search_id}: generation {index} was committed concurrently by another writer"
            ) from None
        if individuals:
            session.execute(
                insert(IndividualRow),
                [
                    {
                        "search_id": search_id,
                        "generation": index,
                        "arch_hash": ind.arch_hash,
                        "arch": ind.arch,
                        "num_branches": ind.num_branches,
                        "objectives": ind.objectives,
                        "status": ind.status,
                    }
                    for ind in individuals
                ],
            )
        assert generation.created_at is not None
        self._insert_evaluations(session, evaluations, generation.created_at)

    # -- searches -------------------------------------------------------------------------
    def get_search(self, search_id: int) -> SearchRecord:
        """The search ``search_id``.

        Raises:
            KeyError: unknown id.
        """
        with self._session_scope() as session:
            row = session.get(SearchRow, search_id)
            if row is None:
                raise KeyError(f"unknown search id {search_id}")
            return _search_record(row)

    def find_search(self, name: str, *, owner: str | None = None) -> SearchRecord | None:
        """The search called ``name`` of ``owner`` (None: the search without owner), or None."""
        with self._session_scope() as session:
            row = session.scalar(
                select(SearchRow).where(SearchRow.name == name, self._owner_is(SearchRow.owner, owner))
            )
            return None if row is None else _search_record(row)

    def list_searches(
        self, *, owner: str | None = None, state: SearchState | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SearchRecord], int]:
        """(page of searches ordered by id, total count matching the filters).

        ``owner=None`` lists every owner's searches.

        Raises:
            ValueError: negative ``offset`` or ``limit``.
        """
        check_page(offset, limit)
        conditions = []
        if owner is not None:
            conditions.append(SearchRow.owner == owner)
        if state is not None:
            conditions.append(SearchRow.state == SearchState(state).value)
        return self._page(SearchRow, conditions, offset, limit, _search_record)

    # -- generations ----------------------------------------------------------------------
    def _insert_evaluations(self, session: Session, evaluations: list[EvaluationRecord], now: datetime) -> None:
        first: dict[tuple[str, str], dict[str, Any]] = {}
        for ev in evaluations:
            first.setdefault((ev.cache_key, ev.arch_hash), ev.result)
        if not first:
            return
        # Sorted: concurrent transactions lock the same keys in the same order (no deadlock).
        rows = [
            {"cache_key": key, "arch_hash": arch_hash, "result": result, "created_at": now}
            for (key, arch_hash), result in sorted(first.items(), key=lambda item: item[0])
        ]
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            session.execute(pg_insert(EvaluationRow).on_conflict_do_nothing(), rows)
        elif dialect == "sqlite":
            session.execute(sqlite_insert(EvaluationRow).on_conflict_do_nothing(), rows)
        else:  # portable fallback: skip the keys already there
            existing = {
                (k, h) for k, h in session.execute(select(EvaluationRow.cache_key, EvaluationRow.arch_hash)).all()
            }
            missing = [r for r in rows if (r["cache_key"], r["arch_hash"]) not in existing]
            if missing:
                session.execute(insert(EvaluationRow), missing)

    def get_generation(self, search_id: int, index: int) -> GenerationRecord:
        """Generation ``index`` of the search, with its algorithm state.

        Raises:
            KeyError: unknown search or generation.
        """
        with self._session_scope() as session:
            row = session.get(GenerationRow, (search_id, index))
            if row is None:
                self._require_search(session, search_id)
                raise KeyError(f"search {search_id} has no generation {index}")
            return _generation_record(row, with_state=True)

    def list_generations(self, search_id: int) -> list[GenerationRecord]:
        """All generations in order, with ``algorithm_state`` returned empty (b"") to save I/O.

        Raises:
            KeyError: unknown search.
        """
        with self._session_scope() as session:
            self._require_search(session, search_id)
            rows = session.scalars(
                select(GenerationRow)
                .options(defer(GenerationRow.algorithm_state, raiseload=True))
                .where(GenerationRow.search_id == search_id)
                .order_by(GenerationRow.index)
            ).all()
            return [_generation_record(r, with_state=False) for r in rows]

    def list_individuals(self, search_id: int, *, generation: int | None = None) -> list[IndividualRecord]:
        """Individuals of one generation, or of all (ordered by generation, then insertion).

        Raises:
            KeyError: unknown search.
        """
        with self._session_scope() as session:
            self._require_search(session, search_id)
            query = select(IndividualRow).where(IndividualRow.search_id == search_id)
            if generation is not None:
                query = query.where(IndividualRow.generation == generation)
            rows = session.scalars(query.order_by(IndividualRow.generation, IndividualRow.id)).all()
            return [_individual_record(r) for r in rows]

    # -- evaluation cache -----------------------------------------------------------------
    def get_evaluations(self, cache_key: str, arch_hashes: list[str]) -> dict[str, dict[str, Any]]:
        """Cached results among ``arch_hashes`` (missing ones are absent from the dict)."""
        wanted = sorted(set(arch_hashes))
        found: dict[str, dict[str, Any]] = {}
        if not wanted:
            return found
        with self._session_scope() as session:
            for chunk in _chunks(wanted):
                rows = session.execute(
                    select(EvaluationRow.arch_hash, EvaluationRow.result).where(
                        EvaluationRow.cache_key == cache_key, EvaluationRow.arch_hash.in_(chunk)
                    )
                ).all()
                found.update({arch_hash: result for arch_hash, result in rows})
        return found

    # -- read models: a page of searches, a front, the scrape, each in a few queries ---------------
    def _summaries(self, session: Session, conditions: list[Any], offset: int, limit: int) -> list[SearchSummary]:
        """Searches matching ``conditions`` (by id), each with its latest generation and its job: 2 queries."""
        latest = aliased(GenerationRow)
        stmt = (
            select(SearchRow, latest.hypervolume, latest.front, latest.n_evaluated, JobRow)
            .outerjoin(latest, _latest_of(latest))
            .outerjoin(JobRow, JobRow.id == SearchRow.config["job_id"].as_integer())
            .where(*conditions)
            .order_by(SearchRow.id)
            .offset(offset)
            .limit(limit)
        )
        rows = session.execute(stmt).all()
        if not rows:
            return []
        timing = GenerationRow.timings
        totals = {
            search_id: (int(count), float(eval_s), float(loop_s))
            for search_id, count, eval_s, loop_s in session.execute(
                select(
                    GenerationRow.search_id,
                    func.count(),
                    func.coalesce(func.sum(timing["eval_s"].as_float()), 0.0),
                    func.coalesce(func.sum(timing["loop_s"].as_float()), 0.0),
                )
                .where(GenerationRow.search_id.in_([row[0].id for row in rows]))
                .group_by(GenerationRow.search_id)
            ).all()
        }
        out = []
        for search, hypervolume, front, n_evaluated, job in rows:
            count, eval_s, loop_s = totals.get(search.id, (0, 0.0, 0.0))
            out.append(
                SearchSummary(
                    search=_search_record(search),
                    job=None if job is None else _job_record(job),
                    generations=count,
                    hypervolume=hypervolume,
                    front_size=len(front) if front is not None else 0,
                    n_evaluated=n_evaluated or 0,
                    eval_s=eval_s,
                    generation_s=eval_s + loop_s,
                )
            )
        return out

    def list_search_summaries(
        self, *, owner: str | None = None, state: SearchState | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SearchSummary], int]:
        check_page(offset, limit)
        conditions = []
        if owner is not None:
            conditions.append(SearchRow.owner == owner)
        if state is not None:
            conditions.append(SearchRow.state == SearchState(state).value)
        with self._session_scope() as session:
            total = session.scalar(select(func.count()).select_from(SearchRow).where(*conditions)) or 0
            if total <= offset or limit == 0:
                return [], total
            return self._summaries(session, conditions, offset, limit), total

    def get_search_summary(self, search_id: int) -> SearchSummary:
        with self._session_scope() as session:
            found = self._summaries(session, [SearchRow.id == search_id], 0, 1)
        if not found:
            raise KeyError(f"unknown search id {search_id}")
        return found[0]

    def latest_front(self, search_id: int) -> tuple[GenerationRecord | None, list[IndividualRecord]]:
        with self._session_scope() as session:
            generation = session.scalar(
                select(GenerationRow)
                .options(defer(GenerationRow.algorithm_state))
                .join(SearchRow, _latest_of(GenerationRow))
                .where(SearchRow.id == search_id)
            )
            if generation is None:
                self._require_search(session, search_id)
                return None, []
            first: dict[str, IndividualRecord] = {}
            for chunk in _chunks(list(dict.fromkeys(generation.front))):
                rows = session.scalars(
                    select(IndividualRow)
                    .where(IndividualRow.search_id == search_id, IndividualRow.arch_hash.in_(chunk))
                    .order_by(IndividualRow.generation, IndividualRow.id)
                )
                for row in rows:
                    first.setdefault(row.arch_hash, _individual_record(row))
            record = _generation_record(generation, with_state=False)
        return record, [first[h] for h in record.front if h in first]

    def job_counts(self) -> dict[JobState, int]:
        with self._session_scope() as session:
            counts = dict(session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all())
        return {state: int(counts.get(state.value, 0)) for state in JobState}

    def running_hypervolumes(self) -> dict[int, float]:
        with self._session_scope() as session:
            rows = session.execute(
                select(SearchRow.id, GenerationRow.hypervolume)
                .join(GenerationRow, _latest_of(GenerationRow))
                .where(SearchRow.state == SearchState.RUNNING.value)
                .order_by(SearchRow.id)
            ).all()
        return {int(search_id): float(hv) for search_id, hv in rows}

    # -- jobs -----------------------------------------------------------------------------
    def create_job(
        self, kind: str, payload: dict[str, Any], *, owner: str | None = None, stream: str | None = None
    ) -> int:
        """A new job in state QUEUED with 0 attempts.

        Returns:
            The new job id.

        Raises:
            StorageError: backend failure, or ``payload`` is not JSON-serialisable.
        """
        with self._session_scope(write=True) as session:
            now = _now()
            row = JobRow(
                kind=kind,
                owner=owner,
                state=JobState.QUEUED.value,
                payload=payload,
                attempts=0,
                failures=0,
                stream=stream,
                worker=None,
                heartbeat_at=None,
                result=None,
                error=None,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return row.id

    def get_job(self, job_id: int) -> JobRecord:
        """The job ``job_id``.

        Raises:
            KeyError: unknown id.
        """
        with self._session_scope() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise KeyError(f"unknown job id {job_id}")
            return _job_record(row)

    def list_jobs(
        self,
        *,
        owner: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[list[JobRecord], int]:
        """(page of jobs ordered by id, total count matching the filters); ``owner=None``: every owner.

        Raises:
            ValueError: negative ``offset`` or ``limit``.
        """
        check_page(offset, limit)
        conditions = []
        if owner is not None:
            conditions.append(JobRow.owner == owner)
        if state is not None:
            conditions.append(JobRow.state == JobState(state).value)
        if kind is not None:
            conditions.append(JobRow.kind == kind)
        return self._page(JobRow, conditions, offset, limit, _job_record)

    def start_job(self, job_id: int, worker: str, *, stale_after_s: float | None = None) -> JobRecord:
        """QUEUED (or a RUNNING job silent for ``stale_after_s``) -> RUNNING on ``worker``, ``attempts += 1``.

        Returns:
            The updated job.

        Raises:
            KeyError: unknown id.
            IllegalTransition: the job is not QUEUED (e.g. another worker started it first), nor
                RUNNING with a heartbeat older than ``stale_after_s``.
        """
        with self._session_scope(write=True) as session:
            row = self._locked_job(session, job_id)
            now = _now()
            stale = (
                stale_after_s is not None
                and row.state == JobState.RUNNING.value
                and (row.heartbeat_at is None or row.heartbeat_at < now - timedelta(seconds=stale_after_s))
            )
            if row.state != JobState.QUEUED.value and not stale:
                raise IllegalTransition(f"job {job_id} is {row.state}, not queued: cannot start it")
            row.state = JobState.RUNNING.value
            row.attempts += 1
            row.worker = worker
            row.heartbeat_at = now
            row.updated_at = now
            session.flush()
            return _job_record(row)

    def heartbeat_job(self, job_id: int, worker: str, *, progress: dict[str, Any] | None = None) -> None:
        """Refresh ``heartbeat_at`` (and store ``progress`` when given).

        Raises:
            KeyError: unknown id.
            IllegalTransition: not RUNNING on ``worker``.
            StorageError: ``progress`` is not JSON-serialisable.
        """
        with self._session_scope(write=True) as session:
            row = self._locked_running_job(session, job_id, worker)
            now = _now()
            if progress is not None:
                row.progress = progress
            row.heartbeat_at = now
            row.updated_at = now

    def release_job(self, job_id: int, worker: str) -> None:
        """RUNNING on ``worker`` -> QUEUED, worker and heartbeat cleared.

        Raises:
            KeyError: unknown id.
            IllegalTransition: not RUNNING on ``worker``.
        """
        with self._session_scope(write=True) as session:
            row = self._locked_running_job(session, job_id, worker)
            row.state = JobState.QUEUED.value
            row.worker = None
            row.heartbeat_at = None
            row.updated_at = _now()

    def record_job_failure(self, job_id: int, worker: str, *, progress: dict[str, Any] | None = None) -> JobRecord:
        """Count a failed attempt; the job stays RUNNING on ``worker`` (its lease runs out for a retry).

        Raises:
            KeyError: unknown id.
            IllegalTransition: not RUNNING on ``worker``.
            StorageError: ``progress`` is not JSON-serialisable.
        """
        with self._session_scope(write=True) as session:
            row = self._locked_running_job(session, job_id, worker)
            row.failures += 1
            if progress is not None:
                row.progress = progress
            row.updated_at = _now()
            session.flush()
            return _job_record(row)

    def finish_job(
        self, job_id: int, state: JobState, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        """RUNNING -> SUCCEEDED / FAILED / CANCELLED, or QUEUED -> CANCELLED; finished jobs are immutable.

        Raises:
            KeyError: unknown id.
            IllegalTransition: ``state`` is not a finished state, or the move is not allowed.
            StorageError: backend failure, or ``result`` is not JSON-serialisable.
        """
        state = JobState(state)
        with self._session_scope(write=True) as session:
            row = self._locked_job(session, job_id)
            current = JobState(row.state)
            if not state.is_finished() or state not in JOB_TRANSITIONS[current]:
                raise IllegalTransition(f"job {job_id}: cannot finish {current.value} -> {state.value}")
            row.state = state.value
            row.result = result
            row.error = error
            row.updated_at = _now()

    def requeue_stale_jobs(self, older_than_s: float) -> list[int]:
        """RUNNING jobs whose heartbeat is older than ``older_than_s`` go back to QUEUED (worker cleared).

        Returns:
            The requeued job ids, ascending.
        """
        with self._session_scope(write=True) as session:
            now = _now()
            cutoff = now - timedelta(seconds=older_than_s)
            rows = session.scalars(
                select(JobRow)
                .where(JobRow.state == JobState.RUNNING.value, JobRow.heartbeat_at < cutoff)
                .order_by(JobRow.id)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.state = JobState.QUEUED.value
                row.worker = None
                row.updated_at = now
            return [row.id for row in rows]

    # -- models ---------------------------------------------------------------------------
    def create_model(
        self,
        name: str,
        arch: dict[str, Any],
        arch_hash: str,
        *,
        owner: str | None = None,
        job_id: int | None = None,
        task: str = "semantic",
        source: dict[str, Any] | None = None,
    ) -> int:
        """A new model in state QUEUED with no metrics.

        Returns:
            The new model id.

        Raises:
            KeyError: unknown ``job_id``.
            StorageError: ``arch`` or ``source`` is not JSON-serialisable.
        """
        with self._session_scope(write=True) as session:
            if job_id is not None and session.get(JobRow, job_id) is None:
                raise KeyError(f"unknown job id {job_id}")
            now = _now()
            row = ModelRow(
                owner=owner,
                job_id=job_id,
                name=name,
                arch=arch,
                arch_hash=arch_hash,
                task=task,
                source=source or {},
                state=JobState.QUEUED.value,
                metrics={},
                checkpoint_uri=None,
                error=None,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return row.id

    def get_model(self, model_id: int) -> ModelRecord:
        """The model ``model_id``.

        Raises:
            KeyError: unknown id.
        """
        with self._session_scope() as session:
            row = session.get(ModelRow, model_id)
            if row is None:
                raise KeyError(f"unknown model id {model_id}")
            return _model_record(row)

    def list_models(
        self, *, owner: str | None = None, job_id: int | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[ModelRecord], int]:
        """(page of models ordered by id, total count matching the filters).

        Raises:
            ValueError: negative ``offset`` or ``limit``.
        """
        check_page(offset, limit)
        conditions = []
        if owner is not None:
            conditions.append(ModelRow.owner == owner)
        if job_id is not None:
            conditions.append(ModelRow.job_id == job_id)
        return self._page(ModelRow, conditions, offset, limit, _model_record)

    def update_model(
        self,
        model_id: int,
        *,
        state: JobState | None = None,
        metrics: dict[str, Any] | None = None,
        checkpoint_uri: str | None = None,
        error: str | None = None,
    ) -> None:
        """Change what is given; ``metrics`` are merged into the stored ones.

        Raises:
            KeyError: unknown id.
            IllegalTransition: ``state`` is not reachable from the model's state.
            StorageError: ``metrics`` is not JSON-serialisable.
        """
        with self._session_scope(write=True) as session:
            row = session.get(ModelRow, model_id, with_for_update=True)
            if row is None:
                raise KeyError(f"unknown model id {model_id}")
            if state is not None:
                new, current = JobState(state), JobState(row.state)
                if new is not current and new not in MODEL_TRANSITIONS[current]:
                    raise IllegalTransition(f"model {model_id}: cannot move {current.value} -> {new.value}")
                row.state = new.value
            if metrics is not None:
                row.metrics = {**row.metrics, **metrics}
            if checkpoint_uri is not None:
                row.checkpoint_uri = checkpoint_uri
            if error is not None:
                row.error = error
            row.updated_at = _now()

    # -- deployments ----------------------------------------------------------------------
    def create_deployment(
        self, name: str, model_id: int, options: dict[str, Any], *, owner: str | None = None, public: bool = False
    ) -> int:
        """A deployment in state ``deploying``.

        Returns:
            The new deployment id.

        Raises:
            KeyError: unknown model.
            DuplicateName: a live deployment has this name.
            StorageError: ``options`` is not JSON-serialisable.
        """
        with self._session_scope(write=True) as session:
            if session.get(ModelRow, model_id) is None:
                raise KeyError(f"unknown model id {model_id}")
            live = select(DeploymentRow.id).where(DeploymentRow.name == name, DeploymentRow.state != "deleted")
            if session.scalar(live) is not None:
                raise DuplicateName(f"a deployment named {name!r} exists")
            now = _now()
            row = DeploymentRow(
                owner=owner, name=name, model_id=model_id, options=options, state="deploying", public=public,
                error=None, created_at=now, updated_at=now,
            )  # fmt: skip
            session.add(row)
            try:
                session.flush()
            except IntegrityError:  # a concurrent create won the race
                raise DuplicateName(f"a deployment named {name!r} exists") from None
            return row.id

    def get_deployment(self, deployment_id: int) -> DeploymentRecord:
        """The deployment ``deployment_id``.

        Raises:
            KeyError: unknown id.
        """
        with self._session_scope() as session:
            row = session.get(DeploymentRow, deployment_id)
            if row is None:
                raise KeyError(f"unknown deployment id {deployment_id}")
            return _deployment_record(row)

    def find_deployment(self, name: str) -> DeploymentRecord | None:
        """The live deployment called ``name``, or None."""
        with self._session_scope() as session:
            row = session.scalar(
                select(DeploymentRow).where(DeploymentRow.name == name, DeploymentRow.state != "deleted")
            )
            return None if row is None else _deployment_record(row)

    def list_deployments(self, *, owner: str | None = None, include_deleted: bool = False) -> list[DeploymentRecord]:
        """Deployments ordered by id."""
        conditions = []
        if owner is not None:
            conditions.append(DeploymentRow.owner == owner)
        if not include_deleted:
            conditions.append(DeploymentRow.state != "deleted")
        with self._session_scope() as session:
            rows = session.scalars(select(DeploymentRow).where(*conditions).order_by(DeploymentRow.id)).all()
            return [_deployment_record(r) for r in rows]

    def update_deployment(
        self,
        deployment_id: int,
        *,
        state: str | None = None,
        options: dict[str, Any] | None = None,
        model_id: int | None = None,
        public: bool | None = None,
        error: str | None = None,
    ) -> None:
        """Change what is given (``error=""`` clears it).

        Raises:
            KeyError: unknown deployment or model.
            ValueError: unknown state.
            IllegalTransition: the deployment is deleted.
        """
        check_deployment_state(state)
        with self._session_scope(write=True) as session:
            row = session.get(DeploymentRow, deployment_id, with_for_update=True)
            if row is None:
                raise KeyError(f"unknown deployment id {deployment_id}")
            if row.state == "deleted":
                raise IllegalTransition(f"deployment {deployment_id} is deleted")
            if model_id is not None:
                if session.get(ModelRow, model_id) is None:
                    raise KeyError(f"unknown model id {model_id}")
                row.model_id = model_id
            if state is not None:
                row.state = state
            if options is not None:
                row.options = options
            if public is not None:
                row.public = public
            if error is not None:
                row.error = error or None
            row.updated_at = _now()

    # -- API keys -------------------------------------------------------------------------
    def create_api_key(self, user: str, key_hash: str, *, name: str = "", prefix: str = "") -> int:
        """Store a key's hash for ``user``.

        Returns:
            The key id.

        Raises:
            DuplicateName: a key with this hash exists.
        """
        with self._session_scope(write=True) as session:
            row = ApiKeyRow(user=user, key_hash=key_hash, name=name, prefix=prefix, created_at=_now())
            session.add(row)
            try:
                session.flush()
            except IntegrityError:  # the unique key_hash
                raise DuplicateName("an API key with this hash exists") from None
            return row.id

    def get_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The key with this hash (revoked ones too), or None."""
        with self._session_scope() as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash))
            return None if row is None else _api_key_record(row)

    def list_api_keys(self, user: str | None = None) -> list[ApiKeyRecord]:
        """Keys of ``user`` (every user's when None), ordered by id."""
        conditions = [] if user is None else [ApiKeyRow.user == user]
        with self._session_scope() as session:
            rows = session.scalars(select(ApiKeyRow).where(*conditions).order_by(ApiKeyRow.id)).all()
            return [_api_key_record(r) for r in rows]

    def revoke_api_key(self, key_id: int) -> None:
        """Revoke a key (idempotent).

        Raises:
            KeyError: unknown id.
        """
        with self._session_scope(write=True) as session:
            row = session.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None:
                raise KeyError(f"unknown API key id {key_id}")
            if row.revoked_at is None:
                row.revoked_at = _now()
