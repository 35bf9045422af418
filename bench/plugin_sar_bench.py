"""Kubernetes authorization benchmark: `python -m bench.plugin_sar_bench [--quick]` (numbers, not a test).

Side by side, same settings (1 uvicorn worker, SQLite stores, workspaces on, the same
`experiments/get` in the job's workspace):
  * unauthenticated MLflow (`mlflow server --enable-workspaces`, MLflow's SQL workspaces)
  * k8s-auth with `workspaces = namespaces` and `authorization = kubernetes`: a
    ServiceAccount's bearer token, its namespace as the workspace (no header sent), warm
    token cache and warm SubjectAccessReview cache (allow TTL 30 s)
Method as in bench.plugin_bench (whose helpers it reuses): a warm-up second each, `rounds`
rounds of `seconds` per variant with rotating order, the median of the per-round ratios
(with min/max) and the servers' own CPU time per request.
Also: SubjectAccessReviews caused by 64 concurrent first requests of a new ServiceAccount
(counted by kube-apiserver, `apiserver_request_total`), and again once its answers are cached.

Kubernetes is the real control plane (v1.35); the servers talk to it directly, no proxy.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

import requests

from bench.plugin_apiserver import SERVER_SA, BenchCluster
from bench.plugin_bench import _cpu_seconds, _PlainServer, _throughput
from tests.conftest import unique_namespace
from tests.plugin.conftest import AUDIENCE, MlflowServer, render_ini
from tests.support.controlplane import ControlPlane

CLUSTER_ROLES = "rbac.authorization.k8s.io/v1/clusterroles"
CLUSTER_ROLE_BINDINGS = "rbac.authorization.k8s.io/v1/clusterrolebindings"
ROLE_BINDINGS = "rbac.authorization.k8s.io/v1/rolebindings"
_SAR_SERIES = re.compile(
    r'^apiserver_request_total\{(?=[^}]*resource="subjectaccessreviews")(?=[^}]*verb="POST")[^}]*\} (\S+)$', re.M)
WORKSPACE_ARGS = ["--enable-workspaces", "--workspace-store-uri", "k8s-namespaces://"]


def _sars(cluster: BenchCluster) -> int:
    text = cluster.admin.session.get(cluster.admin.server + "/metrics", timeout=30).text
    return int(sum(float(value) for value in _SAR_SERIES.findall(text)))


def _rbac(cluster: BenchCluster, prefix: str) -> list[tuple[str, str | None, str]]:
    """The server may list/watch namespaces; the job's ServiceAccounts may edit MLflow data."""
    admin, created = cluster.admin, []
    rules = {
        f"{prefix}-namespaces": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}],
        f"{prefix}-mlflow-edit": [{"apiGroups": ["mlflow.kubeflow.org"], "resources": ["experiments",
                                   "registeredmodels", "jobs"], "verbs": ["get", "list", "create", "update", "delete"]}],
    }
    for name, rule in rules.items():
        admin.create(CLUSTER_ROLES, {"metadata": {"name": name}, "rules": rule})
        created.append((CLUSTER_ROLES, None, name))
    admin.create(CLUSTER_ROLE_BINDINGS, {
        "metadata": {"name": f"{prefix}-namespaces"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{prefix}-namespaces"},
        "subjects": [{"kind": "ServiceAccount", "name": SERVER_SA, "namespace": cluster.namespace}]})
    created.append((CLUSTER_ROLE_BINDINGS, None, f"{prefix}-namespaces"))
    admin.create(ROLE_BINDINGS, {
        "metadata": {"name": "mlflow-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{prefix}-mlflow-edit"},
        "subjects": [{"kind": "Group", "name": f"system:serviceaccounts:{cluster.namespace}"}]}, namespace=cluster.namespace)
    return created


def _servers(cluster: BenchCluster, workdir: Path) -> dict[str, MlflowServer]:
    ini = render_ini(f"sqlite:///{workdir}/k8s-auth.db", cluster.server_kubeconfig,
                     allowed_namespaces=cluster.namespace, workspaces="namespaces", authorization="kubernetes",
                     authorization_allow_ttl_seconds=30, authorization_deny_ttl_seconds=5)
    specs = {
        "plain": _PlainServer(workdir / "plain", "", f"sqlite:///{workdir}/plain.db", extra_args=["--enable-workspaces"]),
        "k8s_rbac": MlflowServer(workdir / "k8s", ini, f"sqlite:///{workdir}/k8s.db", extra_args=WORKSPACE_ARGS),
    }
    started: dict[str, MlflowServer] = {}
    try:
        for name, server in specs.items():
            started[name] = server.start()
    except Exception:
        for server in started.values():
            server.stop()
        raise
    return started


def _experiment(url: str, headers: dict[str, str]) -> str:
    response = requests.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": "bench"}, headers=headers,
                             timeout=30)
    response.raise_for_status()
    return str(response.json()["experiment_id"])


