"""The plugin benchmark's part of the real control plane, and what it measures there.

    with BenchCluster.open(plane) as cluster:        # namespace, ServiceAccounts, RBAC
        cluster.server_kubeconfig                     # the MLflow server's own identity
        cluster.job_token()                           # a new TokenRequest token each call
        cluster.tokenreviews()                        # as counted by kube-apiserver
        tokenreview_latency_ms(cluster, 200)          # the plugin's uncached review

The MLflow server reviews tokens as it does in a cluster: as its ServiceAccount, bound to
system:auth-delegator by a ClusterRoleBinding, with a TokenRequest token in its kubeconfig.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow_k8s_auth.outcomes import Reviewed
from mlflow_k8s_auth.precheck import Claims, precheck
from tests.conftest import unique_namespace
from tests.plugin.conftest import AUDIENCE
from tests.support.controlplane import API_AUDIENCE, ControlPlane
from tests.support.kubeapi import Kube

SERVER_SA, JOB_SA = "mlflow-server", "reader"
CLUSTER_ROLE_BINDINGS = "rbac.authorization.k8s.io/v1/clusterrolebindings"
# kube-apiserver's own request counter; a POST to tokenreviews is one TokenReview.
_TOKENREVIEW_SERIES = re.compile(
    r'^apiserver_request_total\{(?=[^}]*resource="tokenreviews")(?=[^}]*verb="POST")[^}]*\} (\S+)$', re.M)


@dataclass
class BenchCluster:
    admin: Kube
    plane: ControlPlane
    namespace: str
    server_kubeconfig: Path

    @classmethod
    @contextlib.contextmanager
    def open(cls, plane: ControlPlane, workdir: Path) -> Iterator[BenchCluster]:
        admin = Kube.from_kubeconfig(plane.kubeconfig)
        namespace = unique_namespace("plugin-bench")
        binding = f"{namespace}-{SERVER_SA}-auth-delegator"
        admin.create_namespace(namespace)
        try:
            for name in (SERVER_SA, JOB_SA):
                admin.create_service_account(namespace, name)
            admin.create(CLUSTER_ROLE_BINDINGS, {
                "metadata": {"name": binding},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "system:auth-delegator"},
                "subjects": [{"kind": "ServiceAccount", "name": SERVER_SA, "namespace": namespace}]})
            token = admin.token_for(namespace, SERVER_SA, [API_AUDIENCE], 6 * 3600)
            kubeconfig = admin.write_kubeconfig(workdir / "server-kubeconfig", token=token, namespace=namespace)
            yield cls(admin, plane, namespace, kubeconfig)
        finally:
            admin.delete(CLUSTER_ROLE_BINDINGS, None, binding)  # cluster-scoped: not in the namespace
            admin.delete("v1/namespaces", None, namespace)

    def job_token(self, expiration_seconds: int = 3600) -> str:
        """A token as the kubelet projects it for a job: new on every call."""
        return self.admin.token_for(self.namespace, JOB_SA, [AUDIENCE], expiration_seconds)

    def tokenreviews(self) -> int:
        """TokenReviews kube-apiserver has served since it started (all clients)."""
        text = self.admin.session.get(self.admin.server + "/metrics", timeout=30).text
        return int(sum(float(value) for value in _TOKENREVIEW_SERIES.findall(text)))


def _claims(token: str) -> Claims:
    claims = precheck(token, (AUDIENCE,))
    if not isinstance(claims, Claims):
        raise RuntimeError(f"a TokenRequest token failed the pre-check: {claims.reason}")
    return claims


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median": round(statistics.median(ordered) * 1e3, 2), "p95": round(p95 * 1e3, 2)}


def tokenreview_latency_ms(cluster: BenchCluster, count: int) -> dict[str, float]:
    """The plugin's own TokenReview call (`TokenReviewer.review`) with `count` new tokens.

    Each token is new, so neither the plugin's cache nor kube-apiserver's 10 s token cache
    has it: the full uncached path (HTTPS round trip, JWT verification, ServiceAccount
    lookup). The first call opens the connection and is not counted, as in a running server.
    """
    from mlflow_k8s_auth.tokenreview import TokenReviewer, build_api

    reviewer = TokenReviewer(lambda: build_api(str(cluster.server_kubeconfig)), (AUDIENCE,), 5)
    tokens = [cluster.job_token() for _ in range(count + 1)]
    samples = []
    for index, token in enumerate(tokens):
        claims = _claims(token)
        started = time.perf_counter()
        outcome = reviewer.review(token, claims)
        elapsed = time.perf_counter() - started
        if not isinstance(outcome, Reviewed):
            raise RuntimeError(f"TokenReview of a TokenRequest token gave {outcome}")
        if index:
            samples.append(elapsed)
    return percentiles_ms(samples)
