"""Searches: submit, list, inspect (generations, individuals, Pareto front), cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from hyctas_core.search import SearchConfig
from hyctas_core.storage import SearchRecord, SearchState
from services.controller import service
from services.controller.api.responses import CONFLICT, NOT_FOUND
from services.controller.deps import CurrentUser, EventsDep, Limit, Offset, QueueDep, RowId, SettingsDep, StorageDep
from services.controller.schemas import (
    GenerationPublic,
    GenerationsPublic,
    IndividualPublic,
    IndividualsPublic,
    ParetoPublic,
    SearchCreate,
    SearchesPublic,
    SearchPublic,
)
from services.storage.base import Storage

router = APIRouter(prefix="/searches", tags=["searches"])


def owned_search(storage: Storage, search_id: int, user: str) -> SearchRecord:
    return service.owned(lambda: storage.get_search(search_id), user, f"search {search_id}")


def owned_summary(storage: Storage, search_id: int, user: str) -> SearchPublic:
    summary = service.owned(lambda: storage.get_search_summary(search_id), user, f"search {search_id}")
    return SearchPublic.from_summary(summary)


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
    return SearchPublic.from_summary(storage.get_search_summary(search.id))


@router.get("", response_model=SearchesPublic)
def list_searches(
    user: CurrentUser,
    storage: StorageDep,
    state: SearchState | None = None,
    offset: Offset = 0,
    limit: Limit = 20,
) -> SearchesPublic:
    """The caller's searches, oldest first, optionally of one state."""
    page, count = storage.list_search_summaries(owner=user, state=state, offset=offset, limit=limit)
    return SearchesPublic(data=[SearchPublic.from_summary(s) for s in page], count=count)


@router.get("/{search_id}", response_model=SearchPublic, responses=NOT_FOUND)
def get_search(search_id: RowId, user: CurrentUser, storage: StorageDep) -> SearchPublic:
    """State, generation k of n, hypervolume and timings of one search."""
    return owned_summary(storage, search_id, user)


@router.get("/{search_id}/generations", response_model=GenerationsPublic, responses=NOT_FOUND)
def list_generations(search_id: RowId, user: CurrentUser, storage: StorageDep) -> GenerationsPublic:
    """Every committed generation: hypervolume, front hashes, counts, timings."""
    owned_search(storage, search_id, user)
    data = [GenerationPublic.model_validate(g) for g in storage.list_generations(search_id)]
    return GenerationsPublic(data=data, count=len(data))


@router.get("/{search_id}/pareto", response_model=ParetoPublic, responses=NOT_FOUND)
def get_pareto(search_id: RowId, user: CurrentUser, storage: StorageDep) -> ParetoPublic:
    """The current Pareto front (over everything evaluated so far), ordered by cost."""
    search = owned_search(storage, search_id, user)
    latest, front = storage.latest_front(search_id)
    return ParetoPublic(
        search_id=search_id,
        generation=search.generation,
        cost_key=SearchConfig.from_mapping(search.config["search"]).cost_key,
        hypervolume=None if latest is None else latest.hypervolume,
        data=[IndividualPublic.model_validate(i) for i in front],
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
    return IndividualsPublic(data=[IndividualPublic.model_validate(i) for i in rows], count=len(rows))


@router.post("/{search_id}/cancel", response_model=SearchPublic, responses={**NOT_FOUND, **CONFLICT})
def cancel_search(search_id: RowId, user: CurrentUser, storage: StorageDep, events: EventsDep) -> SearchPublic:
    """Cancel a search; its worker stops within one evaluation. 409 if it already finished."""
    search = service.cancel_search(storage, events, owned_search(storage, search_id, user))
    return SearchPublic.from_summary(storage.get_search_summary(search.id))
