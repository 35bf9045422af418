"""End to end: the operator's own Job and Deployment serve MLflow; jobs log with their token.

One emulated cluster for the module: the real operator process (`mlflow-operator run`)
reconciles an MLflowServer; the harness runs the migration Job and the Deployment the
operator rendered as local processes (tests/e2e/kubelet.py lists every remap); the
real `mlflow` client in a Job pod logs with a projected ServiceAccount token. Tests run
in file order: the last one changes the policy and rolls the server.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import ServerPod, wait_for
from tests.e2e.emulator import EmulatorThread
from tests.e2e.stack import Stack
from tests.support.postgres import create_database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NS, OTHER_NS, NAME = "team-a", "team-b", "mlflow"
ADMIN_SA = "admin-bot"
# one worker: the machine running CI is small; everything else is the default
SPEC: dict[str, Any] = {"auth": {"adminServiceAccounts": [f"{NS}:{ADMIN_SA}"]}, "server": {"workers": 1}}
CHECKSUM = "mlflow-operator.dev/config-checksum"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    with EmulatorThread() as emulator, Stack(emulator.url, root) as stack:
        stack.start_operator([NS, OTHER_NS])
        yield stack
        # Whatever happened, no secret reached a log line and nothing crashed.
        _assert_clean_logs(stack, root)


@pytest.fixture(scope="module")
def served(stack: Stack) -> tuple[dict[str, Any], ServerPod]:
    stack.apply_server(NS, NAME, SPEC)
    return stack.bring_up(NS, NAME)


@pytest.fixture()
def as_service_account(stack: Stack, served: tuple[dict[str, Any], ServerPod],
                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Make this process a job of `namespace/name`: token file + k8s-token auth + cluster DNS."""
    status, _ = served

    def become(namespace: str, name: str, audience: str | None = None) -> str:
        stack.service_account(namespace, name)
        token = stack.cluster.request_token(namespace, name, [audience or status["audience"]], 3600)
        path = tmp_path / f"{namespace}-{name}.token"
        path.write_text(token)
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "k8s-token")
        monkeypatch.setenv("MLFLOW_K8S_TOKEN_PATH", str(path))
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        for key, value in stack.cluster.client_env().items():
            monkeypatch.setenv(key, value)
        return status["url"]

    return become


def _admin_password(stack: Stack, status: dict[str, Any]) -> str:
    secret = stack.cluster.read_object("Secret", NS, status["adminSecret"])
    assert secret is not None
    return base64.b64decode(secret["data"]["password"]).decode()


def test_operator_status_names_url_audience_and_admin_secret(stack: Stack, served: tuple[dict[str, Any], ServerPod]) -> None:
    status, pod = served
    assert status["phase"] == "Ready"
    assert status["url"] == f"http://{NAME}.{NS}.svc:5000"
    assert status["audience"] == f"https://{NAME}.{NS}.svc"
    assert status["adminSecret"]
    # what ran is what the operator rendered: its own command, app and config
    assert pod.running.prepared.argv[:4] == ["mlflow", "server", "--app-name", "k8s-auth"]
    assert CHECKSUM in pod.annotations
    jobs = stack.cluster.list(f"/apis/batch/v1/namespaces/{NS}/jobs")
    migration = [j for j in jobs if "-migrate-" in j["metadata"]["name"]]
    assert migration and all(j["status"].get("succeeded") == 1 for j in migration)


def test_job_in_allowed_namespace_logs_params_metrics_artifact(stack: Stack, served: tuple[dict[str, Any], ServerPod]) -> None:
    status, _ = served
    verdict = stack.run_job(NS, "train", service_account="trainer",
                            tracking_uri=status["url"], audience=status["audience"])
    assert verdict["ok"], verdict
    assert verdict["exit_code"] == 0


def test_job_in_other_namespace_is_forbidden(stack: Stack, served: tuple[dict[str, Any], ServerPod]) -> None:
    status, _ = served
    verdict = stack.run_job(OTHER_NS, "train-denied", service_account="trainer",
                            tracking_uri=status["url"], audience=status["audience"])
    assert not verdict["ok"]
    assert verdict["http_status"] == 403, verdict


def test_token_for_another_servers_audience_is_unauthenticated(stack: Stack, served: tuple[dict[str, Any], ServerPod]) -> None:
    status, _ = served
    stack.apply_server(NS, "other", {})
    other = wait_for("the other MLflowServer's audience", lambda: stack.status(NS, "other").get("audience"), 60)
    assert other != status["audience"]
    verdict = stack.run_job(NS, "train-wrong-audience", service_account="trainer",
                            tracking_uri=status["url"], audience=other)
    assert not verdict["ok"]
    assert verdict["http_status"] == 401, verdict


