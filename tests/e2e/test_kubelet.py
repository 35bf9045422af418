"""The process kubelet (tests/e2e/kubelet.py, process_runner.py, sandbox.py) on the real
control plane: pods made by the real Job and ReplicaSet controllers run as local
processes with their securityContext enforced by bubblewrap."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tests.conftest import unique_namespace
from tests.e2e import sandbox
from tests.e2e.stack import Stack, wait_for
from tests.support.controlplane import API_AUDIENCE, ControlPlane
from tests.support.kubeapi import Kube

pytestmark = [pytest.mark.timeout(180)]

# What the pod prints about itself: identity, capabilities, and which writes fail.
PROBE = """
import json, os
def attempt(path):
    try:
        with open(path, "w") as fh:
            fh.write("x")
        return "ok"
    except OSError as exc:
        return exc.strerror
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "cap_eff": status["CapEff"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "write_tmp": attempt("/tmp/x"), "write_root": attempt("/x"), "write_etc": attempt("/etc/x"),
    "write_venv": attempt(os.environ["VENV"] + "/x"), "write_config": attempt("/config/x"),
    "config": open("/config/greeting").read(), "tmp_entries": sorted(os.listdir("/tmp")),
    "sa_files": sorted(os.listdir("/var/run/secrets/kubernetes.io/serviceaccount")),
}))
"""


@pytest.fixture(scope="module")
def namespace(admin: Kube) -> Iterator[str]:
    """One namespace for the module (each test names its own objects): the Node's watches
    take up to 20 s to wind down, once per Stack."""
    name = unique_namespace("kubelet")
    admin.create_namespace(name)
    yield name
    admin.delete("v1/namespaces", None, name)


@pytest.fixture(scope="module")
def stack(admin: Kube, control_plane: ControlPlane, namespace: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(admin, control_plane.kubeconfig, tmp_path_factory.mktemp("kubelet"), [namespace]) as stack:
        admin.create("v1/configmaps", {"metadata": {"name": "greeting"}, "data": {"greeting": "hello"}}, namespace)
        yield stack


def _job(name: str, command: list[str], *, pod_security: dict[str, Any], security: dict[str, Any],
         env: list[dict[str, Any]] | None = None, config: str = "greeting") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never", "securityContext": pod_security,
        "containers": [{"name": "c", "image": "this-venv", "command": command, "env": env or [],
                        "securityContext": security,
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                         {"name": "config", "mountPath": "/config"}]}],
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "config", "configMap": {"name": config}}]}}}}


def _verdict(log: str) -> dict[str, Any]:
    return dict(json.loads([line for line in log.splitlines() if line.startswith("{")][-1]))


def test_security_context_is_enforced(stack: Stack, admin: Kube, namespace: str) -> None:
    import sys

    admin.create("batch/v1/jobs", _job(
        "probe", ["python", "-c", PROBE],
        pod_security={"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10002},
        security={"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        env=[{"name": "VENV", "value": str(Path(sys.executable).parents[1])}]), namespace)
    ok, log = stack.wait_job(namespace, "probe", timeout=90)
    assert ok, log
    seen = _verdict(log)
    assert (seen["uid"], seen["gid"]) == (10001, 10002)
    assert seen["cap_eff"] == "0000000000000000"
    assert seen["no_new_privs"] == "1"
    assert seen["write_tmp"] == "ok"  # the emptyDir
    # read-only root filesystem, this machine's directories, and the ConfigMap volume
    assert seen["write_root"] == seen["write_etc"] == seen["write_venv"] == "Read-only file system"
    assert seen["write_config"] == "Read-only file system"
    assert seen["config"] == "hello"
    # The emptyDir, not this machine's /tmp; a clone of this repository under /tmp (the
    # "image") is bound back on top, read-only, as an image's own files would be there.
    image = [sandbox.REPOSITORY.parts[2]] if sandbox.REPOSITORY.parts[1] == "tmp" else []
    assert seen["tmp_entries"] == sorted(["x", *image])
    assert seen["sa_files"] == ["ca.crt", "namespace", "token"]


def test_writable_root_filesystem_when_not_read_only(stack: Stack, admin: Kube, namespace: str) -> None:
    script = "open('/scratch', 'w').write('x'); print('wrote /scratch')"
    admin.create("batch/v1/jobs", _job("rw", ["python", "-c", script], pod_security={"runAsUser": 1000},
                                       security={"readOnlyRootFilesystem": False}), namespace)
    ok, log = stack.wait_job(namespace, "rw", timeout=90)
    assert ok and "wrote /scratch" in log, log


def _waiting(admin: Kube, namespace: str, prefix: str) -> dict[str, Any] | None:
    for pod in admin.list("v1/pods", namespace):
        if pod["metadata"]["name"].startswith(prefix):
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                if "waiting" in status["state"] and status["state"]["waiting"].get("message"):
                    return dict(status["state"]["waiting"])
    return None


def test_run_as_non_root_without_a_user_does_not_start(stack: Stack, admin: Kube, namespace: str) -> None:
    admin.create("batch/v1/jobs", _job("root", ["python", "-c", "print('ran')"],
                                       pod_security={"runAsNonRoot": True}, security={}), namespace)
    waiting = wait_for(lambda: _waiting(admin, namespace, "root-"), 60, what="the pod to be refused")
    assert waiting["reason"] == "CreateContainerConfigError"
    assert "runAsNonRoot" in waiting["message"]


def test_missing_configmap_keeps_the_pod_pending_until_it_exists(stack: Stack, admin: Kube, namespace: str) -> None:
    admin.create("batch/v1/jobs", _job("late", ["python", "-c", "print(open('/config/greeting').read())"],
                                       pod_security={"runAsUser": 1000}, security={}, config="late"), namespace)
    waiting = wait_for(lambda: _waiting(admin, namespace, "late-"), 60, what="the pod to wait for its ConfigMap")
    assert waiting == {"reason": "CreateContainerConfigError",
                       "message": f"ConfigMap {namespace}/late not found"}
    admin.create("v1/configmaps", {"metadata": {"name": "late"}, "data": {"greeting": "at last"}}, namespace)
    ok, log = stack.wait_job(namespace, "late", timeout=90)
    assert ok and "at last" in log


def test_failing_job_pod_reports_its_exit_code(stack: Stack, admin: Kube, namespace: str) -> None:
    admin.create("batch/v1/jobs", _job("fail", ["python", "-c", "raise SystemExit(3)"],
                                       pod_security={"runAsUser": 1000}, security={}), namespace)
    ok, _ = stack.wait_job(namespace, "fail", timeout=90)
    assert not ok  # the real Job controller: backoffLimit 0, one failed pod
    (pod,) = admin.list("v1/pods", namespace, labels="job-name=fail")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


ECHO = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"host": self.headers["Host"], "path": self.path, "pod": os.environ["POD"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
# --host 0.0.0.0 --port 8080: arguments, so the harness remaps them (tests/e2e/kubelet.py rule 4)
HTTPServer((sys.argv[2], int(sys.argv[4])), Echo).serve_forever()
"""


