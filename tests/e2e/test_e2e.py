"""End to end on the real control plane: the operator's own Job and Deployment serve
MLflow; jobs log with their ServiceAccount token.

The real operator process (`mlflow-operator run`) reconciles an MLflowServer; the real
Job controller runs its migration Job and the real Deployment/ReplicaSet controllers its
server, whose pods the process kubelet (tests/e2e/kubelet.py) runs sandboxed with their
securityContext; the real `mlflow` client in a Job pod logs with a projected token from
the TokenRequest API, and the server checks it with a TokenReview made as its own
rendered ServiceAccount. Tests run in file order: the last ones change the policy and
roll the server.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unique_namespace
from tests.e2e.process_runner import PodRun
from tests.e2e.stack import Stack, wait_for
from tests.support.crd import CR, install_crd
from tests.support.controlplane import ControlPlane
from tests.support.kubeapi import Kube
from tests.support.postgres import create_database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NS, OTHER_NS, NAME = unique_namespace("team-a"), unique_namespace("team-b"), "mlflow"
ADMIN_SA = "admin-bot"
# one worker: the machine running CI is small; everything else is the default
SPEC: dict[str, Any] = {"auth": {"adminServiceAccounts": [f"{NS}:{ADMIN_SA}"]}, "server": {"workers": 1}}
CHECKSUM = "mlflow-operator.dev/config-checksum"


@pytest.fixture(scope="module")
def stack(admin: Kube, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    install_crd(admin)
    for ns in (NS, OTHER_NS):
        admin.create_namespace(ns)
    try:
        with Stack(admin, control_plane.kubeconfig, root, [NS, OTHER_NS]) as stack:
            stack.start_operator([NS, OTHER_NS])
            yield stack
            # Whatever happened, no secret reached a log line and nothing crashed.
            _assert_clean_logs(stack, root)
    finally:
        for ns in (NS, OTHER_NS):
            admin.delete("v1/namespaces", None, ns)


@pytest.fixture(scope="module")
def served(stack: Stack) -> dict[str, Any]:
    stack.apply_server(NS, NAME, SPEC)
    return stack.wait_ready(NS, NAME)


def _server_run(stack: Stack, name: str = NAME) -> PodRun:
    runs = [r for r in stack.pod_runs(NS, f"{name}-") if "-migrate-" not in r.name and r.containers]
    assert len(runs) == 1, [r.name for r in runs]
    return runs[0]


def test_operator_status_names_url_audience_and_admin_secret(stack: Stack, served: dict[str, Any]) -> None:
    status = served
    assert status["phase"] == "Ready"
    assert status["url"] == f"http://{NAME}.{NS}.svc:5000"
    assert status["audience"] == f"https://{NAME}.{NS}.svc"
    assert status["adminSecret"]
    # the real Job controller ran the migration, the real Deployment controller the server
    jobs = stack.admin.list("batch/v1/jobs", NS)
    migration = [j for j in jobs if "-migrate-" in j["metadata"]["name"]]
    assert migration and all(j["status"].get("succeeded") == 1 for j in migration)
    deployment = stack.admin.get("apps/v1/deployments", NS, NAME)
    assert deployment is not None and deployment["status"]["availableReplicas"] == 1
    (pod,) = [p for p in stack.server_pods(NS, NAME) if p["status"].get("phase") == "Running"]
    assert pod["spec"]["nodeName"] == stack.node.name
    assert CHECKSUM in pod["metadata"]["annotations"]


def test_server_runs_as_rendered_in_its_sandbox(stack: Stack, served: dict[str, Any]) -> None:
    """The rendered command, as uid 10001, read-only root, no capabilities, in-cluster config."""
    run = _server_run(stack)
    (container,) = run.containers
    argv = container.prepared.argv
    command = argv[argv.index("--") + 1:]
    assert command[:4] == ["mlflow", "server", "--app-name", "k8s-auth"]
    assert "KUBECONFIG" not in container.prepared.env  # in-cluster config: its own token only
    assert container.proc is not None
    server = next(pid for pid in _descendants(container.proc.pid) if "mlflow" in _cmdline(pid))
    assert re.split(r"\s+", Path(f"/proc/{server}/uid_map").read_text().strip())[0] == "10001"
    status = Path(f"/proc/{server}/status").read_text()
    assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    root = next(line.split() for line in Path(f"/proc/{server}/mountinfo").read_text().splitlines()
                if line.split()[4] == "/")
    assert root[5].split(",")[0] == "ro"
    # its identity: the rendered ServiceAccount, allowed TokenReviews by the rendered binding
    assert run.pod["spec"]["serviceAccountName"] == "mlflow-server"
    bindings = [b for b in stack.admin.list("rbac.authorization.k8s.io/v1/clusterrolebindings")
                if {"kind": "ServiceAccount", "name": "mlflow-server", "namespace": NS} in (b.get("subjects") or [])]
    assert [b["roleRef"]["name"] for b in bindings] == ["system:auth-delegator"]


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_job_in_allowed_namespace_logs_params_metrics_artifact(stack: Stack, served: dict[str, Any]) -> None:
    verdict = stack.run_job(NS, "train", service_account="trainer",
                            tracking_uri=served["url"], audience=served["audience"])
    assert verdict["ok"], verdict
    assert verdict["succeeded"]


def test_job_in_other_namespace_is_forbidden(stack: Stack, served: dict[str, Any]) -> None:
    verdict = stack.run_job(OTHER_NS, "train-denied", service_account="trainer",
                            tracking_uri=served["url"], audience=served["audience"])
    assert not verdict["ok"]
    assert verdict["http_status"] == 403, verdict


def test_token_for_another_servers_audience_is_unauthenticated(stack: Stack, served: dict[str, Any]) -> None:
    stack.apply_server(NS, "other", {"server": {"workers": 1}})
    try:
        other = wait_for(lambda: stack.status(NS, "other").get("audience"), 60, what="the other MLflowServer's audience")
        assert other != served["audience"]
        verdict = stack.run_job(NS, "train-wrong-audience", service_account="trainer",
                                tracking_uri=served["url"], audience=other)
        assert not verdict["ok"]
        assert verdict["http_status"] == 401, verdict
    finally:
        stack.admin.delete(CR, NS, "other")


@pytest.fixture()
def as_service_account(stack: Stack, served: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Make this process a job of `namespace/name`: TokenRequest token + k8s-token auth + cluster DNS."""
    def become(namespace: str, name: str) -> str:
        stack.service_account(namespace, name)
        path = tmp_path / f"{namespace}-{name}.token"
        path.write_text(stack.admin.token_for(namespace, name, [served["audience"]]))
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "k8s-token")
        monkeypatch.setenv("MLFLOW_K8S_TOKEN_PATH", str(path))
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        for key, value in stack.client_env().items():
            monkeypatch.setenv(key, value)
        return str(served["url"])

    return become


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


