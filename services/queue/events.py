"""Progress events over publish/subscribe: :class:`EventBus`, on Redis or in process.

An event is a JSON object with a ``"type"`` (and usually ``"owner"``, ``"job_id"``,
``"search_id"``). Delivery is fire-and-forget: a listener sees what is published while it
listens, nothing from before, and nothing while its connection is down. Messages on the channel
that are not such an object (not JSON, not an object, no string ``"type"``) are skipped.

Listen with ``contextlib.aclosing`` so the subscription is released as soon as you stop::

    async with contextlib.aclosing(bus.listen()) as events:
        async for event in events:
            ...
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from services.queue.base import QueueError, describe_error, mask_url

__all__ = ["EventBus", "InMemoryEventBus", "RedisEventBus"]

log = logging.getLogger(__name__)

_SOCKET_TIMEOUT_S = 5.0  # publishing; listening reads without a timeout


class EventBus(abc.ABC):
    """Fans events out to every current listener. Usable as a context manager (``close()`` on exit)."""

    @abc.abstractmethod
    def publish(self, event: dict[str, Any]) -> None:
        """Sends ``event`` to everyone listening now; callable from any thread.

        Args:
            event: a JSON-serialisable object with a string ``"type"``.

        Raises:
            ValueError: ``event`` has no string ``"type"`` or is not JSON-serialisable.
            QueueError: the backend failed (callers that only report progress may ignore it),
                or the bus is closed.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def listen(self) -> AsyncGenerator[dict[str, Any], None]:
        """Yields every event published after this listener subscribed, in publish order.

        An async generator: it subscribes when first iterated (before waiting for anything), runs
        until cancelled or closed, and then unsubscribes and releases its connection.

        Returns:
            An async generator of events (fresh objects, JSON semantics: tuples come back as lists).

        Raises:
            QueueError: the backend failed while listening.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def close(self) -> None:
        """Releases the publishing side; idempotent. Running listeners go on until cancelled."""
        raise NotImplementedError

    def __enter__(self) -> EventBus:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def encode_event(event: dict[str, Any]) -> str:
    """``event`` as JSON text.

    Raises:
        ValueError: ``event`` is not an object with a string ``"type"``, or not strict JSON.
    """
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ValueError(f"an event must be a dict with a str 'type', got {event!r:.200}")
    try:
        return json.dumps(event, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"event is not JSON-serialisable ({exc}): {event!r:.200}") from None


def decode_event(data: object) -> dict[str, Any] | None:
    """The event in a channel message, or None (logged) if it is not a JSON object with a str ``"type"``."""
    try:
        event = json.loads(data) if isinstance(data, str | bytes) else None
    except ValueError:
        event = None
    if isinstance(event, dict) and isinstance(event.get("type"), str):
        return event
    log.warning("skipping malformed event message: %.200r", data)
    return None


class RedisEventBus(EventBus):
    """Events on a Redis pub/sub channel.

    Publishing uses one synchronous client (thread-safe); every :meth:`listen` opens its own
    ``redis.asyncio`` connection.

    Args:
        url: ``redis://[:password@]host:port/db``.
        channel: the pub/sub channel.

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """

    def __init__(self, url: str, channel: str = "hyctas:events") -> None:
        self.channel = channel
        self._url = url
        try:
            self._client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=_SOCKET_TIMEOUT_S,
                socket_connect_timeout=_SOCKET_TIMEOUT_S,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),  # a progress event is not worth a long stall
            )
        except ValueError as exc:
            raise ValueError(f"invalid Redis URL {mask_url(url)}: {describe_error(exc, url)}") from None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisEventBus({mask_url(self._url)!r}, channel={self.channel!r})"

    def publish(self, event: dict[str, Any]) -> None:
        text = encode_event(event)
        if self._closed:
            raise QueueError(f"{mask_url(self._url)}: event bus is closed")
        try:
            self._client.publish(self.channel, text)
        except redis.RedisError as exc:
            raise QueueError(describe_error(exc, self._url)) from exc

    async def listen(self) -> AsyncGenerator[dict[str, Any], None]:
        client = redis.asyncio.Redis.from_url(self._url, decode_responses=True)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                event = decode_event(message.get("data"))
                if event is not None:
                    yield event
        except redis.RedisError as exc:
            raise QueueError(describe_error(exc, self._url)) from exc
        finally:
            # Best effort: a second cancel here is dropped (the first is already on its way out), and
            # the unsubscribe is bounded so a dead server cannot hang the caller.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(pubsub.unsubscribe(), timeout=1.0)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await pubsub.aclose()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await client.aclose()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()


@dataclass(eq=False)
class _Listener:
    loop: asyncio.AbstractEventLoop
    messages: asyncio.Queue[str] = field(default_factory=asyncio.Queue)


class InMemoryEventBus(EventBus):
    """Events fanned out in process: :meth:`publish` (any thread) puts each message on every listener's queue.

    Messages travel as JSON text, as on Redis, so listeners get fresh objects with JSON semantics.
    Queues are unbounded: a listener that stops reading holds every later event in memory.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: set[_Listener] = set()
        self._closed = False

    def publish(self, event: dict[str, Any]) -> None:
        text = encode_event(event)
        if self._closed:
            raise QueueError("in-memory event bus is closed")
        self._send(text)

    async def listen(self) -> AsyncGenerator[dict[str, Any], None]:
        listener = _Listener(asyncio.get_running_loop())
        with self._lock:
            self._listeners.add(listener)
        try:
            while True:
                event = decode_event(await listener.messages.get())
                if event is not None:
                    yield event
        finally:
            with self._lock:
                self._listeners.discard(listener)

    def close(self) -> None:
        self._closed = True

    def _send(self, text: str) -> None:
        """Puts a raw channel message on every listener's queue (tests use it to send malformed ones)."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.loop.call_soon_threadsafe(listener.messages.put_nowait, text)
            except RuntimeError:  # its event loop is closed: the listener is gone
                with self._lock:
                    self._listeners.discard(listener)
