"""What render_all produces for external PostgreSQL actually runs: the migration Job's two
containers upgrade real databases, then the server pod starts from the same manifests and
serves an authenticated request and a logged run.

The end-to-end suite (tests/e2e) covers the default sqlite setup through the operator;
this covers the rendering choices specific to external databases: URIs carried by the
config Secret, `$(VAR)` expansion in the Job, and '%' in a URL-encoded password surviving
MLflow's ini interpolation. Pods run through the e2e kubelet harness (tests/e2e/kubelet.py),
fed straight from the rendered objects instead of an API server.
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
from tests.e2e.kubelet import Kubelet
from tests.e2e.processes import run_pod, start_pod, wait_ready
from tests.support.postgres import create_database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PG = "postgresql://postgres:{password}@127.0.0.1:5432/{db}"
# trust auth ignores the password, so it can be as awkward as real ones: '@' and '%'
# must be URL-encoded in the URI, and the '%' then must survive configparser.
PASSWORD = "p%40ss%25word"
REF = ServerRef("pg-demo", "team-a", "uid-pg-demo")
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


def _kubelet(root: Path, objects: list[dict[str, Any]]) -> Kubelet:
    stored = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o
              for o in objects if o["kind"] == "Secret"}

    def read_object(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return stored.get((kind, namespace, name))

    def no_tokens(*_: Any) -> str:
        return "unused"  # these requests use HTTP Basic; no TokenReview happens

    return Kubelet(root, read_object, no_tokens, api_server="http://127.0.0.1:9")


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
    databases: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracking_db, auth_db = databases
    spec = parse_spec({
        "backendStore": {"uriSecretRef": {"name": "db"}},
        "auth": {"authDatabase": {"uriSecretRef": {"name": "auth-db"}}},
        "server": {"workers": 1},
    })
    uris = StoreUris(
        backend_store=PG.format(password=PASSWORD, db=tracking_db),
        auth_database=PG.format(password=PASSWORD, db=auth_db),
    )
    objects = render_all(REF, spec, GENERATED, uris)
    kubelet = _kubelet(tmp_path, objects)
    logs = tmp_path / "logs"

    job = next(o for o in objects if o["kind"] == "Job")
    plan = kubelet.prepare(job["metadata"]["name"], REF.namespace, job["spec"]["template"]["spec"])
    code, log = run_pod(plan, logs, timeout=180)
    assert code == 0, log[-3000:]
    assert {"experiments", "runs", "alembic_version"} <= _tables(tracking_db)
    assert {"users", "experiment_permissions"} <= _tables(auth_db)

    deployment = next(o for o in objects if o["kind"] == "Deployment")
    plan = kubelet.prepare(f"{names.deployment_name(REF)}-0", REF.namespace,
                           deployment["spec"]["template"]["spec"])
    server = start_pod(plan, logs, timeout=60)
    try:
        wait_ready(server, timeout=120)
        # MLflow's job execution is on by default in MLflow; the operator turns it off, so
        # the pod runs the server workers and no huey job runner next to them.
        commands = _pod_commands(server.proc.pid)
        assert any("uvicorn" in c for c in commands), commands
        assert not [c for c in commands if "mlflow.server.jobs" in c], commands
        url = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
        service_host = f"{names.service_dns(REF)}:{spec.service.port}"
        admin = (spec.auth.admin_username, GENERATED.admin_password)
        assert _get(url, service_host, admin) == 200
        assert _get(url, "attacker.example:5000", admin) in (400, 403)  # DNS rebinding guard
        assert _get(url, service_host, ("admin", "wrong")) == 401
        assert _get(url, service_host, None) == 401

        import mlflow

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
        client = mlflow.MlflowClient(tracking_uri=server.url)
        experiment = client.create_experiment("render-runs")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "loss", 0.5)
        artifact = tmp_path / "notes.txt"
        artifact.write_text("proxied to the volume")
        client.log_artifact(run.info.run_id, str(artifact))
        assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
        stored = list((tmp_path).rglob("notes.txt"))
        assert any("artifacts" in str(p) for p in stored), stored
    finally:
        server.stop()
    assert "Adm1n-pw-long-enough" not in server.log() and PASSWORD not in server.log()


def test_job_execution_turned_on_starts_mlflows_job_runner(tmp_path: Path) -> None:
    """The positive control of the check above: the spec field really reaches MLflow."""
    ref = ServerRef("jobs-demo", "team-a", "uid-jobs-demo")
    spec = parse_spec({"server": {"workers": 1, "jobExecution": {"enabled": True}}})
    objects = render_all(ref, spec, GENERATED)  # sqlite on the volume
    kubelet = _kubelet(tmp_path, objects)
    logs = tmp_path / "logs"
    job = next(o for o in objects if o["kind"] == "Job")
    code, log = run_pod(kubelet.prepare(job["metadata"]["name"], ref.namespace, job["spec"]["template"]["spec"]),
                        logs, timeout=180)
    assert code == 0, log[-3000:]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    server = start_pod(kubelet.prepare(f"{names.deployment_name(ref)}-0", ref.namespace,
                                       deployment["spec"]["template"]["spec"]), logs, timeout=60)
    try:
        wait_ready(server, timeout=120)
        deadline = time.monotonic() + 30
        while not [c for c in _pod_commands(server.proc.pid) if "mlflow.server.jobs" in c]:
            assert time.monotonic() < deadline, _pod_commands(server.proc.pid)
            time.sleep(0.5)
    finally:
        server.stop()
