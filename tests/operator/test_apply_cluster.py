"""Server-side apply against the real API server, as the operator does it: the rendered
children of an MLflowServer applied with the chart's RBAC through the fault proxy, which
counts every request. Steady state sends no write; keys dropped from the spec leave the
children; objects written by 0.1.0 (create + merge patch + the applied-fields annotation)
are taken over without leftovers; immutable fields are never sent; a user's object with
a child's name is not touched."""
from __future__ import annotations

import base64
import copy
import json
import secrets
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from mlflow_operator.api import FIELD_MANAGER, KubeApi
from mlflow_operator.apply import APPLIED_KEYS, LEGACY_ANNOTATION, ConflictError, apply_all, normalize
from mlflow_operator.model import GeneratedSecrets, ServerRef, StoreUris, parse_spec
from mlflow_operator.render import render_all
from tests.conftest import unique_namespace
from tests.operator.chart_rbac import OperatorIdentity
from tests.operator.harness import CR, server_manifest, write_paths, writes
from tests.support.kubeapi import Kube, resource_path

GENERATED = GeneratedSecrets(flask_secret_key="f" * 64, admin_password="p" * 32)
DEPLOYMENTS = "apps/v1/deployments"


@pytest.fixture(scope="module")
def env(admin: Kube, crd, proxy, tmp_path_factory) -> Iterator[tuple[KubeApi, str]]:
    """A KubeApi acting as the chart's ServiceAccount (cluster-wide), and a namespace."""
    release = unique_namespace("op-apply")
    identity = OperatorIdentity.install(admin, tmp_path_factory.mktemp("apply"), release, watch=[])
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(identity.kubeconfig(admin, proxy.url)),
                                       client_configuration=config)
    namespace = unique_namespace("apply")
    admin.create_namespace(namespace)
    yield KubeApi(kubernetes.client.ApiClient(configuration=config)), namespace
    for binding in admin.list("rbac.authorization.k8s.io/v1/clusterrolebindings",
                              labels=f"mlflow-operator.dev/owner-namespace={namespace}"):
        admin.delete("rbac.authorization.k8s.io/v1/clusterrolebindings", None, binding["metadata"]["name"])
    admin.delete("v1/namespaces", None, namespace)
    identity.uninstall(admin)


def _server(admin: Kube, namespace: str, name: str) -> ServerRef:
    created = admin.create(CR, server_manifest(name, namespace))
    return ServerRef(name=name, namespace=namespace, uid=created["metadata"]["uid"])


def _render(ref: ServerRef, spec: dict[str, Any]) -> list[dict[str, Any]]:
    return render_all(ref, parse_spec(spec), GENERATED, StoreUris())


def _pod_template(admin: Kube, namespace: str, name: str) -> dict[str, Any]:
    return admin.get(DEPLOYMENTS, namespace, name)["spec"]["template"]


