"""`mlflow-operator run --all-namespaces`: one operator serves every namespace, including
namespaces created after it started. The resync timer is set far out here, so what
happens quickly happens through the watches on owned children."""
from __future__ import annotations

from tests.operator import rbac_record
from tests.operator.harness import CR, OperatorProcess, server_manifest, wait_for


def _job(kube, namespace: str, name: str) -> str | None:
    obj = kube.get(CR, namespace, name) or {}
    return ((obj.get("status") or {}).get("migration") or {}).get("job")


def test_all_namespaces_mode_reconciles_everywhere(opkube, tmp_path):
    kube = opkube
    kube.create_namespace("ml-one")
    operator = OperatorProcess(kube, tmp_path, namespaces=[], resync_seconds=600,
                               extra=["--all-namespaces"]).start()
    try:
        kube.create(CR, server_manifest("tracking", "ml-one"))
        kube.create_namespace("ml-two")  # appears while the operator runs
        kube.create(CR, server_manifest("tracking", "ml-two"))
        for namespace in ("ml-one", "ml-two"):
            job = wait_for(lambda: _job(kube, namespace, "tracking"), what=f"{namespace}/tracking reconciled")
            assert kube.get("batch/v1/jobs", namespace, job) is not None
        assert kube.get("rbac.authorization.k8s.io/v1/clusterrolebindings", None,
                        "mlflow-operator:ml-two:tracking:auth-delegator") is not None
        # A finished Job rolls out the Deployment; a deleted Service comes back: both at once.
        kube.mark_job_finished("ml-one", _job(kube, "ml-one", "tracking"))
        wait_for(lambda: kube.get("apps/v1/deployments", "ml-one", "tracking"), timeout=10,
                 what="the Deployment after the migration finished")
        kube.delete("v1/services", "ml-two", "tracking")
        wait_for(lambda: kube.get("v1/services", "ml-two", "tracking"), timeout=10, what="Service restored")
    finally:
        operator.stop()
    # Children are filtered by the API server, not in the operator: a cluster-wide
    # operator must not receive every Secret of the cluster.
    for child in ("secrets", "deployments", "jobs", "services", "serviceaccounts",
                  "persistentvolumeclaims"):
        selectors = kube.list_selectors[child]
        assert selectors and all("app.kubernetes.io/managed-by=mlflow-operator" in selector.split(",")
                                 for selector in selectors), (child, selectors)
    observed = set(kube.api_calls)
    granted = rbac_record.observed_api_calls(clusterwide=True)
    assert observed <= granted, f"calls not in tests/operator/rbac_record.py: {sorted(observed - granted)}"
    assert "Traceback" not in operator.log()
