"""Dependencies of the routes: the storage, the queue, the event bus, the settings and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.auth import KeyCache
from services.queue import EventBus, JobQueue
from services.settings import Settings
from services.storage.base import Storage

__all__ = [
    "MAX_ID",
    "CurrentUser",
    "EventsDep",
    "Limit",
    "Offset",
    "QueueDep",
    "RowId",
    "SettingsDep",
    "StorageDep",
]

MAX_ID = 2**31 - 1  # ids are 32-bit integer columns: a larger id can name nothing

# A path id: out of range is a 422 naming the bound, never a database error.
RowId = Annotated[int, Path(ge=1, le=MAX_ID, description=f"an id (1..{2**31 - 1})")]
# A page of a listing: ``offset`` rows skipped, at most ``limit`` returned.
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=100)]

_bearer = HTTPBearer(auto_error=False, description="an API key from `hyctas apikey create --user NAME`")


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


async def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


async def get_events(request: Request) -> EventBus | None:
    events: EventBus | None = request.app.state.events
    return events


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


StorageDep = Annotated[Storage, Depends(get_storage)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
EventsDep = Annotated[EventBus | None, Depends(get_events)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The user of the API key in ``Authorization: Bearer ...``; 401 without a valid one.

    A key that verified is remembered for ``key_cache_s`` (1 s): such a request needs no query
    and no thread; a revoked key is refused within that time."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    keys: KeyCache = request.app.state.keys
    key = credentials.credentials
    user = keys.remembered(key) or await run_in_threadpool(keys.user, key)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return user


CurrentUser = Annotated[str, Depends(current_user)]
