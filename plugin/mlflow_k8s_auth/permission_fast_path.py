"""Let requests that MLflow's FastAPI permission middleware would pass on untouched skip it.

MLflow's auth app adds its permission check for FastAPI-native routes (gateway, OTLP,
jobs, MCP, native artifact routes) as a Starlette `BaseHTTPMiddleware`. For every other
request, the whole Flask REST API among them, its dispatch only calls `call_next`:
Flask's `before_request` hook authorizes those. Yet `BaseHTTPMiddleware` still costs a
task group, two memory streams and a re-wrapped response per request, the largest share
of what separates an authenticated request from an unauthenticated one.

`PermissionFastPath` replaces that middleware entry with a pure ASGI middleware that asks
MLflow's own functions the same questions the dispatch asks before doing anything else
(is the path unprotected; is there a FastAPI validator for it; would fail-closed deny it)
and calls the inner app directly only when the dispatch would pass the request on
unchanged. Everything else, including any request for which a question raises and every
non-HTTP scope, goes through MLflow's middleware exactly as before: this only ever skips
a pass-through, it never decides a permission.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware

_log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
_DISPATCH_NAME = "fastapi_permission_middleware"
_DISPATCH_MODULE = "mlflow.server.auth"


def passes_through(scope: Scope, native_routes: list[Any]) -> bool:
    """Whether MLflow's permission dispatch would call `call_next` without acting.

    Mirrors the first steps of `mlflow.server.auth.add_fastapi_permission_middleware`'s
    dispatch with MLflow's own functions, looked up per call so a patched one is honoured.
    """
    from mlflow.server import auth as mlflow_auth

    path = scope.get("path")
    method = scope.get("method")
    if scope.get("type") != "http" or not isinstance(path, str) or not path or not isinstance(method, str):
        return False  # the dispatch would fall back to request.url: let it
    if mlflow_auth.is_unprotected_route(path):
        return True
    if mlflow_auth._find_fastapi_validator(path, method) is not None:
        return False
    if not mlflow_auth.MLFLOW_BASIC_AUTH_FAIL_CLOSED.get():
        return True
    if not mlflow_auth._scope_matches_native_route(native_routes, scope):
        return True
    return any(marker in path for marker in mlflow_auth._KNOWN_UNGATED_FASTAPI_ROUTE_MARKERS)


class PermissionFastPath:
    """Pure ASGI stand-in for MLflow's permission `BaseHTTPMiddleware` (see module doc)."""

    def __init__(self, app: ASGIApp, dispatch: Callable[..., Any], native_routes: list[Any]) -> None:
        self.app = app
        self._native_routes = native_routes
        self._checked = BaseHTTPMiddleware(app, dispatch=dispatch)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            direct = passes_through(scope, self._native_routes)
        except Exception:  # noqa: BLE001 - undecided: MLflow's middleware decides
            direct = False
        if direct:
            await self.app(scope, receive, send)
        else:
            await self._checked(scope, receive, send)


def _native_routes_of(dispatch: Callable[..., Any]) -> list[Any] | None:
    """The route snapshot MLflow's dispatch closes over (the very list it checks)."""
    code = getattr(dispatch, "__code__", None)
    closure = getattr(dispatch, "__closure__", None) or ()
    if code is None or "native_routes" not in code.co_freevars:
        return None
    value = closure[code.co_freevars.index("native_routes")].cell_contents
    return value if isinstance(value, list) else None


def _is_mlflow_permission_entry(entry: Any) -> bool:
    dispatch = entry.kwargs.get("dispatch") if entry.cls is BaseHTTPMiddleware else None
    return (getattr(dispatch, "__name__", None) == _DISPATCH_NAME
            and getattr(dispatch, "__module__", None) == _DISPATCH_MODULE)


def install(fastapi_app: Any) -> bool:
    """Swap MLflow's permission middleware entry for `PermissionFastPath`. False (and the
    app left as it is) when the entry is not found as expected or the stack is built."""
    entries = getattr(fastapi_app, "user_middleware", None)
    if entries is None or getattr(fastapi_app, "middleware_stack", None) is not None:
        return False
    found = [i for i, entry in enumerate(entries) if _is_mlflow_permission_entry(entry)]
    if len(found) != 1:
        _log.warning("MLflow's FastAPI permission middleware not found as expected; left unchanged")
        return False
    dispatch = entries[found[0]].kwargs["dispatch"]
    native_routes = _native_routes_of(dispatch)
    if native_routes is None:
        _log.warning("MLflow's FastAPI permission middleware has no route snapshot; left unchanged")
        return False
    entries[found[0]] = Middleware(PermissionFastPath, dispatch=dispatch, native_routes=native_routes)
    _log.info("MLflow's FastAPI permission middleware is skipped for requests it only passes on")
    return True
