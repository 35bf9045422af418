"""The pure parts of server-side apply: what counts as drift (so steady state writes
nothing although the API server added defaults and canonicalised quantities), the key
fingerprint, immutable PVC fields, and the takeover of objects 0.1.0 wrote.
The same flows against the real API server: test_apply_cluster.py."""
from __future__ import annotations

import base64

from mlflow_operator.api import FIELD_MANAGER
from mlflow_operator.apply import (APPLIED_KEYS, LEGACY_ANNOTATION, fingerprint, in_sync, is_create_only,
                                   is_legacy, is_ours, is_subset, normalize, pinned, quantity, taken_over,
                                   with_fingerprint)

DEPLOYMENT = {"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "mlflow", "image": "a"}]}}}}


def test_server_defaults_do_not_count_as_drift():
    live = {"spec": {"replicas": 1, "revisionHistoryLimit": 10,
                     "template": {"spec": {"dnsPolicy": "ClusterFirst",
                                           "containers": [{"name": "mlflow", "image": "a",
                                                           "terminationMessagePath": "/dev/termination-log"}]}}}}
    assert is_subset(DEPLOYMENT, live)


def test_edits_and_removals_count_as_drift():
    want = DEPLOYMENT
    assert not is_subset(want, {"spec": {"replicas": 3, "template": want["spec"]["template"]}})
    assert not is_subset(want, {"spec": {"replicas": 1}})
    two = {"spec": {"replicas": 1, "template": {"spec": {"containers": [
        {"name": "mlflow", "image": "a"}, {"name": "sidecar", "image": "b"}]}}}}
    assert not is_subset(want, two)
    assert not is_subset({"a": True}, {"a": 1})
    assert not is_subset({"a": "1"}, {"a": None})


def test_quantities_compare_by_value_as_the_api_server_canonicalises_them():
    for rendered, stored in (("0.5", "500m"), (1, "1"), ("1024Mi", "1Gi"), ("1e3", "1k"), ("2", "2000m")):
        assert is_subset({"cpu": rendered}, {"cpu": stored}), (rendered, stored)
    assert not is_subset({"cpu": "500m"}, {"cpu": "1"})
    assert not is_subset({"memory": "1Gi"}, {"memory": "1G"})
    assert quantity("mlflow") is None and quantity(True) is None and quantity("1.5Gi") == 1.5 * 2**30
    assert is_subset({"port": 5000}, {"port": 5000}) and is_subset({"ratio": 1}, {"ratio": 1.0})


def test_secret_string_data_is_compared_in_stored_form():
    manifest = {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "p@ss"}}
    stored = normalize(manifest)
    assert "stringData" not in stored
    assert stored["data"] == {"password": base64.b64encode(b"p@ss").decode()}
    assert manifest["stringData"] == {"password": "p@ss"}  # the caller's manifest is untouched


def test_create_only_annotation():
    assert is_create_only({"metadata": {"annotations": {"mlflow-operator.dev/apply-policy": "create-only"}}})
    assert not is_create_only({"metadata": {}})


def _obj(owner_uid=None, **labels):
    meta = {"name": "x", "labels": labels}
    if owner_uid:
        meta["ownerReferences"] = [{"kind": "MLflowServer", "uid": owner_uid, "controller": True}]
    return {"metadata": meta}


def test_only_this_servers_objects_are_taken_over():
    ours = {"app.kubernetes.io/managed-by": "mlflow-operator", "app.kubernetes.io/instance": "a"}
    manifest = _obj("uid-a", **ours)
    assert is_ours(manifest, _obj("uid-a", **ours))
    assert not is_ours(manifest, _obj("uid-b", **ours))  # another server's (same name, recreated)
    assert not is_ours(manifest, _obj())  # a user's own object with that name
    assert is_ours(manifest, _obj(**ours))  # orphaned (e.g. deleted with --cascade=orphan)
    assert not is_ours(manifest, _obj(**{**ours, "app.kubernetes.io/instance": "b"}))
    binding = _obj(**ours, **{"mlflow-operator.dev/owner-namespace": "team-a"})
    assert is_ours(binding, binding)
    assert not is_ours(binding, _obj(**ours, **{"mlflow-operator.dev/owner-namespace": "team-b"}))


def test_fingerprint_follows_key_names_never_values():
    secret = {"kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "c2VjcmV0", "uri": "eA=="}}
    same_keys = {**secret, "data": {"password": "b3RoZXI=", "uri": "eQ=="}}
    assert fingerprint(secret) == fingerprint(same_keys)  # a value change is seen by is_subset
    assert fingerprint(secret) != fingerprint({**secret, "data": {"password": "c2VjcmV0"}})
    # Keys inside list elements count too (a limit dropped from a container).
    with_limit = {"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1"}}}]}}
    without = {"spec": {"containers": [{"name": "c", "resources": {}}]}}
    assert fingerprint(with_limit) != fingerprint(without)
    stamped = with_fingerprint(secret)
    assert stamped["metadata"]["annotations"] == {APPLIED_KEYS: fingerprint(secret)}
    assert fingerprint(stamped) == fingerprint(secret)  # its own annotation is left out
    assert "c2VjcmV0" not in str(stamped["metadata"]) and "annotations" not in secret["metadata"]


