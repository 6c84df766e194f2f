"""API keys: generated once, shown once, stored only as a SHA-256 hash.

A key is ``hyk_`` plus 32 random bytes (URL-safe base64): with that much entropy a plain,
unsalted SHA-256 is the right storage (as for GitHub tokens): a lookup by hash is one indexed
query, and a leaked database does not reveal usable keys.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from services.storage.base import Storage

__all__ = ["KEY_PREFIX", "USER_PATTERN", "authenticate", "hash_key", "issue_api_key", "new_api_key"]

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
