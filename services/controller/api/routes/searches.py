"""Searches: submit, list, inspect (generations, individuals, Pareto front), cancel."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from hyctas_core.search import SearchConfig
from hyctas_core.storage import SearchRecord, SearchState
from services.controller import service
from services.controller.api.responses import CONFLICT, NOT_FOUND
from services.controller.deps import CurrentUser, EventsDep, QueueDep, RowId, SettingsDep, StorageDep
from services.controller.schemas import (
    GenerationPublic,
    GenerationsPublic,
    IndividualPublic,
    IndividualsPublic,
    JobPublic,
    ParetoPublic,
    SearchCreate,
    SearchesPublic,
    SearchPublic,
    SearchTimings,
    VerificationPublic,
)
from services.storage.base import Storage

router = APIRouter(prefix="/searches", tags=["searches"])


def owned_search(storage: Storage, search_id: int, user: str) -> SearchRecord:
    """The search if ``user`` owns it; 404 otherwise (another user's id looks unknown)."""
    try:
        search = storage.get_search(search_id)
    except KeyError:
        search = None
    if search is None or search.owner != user:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no search {search_id}")
    return search


def search_public(storage: Storage, search: SearchRecord) -> SearchPublic:
    """The API view of a search: progress, hypervolume, timings and its job."""
    config = SearchConfig.from_dict(search.config["search"])
    generations = storage.list_generations(search.id)
    latest = generations[-1] if generations else None
    job_id = search.config.get("job_id")
    job = None
    if job_id is not None:
        try:
            job = JobPublic.from_record(storage.get_job(job_id))
        except KeyError:
            job = None
    per_gen = [g.timings.get("eval_s", 0.0) + g.timings.get("loop_s", 0.0) for g in generations]
    mean = statistics.fmean(per_gen) if per_gen else None
    end = search.updated_at if search.state.is_finished() else datetime.now(UTC)
    remaining = None
    if mean is not None and search.state in (SearchState.CREATED, SearchState.RUNNING):
        remaining = mean * (config.total_generations - len(generations))
    return SearchPublic(
        id=search.id,
        name=search.name,
        state=search.state,
        generation=search.generation + 1,
        total_generations=config.total_generations,
        objective=config.objective,
        hypervolume=latest.hypervolume if latest else None,
        front_size=len(latest.front) if latest else 0,
        n_evaluated=latest.n_evaluated if latest else 0,
        supernet_id=search.config.get("supernet_id"),
        job=job,
        config=search.config,
        error=search.error,
        timings=SearchTimings(
            elapsed_s=max(0.0, (end - search.created_at).total_seconds()),
            eval_s=sum(g.timings.get("eval_s", 0.0) for g in generations),
            mean_generation_s=mean,
            remaining_s=remaining,
        ),
        created_at=search.created_at,
        updated_at=search.updated_at,
        verification=VerificationPublic.model_validate(search.verification) if search.verification else None,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SearchPublic, responses=CONFLICT)
def create_search(
    body: SearchCreate,
    user: CurrentUser,
    storage: StorageDep,
    queue: QueueDep,
    events: EventsDep,
    settings: SettingsDep,
) -> SearchPublic:
    """Submit an NSGA-II search over a trained supernet."""
    search = service.submit_search(storage, queue, events, user, body, limits=settings)
    return search_public(storage, search)


@router.get("", response_model=SearchesPublic)
def list_searches(
    user: CurrentUser,
    storage: StorageDep,
    state: SearchState | None = None,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SearchesPublic:
    """The caller's searches, oldest first, optionally of one state."""
    page, count = storage.list_searches(owner=user, state=state, offset=offset, limit=limit)
    return SearchesPublic(data=[search_public(storage, s) for s in page], count=count)


@router.get("/{search_id}", response_model=SearchPublic, responses=NOT_FOUND)
def get_search(search_id: RowId, user: CurrentUser, storage: StorageDep) -> SearchPublic:
    """State, generation k of n, hypervolume and timings of one search."""
    return search_public(storage, owned_search(storage, search_id, user))


@router.get("/{search_id}/generations", response_model=GenerationsPublic, responses=NOT_FOUND)
def list_generations(search_id: RowId, user: CurrentUser, storage: StorageDep) -> GenerationsPublic:
    """Every committed generation: hypervolume, front hashes, counts, timings."""
    owned_search(storage, search_id, user)
    gens = storage.list_generations(search_id)
    data = [
        GenerationPublic(
            index=g.index, hypervolume=g.hypervolume, front=g.front, n_evaluated=g.n_evaluated, n_new=g.n_new,
            timings=g.timings, created_at=g.created_at,
        )
        for g in gens
    ]  # fmt: skip
    return GenerationsPublic(data=data, count=len(data))


@router.get("/{search_id}/pareto", response_model=ParetoPublic, responses=NOT_FOUND)
def get_pareto(search_id: RowId, user: CurrentUser, storage: StorageDep) -> ParetoPublic:
    """The current Pareto front (over everything evaluated so far), ordered by cost."""
    search = owned_search(storage, search_id, user)
    config = SearchConfig.from_dict(search.config["search"])
    gens = storage.list_generations(search_id)
    front = storage.pareto_front(search_id) if gens else []
    return ParetoPublic(
        search_id=search_id,
        generation=search.generation,
        cost_key=config.cost_key,
        hypervolume=gens[-1].hypervolume if gens else None,
        data=[IndividualPublic(**vars(i)) for i in front],
    )


@router.get("/{search_id}/individuals", response_model=IndividualsPublic, responses=NOT_FOUND)
def list_individuals(
    search_id: RowId,
    user: CurrentUser,
    storage: StorageDep,
    generation: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
) -> IndividualsPublic:
    """Individuals of one generation, or of all generations."""
    search = owned_search(storage, search_id, user)
    if generation is not None and generation > search.generation:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"search {search_id} has no generation {generation} yet")
    rows = storage.list_individuals(search_id, generation=generation)
    return IndividualsPublic(data=[IndividualPublic(**vars(i)) for i in rows], count=len(rows))


@router.post("/{search_id}/cancel", response_model=SearchPublic, responses={**NOT_FOUND, **CONFLICT})
def cancel_search(search_id: RowId, user: CurrentUser, storage: StorageDep, events: EventsDep) -> SearchPublic:
    """Cancel a search; its worker stops within one evaluation. 409 if it already finished."""
    search = owned_search(storage, search_id, user)
    return search_public(storage, service.cancel_search(storage, events, search))