def _burst(cluster: BenchCluster, url: str) -> tuple[int, int]:
    """SubjectAccessReviews for 64 concurrent first requests of a new ServiceAccount, then for
    64 more once its answers are cached."""
    name = unique_namespace("burst")
    cluster.admin.create_service_account(cluster.namespace, name)
    headers = {"Authorization": f"Bearer {cluster.admin.token_for(cluster.namespace, name, [AUDIENCE])}"}
    counts = []
    for _ in range(2):
        before = _sars(cluster)
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            statuses = set(pool.map(lambda _: requests.get(url, headers=headers, timeout=60).status_code, range(64)))
        if statuses != {200}:
            raise RuntimeError(f"burst got statuses {sorted(statuses)}")
        counts.append(_sars(cluster) - before)
    return counts[0], counts[1]


def _measure(cluster: BenchCluster, servers: dict[str, MlflowServer], seconds: float, rounds: int) -> dict[str, Any]:
    bearer = {"Authorization": f"Bearer {cluster.job_token()}"}
    targets = {"plain": {}, "k8s_rbac": bearer}
    urls = {name: f"{servers[name].url}/api/2.0/mlflow/experiments/get?experiment_id="
                  f"{_experiment(servers[name].url, headers)}" for name, headers in targets.items()}
    for name, headers in targets.items():  # warm caches and connections
        _throughput(urls[name], headers, 1.0)
    rps: dict[str, list[float]] = {name: [] for name in targets}
    cpu_us: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    for index in range(rounds):
        for name in names[index % 2:] + names[:index % 2]:
            pid = servers[name].proc.pid  # type: ignore[union-attr]
            before = _cpu_seconds(pid)
            rate, count = _throughput(urls[name], targets[name], seconds)
            rps[name].append(rate)
            cpu_us[name].append((_cpu_seconds(pid) - before) / max(count, 1) * 1e6)
    ratios = [a / b for a, b in zip(rps["k8s_rbac"], rps["plain"], strict=True)]
    cold, warm = _burst(cluster, urls["k8s_rbac"])
    return {
        "rounds": rounds,
        "seconds_per_round_per_variant": seconds,
        "rps_unauthenticated_workspaces": round(statistics.median(rps["plain"]), 1),
        "rps_k8s_rbac_bearer": round(statistics.median(rps["k8s_rbac"]), 1),
        "ratio_k8s_rbac_vs_unauthenticated": round(statistics.median(ratios), 3),
        "ratio_k8s_rbac_vs_unauthenticated_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
        "ratio_k8s_rbac_vs_unauthenticated_target": ">= 0.9",
        **{f"server_cpu_us_per_request_{name}": round(statistics.median(v)) for name, v in cpu_us.items()},
        "subjectaccessreviews_for_64_concurrent_new_identity": cold,
        "subjectaccessreviews_for_64_concurrent_new_identity_target": "<= 3",
        "subjectaccessreviews_for_64_concurrent_cached": warm,
        "subjectaccessreviews_for_64_concurrent_cached_target": 0,
    }


def run(quick: bool = False, plane: ControlPlane | None = None) -> dict[str, Any]:
    """Measure on `plane`, or on a control plane started (and stopped) for this run."""
    seconds, rounds = (2.0, 4) if quick else (5.0, 8)
    with tempfile.TemporaryDirectory(prefix="plugin-sar-bench-") as tmp:
        workdir = Path(tmp)
        own = plane is None
        plane = plane or ControlPlane(workdir / "control-plane").start()
        try:
            with BenchCluster.open(plane, workdir) as cluster:
                created = _rbac(cluster, cluster.namespace)
                try:
                    servers = _servers(cluster, workdir)
                    try:
                        return _measure(cluster, servers, seconds, rounds)
                    finally:
                        for server in servers.values():
                            server.stop()
                finally:
                    for resource, namespace, name in created:
                        cluster.admin.delete(resource, namespace, name)
        finally:
            if own:
                plane.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