def test_an_existing_pvc_keeps_its_immutable_fields():
    pvc = {"kind": "PersistentVolumeClaim", "metadata": {"name": "d"},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "fast",
                    "resources": {"requests": {"storage": "20Gi"}}}}
    live = {"spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "slow", "volumeName": "pv-1",
                     "resources": {"requests": {"storage": "10Gi"}}}}
    assert pinned(pvc, live)["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "slow",
                                         "resources": {"requests": {"storage": "20Gi"}}}
    assert pinned(pvc, None) == pvc
    job = {"kind": "Job", "metadata": {"name": "m", "labels": {"a": "2"}},
           "spec": {"backoffLimit": 3, "template": {"spec": {"containers": [{"name": "c", "image": "new"}]}}}}
    live_job = {"spec": {"backoffLimit": 3, "selector": {"x": "y"}, "template": {"spec": {
        "containers": [{"name": "c", "image": "old", "imagePullPolicy": "Always"}], "dnsPolicy": "ClusterFirst"}}}}
    body = pinned(job, live_job)
    assert body["spec"] == {"backoffLimit": 3, "template": {"spec": {"containers": [{"name": "c", "image": "old"}]}}}
    assert body["metadata"] == job["metadata"]  # labels, annotations, owners stay repairable
    deployment = {"kind": "Deployment", **DEPLOYMENT}
    assert pinned(deployment, {"spec": {"replicas": 3}}) == deployment


def _entry(operation: str, fields: dict, manager: str = FIELD_MANAGER, **extra) -> dict:
    return {"manager": manager, "operation": operation, "apiVersion": "v1", "fieldsType": "FieldsV1",
            "fieldsV1": fields, **extra}


def test_in_sync_needs_an_apply_by_the_operator_and_no_legacy_record():
    body = with_fingerprint({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                             "spec": {"ports": [{"port": 80}]}})
    live = {**body, "metadata": {**body["metadata"], "managedFields": [_entry("Apply", {})]}}
    assert in_sync(body, live)
    assert not in_sync(body, {**live, "metadata": {**live["metadata"], "managedFields": []}})
    assert not in_sync(body, {**live, "spec": {"ports": [{"port": 81}]}})
    stale = {**live, "metadata": {**live["metadata"], "annotations": {APPLIED_KEYS: "0" * 16}}}
    assert not in_sync(body, stale)  # keys were added or dropped since the last apply
    legacy = {**live, "metadata": {**live["metadata"],
                                   "managedFields": [_entry("Apply", {}), _entry("Update", {})]}}
    assert is_legacy(legacy) and not in_sync(body, legacy)
    status_only = {**live, "metadata": {**live["metadata"], "managedFields": [
        _entry("Apply", {}), _entry("Update", {"f:status": {}}, subresource="status")]}}
    assert not is_legacy(status_only) and in_sync(body, status_only)


def test_takeover_turns_the_old_update_entry_into_the_operators_apply_entry():
    live = {"apiVersion": "apps/v1", "metadata": {
        "annotations": {LEGACY_ANNOTATION: "{}"},
        "managedFields": [
            _entry("Update", {"f:metadata": {"f:annotations": {f"f:{LEGACY_ANNOTATION}": {}}},
                              "f:spec": {"f:replicas": {}}}),
            _entry("Update", {"f:spec": {"f:paused": {}}}, manager="kubectl-edit"),
            _entry("Update", {"f:status": {}}, manager="kube-controller-manager", subresource="status"),
            _entry("Update", {"f:spec": {"f:template": {"f:spec": {"f:nodeSelector": {"f:zone": {}}}}}})]}}
    assert is_legacy(live)
    entries = taken_over(live)
    assert [(e["manager"], e["operation"]) for e in entries] == [
        ("kubectl-edit", "Update"), ("kube-controller-manager", "Update"), (FIELD_MANAGER, "Apply")]
    assert entries[-1]["apiVersion"] == "apps/v1"
    assert entries[-1]["fieldsV1"] == {
        "f:metadata": {"f:annotations": {f"f:{LEGACY_ANNOTATION}": {}}},
        "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:nodeSelector": {"f:zone": {}}}}}}


def test_an_existing_jobs_spec_is_applied_as_the_operator_owns_it():
    from mlflow_operator.apply import owned_values

    fields = {"f:backoffLimit": {}, "f:template": {"f:spec": {
        "f:containers": {'k:{"name":"c"}': {".": {}, "f:image": {}, "f:name": {}}}, "f:args": {}}}}
    live = {"backoffLimit": 3, "selector": {"x": "y"}, "template": {"spec": {
        "args": ["a", "b"], "dnsPolicy": "ClusterFirst",
        "containers": [{"name": "side", "image": "s"}, {"name": "c", "image": "old", "imagePullPolicy": "Always"}]}}}
    assert owned_values(fields, live) == {"backoffLimit": 3, "template": {"spec": {
        "containers": [{"name": "c", "image": "old"}], "args": ["a", "b"]}}}
    job = {"kind": "Job", "metadata": {"name": "m"}, "spec": {"template": {"spec": {"nodeSelector": {"z": "a"}}}}}
    owned = {"spec": live, "metadata": {"managedFields": [_entry("Apply", {"f:spec": fields})]}}
    assert pinned(job, owned)["spec"] == owned_values(fields, live)  # a dropped key is not dropped here
