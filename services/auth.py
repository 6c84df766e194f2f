"""API keys: generated once, shown once, stored only as a SHA-256 hash.

A key is ``hyk_`` plus 32 random bytes (URL-safe base64): with that much entropy a plain,
unsalted SHA-256 is the right storage (as for GitHub tokens): a lookup by hash is one indexed
query, and a leaked database does not reveal usable keys.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from services.storage.base import Storage

__all__ = [
    "KEY_PREFIX",
    "USER_PATTERN",
    "KeyCache",
    "TTLCache",
    "authenticate",
    "hash_key",
    "issue_api_key",
    "new_api_key",
]

KEY_PREFIX = "hyk_"
USER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
_USER_RE = re.compile(USER_PATTERN)


def new_api_key() -> str:
    """A fresh random key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of ``key``: 64 hex characters."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def issue_api_key(storage: Storage, user: str, *, name: str = "") -> str:
    """Create a key for ``user`` and return it (the only time it is ever visible).

    Raises:
        ValueError: ``user`` is not 1-64 characters of letters, digits and ``_.@-``.
    """
    if not _USER_RE.match(user):
        raise ValueError(f"invalid user name {user!r}: use 1-64 letters, digits or _.@- (starting with a letter/digit)")
    key = new_api_key()
    storage.create_api_key(user, hash_key(key), name=name, prefix=key[: len(KEY_PREFIX) + 6])
    return key


def authenticate(storage: Storage, key: str) -> str | None:
    """The user owning ``key``, or None for an unknown, malformed or revoked key."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    record = storage.get_api_key(hash_key(key))
    if record is None or record.revoked_at is not None:
        return None
    return record.user


class TTLCache:
    """``fetch(key)`` results for ``ttl_s``, at most ``size`` of them (least recently used out);
    a None result is never cached."""

    def __init__(
        self, fetch: Callable[[str], Any], *, ttl_s: float, size: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.fetch, self.ttl_s, self.size, self.clock = fetch, ttl_s, size, clock
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, slot: str) -> Any:
        """The fresh entry of ``slot``, or None: never fetches (safe on an event loop)."""
        now = self.clock()
        with self._lock:
            hit = self._entries.get(slot)
            if hit is None or now - hit[0] >= self.ttl_s:
                return None
            self._entries.move_to_end(slot)
            return hit[1]

    def get(self, key: str, slot: str | None = None) -> Any:
        slot = key if slot is None else slot
        now = self.clock()
        with self._lock:
            hit = self._entries.get(slot)
            if hit is not None and now - hit[0] < self.ttl_s:
                self._entries.move_to_end(slot)
                return hit[1]
            self._entries.pop(slot, None)
        value = self.fetch(key)
        if value is not None:
            with self._lock:
                self._entries[slot] = (now, value)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return value


class KeyCache(TTLCache):
    """API key -> user, for keys that verified: at most ``size`` of them (least recently used out),
    each for ``ttl_s`` (a revoked key stops working within that). A key that does not verify is
    never cached, so random bearer strings cannot fill it; keys are held as sha256 digests."""

    def __init__(
        self,
        verify: Callable[[str], str | None],
        *,
        ttl_s: float = 1.0,
        size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(verify, ttl_s=ttl_s, size=size, clock=clock)

    def user(self, key: str) -> str | None:
        user: str | None = self.get(key, hash_key(key))
        return user

    def remembered(self, key: str) -> str | None:
        """The user of ``key`` if it verified within ``ttl_s``, else None (no query)."""
        user: str | None = self.peek(hash_key(key))
        return user
