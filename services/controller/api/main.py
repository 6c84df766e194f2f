"""The ``/api/v1`` router: one ``include_router`` per resource."""

from __future__ import annotations

from fastapi import APIRouter

from services.controller.api.routes import deployments, events, jobs, models, searches, supernets

api_router = APIRouter()
api_router.include_router(searches.router)
api_router.include_router(supernets.router)
api_router.include_router(models.router)
api_router.include_router(jobs.router)
api_router.include_router(deployments.router)
api_router.include_router(events.router)
