"""The fast path skips MLflow's FastAPI permission middleware only where it would do nothing.

MLflow's own dispatch is the oracle: for every native FastAPI route, every Flask route,
unprotected and odd paths, with fail-closed on and off, the fast path may call the app
directly exactly when that dispatch, given an anonymous request, calls `call_next`
(anything it protects answers an anonymous request itself, with a 401 or 403).
"""

from __future__ import annotations

import asyncio
from typing import Any

import flask
import pytest
from mlflow.server import app as mlflow_flask_app
from mlflow.server import auth as mlflow_auth
from mlflow.server.fastapi_app import create_fastapi_app
from starlette.requests import Request
from starlette.responses import Response

from mlflow_k8s_auth import permission_fast_path
from mlflow_k8s_auth.permission_fast_path import PermissionFastPath, passes_through

from tests.support.routes import native_paths, scope


def _mlflow_app() -> Any:
    app = create_fastapi_app(flask.Flask("fast-path-test"))
    mlflow_auth.add_fastapi_permission_middleware(app)
    return app


def _dispatch_of(app: Any) -> Any:
    return next(m.kwargs["dispatch"] for m in app.user_middleware
                if getattr(m.kwargs.get("dispatch"), "__name__", "") == "fastapi_permission_middleware")


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _calls_next(dispatch: Any, request_scope: dict[str, Any]) -> bool:
    called: list[bool] = []

    async def call_next(request: Request) -> Response:
        called.append(True)
        return Response("inner")

    asyncio.run(dispatch(Request(dict(request_scope), _receive), call_next))
    return bool(called)


def _cases(native_routes: list[Any]) -> list[dict[str, Any]]:
    flask_rules = [(method, rule.rule.replace("<", "x").replace(">", ""))
                   for rule in mlflow_flask_app.url_map.iter_rules() for method in sorted(rule.methods or ())]
    odd = [("GET", "/health"), ("GET", "/static-files/x.js"), ("GET", "/favicon.ico"), ("GET", "/"),
           ("GET", "/gateway/"), ("OPTIONS", "/gateway/x"), ("DELETE", "/v1/traces"), ("GET", "/nope"),
           ("GET", "/v1/traces/../../api"), ("PATCH", "/ajax-api/3.0/jobs/x1/cancel"),
           ("GET", "/api/3.0/mlflow/server-info"), ("PUT", "/api/2.0/mlflow-artifacts/artifacts/x/y")]
    return [scope(path, method) for method, path in flask_rules + odd + native_paths(native_routes)]


@pytest.mark.parametrize("fail_closed", ["true", "false"])
def test_skips_exactly_what_mlflow_passes_on(fail_closed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_BASIC_AUTH_FAIL_CLOSED", fail_closed)
    # An anonymous caller, whichever authentication MLflow would use.
    monkeypatch.setattr(mlflow_auth, "_authenticate_fastapi_request", lambda request: None)
    monkeypatch.setattr(mlflow_auth, "_authenticate_custom_for_fastapi", lambda request: None)
    app = _mlflow_app()
    dispatch = _dispatch_of(app)
    native_routes = mlflow_auth._native_fastapi_routes(app)
    cases = _cases(native_routes)
    assert len(cases) > 200
    mismatches = [(c["method"], c["path"]) for c in cases
                  if passes_through(c, native_routes) != _calls_next(dispatch, c)]
    assert mismatches == []
    skipped = [c for c in cases if passes_through(c, native_routes)]
    assert len(skipped) > 100 and len(skipped) < len(cases)  # the REST API skips; native routes do not


def test_undecidable_requests_go_through_mlflow() -> None:
    native_routes = mlflow_auth._native_fastapi_routes(_mlflow_app())
    for odd in ({**scope("/api/2.0/mlflow/experiments/get"), "path": ""},
                {**scope("/api/2.0/mlflow/experiments/get"), "path": None},
                scope("/api/2.0/mlflow/experiments/get", kind="websocket"),
                {k: v for k, v in scope("/api/2.0/mlflow/experiments/get").items() if k != "method"}):
        assert passes_through(odd, native_routes) is False


def test_a_raising_question_means_mlflow_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def inner(request_scope: Any, receive: Any, send: Any) -> None:
        seen.append("app")
        await Response("inner")(request_scope, receive, send)

    async def dispatch(request: Request, call_next: Any) -> Response:
        seen.append("mlflow")
        return await call_next(request)

    def broken(path: str) -> bool:
        raise RuntimeError("boom")

    monkeypatch.setattr(mlflow_auth, "is_unprotected_route", broken)
    middleware = PermissionFastPath(inner, dispatch=dispatch, native_routes=[])
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware(scope("/api/2.0/mlflow/experiments/get"), _receive, send))
    assert seen == ["mlflow", "app"]
    assert sent[0]["status"] == 200


def test_install_swaps_mlflows_entry_once() -> None:
    app = _mlflow_app()
    dispatch = _dispatch_of(app)
    assert permission_fast_path.install(app) is True
    entries = [m for m in app.user_middleware if m.cls is PermissionFastPath]
    assert len(entries) == 1
    assert entries[0].kwargs["dispatch"] is dispatch
    # The very route list MLflow's dispatch checks, not a copy taken later.
    assert entries[0].kwargs["native_routes"] is permission_fast_path._native_routes_of(dispatch)
    assert permission_fast_path.install(app) is False  # nothing left to swap
    assert permission_fast_path.install(create_fastapi_app(flask.Flask("no-auth"))) is False


def test_install_leaves_a_built_stack_alone() -> None:
    app = _mlflow_app()
    app.middleware_stack = app.build_middleware_stack()
    assert permission_fast_path.install(app) is False
    assert not any(m.cls is PermissionFastPath for m in app.user_middleware)
