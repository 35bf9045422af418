"""What render_all produces for external PostgreSQL actually runs: the migration Job's two
containers upgrade real databases, then the server pod starts from the same manifests and
serves an authenticated request and a logged run.

The end-to-end suite (tests/e2e) covers the default sqlite setup through the operator;
this covers the rendering choices specific to external databases: URIs carried by the
config Secret, `$(VAR)` expansion in the Job, and '%' in a URL-encoded password surviving
MLflow's ini interpolation. The rendered objects are created in a namespace of the real
control plane (without the operator: no ownerReferences, no ClusterRoleBinding, as these
requests use HTTP Basic); the real Job and Deployment controllers make the pods and the
e2e process kubelet (tests/e2e/kubelet.py) runs them.
"""

from __future__ import annotations

import base64
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from mlflow_operator import names
from mlflow_operator.model import GeneratedSecrets, ServerRef, StoreUris, parse_spec
from mlflow_operator.render import render_all
from tests.e2e.process_runner import PodRun
from tests.e2e.stack import Stack, wait_for
from tests.support.controlplane import ControlPlane
from tests.support.kubeapi import Kube, resource_of
from tests.support.postgres import create_database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PG = "postgresql://postgres:{password}@127.0.0.1:5432/{db}"
# trust auth ignores the password, so it can be as awkward as real ones: '@' and '%'
# must be URL-encoded in the URI, and the '%' then must survive configparser.
PASSWORD = "p%40ss%25word"
GENERATED = GeneratedSecrets(flask_secret_key=secrets.token_hex(32), admin_password="Adm1n-pw-long-enough")


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    dbs = (create_database("render_runs"), create_database("render_runs_auth"))
    yield tuple(db.name for db in dbs)
    for db in dbs:
        db.drop()


def _tables(db: str) -> set[str]:
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def _run_rendered(stack: Stack, objects: list[dict[str, Any]]) -> PodRun:
    """Create what the operator would (migration Job first), wait for the server's pod."""
    by_kind: dict[str, dict[str, Any]] = {}
    for obj in objects:
        if obj["kind"] == "ClusterRoleBinding":
            continue
        obj = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "ownerReferences"}}
        by_kind[obj["kind"]] = obj
        if obj["kind"] != "Deployment":
            stack.admin.create(resource_of(obj), obj)
    job, deployment = by_kind["Job"], by_kind["Deployment"]
    ok, log = stack.wait_job(job["metadata"]["namespace"], job["metadata"]["name"])
    assert ok, log[-3000:]
    stack.admin.create(resource_of(deployment), deployment)
    namespace, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
    wait_for(lambda: (stack.admin.get(
        "apps/v1/deployments", namespace, name).get("status") or {}).get("availableReplicas") == 1, 180, what="the rendered Deployment to be available", interval=0.5)
    (run,) = [r for r in stack.pod_runs(namespace, f"{name}-") if "-migrate-" not in r.name]
    return run


def _get(url: str, host: str, auth: tuple[str, str] | None) -> int:
    headers = {"Host": host}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code


def _pod_commands(pgid: int) -> list[str]:
    """Command lines of every live process of a pod (the harness gives each its own group)."""
    commands = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                commands.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return commands


def test_rendered_job_migrates_postgres_and_the_rendered_server_serves_it(
    databases: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    admin: Kube, control_plane: ControlPlane, namespace: str,
) -> None:
    tracking_db, auth_db = databases
    ref = ServerRef("pg-demo", namespace, "uid-pg-demo")
    spec = parse_spec({
        "backendStore": {"uriSecretRef": {"name": "db"}},
        "auth": {"authDatabase": {"uriSecretRef": {"name": "auth-db"}}},
        "server": {"workers": 1},
    })
    uris = StoreUris(
        backend_store=PG.format(password=PASSWORD, db=tracking_db),
        auth_database=PG.format(password=PASSWORD, db=auth_db),
    )
    objects = render_all(ref, spec, GENERATED, uris)
    with Stack(admin, control_plane.kubeconfig, tmp_path, [namespace]) as stack:
        server = _run_rendered(stack, objects)
        assert {"experiments", "runs", "alembic_version"} <= _tables(tracking_db)
        assert {"users", "experiment_permissions"} <= _tables(auth_db)
        # MLflow's job execution is on by default in MLflow; the operator turns it off, so
        # the pod runs the server workers and no huey job runner next to them.
        commands = _pod_commands(server.containers[0].proc.pid)
        assert any("uvicorn" in c for c in commands), commands
        assert not [c for c in commands if "mlflow.server.jobs" in c], commands
        with stack.port_forward(namespace, names.service_name(ref), spec.service.port) as forward:
            url = f"{forward.url}/api/2.0/mlflow/experiments/search?max_results=1"
            service_host = f"{names.service_dns(ref)}:{spec.service.port}"
            admin_login = (spec.auth.admin_username, GENERATED.admin_password)
            assert _get(url, service_host, admin_login) == 200
            assert _get(url, "attacker.example:5000", admin_login) in (400, 403)  # DNS rebinding guard
            assert _get(url, service_host, ("admin", "wrong")) == 401
            assert _get(url, service_host, None) == 401

            import mlflow

            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin_login[0])
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_login[1])
            client = mlflow.MlflowClient(tracking_uri=forward.url)
            experiment = client.create_experiment("render-runs")
            run = client.create_run(experiment)
            client.log_metric(run.info.run_id, "loss", 0.5)
            artifact = tmp_path / "notes.txt"
            artifact.write_text("proxied to the volume")
            client.log_artifact(run.info.run_id, str(artifact))
            assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
        stored = list((tmp_path / "pvc").rglob("notes.txt"))
        assert any("artifacts" in str(p) for p in stored), stored
        log = stack.runner.logs(namespace, server.name)
    # leaving the Stack stopped the server: the databases can be dropped
    assert "Adm1n-pw-long-enough" not in log and PASSWORD not in log


def test_job_execution_turned_on_starts_mlflows_job_runner(
    tmp_path: Path, admin: Kube, control_plane: ControlPlane, namespace: str,
) -> None:
    """The positive control of the check above: the spec field really reaches MLflow."""
    ref = ServerRef("jobs-demo", namespace, "uid-jobs-demo")
    spec = parse_spec({"server": {"workers": 1, "jobExecution": {"enabled": True}}})
    objects = render_all(ref, spec, GENERATED)  # sqlite on the volume
    with Stack(admin, control_plane.kubeconfig, tmp_path, [namespace]) as stack:
        server = _run_rendered(stack, objects)
        pid = server.containers[0].proc.pid
        deadline = time.monotonic() + 30
        while not [c for c in _pod_commands(pid) if "mlflow.server.jobs" in c]:
            assert time.monotonic() < deadline, _pod_commands(pid)
            time.sleep(0.5)
