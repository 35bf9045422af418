"""The test control plane is the real thing: version, controllers, TokenRequest and
TokenReview, OIDC discovery; the test Node; the fault proxy; scripts/cluster."""
from __future__ import annotations

import os
import subprocess
import time

import pytest
import requests

from tests.support import controlplane
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import ApiError, Kube
from tests.support.node import Node, SimulatedRunner
from tests.support.waiting import wait_for


def test_it_is_kubernetes_1_35_with_rbac_and_service_account_issuer(control_plane, admin: Kube) -> None:
    assert admin.request("GET", "/version")["gitVersion"].startswith("v1.35.")
    discovery = admin.request("GET", "/.well-known/openid-configuration")
    assert discovery["issuer"] == control_plane.issuer
    assert admin.request("GET", "/openid/v1/jwks")["keys"][0]["alg"] == "RS256"
    with pytest.raises(ApiError) as denied:  # anonymous may read discovery, not objects
        Kube(control_plane.url, admin.session).with_token("not-a-token").list("v1/secrets", "default")
    assert denied.value.code == 401


def test_token_request_and_token_review(admin: Kube, namespace: str) -> None:
    uid = admin.create_service_account(namespace, "trainer")
    token = admin.token_for(namespace, "trainer", ["mlflow-test"])
    review = admin.token_review(token, ["mlflow-test"])
    assert review["authenticated"] and review["user"]["uid"] == uid
    assert review["user"]["username"] == f"system:serviceaccount:{namespace}:trainer"
    admin.delete_service_account(namespace, "trainer")
    # kube-apiserver caches a successful token authentication for 10 s.
    wait_for(lambda: not admin.token_review(token, ["mlflow-test"]).get("authenticated"),
        timeout=20, what="the deleted ServiceAccount's token refused")


def test_node_runs_deployments_and_jobs_through_the_real_controllers(admin: Kube, namespace: str) -> None:
    runner = SimulatedRunner()
    node = Node(admin, f"node-{namespace}", namespaces={namespace}, runner=runner).start()
    try:
        template = {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "example.invalid/web:1"}]}}
        admin.create("apps/v1/deployments", {"metadata": {"name": "web"}, "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template}}, namespace)
        wait_for(lambda: (admin.get("apps/v1/deployments", namespace, "web").get("status") or {})
                 .get("availableReplicas") == 2, what="Deployment available")
        job_template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}
        admin.create("batch/v1/jobs", {"metadata": {"name": "ok"}, "spec": {"template": job_template}}, namespace)
        runner.fail_pods_named("bad-")
        admin.create("batch/v1/jobs", {"metadata": {"name": "bad"}, "spec": {"backoffLimit": 0,
                                                                             "template": job_template}}, namespace)

        def condition(job: str, kind: str) -> bool:
            status = admin.get("batch/v1/jobs", namespace, job).get("status") or {}
            return any(c["type"] == kind and c["status"] == "True" for c in status.get("conditions") or [])
        wait_for(lambda: condition("ok", "Complete"), what="Job complete")
        wait_for(lambda: condition("bad", "Failed"), what="Job failed")
        admin.delete("apps/v1/deployments", namespace, "web")
        wait_for(lambda: not admin.list("v1/pods", namespace, labels="app=web"), what="pods collected")
    finally:
        started = time.monotonic()
        node.stop()
        assert time.monotonic() - started < 5, "stop() must cut its watches, not wait for them"


def test_fault_proxy_counts_and_injects(control_plane, admin: Kube, namespace: str) -> None:
    admin.create_service_account(namespace, "robot")
    admin.create("rbac.authorization.k8s.io/v1/rolebindings", {
        "metadata": {"name": "robot-view"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                                        "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": namespace}]}, namespace)
    proxy = FaultProxy(control_plane.url, control_plane.ca_file, control_plane.pki).start()
    try:
        robot = Kube(proxy.url, admin.session, namespace).with_token(
            admin.token_for(namespace, "robot", [controlplane.API_AUDIENCE]))
        assert robot.list("v1/configmaps", namespace) is not None
        assert proxy.count("GET", rf"/namespaces/{namespace}/configmaps$") == 1
        proxy.fail(503, "GET", "/configmaps$", times=1)
        with pytest.raises(ApiError) as failed:
            robot.list("v1/configmaps", namespace)
        assert failed.value.code == 503
        robot.list("v1/configmaps", namespace)  # once only
        with pytest.raises(ApiError) as forbidden:  # RBAC judged upstream, through the proxy
            robot.create("v1/configmaps", {"metadata": {"name": "x"}}, namespace)
        assert forbidden.value.code == 403
        with proxy.offline(), pytest.raises(requests.ConnectionError):
            robot.list("v1/configmaps", namespace)
        assert robot.list("v1/configmaps", namespace) is not None
    finally:
        proxy.stop()


def test_cluster_script_up_env_down(tmp_path) -> None:
    env = {**os.environ, "MLFLOW_OPERATOR_CLUSTER_DIR": str(tmp_path / "cluster")}
    script = str(controlplane.ROOT / "scripts" / "cluster")
    up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=600)
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={tmp_path / 'cluster' / 'admin.kubeconfig'}" in up.stdout
        printed = subprocess.run([script, "env"], env=env, capture_output=True, text=True, check=True).stdout
        assert printed.strip() == f"export KUBECONFIG={tmp_path / 'cluster' / 'admin.kubeconfig'}"
        kube = Kube.from_kubeconfig(tmp_path / "cluster" / "admin.kubeconfig")
        assert kube.request("GET", "/version")["gitVersion"].startswith("v1.35.")
    finally:
        down = subprocess.run([script, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert "stopped" in down.stdout
    assert subprocess.run([script, "env"], env=env, capture_output=True, text=True).returncode == 1


def test_build_control_plane_warm_run_builds_nothing() -> None:
    script = controlplane.ROOT / "scripts" / "build-control-plane"
    targets = {name: (controlplane.BIN / name).resolve() for name in ("etcd", "kube-apiserver", "kube-controller-manager")}
    before = {name: path.stat().st_mtime_ns for name, path in targets.items()}
    started = time.monotonic()
    out = subprocess.run([str(script)], capture_output=True, text=True, timeout=120, check=True).stdout
    assert time.monotonic() - started < 5
    assert "building" not in out and "kubernetes v1.35." in out
    assert {name: path.stat().st_mtime_ns for name, path in targets.items()} == before
    versions = {name: subprocess.run([str(controlplane.BIN / name), "--version"], capture_output=True, text=True,
                                     check=True).stdout for name in targets}
    assert "Kubernetes v1.35." in versions["kube-apiserver"] and "Kubernetes v1.35." in versions["kube-controller-manager"]
    assert "etcd Version: 3.6." in versions["etcd"]
