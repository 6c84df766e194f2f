"""Reads answered from memory for a moment: many clients polling the same search cost one query.

A dashboard wall or a fleet of scripts polls the same few resources (a search, its front, the
job list) far more often than they change. :class:`ReadCache` keeps the JSON body of a
successful ``GET /api/v1/...`` for ``ttl_s`` (``HYCTAS_READ_CACHE_S``, 1 s), per user, path and
query, and answers repeats from memory. Concurrent misses of one resource run the route once
(the others wait for its answer), so a burst of clients never becomes a burst of queries.

What a client can see:
- its own answers only: the slot is the user of the API key, and a hit needs a key that the
  key cache (``HYCTAS_KEY_CACHE_S``) verified within its own time, so a revoked key stops
  reading from it when it stops working anywhere else;
- its own writes at once: a POST, PATCH or DELETE in this process drops every slot (and a read
  that started before the write is not kept);
- a worker's progress at once where an event announces it (the controller listens on the event
  bus and drops that user's slots), else within ``ttl_s``; with several controller processes a
  write through another process also shows within ``ttl_s``.
Only 200 answers with a JSON body of at most ``max_body`` bytes are kept; the event stream,
file downloads, errors and every other method pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from fastapi.security.utils import get_authorization_scheme_param

from services.auth import KeyCache
from services.metrics import READ_CACHE
from services.queue import EventBus, QueueError

__all__ = ["CachedReads", "ReadCache", "invalidate_on_events"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_COUNT = {result: READ_CACHE.labels(result) for result in ("hit", "shared", "miss")}


@dataclass(frozen=True)
class _Answer:
    at: float
    headers: list[tuple[bytes, bytes]]
    body: bytes
    route: Any


class ReadCache:
    """The answers kept and the reads in flight (see the module doc); :class:`CachedReads` is the
    ASGI middleware that serves through it.

    Args:
        keys: the API-key cache the routes authenticate with (a hit needs a remembered key).
        ttl_s: how long an answer is reused; 0 turns the cache off.
        events: gives the bus whose events drop their owner's answers, or None while there is
            none (listened to from the first request on, on the loop that serves it; :meth:`aclose`
            stops it).
        prefix: the paths that may be cached (those under it, less ``exclude``).
        exclude: path prefixes never cached (the event stream).
        max_body: larger answers are not kept.
        max_bytes: the bodies kept in all; the least recently used go first.
    """

    def __init__(
        self,
        *,
        keys: KeyCache,
        ttl_s: float,
        events: Callable[[], EventBus | None] = lambda: None,
        prefix: str = "/api/v1/",
        exclude: tuple[str, ...] = ("/api/v1/events",),
        max_body: int = 1 << 20,
        max_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys, self.ttl_s, self.events = keys, ttl_s, events
        self._listener: asyncio.Task[None] | None = None
        self.prefix, self.exclude = prefix, exclude
        self.max_body, self.max_bytes, self.clock = max_body, max_bytes, clock
        self._answers: OrderedDict[tuple[str, str, bytes], _Answer] = OrderedDict()
        self._bytes = 0
        self._flights: dict[tuple[str, str, bytes], asyncio.Future[_Answer | None]] = {}
        self._verifying: dict[str, asyncio.Future[str | None]] = {}
        self._epoch = 0  # bumped by every invalidation: a read that saw it move keeps nothing

    def __len__(self) -> int:
        return len(self._answers)

    def invalidate(self, user: str | None = None) -> None:
        """Drops the answers of ``user`` (None: everyone's)."""
        self._epoch += 1
        for slot in [s for s in self._answers if user is None or s[0] == user]:
            self._bytes -= len(self._answers.pop(slot).body)

    async def serve(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Answers one request: from memory, or by running ``app`` (and keeping its answer)."""
        if scope["type"] != "http" or self.ttl_s <= 0:
            await app(scope, receive, send)
            return
        self._listen()
        method, path = scope["method"], scope["path"]
        if method not in _SAFE:
            self.invalidate()  # reads running now keep nothing
            try:
                await app(scope, receive, send)
            finally:
                self.invalidate()  # what was read while the write ran is gone too
            return
        if method != "GET" or not path.startswith(self.prefix) or path.startswith(self.exclude):
            await app(scope, receive, send)
            return
        key = _bearer(scope)
        user = await self._user(key) if key else None
        if user is None:  # no valid key (or no database to tell): the route answers 401 or 503
            await app(scope, receive, send)
            return
        slot = (user, path, scope.get("query_string", b""))
        answer = self._fresh(slot)
        result = "hit"
        if answer is None and slot in self._flights:
            answer, result = await asyncio.shield(self._flights[slot]), "shared"
        if answer is not None:
            _COUNT[result].inc()
            scope["route"] = answer.route
            await _replay(answer, send)
            return
        _COUNT["miss"].inc()
        await self._run(app, scope, receive, send, slot)

    def _listen(self) -> None:
        """Starts (or restarts, on a new loop) the task that drops answers on events."""
        task = self._listener
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            return
        bus = self.events()
        if bus is not None:
            self._listener = asyncio.get_running_loop().create_task(invalidate_on_events(self, bus))

    async def aclose(self) -> None:
        """Stops listening for events (at shutdown)."""
        task, self._listener = self._listener, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _user(self, key: str) -> str | None:
        """The user of ``key``: remembered, else verified once for all the requests that bring it
        now (when a key's time runs out, 200 clients must not become 200 queries)."""
        user = self.keys.remembered(key)
        if user is not None:
            return user
        flight = self._verifying.get(key)
        if flight is None:
            flight = asyncio.ensure_future(to_thread.run_sync(self.keys.user, key))
            self._verifying[key] = flight
            flight.add_done_callback(lambda _: self._verifying.pop(key, None))
        try:
            found: str | None = await asyncio.shield(flight)
        except Exception:  # the database is down: the route says so
            return None
        return found

    def _fresh(self, slot: tuple[str, str, bytes]) -> _Answer | None:
        answer = self._answers.get(slot)
        if answer is None:
            return None
        if self.clock() - answer.at >= self.ttl_s:
            self._bytes -= len(self._answers.pop(slot).body)
            return None
        self._answers.move_to_end(slot)
        return answer

    async def _run(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        slot: tuple[str, str, bytes],
    ) -> None:
        """Runs the route for ``slot``, passing its answer on, and keeps the answer (for the
        requests waiting on this one too) if it may be reused."""
        flight: asyncio.Future[_Answer | None] = asyncio.get_running_loop().create_future()
        self._flights[slot] = flight
        epoch, at = self._epoch, self.clock()
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        keep = True

        async def capture(message: Message) -> None:
            nonlocal start, keep, size
            if message["type"] == "http.response.start":
                start = message
                keep = message["status"] == 200 and _json(message.get("headers", []))
            elif message["type"] == "http.response.body" and keep:
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                keep = size <= self.max_body
            await send(message)

        answer = None
        try:
            await app(scope, receive, capture)
            if keep and start is not None and epoch == self._epoch:
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"set-cookie"]
                answer = _Answer(at, headers, b"".join(chunks), scope.get("route"))
                self._keep(slot, answer)
        finally:
            self._flights.pop(slot, None)
            flight.set_result(answer)

    def _keep(self, slot: tuple[str, str, bytes], answer: _Answer) -> None:
        old = self._answers.pop(slot, None)
        if old is not None:
            self._bytes -= len(old.body)
        self._answers[slot] = answer
        self._bytes += len(answer.body)
        while self._bytes > self.max_bytes and self._answers:
            self._bytes -= len(self._answers.popitem(last=False)[1].body)


class CachedReads:
    """ASGI middleware serving through a :class:`ReadCache`."""

    def __init__(self, app: ASGIApp, *, cache: ReadCache) -> None:
        self.app, self.cache = app, cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.cache.serve(self.app, scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    """The key in ``Authorization``, read as the routes' ``HTTPBearer`` reads it (so a header the
    routes refuse never reaches a cached answer)."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, key = get_authorization_scheme_param(value.decode("latin-1"))
            return key if scheme.lower() == "bearer" and key else None
    return None


def _json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"application/json") for k, v in headers)


async def _replay(answer: _Answer, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": answer.headers})
    await send({"type": "http.response.body", "body": answer.body})


async def invalidate_on_events(cache: ReadCache, events: EventBus, *, retry_s: float = 1.0) -> None:
    """Drops a user's cached answers on each event about their jobs (a worker's progress shows at
    once, not after ``ttl_s``); runs until cancelled. While the bus is unreachable the cache holds
    answers for ``ttl_s`` only, as without it, and everything is dropped when it comes back."""
    while True:
        try:
            async for event in events.listen():
                owner = event.get("owner")
                cache.invalidate(owner if isinstance(owner, str) else None)
        except QueueError as exc:
            log.debug("read cache: event bus unavailable (%s); retrying", exc)
        cache.invalidate()
        await asyncio.sleep(retry_s)
