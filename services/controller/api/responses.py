"""The error statuses the routes declare in the OpenAPI (every one a route can answer with)."""

from __future__ import annotations

from typing import Any

from services.controller.schemas import Message

__all__ = ["COMMON_RESPONSES", "CONFLICT", "NOT_FOUND"]


def _error(description: str) -> dict[str, Any]:
    return {"model": Message, "description": description}


# Statuses every /api/v1 route may answer besides its own (404 / 409 are declared per route).
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("a body that cannot be parsed as JSON"),
    401: _error("missing, invalid or revoked API key"),
    413: _error("request body over HYCTAS_MAX_BODY_BYTES"),
    503: _error("the database or the job queue is unreachable; nothing was changed, retry later"),
}
# Routes that name a resource by id or name: another user's looks unknown.
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _error("no such resource (or not yours)")}
# Routes that change state: a duplicate name, a supernet not trained yet, an illegal transition.
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: _error("clashes with stored state (a duplicate name, a finished job)")
}