def test_service_routes_through_endpoint_slices_keeping_the_host_header(
        stack: Stack, admin: Kube, namespace: str) -> None:
    labels = {"app": "echo"}
    admin.create("apps/v1/deployments", {"metadata": {"name": "echo"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
            "securityContext": {"runAsUser": 1000, "runAsNonRoot": True},
            "containers": [{"name": "echo", "image": "this-venv", "command": ["python", "-c", ECHO],
                            "args": ["--host", "0.0.0.0", "--port", "8080"],
                            "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "ports": [{"name": "web", "containerPort": 8080}],
                            "readinessProbe": {"tcpSocket": {"port": "web"}}}]}}}}, namespace)
    admin.create("v1/services", {"metadata": {"name": "echo"}, "spec": {
        "selector": labels, "ports": [{"port": 80, "targetPort": "web"}]}}, namespace)
    wait_for(lambda: (admin.get("apps/v1/deployments", namespace, "echo")
                                                        .get("status") or {}).get("availableReplicas") == 1, 60, what="the Deployment to be available")
    url = f"http://echo.{namespace}.svc.cluster.local/a?b=1"
    answer = wait_for(lambda: _get(url, stack.proxy.url), 30, what="the Service to answer")
    (pod,) = admin.list("v1/pods", namespace, labels="app=echo")
    assert answer == {"host": f"echo.{namespace}.svc.cluster.local", "path": "/a?b=1", "pod": pod["metadata"]["name"]}
    assert _status(f"http://nothing.{namespace}.svc/", stack.proxy.url) == 502
    with stack.port_forward(namespace, "echo", 80) as forward:
        assert requests.get(forward.url + "/pf", timeout=10, proxies={"http": ""}).json()["path"] == "/pf"


