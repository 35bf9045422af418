"""Short-lived cache in front of the auth store's per-request reads, kept fresh.

MLflow's permission checks re-read the user and its role grants from the database on
every request (several queries, about half the cost of a cheap request). With
`[k8s_auth] permission_cache_ttl_seconds` > 0 those reads are memoised for at most that
long, and every write made through the store in this process clears the cache at once.
Writes made by other processes or replicas reach it through the change counter
(`revocation`): each write moves it, and each cached read first lets the process's
`ChangeWatcher` look at it (at most once per `revocation_check_interval_seconds`), so a
revoked grant stops working everywhere within that interval; the TTL only bounds writes
made behind the store's back. MLflow's permission logic itself is untouched.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache

from . import metrics

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


def _nothing() -> None:
    return None


def _no_bump() -> bool:
    return True


class PermissionCache:
    """`ttl_seconds` 0 caches nothing but still checks for changes (MLflow's credential
    cache is cleared on them) and still records this process's writes."""

    def __init__(self, ttl_seconds: float, max_entries: int, clock: Callable[[], float] = time.monotonic,
                 *, check: Callable[[], None] = _nothing, bump: Callable[[], bool] = _no_bump) -> None:
        self._cache: TTLCache | None = TTLCache(max_entries, ttl_seconds, timer=clock) if ttl_seconds > 0 else None
        self._lock = threading.Lock()
        # Bumped by every write so a read that raced with a write is not stored.
        self._generation = 0
        self._check = check
        self._bump = bump

    def clear(self, cause: str = "local_write") -> None:
        with self._lock:
            self._generation += 1
            if self._cache is not None:
                self._cache.clear()
        metrics.PERMISSION_CACHE_INVALIDATIONS.labels(cause=cause).inc()

    def read(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def cached(*args: Any, **kwargs: Any) -> Any:
            self._check()  # a clock read unless a look at the change counter is due
            if self._cache is None:
                return method(*args, **kwargs)
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
                result = method(*args, **kwargs)
            finally:
                self.clear()
            # After the commit, so a process that sees the new number reads the new grants.
            self._bump()
            return result

        return invalidating


def install(store: Any, ttl_seconds: float, max_entries: int, *, check: Callable[[], None] = _nothing,
            bump: Callable[[], bool] = _no_bump) -> PermissionCache:
    """Wrap `store`'s reads and writes in place (instance attributes)."""
    cache = PermissionCache(ttl_seconds, max_entries, check=check, bump=bump)
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
