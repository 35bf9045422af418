"""Every pod the operator renders passes Pod Security Admission `restricted`, judged by
the real API server in namespaces labelled `pod-security.kubernetes.io/enforce=restricted`:

- the server and migration pods of every golden case, created as Pods (server-side
  dry-run: PSA enforces on Pods, not on the Deployments and Jobs that template them);
  a weakened copy is refused, so the namespace really enforces;
- a running operator reconciles MLflowServers in such a namespace: the real Job and
  ReplicaSet controllers create their pods (they exist, no FailedCreate Event), and the
  servers become Ready.

The chart's own operator pod is checked the same way in tests/chart/test_chart.py.
"""
from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unique_namespace
from tests.operator.chart_rbac import OperatorIdentity
from tests.operator.harness import CR, OperatorProcess, release_namespace, server_manifest, wait_for
from tests.operator.test_render import CASES, render_case
from tests.support.kubeapi import Kube, resource_path
from tests.support.node import Node, SimulatedRunner

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest",
              "pod-security.kubernetes.io/warn": "restricted"}


def _restricted_namespace(admin: Kube, hint: str) -> str:
    ns = unique_namespace(hint)
    admin.create("v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": ns, "labels": RESTRICTED}})
    return ns


def _dry_run_pod(admin: Kube, ns: str, pod_spec: dict[str, Any]) -> tuple[int, str, str]:
    """(HTTP status, message, Warning header) of creating a Pod with this spec."""
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa-check"}, "spec": pod_spec}
    response = admin.session.post(admin.server + resource_path("v1/pods", ns), json=body,
                                  params={"dryRun": "All"}, timeout=30)
    return response.status_code, response.json().get("message", ""), response.headers.get("Warning", "")


PRIORITY_CLASSES = "scheduling.k8s.io/v1/priorityclasses"


@pytest.fixture(scope="module")
def restricted(admin: Kube) -> Iterator[str]:
    ns = _restricted_namespace(admin, "psa-render")
    # Admission also checks what the pods name: their ServiceAccounts and PriorityClasses.
    made: list[str] = []
    for case in CASES.values():
        for obj in render_case(case):
            if obj["kind"] not in ("Deployment", "Job"):
                continue
            pod_spec = obj["spec"]["template"]["spec"]
            account = pod_spec.get("serviceAccountName", "default")
            if admin.get("v1/serviceaccounts", ns, account) is None:
                admin.create_service_account(ns, account)
            priority = pod_spec.get("priorityClassName")
            if priority and admin.get(PRIORITY_CLASSES, None, priority) is None:
                admin.create(PRIORITY_CLASSES, {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                                "metadata": {"name": priority}, "value": 1000})
                made.append(priority)
    try:
        yield ns
    finally:
        admin.delete("v1/namespaces", None, ns)
        for name in made:
            admin.delete(PRIORITY_CLASSES, None, name)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rendered_pod_is_admitted_under_restricted(admin: Kube, restricted: str, case: str) -> None:
    objects = render_case(CASES[case])
    templates = {o["kind"]: o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")}
    assert set(templates) == {"Deployment", "Job"}
    for kind, pod_spec in templates.items():
        code, message, warning = _dry_run_pod(admin, restricted, pod_spec)
        assert (code, message, warning) == (201, "", ""), f"{case} {kind}: {message or warning}"


@pytest.mark.parametrize(("field", "value"), [
    ("securityContext", {}),  # no runAsNonRoot, no seccomp profile
    ("containers.securityContext.allowPrivilegeEscalation", True),
    ("containers.securityContext.capabilities", {"drop": ["NET_RAW"]}),
])
def test_the_namespace_really_enforces(admin: Kube, restricted: str, field: str, value: Any) -> None:
    pod_spec = copy.deepcopy(render_case(CASES["minimal"])[-1]["spec"]["template"]["spec"])
    if field.startswith("containers."):
        for container in pod_spec["containers"]:
            container["securityContext"][field.rsplit(".", 1)[1]] = value
    else:
        pod_spec[field] = value
    code, message, _ = _dry_run_pod(admin, restricted, pod_spec)
    assert code == 403 and 'violates PodSecurity "restricted:latest"' in message, message


# --- the operator reconciling servers in a restricted namespace -------------------------

SERVERS: dict[str, dict[str, Any]] = {
    "plain": {},
    # External databases, several replicas, S3 artifacts, and every volume kind a user adds.
    "busy": {
        "replicas": 2,
        "backendStore": {"uriSecretRef": {"name": "db", "key": "uri"}},
        "auth": {"authDatabase": {"uriSecretRef": {"name": "db", "key": "auth-uri"}}},
        "artifacts": {"destination": "s3://bucket/mlflow", "credentialsSecret": "s3"},
        "server": {
            "extraEnv": [{"name": "TEAM", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "team"}}}],
            "extraVolumes": [
                {"name": "ca", "configMap": {"name": "ca"}},
                {"name": "certs", "secret": {"secretName": "s3"}},
                {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
                {"name": "token", "projected": {"sources": [{"serviceAccountToken": {
                    "audience": "vault", "path": "token", "expirationSeconds": 3600}}]}},
            ],
            "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/custom", "readOnly": True},
                                  {"name": "scratch", "mountPath": "/scratch"}],
        },
    },
}


def _secret(name: str, values: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}}


@pytest.fixture(scope="module")
def operated(admin: Kube, crd: dict, proxy, tmp_path_factory) -> Iterator[str]:
    ns = _restricted_namespace(admin, "psa-op")
    workdir: Path = tmp_path_factory.mktemp("psa")
    identity = OperatorIdentity.install(admin, workdir, unique_namespace("op-psa"), watch=[ns])
    node = Node(admin, f"node-{ns}", namespaces={ns}, runner=SimulatedRunner()).start()
    operator = OperatorProcess(identity.kubeconfig(admin, proxy.url), workdir, [ns])
    try:
        admin.create("v1/secrets", _secret("db", {"uri": "postgresql://u:p@db/mlflow",
                                                  "auth-uri": "postgresql://u:p@db/auth"}), ns)
        admin.create("v1/secrets", _secret("s3", {"team": "ml"}), ns)
        admin.create("v1/configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": "ca"}, "data": {"ca.crt": "x"}}, ns)
        operator.start()
        for name, spec in SERVERS.items():
            admin.create(CR, server_manifest(name, ns, spec))
        yield ns
    finally:
        operator.stop()
        node.stop()
        release_namespace(admin, ns)
        identity.uninstall(admin)


def _ready(admin: Kube, ns: str, name: str) -> bool:
    status = (admin.get(CR, ns, name) or {}).get("status") or {}
    return status.get("phase") == "Ready"


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_the_controllers_create_every_pod_in_a_restricted_namespace(admin: Kube, operated: str, name: str) -> None:
    ns = operated
    wait_for(lambda: _ready(admin, ns, name), 90, f"{name} Ready in a restricted namespace")
    pods = admin.list("v1/pods", ns, labels=f"app.kubernetes.io/instance={name}")
    owners = {(p["metadata"].get("ownerReferences") or [{}])[0].get("kind") for p in pods}
    assert owners == {"Job", "ReplicaSet"}, [p["metadata"]["name"] for p in pods]
    replicas = SERVERS[name].get("replicas", 1)
    assert sum(1 for p in pods if p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet") >= replicas
    refused = [f"{e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e['message'][:300]}"
               for e in admin.list("v1/events", ns) if e.get("reason") == "FailedCreate"]
    assert refused == []