def _get(url: str, proxy: str) -> dict[str, Any] | None:
    response = requests.get(url, proxies={"http": proxy}, timeout=10)
    return response.json() if response.status_code == 200 else None


def _status(url: str, proxy: str) -> int:
    return requests.get(url, proxies={"http": proxy}, timeout=10).status_code


def test_tokens_come_from_token_request_bound_to_the_pod(stack: Stack, admin: Kube, namespace: str) -> None:
    admin.create_service_account(namespace, "trainer")
    script = ("print(open('/var/run/secrets/kubernetes.io/serviceaccount/token').read()); "
              "print(open('/var/run/secrets/mlflow/token').read())")
    admin.create("batch/v1/jobs", {"metadata": {"name": "tokens"}, "spec": {"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never", "serviceAccountName": "trainer", "securityContext": {"runAsUser": 1000},
        "containers": [{"name": "c", "image": "this-venv", "command": ["python", "-c", script],
                        "volumeMounts": [{"name": "mlflow", "mountPath": "/var/run/secrets/mlflow"}]}],
        "volumes": [{"name": "mlflow", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "https://mlflow.example", "expirationSeconds": 3600, "path": "token"}}]}}]}}}}, namespace)
    ok, log = stack.wait_job(namespace, "tokens", timeout=90)
    assert ok, log
    api_token, mlflow_token = log.split()[:2]
    (pod,) = admin.list("v1/pods", namespace, labels="job-name=tokens")
    for token, audience in ((api_token, API_AUDIENCE), (mlflow_token, "https://mlflow.example")):
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["aud"] == [audience]
        assert claims["sub"] == f"system:serviceaccount:{namespace}:trainer"
        assert claims["kubernetes.io"]["pod"] == {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
        review = admin.token_review(token, [audience])
        assert review["authenticated"] is True


def test_exited_container_of_a_deployment_is_restarted(stack: Stack, admin: Kube, namespace: str) -> None:
    labels = {"app": "crash"}
    admin.create("apps/v1/deployments", {"metadata": {"name": "crash"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
            "securityContext": {"runAsUser": 1000},
            "containers": [{"name": "c", "image": "this-venv",
                            "command": ["python", "-c", "print('up'); raise SystemExit(1)"]}]}}}}, namespace)

    def restarted() -> dict[str, Any] | None:
        for pod in admin.list("v1/pods", namespace, labels="app=crash"):
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                if status["restartCount"] >= 2:
                    return pod
        return None

    pod = wait_for(restarted, 60, what="the container to be restarted twice")
    assert pod["status"]["phase"] == "Running"  # restartPolicy Always: never done
    # restartCount 2 means the third run started; its output may still be on its way.
    wait_for(lambda: stack.runner.logs(namespace, pod["metadata"]["name"]).count("up") >= 3, 30,
             what="three runs' output in the container log")
