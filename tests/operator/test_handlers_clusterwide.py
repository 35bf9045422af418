"""`mlflow-operator run --all-namespaces` with the chart's cluster-wide RBAC: one operator
serves every namespace, including namespaces created after it started. The resync timer
is set far out here, so what happens quickly happens through the watches on children."""
from __future__ import annotations

from tests.conftest import unique_namespace
from tests.operator.chart_rbac import OperatorIdentity
from tests.operator.harness import CR, OperatorProcess, rbac_denials, release_namespace, server_manifest, wait_for
from tests.operator.query_proxy import QueryRecordingProxy
from tests.support.node import Node

# Kinds whose changes the operator watches: the API server must filter them.
WATCHED_CHILDREN = ("/secrets", "/deployments", "/jobs", "/services", "/serviceaccounts", "/persistentvolumeclaims")


def _job(admin, namespace: str, name: str) -> str | None:
    obj = admin.get(CR, namespace, name) or {}
    return ((obj.get("status") or {}).get("migration") or {}).get("job")


def test_all_namespaces_mode_reconciles_everywhere(admin, control_plane, crd, tmp_path):
    one, two = unique_namespace("ml-one"), unique_namespace("ml-two")
    admin.create_namespace(one)
    identity = OperatorIdentity.install(admin, tmp_path, unique_namespace("op-all"), watch=[])
    proxy = QueryRecordingProxy(control_plane.url, control_plane.ca_file, control_plane.pki).start()
    node = Node(admin, f"node-{one}", namespaces={one, two}).start()
    operator = OperatorProcess(identity.kubeconfig(admin, proxy.url), tmp_path, namespaces=[], resync_seconds=600,
                               extra=["--all-namespaces"])
    try:
        operator.start()
        admin.create(CR, server_manifest("tracking", one))
        admin.create_namespace(two)  # appears while the operator runs
        admin.create(CR, server_manifest("tracking", two))
        for namespace in (one, two):
            job = wait_for(lambda: _job(admin, namespace, "tracking"), what=f"{namespace}/tracking reconciled")
            assert admin.get("batch/v1/jobs", namespace, job) is not None
        assert admin.get("rbac.authorization.k8s.io/v1/clusterrolebindings", None,
                         f"mlflow-operator:{two}:tracking:auth-delegator") is not None
        # The Job finishes (real Job controller), which rolls out the Deployment; a deleted
        # Service comes back: both through child watches, long before the timer.
        wait_for(lambda: ((admin.get(CR, one, "tracking") or {}).get("status") or {}).get("phase") == "Ready",
                 timeout=60, what=f"{one}/tracking Ready")
        admin.delete("v1/services", two, "tracking")
        wait_for(lambda: admin.get("v1/services", two, "tracking"), timeout=15, what="Service restored")
    finally:
        operator.stop()
        proxy.stop()
        node.stop()
        for namespace in (one, two):
            release_namespace(admin, namespace)
        identity.uninstall(admin)
    # Children are filtered by the API server, not in the operator: a cluster-wide
    # operator must not receive every Secret of the cluster.
    for child in WATCHED_CHILDREN:
        selectors = proxy.selectors(child)
        assert selectors and all("app.kubernetes.io/managed-by=mlflow-operator" in selector.split(",")
                                 for selector in selectors), (child, selectors)
    log = operator.log()
    assert "Traceback" not in log
    assert rbac_denials(log) == []  # the chart's cluster-wide RBAC suffices
