"""An existing server switched to namespaces as workspaces keeps its data, and MLflow's own
`mlflow db move-resources` moves an experiment into a team's workspace: once, end to end,
with real servers on one PostgreSQL database, the real API server and the real client.

1. A server without workspaces; team-a's job logs an experiment and a run.
2. The same databases, now `--enable-workspaces` with `workspaces = namespaces` and
   `authorization = kubernetes`: the experiment is in `default` (the admin sees it there),
   not in team-a's workspace.
3. `mlflow db move-resources` with the plugin's workspace provider (as run in the server's
   pod, where the ini and the server's credentials are): the experiment and its run are
   in team-a's workspace, for team-a's job, and gone from `default`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import requests

from tests.plugin.cluster import PluginCluster
from tests.plugin.conftest import ADMIN_PASSWORD, ADMIN_USER, MlflowServer, Postgres, render_ini
from tests.plugin.test_server import basic, bearer
from tests.plugin.test_workspaces import CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, GROUP, RESOURCES, ROLE_BINDINGS

WORKSPACE_ARGS = ["--enable-workspaces", "--workspace-store-uri", "k8s-namespaces://"]


def _rbac(cluster: PluginCluster, server_ns: str, team: str, prefix: str) -> list[tuple[str, str | None, str]]:
    admin = cluster.admin
    admin.create(CLUSTER_ROLES, {"metadata": {"name": f"{prefix}-ns"}, "rules": [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}]})
    admin.create(CLUSTER_ROLE_BINDINGS, {
        "metadata": {"name": f"{prefix}-ns"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{prefix}-ns"},
        "subjects": [{"kind": "ServiceAccount", "name": "mlflow-server", "namespace": server_ns}]})
    admin.create(CLUSTER_ROLES, {"metadata": {"name": f"{prefix}-edit"}, "rules": [
        {"apiGroups": [GROUP], "resources": RESOURCES, "verbs": ["get", "list", "create", "update", "delete"]}]})
    admin.create(ROLE_BINDINGS, {
        "metadata": {"name": "trainer-mlflow"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{prefix}-edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "trainer", "namespace": team}]}, namespace=team)
    return [(CLUSTER_ROLE_BINDINGS, None, f"{prefix}-ns"), (CLUSTER_ROLES, None, f"{prefix}-ns"),
            (CLUSTER_ROLES, None, f"{prefix}-edit")]


def _experiments(server: MlflowServer, headers: dict[str, str], workspace: str | None = None) -> dict[str, str]:
    if workspace:
        headers = {**headers, "X-MLFLOW-WORKSPACE": workspace}
    answer = requests.post(f"{server.url}/api/2.0/mlflow/experiments/search", headers=headers,
                           json={"max_results": 100}, timeout=30)
    assert answer.status_code == 200, answer.text
    return {e["name"]: e["experiment_id"] for e in answer.json().get("experiments", [])}


def test_switch_to_namespaces_then_move_an_experiment(
    cluster: PluginCluster, module_dir: Path, fresh_databases: Callable[[], Postgres],
) -> None:
    team, server_ns = cluster.namespace("migrate-team"), cluster.namespace("migrate-server")
    kubeconfig = cluster.server_kubeconfig(module_dir / "kubeconfig", server_ns)
    created = _rbac(cluster, server_ns, team, server_ns)
    tracking, auth = fresh_databases(), fresh_databases()
    token = cluster.token(team, "trainer")
    admin = basic(ADMIN_USER, ADMIN_PASSWORD)
    try:
        before = MlflowServer(module_dir / "before", render_ini(auth.uri, kubeconfig, issuers=cluster.plane.issuer),
                              tracking.uri).start()
        try:
            made = requests.post(f"{before.url}/api/2.0/mlflow/experiments/create", headers=bearer(token),
                                 json={"name": "legacy"}, timeout=30)
            assert made.status_code == 200, made.text
            experiment_id = made.json()["experiment_id"]
            run = requests.post(f"{before.url}/api/2.0/mlflow/runs/create", headers=bearer(token),
                                json={"experiment_id": experiment_id}, timeout=30)
            assert run.status_code == 200, run.text
            run_id = run.json()["run"]["info"]["run_id"]
        finally:
            before.stop()

        ini = render_ini(auth.uri, kubeconfig, issuers=cluster.plane.issuer, workspaces="namespaces",
                         authorization="kubernetes", allowed_namespaces=team)
        after = MlflowServer(module_dir / "after", ini, tracking.uri, extra_args=WORKSPACE_ARGS).start()
        try:
            assert "legacy" in _experiments(after, admin, "default")  # kept, in `default`
            assert "legacy" not in _experiments(after, bearer(token))  # team-a's own workspace
            move = _move(after, tracking.uri, team)
            assert move.returncode == 0, move.stdout[-2000:] + move.stderr[-2000:]
            print(f"\n{move.stdout.strip()}")
            assert _experiments(after, bearer(token)).get("legacy") == experiment_id
            assert "legacy" not in _experiments(after, admin, "default")
            got = requests.get(f"{after.url}/api/2.0/mlflow/runs/get", headers=bearer(token),
                               params={"run_id": run_id}, timeout=30)
            assert got.status_code == 200, got.text
            assert got.json()["run"]["info"]["user_id"] == f"system:serviceaccount:{team}:trainer"
        finally:
            after.stop()
        assert "Traceback" not in after.log()
    finally:
        for resource, namespace, name in created:
            cluster.admin.delete(resource, namespace, name)


def _move(server: MlflowServer, tracking_uri: str, team: str) -> subprocess.CompletedProcess[str]:
    """The documented command, with the server's environment (as `kubectl exec` into its pod)."""
    env = {**server.env(), "MLFLOW_WORKSPACE_STORE_URI": "k8s-namespaces://"}
    command = [sys.executable, "-m", "mlflow", "db", "move-resources", tracking_uri, "--from", "default",
               "--to", team, "--resource-type", "experiments", "--name", "legacy", "--yes"]
    return subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=120, cwd=server.workdir)