def test_a_resync_of_unchanged_objects_writes_nothing(admin, env, proxy):
    api, namespace = env
    ref = _server(admin, namespace, "steady")
    objects = _render(ref, {"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}}})
    first = apply_all(api, objects)
    assert len(first.created) == len(objects) and not first.updated
    for what, obj in first.live.items():
        entries = [(e["manager"], e["operation"]) for e in obj["metadata"]["managedFields"]]
        assert (FIELD_MANAGER, "Update" if "-admin" in what or "-secret-key" in what else "Apply") in entries, what
    before_writes, before_calls = writes(proxy, namespace), api.calls
    # Controllers write the Job's and the Deployment's status: compare the others.
    versions = {what: obj["metadata"]["resourceVersion"] for what, obj in first.live.items()
                if not what.startswith(("Job/", "Deployment/"))}
    again = apply_all(api, objects)
    assert not again.created and not again.updated
    assert writes(proxy, namespace) == before_writes, write_paths(proxy, namespace)
    assert api.calls - before_calls == len(objects)  # one GET per object, nothing else
    assert {what: obj["metadata"]["resourceVersion"] for what, obj in again.live.items() if what in versions} \
        == versions


def test_keys_dropped_from_the_spec_leave_the_child_but_other_managers_keys_stay(admin, env):
    api, namespace = env
    ref = _server(admin, namespace, "drop")
    apply_all(api, _render(ref, {"nodeSelector": {"disk": "ssd", "zone": "a"},
                                 "podAnnotations": {"team": "a", "cost-center": "42"},
                                 "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}))
    # Another controller annotates the pod template: not the operator's to remove.
    admin.patch(DEPLOYMENTS, namespace, "drop",
                {"spec": {"template": {"metadata": {"annotations": {"other.example/injected": "yes"}}}}})
    result = apply_all(api, _render(ref, {"nodeSelector": {"disk": "ssd"}, "podAnnotations": {"team": "a"},
                                          "resources": {"limits": {"memory": "1Gi"}}}))
    assert "Deployment/drop" in result.updated
    template = _pod_template(admin, namespace, "drop")
    assert template["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert "cost-center" not in template["metadata"]["annotations"]
    assert template["metadata"]["annotations"]["team"] == "a"
    assert template["metadata"]["annotations"]["other.example/injected"] == "yes"
    assert template["spec"]["containers"][0]["resources"]["limits"] == {"memory": "1Gi"}
    apply_all(api, _render(ref, {}))
    assert not _pod_template(admin, namespace, "drop")["spec"].get("nodeSelector")


def _shape(value: Any) -> Any:
    return {k: _shape(v) for k, v in value.items()} if isinstance(value, dict) else 0


def _write_as_0_1_0(admin: Kube, manifest: dict[str, Any]) -> None:
    """What 0.1.0 sent for a missing child: a POST under the field manager
    `mlflow-operator` (so an `Update` entry), carrying its applied-fields annotation (the
    key shape of what it compared: a Job's spec and a PVC's spec but the size left out)."""
    body = copy.deepcopy(normalize(manifest))
    compared = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "status")}
    if body["kind"] == "Job":
        compared.pop("spec")
    elif body["kind"] == "PersistentVolumeClaim":
        compared["spec"] = {"resources": body["spec"]["resources"]}
    body["metadata"].setdefault("annotations", {})[LEGACY_ANNOTATION] = json.dumps(_shape(compared))
    plural = {"PersistentVolumeClaim": "persistentvolumeclaims", "ClusterRoleBinding": "clusterrolebindings"}
    resource = f"{body['apiVersion']}/{plural.get(body['kind'], body['kind'].lower() + 's')}"
    namespace = None if body["kind"] == "ClusterRoleBinding" else body["metadata"]["namespace"]
    admin.request("POST", resource_path(resource, namespace), body=body, params={"fieldManager": FIELD_MANAGER})


def test_children_written_by_0_1_0_are_taken_over_without_leftovers(admin, env, proxy):
    api, namespace = env
    ref = _server(admin, namespace, "legacy")
    old = _render(ref, {"nodeSelector": {"disk": "ssd", "zone": "a"}, "podAnnotations": {"cost-center": "42"}})
    for manifest in old:
        _write_as_0_1_0(admin, manifest)
    # A later spec change of 0.1.0's time: a merge patch under the same manager.
    admin.request("PATCH", resource_path(DEPLOYMENTS, namespace, "legacy"),
                  body={"spec": {"template": {"spec": {"nodeSelector": {"rack": "r1"}}}}},
                  params={"fieldManager": FIELD_MANAGER}, content_type="application/merge-patch+json")
    admin_secret = admin.get("v1/secrets", namespace, "legacy-admin")
    result = apply_all(api, _render(ref, {"nodeSelector": {"disk": "ssd"}}))
    assert not result.created and len(result.updated) == len(old)
    live = result.live
    for what, obj in live.items():
        assert LEGACY_ANNOTATION not in (obj["metadata"].get("annotations") or {}), what
    for what in ("Deployment/legacy", "Service/legacy", "Secret/legacy-config", "ServiceAccount/legacy-server"):
        entries = [(e["manager"], e["operation"]) for e in live[what]["metadata"]["managedFields"]
                   if not e.get("subresource")]  # the Deployment controller's status is its own
        assert entries == [(FIELD_MANAGER, "Apply")], (what, entries)
        assert APPLIED_KEYS in live[what]["metadata"]["annotations"]
    template = _pod_template(admin, namespace, "legacy")
    assert template["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert "cost-center" not in template["metadata"]["annotations"]
    # Generated Secrets are never rewritten: same values, only the old annotation gone.
    now = admin.get("v1/secrets", namespace, "legacy-admin")
    assert now["data"] == admin_secret["data"]
    # Taken over once: the next resync writes nothing.
    before = writes(proxy, namespace)
    again = apply_all(api, _render(ref, {"nodeSelector": {"disk": "ssd"}}))
    assert not again.updated and writes(proxy, namespace) == before, write_paths(proxy, namespace)


def test_takeover_of_an_unchanged_server_does_not_roll_its_pods(admin, env):
    api, namespace = env
    ref = _server(admin, namespace, "same")
    spec = {"podAnnotations": {"team": "a"}, "resources": {"requests": {"cpu": "250m"}}}
    for manifest in _render(ref, spec):
        _write_as_0_1_0(admin, manifest)
    before = admin.get(DEPLOYMENTS, namespace, "same")
    apply_all(api, _render(ref, spec))
    after = admin.get(DEPLOYMENTS, namespace, "same")
    # Same spec, so the same pod template: no new ReplicaSet. (The generation moves all the
    # same: a Deployment counts annotation changes too, and the old annotation went.)
    assert after["spec"] == before["spec"]


def test_an_existing_pvc_keeps_its_immutable_fields(admin, env):
    api, namespace = env
    ref = _server(admin, namespace, "disk")
    apply_all(api, _render(ref, {"storage": {"storageClassName": "fast", "size": "5Gi"}}))
    result = apply_all(api, _render(ref, {"storage": {"storageClassName": "slow", "size": "5Gi"}}))
    assert "PersistentVolumeClaim/disk-data" not in result.updated
    assert admin.get("v1/persistentvolumeclaims", namespace, "disk-data")["spec"]["storageClassName"] == "fast"


def test_a_users_object_with_a_childs_name_is_left_alone(admin, env, proxy):
    api, namespace = env
    ref = _server(admin, namespace, "clash")
    password = secrets.token_hex(8)
    admin.create("v1/secrets", {"metadata": {"name": "clash-config"},
                                "data": {"mine": base64.b64encode(password.encode()).decode()}}, namespace)
    with pytest.raises(ConflictError) as conflict:
        apply_all(api, _render(ref, {}))
    assert "Secret/clash-config" in str(conflict.value) and password not in str(conflict.value)
    assert admin.get("v1/secrets", namespace, "clash-config")["data"] == {
        "mine": base64.b64encode(password.encode()).decode()}
