"""The ``/api/v1`` router: one ``include_router`` per resource."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from services.controller.api.responses import COMMON_RESPONSES
from services.controller.api.routes import deployments, events, jobs, models, searches, supernets


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def reject_unknown_query(request: Request) -> None:
    """A query parameter the route does not take is a 422 naming it (a typo never passes silently)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise RequestValidationError(
            [{"loc": ("query", name), "msg": "unknown query parameter", "type": "extra_forbidden"} for name in unknown]
        )


api_router = APIRouter(responses=COMMON_RESPONSES, dependencies=[Depends(reject_unknown_query)])
api_router.include_router(searches.router)
api_router.include_router(supernets.router)
api_router.include_router(models.router)
api_router.include_router(jobs.router)
api_router.include_router(deployments.router)
api_router.include_router(events.router)