def _admin_password(stack: Stack, status: dict[str, Any]) -> str:
    secret = stack.admin.get("v1/secrets", NS, status["adminSecret"])
    assert secret is not None
    return base64.b64decode(secret["data"]["password"]).decode()


def test_human_admin_logs_in_with_the_generated_password(stack: Stack, served: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    for key in ("MLFLOW_TRACKING_AUTH", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", _admin_password(stack, served))
    # as through `kubectl port-forward svc/mlflow 5000`
    with stack.port_forward(NS, NAME, 5000) as forward:
        names = [e.name for e in MlflowClient(forward.url).search_experiments()]
        assert "sample-training" in names
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
        with pytest.raises(MlflowException) as denied:
            MlflowClient(forward.url).search_experiments()
        assert denied.value.get_http_status_code() == 401


def test_changing_allowed_namespaces_rolls_the_server_and_enforces_the_new_policy(
    stack: Stack, served: dict[str, Any]
) -> None:
    old = _server_run(stack)
    old_checksum = old.pod["metadata"]["annotations"][CHECKSUM]
    stack.patch_server(NS, NAME, {"auth": {"allowedNamespaces": [NS, OTHER_NS]}})

    def rolled() -> dict[str, Any] | None:
        pods = [p for p in stack.server_pods(NS, NAME) if p["metadata"]["annotations"][CHECKSUM] != old_checksum]
        ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in (p.get("status") or {}).get("conditions") or [])]
        return ready[0] if ready and old.stopping.is_set() else None

    new_pod = wait_for(rolled, 180, what="the Deployment controller to roll the server", interval=0.5)
    assert new_pod["metadata"]["uid"] != old.pod["metadata"]["uid"]
    assert old.containers[0].exit_code() is not None  # the old pod's process is gone (Recreate)
    status = stack.wait_ready(NS, NAME)
    # its own experiment: the default permission (READ) does not let it write into team-a's
    verdict = stack.run_job(OTHER_NS, "train-allowed-now", service_account="trainer",
                            tracking_uri=status["url"], audience=status["audience"], experiment="team-b-training")
    assert verdict["ok"], verdict


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
    stack: Stack, served: dict[str, Any], postgres_databases: dict[str, str]
) -> None:
    import psycopg2

    stack.admin.create("v1/secrets", {"metadata": {"name": "prod-db"}, "data": {
        k: base64.b64encode(v.encode()).decode() for k, v in postgres_databases.items()}}, NS)
    stack.apply_server(NS, "prod", {
        "backendStore": {"uriSecretRef": {"name": "prod-db", "key": "tracking"}},
        "auth": {"authDatabase": {"uriSecretRef": {"name": "prod-db", "key": "auth"}}},
        "server": {"workers": 1},
    })
    try:
        status = stack.wait_ready(NS, "prod")
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
        # The garbage collector removes its Deployment and pods; the node stops their
        # processes, which releases the databases before they are dropped.
        stack.admin.delete(CR, NS, "prod")
        wait_for(lambda: not stack.pod_runs(NS, "prod-"), 120, what="the prod server's pods to stop", interval=0.5)


def _assert_clean_logs(stack: Stack, root: Path) -> None:
    secrets = []
    for secret in stack.admin.list("v1/secrets", NS):
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
