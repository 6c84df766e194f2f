"""Server-sent events: live progress of the caller's jobs and searches (from Redis pub/sub)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse

from services.controller.deps import CurrentUser, EventsDep

router = APIRouter(tags=["events"])

KEEPALIVE_S = 15.0


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "an endless event stream"}},
)
async def stream_events(request: Request, user: CurrentUser, events: EventsDep) -> StreamingResponse:
    """Progress events of the caller's jobs as ``text/event-stream`` (one JSON object per ``data:`` line)."""
    if events is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no event bus configured")
    bus = events

    async def pump(out: asyncio.Queue[dict[str, Any]]) -> None:
        async for event in bus.listen():
            if event.get("owner") == user:
                await out.put(event)

    async def body() -> AsyncIterator[str]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        task = asyncio.create_task(pump(queue))
        try:
            yield ": connected\n\n"
            while not await request.is_disconnected():
                if task.done():  # the bus failed: end the stream, the client reconnects
                    yield 'event: error\ndata: {"detail": "event bus unavailable"}\n\n'
                    return
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                yield f"event: {event.get('type', 'message')}\ndata: {json.dumps(event)}\n\n"
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
