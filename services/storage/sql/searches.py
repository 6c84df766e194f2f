"""Searches, generations, individuals, the evaluation cache and the read models over them.

The rules are :class:`~hyctas_core.storage.SearchStore`'s; these are its hooks and the reads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import (
    IntegrityError,
)
from sqlalchemy.orm import Session, aliased, defer

from hyctas_core.storage import (
    DuplicateName,
    EvaluationRecord,
    GenerationCommit,
    GenerationRecord,
    IllegalTransition,
    IndividualRecord,
    SearchEdit,
    SearchRecord,
    SearchState,
)
from services.storage.base import (
    SearchSummary,
    check_page,
)
from services.storage.models import (
    EvaluationRow,
    GenerationRow,
    IndividualRow,
    JobRow,
    SearchRow,
)
from services.storage.sql.core import SQLCore
from services.storage.sql.records import (
    INDIVIDUAL_COLUMNS,
    chunks,
    generation_record,
    individual_record,
    job_record,
    latest_of,
    search_record,
)


class SearchTables(SQLCore):
    """Searches, generations, individuals, the evaluation cache and the read models over them."""

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
            edit = SearchEdit(search_record(row), tx=session)
            yield edit
            record = edit.record
            row.state = SearchState(record.state).value
            row.error = record.error
            row.generation = record.generation
            row.reference_point = record.reference_point
            row.verification = record.verification
            row.updated_at = record.updated_at

    def _append_generation(self, edit: SearchEdit, commit: GenerationCommit) -> None:
        session: Session = edit.tx
        generation, individuals = commit.generation, commit.individuals
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
        self._insert_evaluations(session, commit.evaluations, generation.created_at)

    def get_search(self, search_id: int) -> SearchRecord:
        return self._get(SearchRow, search_id, "search", search_record)

    def find_search(self, name: str, *, owner: str | None = None) -> SearchRecord | None:
        with self._session_scope() as session:
            row = session.scalar(
                select(SearchRow).where(SearchRow.name == name, self._owner_is(SearchRow.owner, owner))
            )
            return None if row is None else search_record(row)

    def list_searches(
        self, *, owner: str | None = None, state: SearchState | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[SearchRecord], int]:
        check_page(offset, limit)
        conditions = self._filters(SearchRow, SearchState, owner, state)
        return self._page(SearchRow, conditions, offset, limit, search_record)

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
        with self._session_scope() as session:
            row = session.get(GenerationRow, (search_id, index))
            if row is None:
                self._require_search(session, search_id)
                raise KeyError(f"search {search_id} has no generation {index}")
            return generation_record(row, with_state=True)

    def list_generations(self, search_id: int) -> list[GenerationRecord]:
        with self._session_scope() as session:
            self._require_search(session, search_id)
            rows = session.scalars(
                select(GenerationRow)
                .options(defer(GenerationRow.algorithm_state, raiseload=True))
                .where(GenerationRow.search_id == search_id)
                .order_by(GenerationRow.index)
            ).all()
            return [generation_record(r, with_state=False) for r in rows]

    def list_individuals(self, search_id: int, *, generation: int | None = None) -> list[IndividualRecord]:
        with self._session_scope() as session:
            self._require_search(session, search_id)
            query = select(*INDIVIDUAL_COLUMNS).where(IndividualRow.search_id == search_id)
            if generation is not None:
                query = query.where(IndividualRow.generation == generation)
            rows = session.execute(query.order_by(IndividualRow.generation, IndividualRow.id)).all()
            return [individual_record(r) for r in rows]

    def get_evaluations(self, cache_key: str, arch_hashes: list[str]) -> dict[str, dict[str, Any]]:
        wanted = sorted(set(arch_hashes))
        found: dict[str, dict[str, Any]] = {}
        if not wanted:
            return found
        with self._session_scope() as session:
            for chunk in chunks(wanted):
                rows = session.execute(
                    select(EvaluationRow.arch_hash, EvaluationRow.result).where(
                        EvaluationRow.cache_key == cache_key, EvaluationRow.arch_hash.in_(chunk)
                    )
                ).all()
                found.update({arch_hash: result for arch_hash, result in rows})
        return found

    def _summaries(self, session: Session, conditions: list[Any], offset: int, limit: int) -> list[SearchSummary]:
        """Searches matching ``conditions`` (by id), each with its latest generation and its job: 2 queries."""
        latest = aliased(GenerationRow)
        stmt = (
            select(SearchRow, latest.hypervolume, latest.front, latest.n_evaluated, JobRow)
            .outerjoin(latest, latest_of(latest))
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
                    search=search_record(search),
                    job=None if job is None else job_record(job),
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
        conditions = self._filters(SearchRow, SearchState, owner, state)
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
                .join(SearchRow, latest_of(GenerationRow))
                .where(SearchRow.id == search_id)
            )
            if generation is None:
                self._require_search(session, search_id)
                return None, []
            first: dict[str, IndividualRecord] = {}
            for chunk in chunks(list(dict.fromkeys(generation.front))):
                rows = session.execute(
                    select(*INDIVIDUAL_COLUMNS)
                    .where(IndividualRow.search_id == search_id, IndividualRow.arch_hash.in_(chunk))
                    .order_by(IndividualRow.generation, IndividualRow.id)
                )
                for row in rows:
                    first.setdefault(row.arch_hash, individual_record(row))
            record = generation_record(generation, with_state=False)
        return record, [first[h] for h in record.front if h in first]

    def running_hypervolumes(self) -> dict[int, float]:
        with self._session_scope() as session:
            rows = session.execute(
                select(SearchRow.id, GenerationRow.hypervolume)
                .join(GenerationRow, latest_of(GenerationRow))
                .where(SearchRow.state == SearchState.RUNNING.value)
                .order_by(SearchRow.id)
            ).all()
        return {int(search_id): float(hv) for search_id, hv in rows}
