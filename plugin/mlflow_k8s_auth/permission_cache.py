"""Optional short-lived cache in front of the auth store's per-request reads.

MLflow's permission checks re-read the user and its role grants from the database on
every request (several queries, about half the cost of a cheap request). With
`[k8s_auth] permission_cache_ttl_seconds` > 0 those reads are memoised for at most that
long (validated to be no longer than the token cache), and every write made through the
store in this process clears the cache at once. Writes made by other processes or
replicas show up within the TTL. MLflow's permission logic itself is untouched.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache

# Reads MLflow performs on each authorised request.
CACHED_READS = ("get_user", "list_grants", "has_user", "get_role_permission_for_resource")
WRITE_PREFIXES = (
    "create_", "update_", "delete_", "grant_", "revoke_", "add_", "remove_",
    "assign_", "unassign_", "set_", "rename_",
)


def _freeze(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


class PermissionCache:
    def __init__(self, ttl_seconds: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._cache: TTLCache = TTLCache(max_entries, ttl_seconds, timer=clock)
        self._lock = threading.Lock()
        # Bumped by every write so a read that raced with a write is not stored.
        self._generation = 0

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._cache.clear()

    def read(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def cached(*args: Any, **kwargs: Any) -> Any:
            key = (name, _freeze(args), _freeze(tuple(sorted(kwargs.items()))))
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
                generation = self._generation
            value = method(*args, **kwargs)
            with self._lock:
                if generation == self._generation:
                    self._cache[key] = value
            return value

        return cached

    def write(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def invalidating(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            finally:
                self.clear()

        return invalidating


def install(store: Any, ttl_seconds: float, max_entries: int) -> PermissionCache | None:
    """Wrap `store`'s reads and writes in place (instance attributes). None when disabled."""
    if ttl_seconds <= 0:
        return None
    cache = PermissionCache(ttl_seconds, max_entries)
    for name in dir(type(store)):
        if name.startswith("_"):
            continue
        method = getattr(store, name, None)
        if not callable(method):
            continue
        if name in CACHED_READS:
            setattr(store, name, cache.read(name, method))
        elif name.startswith(WRITE_PREFIXES):
            setattr(store, name, cache.write(method))
    return cache
