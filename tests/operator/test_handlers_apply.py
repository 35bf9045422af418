"""The comparison that keeps steady state write-free: a reconcile of an unchanged object
must not patch it, even though the API server added defaults to it."""
from __future__ import annotations

import base64

from mlflow_operator.apply import _comparable, is_create_only, is_ours, is_subset, normalize


def test_server_defaults_do_not_count_as_drift():
    want = {"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "mlflow", "image": "a"}]}}}}
    live = {"spec": {"replicas": 1, "revisionHistoryLimit": 10,
                     "template": {"spec": {"dnsPolicy": "ClusterFirst",
                                           "containers": [{"name": "mlflow", "image": "a",
                                                           "terminationMessagePath": "/dev/termination-log"}]}}}}
    assert is_subset(want, live)


def test_edits_and_removals_count_as_drift():
    want = {"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "mlflow", "image": "a"}]}}}}
    assert not is_subset(want, {"spec": {"replicas": 3, "template": want["spec"]["template"]}})
    assert not is_subset(want, {"spec": {"replicas": 1}})
    two = {"spec": {"replicas": 1, "template": {"spec": {"containers": [
        {"name": "mlflow", "image": "a"}, {"name": "sidecar", "image": "b"}]}}}}
    assert not is_subset(want, two)  # a merge patch replaces lists whole: so must we compare
    assert not is_subset({"a": True}, {"a": 1})
    assert not is_subset({"a": "1"}, {"a": None})


def test_numbers_and_quantities_compare_by_value():
    assert is_subset({"port": 5000}, {"port": 5000})
    assert is_subset({"cpu": 1}, {"cpu": "1"})
    assert is_subset({"ratio": 1}, {"ratio": 1.0})


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


def test_immutable_fields_are_never_patched():
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "m", "labels": {"a": "1"}},
           "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "new"}]}}}}
    assert _comparable(job) == {"metadata": job["metadata"]}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "d"},
           "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                    "resources": {"requests": {"storage": "20Gi"}}}}
    assert _comparable(pvc)["spec"] == {"resources": {"requests": {"storage": "20Gi"}}}


def test_applied_fields_record_key_names_only():
    from mlflow_operator import applied_fields as af

    secret = {"kind": "Secret", "metadata": {"name": "s", "labels": {"a": "1"}}, "data": {"password": "c2VjcmV0"}}
    recorded = af.recorded(af.with_record(secret, secret))
    assert recorded == {"kind": 0, "metadata": {"name": 0, "labels": {"a": 0}}, "data": {"password": 0}}
    assert "c2VjcmV0" not in af.with_record(secret, secret)["metadata"]["annotations"][af.ANNOTATION]
    assert "annotations" not in secret["metadata"]  # the caller's manifest is untouched


def test_only_recorded_keys_that_are_still_live_are_removed():
    from mlflow_operator import applied_fields as af

    old = af.shape({"spec": {"nodeSelector": {"disk": "ssd", "zone": "a"}, "limits": {"cpu": "1"}}, "x": [1]})
    new = {"spec": {"nodeSelector": {"disk": "ssd"}}, "x": [2]}
    live = {"spec": {"nodeSelector": {"disk": "ssd", "zone": "a", "theirs": "b"}, "limits": {"cpu": "1"}}, "x": [1]}
    gone = af.removed(old, new, live)
    assert gone == [("spec", "limits"), ("spec", "nodeSelector", "zone")]
    patch = af.with_removals(new, gone)
    assert patch == {"spec": {"nodeSelector": {"disk": "ssd", "zone": None}, "limits": None}, "x": [2]}
    assert new == {"spec": {"nodeSelector": {"disk": "ssd"}}, "x": [2]}  # not mutated
    # Already gone from the live object: nothing to send.
    assert af.removed(old, new, {"spec": {"nodeSelector": {"disk": "ssd"}}}) == []


def test_an_absent_or_hand_edited_record_removes_nothing():
    from mlflow_operator import applied_fields as af

    for text in (None, "not json", "[1, 2]", '"x"'):
        annotations = {} if text is None else {af.ANNOTATION: text}
        assert af.recorded({"metadata": {"annotations": annotations}}) == {}
    assert af.removed({}, {"a": 1}, {"a": 1, "b": 2}) == []
