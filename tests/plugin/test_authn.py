"""`authenticate_request` in-process, the way MLflow's hooks call it (Flask request context),
with the real auth store (SQLite) and the real API server (reached as the server's own
ServiceAccount, through the fault proxy)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import flask
import pytest
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
from werkzeug.datastructures import Authorization

from mlflow_k8s_auth import authn, runtime
from mlflow_k8s_auth.config import load_config
from mlflow_k8s_auth.responses import CHALLENGE_BEARER_ONLY
from tests.plugin.cluster import PluginCluster
from tests.plugin.conftest import Postgres, render_ini

app = flask.Flask(__name__)


Installer = Callable[..., SqlAlchemyStore]


@pytest.fixture(scope="module")
def jobs(cluster: PluginCluster) -> str:
    return cluster.namespace("jobs")


@pytest.fixture(scope="module")
def server_kubeconfig(cluster: PluginCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cluster.server_kubeconfig(tmp_path_factory.mktemp("authn") / "kc", cluster.namespace("server"))


@pytest.fixture
def install(server_kubeconfig: Path, tmp_path: Path) -> Iterator[Installer]:
    def make(allow_basic: bool = True, database_uri: str | None = None) -> SqlAlchemyStore:
        uri = database_uri or f"sqlite:///{tmp_path}/auth.db"
        # Basic auth goes through MLflow's own module-level store, as in the server.
        from mlflow.server.auth import store

        store.init_db(uri)
        ini = tmp_path / "auth.ini"
        ini.write_text(render_ini(uri, server_kubeconfig, allow_basic_auth=str(allow_basic).lower()))
        runtime.install(runtime.build_runtime(load_config(ini), store))
        return store

    yield make
    runtime._runtime = None


def call(headers: dict[str, str], path: str = "/api/2.0/mlflow/experiments/get") -> Authorization | flask.Response:
    with app.test_request_context(path, headers=headers):
        first = authn.authenticate_request()
        assert authn.authenticate_request() is first  # memoised per request
        return first


def test_basic_disabled_gives_bearer_only_challenge(install: Installer) -> None:
    install(allow_basic=False).create_user("alice", "alice-password-123")
    result = call({"Authorization": "Basic " + base64.b64encode(b"alice:alice-password-123").decode()})
    assert isinstance(result, flask.Response) and result.status_code == 401
    assert result.headers["WWW-Authenticate"] == CHALLENGE_BEARER_ONLY
    assert "Basic auth is disabled" in result.get_json()["message"]


def test_gateway_routes_read_the_mlflow_header(install: Installer, cluster: PluginCluster, jobs: str) -> None:
    install()
    token = cluster.token(jobs, "agent")
    headers = {"Authorization": "Bearer sk-upstream-provider-key", "X-MLflow-Authorization": f"Bearer {token}"}
    result = call(headers, "/gateway/openai/v1/chat/completions")
    assert isinstance(result, Authorization) and result.username == f"system:serviceaccount:{jobs}:agent"
    assert call(headers).status_code == 401  # elsewhere the standard header counts


def test_internal_gateway_token(install: Installer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Server-spawned job processes send it as the password for an existing user, and it
    # is accepted on gateway routes only (never a master password elsewhere).
    monkeypatch.setenv("_MLFLOW_INTERNAL_GATEWAY_AUTH_TOKEN", "internal-token-value")
    install().create_user("scorer", "scorer-password-123")
    headers = {"X-MLflow-Authorization": "Basic " + base64.b64encode(b"scorer:internal-token-value").decode()}
    result = call(headers, "/gateway/x")
    assert isinstance(result, Authorization) and result.username == "scorer"
    headers = {"Authorization": headers["X-MLflow-Authorization"]}
    assert call(headers).status_code == 401
    ghost = {"X-MLflow-Authorization": "Basic " + base64.b64encode(b"ghost:internal-token-value").decode()}
    assert call(ghost, "/gateway/x").status_code == 401


def test_human_basic_login(install: Installer) -> None:
    install().create_user("alice", "alice-password-123")
    good = call({"Authorization": "Basic " + base64.b64encode(b"alice:alice-password-123").decode()})
    assert isinstance(good, Authorization) and good.username == "alice"
    bad = call({"Authorization": "Basic " + base64.b64encode(b"alice:wrong-password").decode()})
    assert bad.status_code == 401


@pytest.mark.slow
def test_user_store_outage_is_503_not_500(
    install: Installer, cluster: PluginCluster, jobs: str, fresh_databases: Callable[[], Postgres]
) -> None:
    db = fresh_databases()
    install(database_uri=db.uri)
    token = cluster.token(jobs, "unlucky")
    db.drop()  # the auth database goes away under the running server
    result = call({"Authorization": f"Bearer {token}"})
    assert isinstance(result, flask.Response) and result.status_code == 503
    assert result.headers["Retry-After"]
