"""Runs carry the identity that created them (`[k8s_auth] attribute_runs`, default on).

Two real servers without workspaces (SQLite is enough here): one with the default, one
with `attribute_runs = false`. The real MLflow client plays a job (`k8s-token`) that
claims to be `root`, as MLflow's client does in most containers; a human logs in with
Basic auth and claims to be someone else.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from tests.plugin.cluster import PluginCluster
from tests.plugin.conftest import ADMIN_PASSWORD, ADMIN_USER, MlflowServer, render_ini
from tests.plugin.test_server import basic


@pytest.fixture(scope="module")
def servers(cluster: PluginCluster, module_dir: Path) -> Iterator[dict[str, MlflowServer]]:
    server_ns = cluster.namespace("attribution-server")
    kubeconfig = cluster.server_kubeconfig(module_dir / "kubeconfig", server_ns)
    started: dict[str, MlflowServer] = {}
    try:
        for mode in ("on", "off"):
            workdir = module_dir / mode
            ini = render_ini(f"sqlite:///{workdir}/auth.db", kubeconfig, issuers=cluster.plane.issuer,
                             **({"attribute_runs": "false"} if mode == "off" else {}))
            ini = ini.replace("default_permission = READ", "default_permission = EDIT")
            started[mode] = MlflowServer(workdir, ini, f"sqlite:///{workdir}/mlflow.db").start()
        yield started
    finally:
        for server in started.values():
            server.stop()


def job_run(server: MlflowServer, token_file: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "k8s-token")
    monkeypatch.setenv("MLFLOW_K8S_TOKEN_PATH", str(token_file))
    client = MlflowClient(tracking_uri=server.url)
    run = client.create_run("0", tags={"mlflow.user": "root"})
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH")
    return admin_get_run(server, run.info.run_id)


def admin_get_run(server: MlflowServer, run_id: str) -> dict:
    got = requests.get(f"{server.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id},
                       headers=basic(ADMIN_USER, ADMIN_PASSWORD), timeout=30)
    assert got.status_code == 200, got.text
    return got.json()["run"]


def human_run(server: MlflowServer) -> dict:
    created = requests.post(f"{server.url}/api/2.0/mlflow/runs/create", headers=basic(ADMIN_USER, ADMIN_PASSWORD),
                            json={"experiment_id": "0", "user_id": "someone-else",
                                  "tags": [{"key": "mlflow.user", "value": "someone-else"}]}, timeout=30)
    assert created.status_code == 200, created.text
    return created.json()["run"]


def user_tag(run: dict) -> str | None:
    return next((tag["value"] for tag in run["data"].get("tags", []) if tag["key"] == "mlflow.user"), None)


def test_runs_carry_the_service_account_and_the_login_name(
    servers: dict[str, MlflowServer], cluster: PluginCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    namespace = cluster.namespace("attribution-jobs")
    token_file = tmp_path / "token"
    token_file.write_text(cluster.token(namespace, "trainer"))
    job = job_run(servers["on"], token_file, monkeypatch)
    expected = f"system:serviceaccount:{namespace}:trainer"
    assert (job["info"]["user_id"], user_tag(job)) == (expected, expected)
    human = human_run(servers["on"])
    assert (human["info"]["user_id"], user_tag(human)) == (ADMIN_USER, ADMIN_USER)


def test_attribution_can_be_turned_off(
    servers: dict[str, MlflowServer], cluster: PluginCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    namespace = cluster.namespace("attribution-off")
    token_file = tmp_path / "token"
    token_file.write_text(cluster.token(namespace, "trainer"))
    job = job_run(servers["off"], token_file, monkeypatch)
    assert user_tag(job) == "root"  # what the client sent
    human = human_run(servers["off"])
    assert (human["info"]["user_id"], user_tag(human)) == ("someone-else", "someone-else")
