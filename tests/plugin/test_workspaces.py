"""Namespaces as MLflow workspaces, Kubernetes RBAC as the authorizer, runs attributed to
their ServiceAccount: a real `mlflow server --app-name k8s-auth --enable-workspaces` on
fresh PostgreSQL databases, against the real API server, with the real MLflow client.

One server for the module (one worker, so SubjectAccessReview counts are exact). Its own
ServiceAccount may create TokenReviews and SubjectAccessReviews (system:auth-delegator)
and list/watch namespaces; both go through the fault proxy that counts them. The teams'
rights are real RoleBindings to Kubernetes' own `view` and `edit`, into which
kube-controller-manager aggregates the chart's ClusterRoles on API group
`mlflow.kubeflow.org` (`kubectl create rolebinding --clusterrole=view`, as the README says).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.conftest import unique_namespace
from tests.plugin.cluster import PluginCluster, wait_for
from tests.plugin.conftest import ADMIN_PASSWORD, ADMIN_USER, MlflowServer, Postgres, render_ini
from tests.plugin.test_server import basic, bearer
from tests.support.kubectl import Kubectl

SARS = r"/apis/authorization.k8s.io/v1/subjectaccessreviews$"
CLUSTER_ROLES = "rbac.authorization.k8s.io/v1/clusterroles"
CLUSTER_ROLE_BINDINGS = "rbac.authorization.k8s.io/v1/clusterrolebindings"
ROLE_BINDINGS = "rbac.authorization.k8s.io/v1/rolebindings"
GROUP = "mlflow.kubeflow.org"
RESOURCES = ["experiments", "registeredmodels", "jobs"]
# Short TTLs so the test can watch both run out; the same value for both, so a change of
# RBAC in either direction shows within it.
TTL_SECONDS = 4


@dataclass
class Env:
    cluster: PluginCluster
    server: MlflowServer
    ns: dict[str, str]
    label: tuple[str, str]
    roles: dict[str, str]  # view | edit -> ClusterRole name
    artifacts: Path
    kubectl: Kubectl

    def token(self, team: str, name: str) -> str:
        return self.cluster.token(self.ns[team], name)

    def user(self, team: str, name: str) -> str:
        return f"system:serviceaccount:{self.ns[team]}:{name}"

    def bind(self, team: str, role: str, subject_team: str, subject: str) -> str:
        name = unique_namespace(f"{role}-{subject}")
        self.cluster.admin.create(ROLE_BINDINGS, {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": self.roles[role]},
            "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": self.ns[subject_team]}],
        }, namespace=self.ns[team])
        return name

    def sars(self) -> int:
        return self.cluster.proxy.count("POST", SARS)


def _chart_roles(cluster: PluginCluster, prefix: str, tmp_path: Path) -> list[str]:
    """The chart's <fullname>:view|edit|admin ClusterRoles (templates/mlflow-roles.yaml), created
    as `helm install` would, then aggregated by kube-controller-manager into Kubernetes' own
    view/edit/admin: the teams are bound to those, as the README tells."""
    from tests.chart import helm as h

    roles = [o for o in h.template(tmp_path, None, namespace=prefix, release=prefix)
             if o["kind"] == "ClusterRole" and any(k.startswith("rbac.authorization.k8s.io/aggregate-to-")
                                                   for k in o["metadata"].get("labels", {}))]
    assert sorted(o["metadata"]["name"].rpartition(":")[2] for o in roles) == ["admin", "edit", "view"]
    for role in roles:
        cluster.admin.create(CLUSTER_ROLES, role)

    def aggregated(name: str) -> bool:
        rules = (cluster.admin.get(CLUSTER_ROLES, None, name) or {}).get("rules") or []
        return any(GROUP in rule.get("apiGroups", []) for rule in rules)

    wait_for(lambda: all(aggregated(r) for r in ("view", "edit", "admin")), timeout=60,
             what="Kubernetes' view/edit/admin to aggregate the MLflow rules")
    return [o["metadata"]["name"] for o in roles]


def _server_rbac(cluster: PluginCluster, server_ns: str, prefix: str) -> None:
    """What the server's ServiceAccount needs for the workspace provider, and nothing more."""
    admin = cluster.admin
    admin.create(CLUSTER_ROLES, {"metadata": {"name": f"{prefix}-namespaces"},
                                 "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}]})
    admin.create(CLUSTER_ROLE_BINDINGS, {
        "metadata": {"name": f"{prefix}-namespaces"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{prefix}-namespaces"},
        "subjects": [{"kind": "ServiceAccount", "name": "mlflow-server", "namespace": server_ns}]})


@pytest.fixture(scope="module")
def env(cluster: PluginCluster, module_dir: Path, fresh_databases: Callable[[], Postgres]) -> Iterator[Env]:
    prefix = unique_namespace("ws")
    label = ("mlflow-test.dev/tenants", prefix)
    ns = {team: cluster.namespace(team) for team in ("team-a", "team-b", "server")}
    for team in ("team-a", "team-b"):
        cluster.admin.patch("v1/namespaces", None, ns[team], {"metadata": {"labels": {label[0]: label[1]}}})
    chart_roles = _chart_roles(cluster, prefix, module_dir)
    _server_rbac(cluster, ns["server"], prefix)
    roles = {"view": "view", "edit": "edit"}  # Kubernetes' own, with the chart's MLflow rules
    kubeconfig = cluster.server_kubeconfig(module_dir / "kubeconfig", ns["server"])
    ini = render_ini(
        fresh_databases().uri, kubeconfig, issuers=cluster.plane.issuer,
        workspaces="namespaces", workspace_namespace_selector=f"{label[0]}={label[1]}",
        authorization="kubernetes", authorization_allow_ttl_seconds=TTL_SECONDS,
        authorization_deny_ttl_seconds=TTL_SECONDS, tokenreview_timeout_seconds=2,
    )
    server = MlflowServer(module_dir, ini, fresh_databases().uri,
                          extra_args=["--enable-workspaces", "--workspace-store-uri", "k8s-namespaces://"]).start()
    state = Env(cluster, server, ns, label, roles, module_dir / "artifacts",
                Kubectl(cluster.plane.kubeconfig, module_dir))
    for team in ("team-a", "team-b"):
        state.bind(team, "edit", team, "trainer")
    try:
        yield state
    finally:
        server.stop()
        for name in (*chart_roles, f"{prefix}-namespaces"):
            cluster.admin.delete(CLUSTER_ROLES, None, name)
        cluster.admin.delete(CLUSTER_ROLE_BINDINGS, None, f"{prefix}-namespaces")
    log = server.log()
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture
def as_job(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], MlflowClient]:
    """The real MLflow client as a job of `team` running as ServiceAccount `name` (k8s-token)."""
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "k8s-token")
    monkeypatch.delenv("MLFLOW_WORKSPACE", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    def client(team: str, name: str) -> MlflowClient:
        path = tmp_path / f"{team}-{name}.token"
        path.write_text(env.token(team, name))
        monkeypatch.setenv("MLFLOW_K8S_TOKEN_PATH", str(path))
        return MlflowClient(tracking_uri=env.server.url)

    return client


def admin_get(env: Env, path: str, workspace: str | None = None, **params: object) -> requests.Response:
    headers = basic(ADMIN_USER, ADMIN_PASSWORD)
    if workspace:
        headers["X-MLFLOW-WORKSPACE"] = workspace
    return requests.get(env.server.url + path, headers=headers, params=params, timeout=30)


def sa_get(env: Env, token: str, path: str, workspace: str | None = None, **params: object) -> requests.Response:
    headers = bearer(token)
    if workspace:
        headers["X-MLFLOW-WORKSPACE"] = workspace
    return requests.get(env.server.url + path, headers=headers, params=params, timeout=30)


def workspace_names(response: requests.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {w["name"] for w in response.json().get("workspaces", [])}


@pytest.fixture(scope="module")
def team_a_run(env: Env, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """team-a's job: an experiment and a run with a metric and an artifact, no workspace set."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        token_file = tmp_path_factory.mktemp("job") / "token"
        token_file.write_text(env.token("team-a", "trainer"))
        for key, value in {"MLFLOW_TRACKING_AUTH": "k8s-token", "MLFLOW_K8S_TOKEN_PATH": str(token_file),
                           "MLFLOW_TRACKING_URI": env.server.url}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("MLFLOW_WORKSPACE", raising=False)
        client = MlflowClient(tracking_uri=env.server.url)
        experiment_id = client.create_experiment(f"{env.ns['team-a']}-training")
        run = client.create_run(experiment_id, tags={"mlflow.user": "root"})
        client.log_metric(run.info.run_id, "loss", 0.5)
        artifact = token_file.parent / "model.txt"
        artifact.write_text("weights")
        client.log_artifact(run.info.run_id, str(artifact))
        client.set_terminated(run.info.run_id)
        return {"experiment_id": experiment_id, "run_id": run.info.run_id}
    finally:
        monkeypatch.undo()


def test_team_a_job_logs_in_its_own_workspace(env: Env, team_a_run: dict[str, str]) -> None:
    team_a = env.ns["team-a"]
    got = admin_get(env, "/api/2.0/mlflow/runs/get", team_a, run_id=team_a_run["run_id"])
    assert got.status_code == 200, got.text
    run = got.json()["run"]
    trainer = env.user("team-a", "trainer")
    assert run["info"]["user_id"] == trainer  # not the client's OS user
    assert {"key": "mlflow.user", "value": trainer} in run["data"]["tags"]
    experiment = admin_get(env, "/api/2.0/mlflow/experiments/get", team_a,
                           experiment_id=team_a_run["experiment_id"]).json()["experiment"]
    assert f"/workspaces/{team_a}/" in experiment["artifact_location"]
    stored = list(env.artifacts.glob(f"workspaces/{team_a}/**/model.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "weights"
    # The experiment lives in team-a's workspace, not in `default`.
    missing = admin_get(env, "/api/2.0/mlflow/experiments/get", "default", experiment_id=team_a_run["experiment_id"])
    assert missing.status_code == 404, missing.text


def test_team_b_cannot_see_read_or_write(env: Env, team_a_run: dict[str, str], as_job: Callable[..., MlflowClient],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_WORKSPACE", env.ns["team-a"])
    client = as_job("team-b", "trainer")
    assert client.search_experiments() == []
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        client.get_experiment(team_a_run["experiment_id"])
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        client.get_run(team_a_run["run_id"])
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        client.log_metric(team_a_run["run_id"], "loss", 9.9)
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        client.create_experiment(f"{env.ns['team-b']}-intruder")
    # In its own workspace team-b works, and sees nothing of team-a's there either.
    monkeypatch.delenv("MLFLOW_WORKSPACE")
    own = as_job("team-b", "trainer")
    assert [e.name for e in own.search_experiments()] in ([], ["Default"])
    own.create_experiment(f"{env.ns['team-b']}-own")


def _reader_can_read(env: Env, token: str, experiment_id: str) -> bool:
    answer = sa_get(env, token, "/api/2.0/mlflow/experiments/get", env.ns["team-a"], experiment_id=experiment_id)
    assert answer.status_code in (200, 403), answer.text
    return answer.status_code == 200


def test_rolebinding_lets_team_b_read_not_write_until_deleted(env: Env, team_a_run: dict[str, str]) -> None:
    token = env.token("team-b", "reader")
    experiment_id = team_a_run["experiment_id"]
    assert not _reader_can_read(env, token, experiment_id)
    binding = "team-b-reads"
    env.kubectl("-n", env.ns["team-a"], "create", "rolebinding", binding, "--clusterrole=view",
                f"--serviceaccount={env.ns['team-b']}:reader")
    started = time.monotonic()
    wait_for(lambda: _reader_can_read(env, token, experiment_id), timeout=TTL_SECONDS + 10,
             what="the new RoleBinding to let team-b's reader read")
    granted_after = time.monotonic() - started
    write = requests.post(env.server.url + "/api/2.0/mlflow/runs/log-metric",
                          headers={**bearer(token), "X-MLFLOW-WORKSPACE": env.ns["team-a"]},
                          json={"run_id": team_a_run["run_id"], "key": "loss", "value": 1, "timestamp": 0}, timeout=30)
    assert write.status_code == 403, write.text
    searched = requests.post(env.server.url + "/api/2.0/mlflow/experiments/search",
                             headers={**bearer(token), "X-MLFLOW-WORKSPACE": env.ns["team-a"]},
                             json={"max_results": 100}, timeout=30)
    assert experiment_id in {e["experiment_id"] for e in searched.json()["experiments"]}
    env.kubectl("-n", env.ns["team-a"], "delete", "rolebinding", binding)
    started = time.monotonic()
    wait_for(lambda: not _reader_can_read(env, token, experiment_id), timeout=TTL_SECONDS + 10, interval=0.2,
             what="the deleted RoleBinding to stop granting")
    revoked_after = time.monotonic() - started
    print(f"\nRBAC change seen by the server: grant after {granted_after:.2f}s, "
          f"revocation after {revoked_after:.2f}s (cache TTLs {TTL_SECONDS}s)")
    assert revoked_after <= TTL_SECONDS + 2


def test_concurrent_requests_share_subjectaccessreviews(env: Env, team_a_run: dict[str, str]) -> None:
    env.bind("team-a", "edit", "team-a", "burst")
    token = env.token("team-a", "burst")
    before = env.sars()

    def one(_: int) -> int:
        return sa_get(env, token, "/api/2.0/mlflow/experiments/get",
                      experiment_id=team_a_run["experiment_id"]).status_code

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        codes = list(pool.map(one, range(64)))
    first = env.sars() - before
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        codes += list(pool.map(one, range(64)))
    second = env.sars() - before - first
    print(f"\n128 requests (2 x 64 concurrent): {first} SubjectAccessReviews, then {second}")
    assert codes == [200] * 128
    # get, update, delete on experiments (the MLflow level) + create (the workspace slot):
    # one review each, whatever the concurrency; none while the answers are cached.
    assert first <= 4
    assert second == 0


def test_workspaces_follow_namespace_labels(env: Env) -> None:
    late = env.cluster.namespace("late")
    assert late not in workspace_names(admin_get(env, "/api/3.0/mlflow/workspaces"))
    env.cluster.admin.patch("v1/namespaces", None, late, {"metadata": {"labels": {env.label[0]: env.label[1]}}})
    started = time.monotonic()
    wait_for(lambda: late in workspace_names(admin_get(env, "/api/3.0/mlflow/workspaces")), timeout=15,
             what="the labelled namespace to become a workspace")
    print(f"\nlabelled namespace became a workspace after {time.monotonic() - started:.2f}s")
    env.cluster.admin.delete("v1/namespaces", None, late)
    wait_for(lambda: late not in workspace_names(admin_get(env, "/api/3.0/mlflow/workspaces")), timeout=15,
             what="the deleted namespace to stop being a workspace")
    gone = admin_get(env, "/api/2.0/mlflow/experiments/search", late)
    assert gone.status_code == 404 and late in gone.json()["message"]


def test_admin_sees_every_workspace_and_a_team_only_its_own(env: Env) -> None:
    names = workspace_names(admin_get(env, "/api/3.0/mlflow/workspaces"))
    assert {env.ns["team-a"], env.ns["team-b"], "default"} <= names
    assert env.ns["server"] not in names  # not labelled
    mine = workspace_names(sa_get(env, env.token("team-b", "trainer"), "/api/3.0/mlflow/workspaces"))
    assert env.ns["team-b"] in mine and env.ns["team-a"] not in mine


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/3.0/mlflow/workspaces", {"name": "new-team"}),
    ("PATCH", "/api/3.0/mlflow/workspaces/{team}", {"description": "x"}),
    ("DELETE", "/api/3.0/mlflow/workspaces/{team}", None),
])
def test_workspaces_are_not_changed_through_mlflow(env: Env, method: str, path: str, body: dict | None) -> None:
    answer = requests.request(method, env.server.url + path.format(team=env.ns["team-a"]),
                              headers=basic(ADMIN_USER, ADMIN_PASSWORD), json=body, timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "Kubernetes namespaces" in answer.json()["message"]


def test_api_server_unreachable_for_a_review_is_503(env: Env) -> None:
    env.bind("team-a", "edit", "team-a", "cold")
    token = env.token("team-a", "cold")
    rule = env.cluster.proxy.fail(500, "POST", SARS)
    try:
        answer = sa_get(env, token, "/api/2.0/mlflow/experiments/search", max_results=10)
    finally:
        env.cluster.proxy.remove(rule)
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"].isdigit()
    assert answer.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    # Not cached: the next request is answered.
    assert sa_get(env, token, "/api/2.0/mlflow/experiments/search", max_results=10).status_code == 200


def test_mlflow_kubernetes_namespaced_provider(env: Env, team_a_run: dict[str, str], tmp_path: Path) -> None:
    """MLflow's own `kubernetes-namespaced` client provider, in a job process of its own:
    token and workspace from the job's kubeconfig."""
    kubeconfig = env.cluster.admin.write_kubeconfig(
        tmp_path / "kubeconfig", token=env.token("team-a", "trainer"), namespace=env.ns["team-a"])
    job_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KUBECONFIG"))}
    job_env.update({"KUBECONFIG": str(kubeconfig), "MLFLOW_TRACKING_AUTH": "kubernetes-namespaced",
                    "MLFLOW_TRACKING_URI": env.server.url})
    code = "import json, mlflow; print(json.dumps([e.name for e in mlflow.search_experiments()]))"
    job = subprocess.run([sys.executable, "-c", code], env=job_env, capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr[-2000:]
    assert f"{env.ns['team-a']}-training" in json.loads(job.stdout.strip().splitlines()[-1])


def test_humans_keep_mlflows_own_permissions(env: Env, team_a_run: dict[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A Basic-auth user is authorized by MLflow's roles, not by RBAC (no SubjectAccessReview)."""
    from mlflow.server.auth.client import AuthServiceClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    auth = AuthServiceClient(env.server.url)
    user, password = unique_namespace("analyst"), "analyst-password-1234"
    auth.create_user(user, password)
    team_a = env.ns["team-a"]

    def can_read() -> int:
        return requests.get(env.server.url + "/api/2.0/mlflow/experiments/get",
                            params={"experiment_id": team_a_run["experiment_id"]},
                            headers={**basic(user, password), "X-MLFLOW-WORKSPACE": team_a}, timeout=30).status_code

    before = env.sars()
    assert can_read() == 403
    role = auth.create_role(team_a, unique_namespace("readers"))
    auth.add_role_permission(role.id, "experiment", "*", "READ")
    auth.assign_role(user, role.id)
    assert can_read() == 200
    assert env.sars() == before


def test_fastapi_native_routes_are_authorized_by_rbac_too(env: Env, team_a_run: dict[str, str]) -> None:
    """OTLP trace ingestion is checked by MLflow's FastAPI middleware, outside Flask: RBAC
    still decides for ServiceAccounts. `tracer` has edit rights in team-a by RBAC and no
    MLflow grant at all; team-b's trainer has edit rights in team-b only."""
    env.bind("team-a", "edit", "team-a", "tracer")

    def ingest(team: str, name: str) -> requests.Response:
        return requests.post(env.server.url + "/v1/traces", data=b"",
                             headers={**bearer(env.token(team, name)), "Content-Type": "application/x-protobuf",
                                      "X-MLFLOW-WORKSPACE": env.ns["team-a"],
                                      "x-mlflow-experiment-id": team_a_run["experiment_id"]}, timeout=30)

    denied = ingest("team-b", "trainer")
    assert denied.status_code == 403, denied.text
    (allowed,) = wait_for(lambda: (r := ingest("team-a", "tracer")).status_code != 403 and (r,),
                          timeout=TTL_SECONDS + 10, what="the tracer's RoleBinding to be seen")
    assert allowed.status_code == 400, allowed.text  # past the permission check: an empty OTLP body
