"""The memo in front of MLflow's "is this a native FastAPI route?" test gives MLflow's answers.

Checked against MLflow's own function on MLflow's real FastAPI app (every native route, the
Flask paths, odd methods and unknown paths), and on small apps for the cases where it must
not answer from memory: a route added later, a route kind it cannot vouch for, long paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flask
import pytest
from fastapi import APIRouter, FastAPI
from mlflow.server import auth as mlflow_auth
from mlflow.server.fastapi_app import create_fastapi_app
from starlette.routing import Host, Route

from mlflow_k8s_auth import route_memo
from mlflow_k8s_auth.route_memo import MAX_PATH_CHARS, NativeRouteMemo
from tests.support.routes import native_paths, scope

# MLflow's function itself, even if the plugin's app was created in this process already.
MLFLOW_MATCH: Callable[[Sequence[Any], dict[str, Any]], bool] = getattr(
    mlflow_auth._scope_matches_native_route, "__wrapped__", mlflow_auth._scope_matches_native_route
)


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, routes: Sequence[Any], request_scope: dict[str, Any]) -> bool:
        self.calls += 1
        return MLFLOW_MATCH(routes, request_scope)


@pytest.fixture(scope="module")
def mlflow_native_routes() -> list[Any]:
    return mlflow_auth._native_fastapi_routes(create_fastapi_app(flask.Flask("route-memo-test")))


def test_same_answers_as_mlflow_on_its_app(mlflow_native_routes: list[Any]) -> None:
    flask_paths = [
        ("GET", "/api/2.0/mlflow/experiments/get"), ("POST", "/api/2.0/mlflow/runs/create"),
        ("GET", "/ajax-api/2.0/mlflow/experiments/search"), ("GET", "/health"), ("GET", "/"),
        ("GET", "/static-files/index.html"), ("PUT", "/api/2.0/mlflow-artifacts/artifacts/x/y"),
    ]
    odd = [("GET", "/gateway/"), ("DELETE", "/v1/traces"), ("GET", "/ajax-api/3.0/jobs"), ("OPTIONS", "/gateway/x"),
           ("GET", "/nope"), ("GET", "/v1/traces/../../api"), ("PATCH", "/ajax-api/3.0/jobs/x1/cancel")]
    native = native_paths(mlflow_native_routes)
    assert len(native) > 20
    cases = [scope(p, m) for m, p in flask_paths + odd + native]
    cases += [scope("/gateway/x", kind="websocket"), scope("/mlflow/v1/traces", "POST", root_path="/mlflow")]
    expected = [MLFLOW_MATCH(mlflow_native_routes, case) for case in cases]
    assert any(expected) and not all(expected)

    counting = Counting()
    memo = NativeRouteMemo(counting)
    for _ in range(3):
        assert [memo(mlflow_native_routes, dict(case)) for case in cases] == expected
    assert counting.calls == len({(c["type"], c["method"], c["root_path"], c["path"]) for c in cases})


def _small_app() -> tuple[FastAPI, APIRouter]:
    app = FastAPI()
    router = APIRouter(prefix="/extra")
    router.add_api_route("/known", lambda: {}, methods=["GET"])
    app.include_router(router)
    return app, router


def test_route_added_later_is_seen() -> None:
    app, router = _small_app()
    routes = mlflow_auth._native_fastapi_routes(app)
    memo = NativeRouteMemo(MLFLOW_MATCH)
    assert memo(routes, scope("/extra/known")) is True
    assert memo(routes, scope("/extra/late")) is False

    router.add_api_route("/late", lambda: {}, methods=["GET"])
    assert MLFLOW_MATCH(routes, scope("/extra/late")) is True
    assert memo(routes, scope("/extra/late")) is True

    assert memo(routes, scope("/top")) is False
    routes.append(Route("/top", lambda r: None))
    assert memo(routes, scope("/top")) is True


def test_unvouched_route_kinds_and_long_paths_are_matched_every_time() -> None:
    app, _ = _small_app()
    counting = Counting()
    memo = NativeRouteMemo(counting)
    with_host = [*mlflow_auth._native_fastapi_routes(app), Host("internal.example", app=Route("/h", lambda r: None))]
    for _ in range(3):
        assert memo(with_host, scope("/h")) is False
    assert counting.calls == 3

    plain = mlflow_auth._native_fastapi_routes(app)
    long_path = "/extra/" + "a" * MAX_PATH_CHARS
    for _ in range(3):
        assert memo(plain, scope(long_path)) is False
    assert counting.calls == 6


def test_memo_is_bounded() -> None:
    app, _ = _small_app()
    routes = mlflow_auth._native_fastapi_routes(app)
    memo = NativeRouteMemo(MLFLOW_MATCH, max_entries=8)
    for i in range(100):
        assert memo(routes, scope(f"/unique/{i}")) is False
    assert len(memo._cache) <= 8


def test_install_wraps_mlflow_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlflow_auth, "_scope_matches_native_route", MLFLOW_MATCH)
    assert route_memo.install() is True
    installed = mlflow_auth._scope_matches_native_route
    assert isinstance(installed, NativeRouteMemo)
    assert route_memo.install() is False
    assert mlflow_auth._scope_matches_native_route is installed
