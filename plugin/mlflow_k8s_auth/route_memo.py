"""Memoise MLflow's per-request "is this path a native FastAPI route?" test.

MLflow's FastAPI permission middleware (fail-closed, `MLFLOW_BASIC_AUTH_FAIL_CLOSED`, on by
default) asks this for every request that has no FastAPI validator, which is every Flask
route (all of the REST API). It answers by running Starlette's matcher over every native
route (about a hundred path regexes): with the permission cache on, the largest
per-request cost of MLflow's auth app, more than authentication and MLflow's permission
checks together.

The answer depends only on the route table and on the request's type, method, root path
and path (checked: every route, nested ones included, must be of a kind that matches on
those alone). It is memoised per process under exactly that key plus the route
table's version (every nested router's `_routes_version`, which FastAPI bumps when a route
is added, and its lengths), and an entry is used only for the same route list object, so a
route added later is never hidden by an old answer. When a route is of a kind whose matching we cannot vouch for (Host, Mount, custom),
nothing is memoised. The decision itself is still MLflow's: only its result is remembered.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

# Long paths are matched every time instead of being kept as keys.
MAX_PATH_CHARS = 1024
DEFAULT_MAX_ENTRIES = 4096
_MARK = "_mlflow_k8s_auth_memoised"

Matcher = Callable[[Sequence[Any], dict[str, Any]], bool]


def _plain_matchers() -> tuple[Any, ...]:
    """`matches` implementations that look only at type, method, root path and path."""
    from fastapi import routing as fastapi_routing
    from starlette import routing as starlette_routing

    classes = (
        getattr(fastapi_routing, "APIRoute", None), getattr(fastapi_routing, "APIWebSocketRoute", None),
        starlette_routing.Route, starlette_routing.WebSocketRoute,
    )
    return tuple(cls.matches for cls in classes if cls is not None)


def _included_router(route: Any) -> Any:
    """The router behind FastAPI's `include_router` entry, or None."""
    router = getattr(route, "original_router", None)
    return router if router is not None and isinstance(getattr(router, "_routes_version", None), int) else None


def _routers(routes: Sequence[Any], plain: tuple[Any, ...]) -> list[Any] | None:
    """Every router nested in `routes`, or None unless every route, nested ones included,
    matches on the request line alone."""
    found: list[Any] = []
    pending = [iter(routes)]
    while pending:
        route = next(pending[-1], None)
        if route is None:
            pending.pop()
            continue
        router = _included_router(route)
        if router is not None:
            if any(router is seen for seen in found):
                continue  # included twice (under two prefixes): its routes are checked already
            if len(found) > 256:
                return None  # more nesting than any real app has
            if getattr(router, "_low_priority_routes", None):
                return None  # frontend fallbacks: not worth vouching for
            found.append(router)
            pending.append(iter(router.routes))
        elif type(route).matches not in plain:
            return None  # a custom matcher (Host, Mount, ...) may look at anything
    return found


def _fingerprint(routes: Sequence[Any], routers: Sequence[Any]) -> tuple[int, ...]:
    # FastAPI bumps `_routes_version` when it adds a route; the lengths catch a bare append.
    return (len(routes), *(
        number for router in routers
        for number in (router._routes_version, len(router.routes), len(getattr(router, "_low_priority_routes", ())))
    ))


@dataclass(frozen=True)
class _Table:
    routes: Sequence[Any]  # held so its id() cannot be reused while it is known
    routers: list[Any] | None
    fingerprint: tuple[int, ...]


class NativeRouteMemo:
    """Drop-in for `mlflow.server.auth._scope_matches_native_route`."""

    def __init__(self, match: Matcher, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._match = match
        self._cache: LRUCache = LRUCache(max_entries)
        self._lock = threading.Lock()
        self._plain = _plain_matchers()
        self._tables: dict[int, _Table] = {}
        functools.update_wrapper(self, match)
        setattr(self, _MARK, True)

    def _table(self, routes: Sequence[Any]) -> _Table:
        with self._lock:
            table = self._tables.get(id(routes))
        if table is not None and table.routes is routes and (
            table.routers is None or _fingerprint(routes, table.routers) == table.fingerprint
        ):
            return table
        routers = _routers(routes, self._plain)
        table = _Table(routes, routers, _fingerprint(routes, routers or ()))
        with self._lock:
            if len(self._tables) >= 64:
                self._tables.clear()
            self._tables[id(routes)] = table
        return table

    def _key(self, routes: Sequence[Any], scope: dict[str, Any]) -> tuple[Any, ...] | None:
        path = scope.get("path")
        if not isinstance(path, str) or len(path) > MAX_PATH_CHARS:
            return None
        table = self._table(routes)
        if table.routers is None:
            return None
        return (id(routes), table.fingerprint, scope.get("type"), scope.get("method"), scope.get("root_path", ""), path)

    def __call__(self, routes: Sequence[Any], scope: dict[str, Any]) -> bool:
        key = self._key(routes, scope)
        if key is None:
            return self._match(routes, scope)
        with self._lock:
            entry = self._cache.get(key)
        if entry is not None and entry[0] is routes:
            return entry[1]
        result = self._match(routes, scope)
        with self._lock:
            self._cache[key] = (routes, result)
        return result


def install(max_entries: int = DEFAULT_MAX_ENTRIES) -> bool:
    """Wrap MLflow's matcher in place (the middleware looks it up per call). False if absent."""
    from mlflow.server import auth as mlflow_auth

    original = getattr(mlflow_auth, "_scope_matches_native_route", None)
    if original is None or getattr(original, _MARK, False):
        return False
    mlflow_auth._scope_matches_native_route = NativeRouteMemo(original, max_entries)
    return True