def test_admin_service_account_manages_namespace_permissions(as_service_account) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    url = as_service_account(NS, ADMIN_SA)
    admin = get_app_client("k8s-auth", tracking_uri=url)
    me = admin.whoami()
    assert me["username"] == f"system:serviceaccount:{NS}:{ADMIN_SA}"
    assert me["is_admin"] is True
    admin.set_namespace_permission(NS, "EDIT")
    assert admin.get_namespace_permission(NS) == "EDIT"

    url = as_service_account(NS, "trainer")
    user = get_app_client("k8s-auth", tracking_uri=url)
    assert user.whoami()["is_admin"] is False
    with pytest.raises(MlflowException) as denied:
        user.set_namespace_permission(NS, "MANAGE")
    assert denied.value.get_http_status_code() == 403


def test_human_admin_logs_in_with_the_generated_password(stack: Stack, served: tuple[dict[str, Any], ServerPod],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    status, pod = served
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", _admin_password(stack, status))
    # as through `kubectl port-forward`: the pod's port on 127.0.0.1
    names = [e.name for e in MlflowClient(pod.url).search_experiments()]
    assert "sample-training" in names
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    with pytest.raises(MlflowException) as denied:
        MlflowClient(pod.url).search_experiments()
    assert denied.value.get_http_status_code() == 401


def test_changing_allowed_namespaces_rolls_the_server_and_enforces_the_new_policy(
    stack: Stack, served: tuple[dict[str, Any], ServerPod]
) -> None:
    status, pod = served
    old_checksum = pod.annotations[CHECKSUM]
    stack.patch_server(NS, NAME, {"auth": {"allowedNamespaces": [NS, OTHER_NS]}})
    template = stack.wait_for_rollout_trigger(NS, NAME, pod.revision)
    assert template["metadata"]["annotations"][CHECKSUM] != old_checksum
    new_status, new_pod = stack.bring_up(NS, NAME)
    assert new_pod.revision != pod.revision
    assert pod.running.proc.poll() is not None  # the old pod is gone
    assert new_pod.url == pod.url  # same local port, as behind a Service
    # its own experiment: the default permission (READ) does not let it write into team-a's
    verdict = stack.run_job(OTHER_NS, "train-allowed-now", service_account="trainer",
                            tracking_uri=new_status["url"], audience=new_status["audience"],
                            experiment="team-b-training")
    assert verdict["ok"], verdict


def _assert_clean_logs(stack: Stack, root: Path) -> None:
    secrets = []
    for ns in (NS,):
        for secret in stack.cluster.list(f"/api/v1/namespaces/{ns}/secrets"):
            for key, value in (secret.get("data") or {}).items():
                if any(word in key for word in ("password", "secret", "token")):
                    secrets.append(base64.b64decode(value).decode(errors="replace"))
    tokens = [p.read_text() for p in root.rglob("token") if p.is_file()]
    for log in (root / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert "Traceback (most recent call last)" not in text, f"a traceback in {log.name}"
        for secret in secrets:
            assert secret not in text, f"a Secret value appears in {log.name}"
        for token in tokens:
            assert token not in text and token.split(".")[-1] not in text, f"a token appears in {log.name}"


@pytest.fixture()
def postgres_databases() -> Iterator[dict[str, str]]:
    """Two fresh PostgreSQL databases (tracking, auth) on 127.0.0.1, dropped afterwards."""
    dbs = {kind: create_database(f"e2e_{kind}") for kind in ("tracking", "auth")}
    try:
        yield {kind: db.uri for kind, db in dbs.items()}
    finally:
        for db in dbs.values():
            db.drop()


def test_external_postgres_from_secret_refs_is_migrated_and_used(
    stack: Stack, served: tuple[dict[str, Any], ServerPod], postgres_databases: dict[str, str]
) -> None:
    import psycopg2

    stack.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prod-db", "namespace": NS},
                 "data": {k: base64.b64encode(v.encode()).decode() for k, v in postgres_databases.items()}})
    stack.apply_server(NS, "prod", {
        "backendStore": {"uriSecretRef": {"name": "prod-db", "key": "tracking"}},
        "auth": {"authDatabase": {"uriSecretRef": {"name": "prod-db", "key": "auth"}}},
        "server": {"workers": 1},
    })
    try:
        status, pod = stack.bring_up(NS, "prod")
        verdict = stack.run_job(NS, "train-prod", service_account="trainer",
                                tracking_uri=status["url"], audience=status["audience"])
        assert verdict["ok"], verdict
        with psycopg2.connect(postgres_databases["tracking"]) as conn, conn.cursor() as cur:
            cur.execute("SELECT name FROM experiments")
            assert ("sample-training",) in cur.fetchall()
        with psycopg2.connect(postgres_databases["auth"]) as conn, conn.cursor() as cur:
            cur.execute("SELECT username, is_admin FROM users")
            assert (f"system:serviceaccount:{NS}:trainer", False) in cur.fetchall()
    finally:
        pod = stack.cluster.pods.pop((NS, "prod"), None)
        if pod is not None:
            pod.running.stop()  # release the databases before they are dropped
