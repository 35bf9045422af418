"""The real operator process (`mlflow-operator run`) against the emulator, as a user sees it:
children appear with owner references, status and Events tell what is going on, drift is
repaired, bad specs degrade and recover, restarts keep the generated secrets, deletion
cleans the cluster-scoped binding.

The emulator has no controllers: the tests play the Job and Deployment controllers.
One operator process serves the whole module (tests build on each other, in order).
"""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.operator import rbac_record
from tests.operator.harness import CR, OperatorProcess, fail_next, server_manifest, wait_for

NS = "team-a"
# The operator runs with a mirrored default image, as in an air-gapped cluster.
MIRROR = "registry.internal:5000/mirror/mlflow-server:0.1.0"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


@pytest.fixture(scope="module")
def operator(opkube, tmp_path_factory):
    opkube.create_namespace(NS)
    proc = OperatorProcess(opkube, tmp_path_factory.mktemp("operator"), [NS],
                           extra=["--default-server-image", MIRROR]).start()
    yield proc
    proc.stop()


def _status(kube, name: str) -> dict[str, Any]:
    obj = kube.get(CR, NS, name)
    return (obj or {}).get("status") or {}


def _cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def _events(kube, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.list("v1/events", NS)
            if (e.get("involvedObject") or {}).get("name") == name
            and (e.get("involvedObject") or {}).get("kind") == "MLflowServer"]


def _reasons(kube, name: str) -> set[str]:
    return {e.get("reason") for e in _events(kube, name)}


def _secret_value(kube, name: str, key: str) -> str:
    secret = kube.get("v1/secrets", NS, name)
    return base64.b64decode(secret["data"][key]).decode()


def _job_name(kube, name: str) -> str:
    return wait_for(lambda: _status(kube, name).get("migration", {}).get("job"), what=f"{name}'s migration Job")


def _bring_up(kube, name: str) -> dict[str, Any]:
    job = _job_name(kube, name)
    wait_for(lambda: kube.get("batch/v1/jobs", NS, job), what=f"Job {job}")
    kube.mark_job_finished(NS, job)
    wait_for(lambda: kube.get("apps/v1/deployments", NS, name), what=f"Deployment {name}")
    kube.mark_deployment_available(NS, name)
    return wait_for(lambda: _status(kube, name).get("phase") == "Ready" and _status(kube, name),
                    what=f"{name} Ready")


def test_create_renders_children_gated_on_migration(opkube, operator):
    kube = opkube
    created = kube.create(CR, server_manifest("alpha", NS, {"auth": {"adminServiceAccounts": []}}))
    uid = created["metadata"]["uid"]
    status = wait_for(lambda: _cond(_status(kube, "alpha"), "Progressing").get("reason") == "MigrationRunning"
                      and _status(kube, "alpha"), what="alpha Progressing/MigrationRunning")
    assert status["phase"] == "Progressing"
    assert status["observedGeneration"] == 1
    job = status["migration"]["job"]
    assert job.startswith("alpha-migrate-")
    # The rollout waits for the migration.
    assert kube.get("apps/v1/deployments", NS, "alpha") is None
    children = [("v1/secrets", "alpha-config"), ("v1/secrets", "alpha-admin"),
                ("v1/secrets", "alpha-secret-key"), ("v1/serviceaccounts", "alpha-server"),
                ("v1/persistentvolumeclaims", "alpha-data"), ("batch/v1/jobs", job),
                ("v1/services", "alpha")]
    for resource, child in children:
        obj = kube.get(resource, NS, child)
        assert obj is not None, f"{resource} {child} missing"
        owners = obj["metadata"]["ownerReferences"]
        assert [(o["kind"], o["name"], o["uid"], o["controller"]) for o in owners] == \
            [("MLflowServer", "alpha", uid, True)]
    binding = kube.get("rbac.authorization.k8s.io/v1/clusterrolebindings", None,
                       f"mlflow-operator:{NS}:alpha:auth-delegator")
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "alpha-server", "namespace": NS}]

    status = _bring_up(kube, "alpha")
    assert status["readyReplicas"] == 1
    assert status["url"] == f"http://alpha.{NS}.svc:5000"
    assert status["audience"] == f"https://alpha.{NS}.svc"
    assert status["adminSecret"] == "alpha-admin"
    assert _cond(status, "Ready")["status"] == "True"
    assert _cond(status, "Degraded")["status"] == "False"
    deployment = kube.get("apps/v1/deployments", NS, "alpha")
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == uid
    # No spec.image: the operator's --default-server-image, for the Job and the server.
    for workload in (deployment, kube.get("batch/v1/jobs", NS, job)):
        assert [c["image"] for c in workload["spec"]["template"]["spec"]["containers"]] == [MIRROR]
    reasons = wait_for(lambda: {"Created", "MigrationStarted", "MigrationSucceeded", "Ready"}
                       <= _reasons(kube, "alpha") and _reasons(kube, "alpha"), what="alpha's Events")
    assert "Degraded" not in reasons


def test_steady_state_writes_nothing(opkube, operator):
    kube = opkube
    before = dict(kube.api_calls)
    # Several resync periods (2 s each): every reconcile reads, none writes.
    import time
    time.sleep(5)
    writes = {k: n - before.get(k, 0) for k, n in kube.api_calls.items()
              if k[0] in WRITE_VERBS and n != before.get(k, 0)}
    assert writes == {}
    reads = sum(n - before.get(k, 0) for k, n in kube.api_calls.items() if k[0] == "get")
    assert reads > 0  # the timer did run


def test_update_propagates_and_rolls_the_deployment(opkube, operator):
    kube = opkube
    template = kube.get("apps/v1/deployments", NS, "alpha")["spec"]["template"]
    old_checksum = template["metadata"]["annotations"]["mlflow-operator.dev/config-checksum"]
    kube.patch(CR, NS, "alpha", {"spec": {"auth": {"adminServiceAccounts": [f"{NS}:trainer"]}}})
    wait_for(lambda: f"{NS}:trainer" in _secret_value(kube, "alpha-config", "auth.ini"),
             what="the new admin ServiceAccount in the rendered ini")
    new = wait_for(lambda: (kube.get("apps/v1/deployments", NS, "alpha")["spec"]["template"]["metadata"]
                            ["annotations"]["mlflow-operator.dev/config-checksum"]) != old_checksum,
                   what="a new config checksum on the pod template")
    assert new
    wait_for(lambda: _status(kube, "alpha").get("observedGeneration") == 2, what="observedGeneration 2")
    wait_for(lambda: "Updated" in _reasons(kube, "alpha"), what="an Updated Event for alpha")


def test_keys_dropped_from_the_spec_leave_the_children(opkube, operator):
    kube = opkube

    def pod(key: str) -> dict[str, Any]:
        return kube.get("apps/v1/deployments", NS, "alpha")["spec"]["template"].get(key) or {}

    kube.patch(CR, NS, "alpha", {"spec": {"nodeSelector": {"disk": "ssd", "zone": "a"},
                                          "podAnnotations": {"team": "a", "cost-center": "42"}}})
    wait_for(lambda: pod("spec").get("nodeSelector") == {"disk": "ssd", "zone": "a"}, what="the node selector")
    # Another controller annotates the pod template: not ours to remove.
    kube.patch("apps/v1/deployments", NS, "alpha",
               {"spec": {"template": {"metadata": {"annotations": {"other.example/injected": "yes"}}}}})
    kube.patch(CR, NS, "alpha", {"spec": {"nodeSelector": {"zone": None}, "podAnnotations": {"cost-center": None}}})
    wait_for(lambda: pod("spec").get("nodeSelector") == {"disk": "ssd"}, what="zone gone from the node selector")
    annotations = wait_for(lambda: "cost-center" not in pod("metadata")["annotations"]
                           and pod("metadata")["annotations"], what="cost-center gone from the pod annotations")
    assert annotations["team"] == "a" and annotations["other.example/injected"] == "yes"
    kube.patch(CR, NS, "alpha", {"spec": {"nodeSelector": None, "podAnnotations": None}})
    wait_for(lambda: not pod("spec").get("nodeSelector"), what="the node selector gone")
    # The record of applied keys holds key names only, never a Secret's values.
    config = kube.get("v1/secrets", NS, "alpha-config")
    record = config["metadata"]["annotations"]["mlflow-operator.dev/applied-fields"]
    assert json.loads(record)["data"] == {key: 0 for key in config["data"]}


def test_new_image_migrates_before_it_rolls_out(opkube, operator):
    kube = opkube
    old_job = _status(kube, "alpha")["migration"]["job"]
    old_image = kube.get("apps/v1/deployments", NS, "alpha")["spec"]["template"]["spec"]["containers"][0]["image"]
    kube.patch(CR, NS, "alpha", {"spec": {"image": "registry.example.com/mlflow-server:2.0"}})
    new_job = wait_for(lambda: (_status(kube, "alpha").get("migration") or {}).get("job") != old_job
                       and _status(kube, "alpha")["migration"]["job"], what="a new migration Job")
    status = _status(kube, "alpha")
    assert _cond(status, "Progressing")["reason"] == "MigrationRunning"
    job = wait_for(lambda: kube.get("batch/v1/jobs", NS, new_job), what=f"Job {new_job}")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/mlflow-server:2.0"
    # The old pods keep serving the old image until the migration is done.
    deployment = kube.get("apps/v1/deployments", NS, "alpha")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == old_image
    kube.mark_job_finished(NS, new_job)
    wait_for(lambda: kube.get("apps/v1/deployments", NS, "alpha")["spec"]["template"]["spec"]["containers"][0]
             ["image"] == "registry.example.com/mlflow-server:2.0", what="the Deployment on the new image")
    wait_for(lambda: kube.get("batch/v1/jobs", NS, old_job) is None, what="the old migration Job deleted")
    kube.mark_deployment_available(NS, "alpha")
    wait_for(lambda: _status(kube, "alpha").get("phase") == "Ready", what="alpha Ready again")


def test_deleted_or_edited_child_is_restored(opkube, operator):
    kube = opkube
    old_uid = kube.get("v1/services", NS, "alpha")["metadata"]["uid"]
    kube.delete("v1/services", NS, "alpha")
    restored = wait_for(lambda: kube.get("v1/services", NS, "alpha"), timeout=10, what="Service restored")
    assert restored["metadata"]["uid"] != old_uid
    kube.patch("apps/v1/deployments", NS, "alpha", {"spec": {"replicas": 5}})
    wait_for(lambda: kube.get("apps/v1/deployments", NS, "alpha")["spec"]["replicas"] == 1,
             timeout=10, what="Deployment replicas repaired by the resync timer")


def test_invalid_spec_degrades_then_recovers(opkube, operator):
    kube = opkube
    kube.create(CR, server_manifest("beta", NS, {"replicas": 2}))
    status = wait_for(lambda: _status(kube, "beta").get("phase") == "Degraded" and _status(kube, "beta"),
                      what="beta Degraded")
    degraded = _cond(status, "Degraded")
    assert degraded["reason"] == "SqliteWithReplicas"
    assert "backendStore.uriSecretRef" in degraded["message"]
    warnings = wait_for(lambda: [e for e in _events(kube, "beta") if e["type"] == "Warning"],
                        what="a Warning Event for beta")
    assert warnings[0]["reason"] == "SqliteWithReplicas"
    assert kube.get("v1/secrets", NS, "beta-config") is None  # nothing half-applied
    kube.patch(CR, NS, "beta", {"spec": {"replicas": 1}})
    status = wait_for(lambda: _status(kube, "beta").get("phase") == "Progressing" and _status(kube, "beta"),
                      what="beta recovering")
    assert _cond(status, "Degraded")["status"] == "False"
    # Kopf posts Events asynchronously: the status can be visible before them.
    wait_for(lambda: "Recovered" in _reasons(kube, "beta"), what="a Recovered Event for beta")
    # A failed migration is reported with the Job's name.
    job = _job_name(kube, "beta")
    wait_for(lambda: kube.get("batch/v1/jobs", NS, job), what=f"Job {job}")
    kube.mark_job_finished(NS, job, succeeded=False)
    status = wait_for(lambda: _cond(_status(kube, "beta"), "Degraded").get("reason") == "MigrationFailed"
                      and _status(kube, "beta"), what="beta MigrationFailed")
    assert job in _cond(status, "Degraded")["message"]


def test_missing_secret_degrades_until_created(opkube, operator):
    kube = opkube
    spec = {"backendStore": {"uriSecretRef": {"name": "gamma-db", "key": "uri"}}}
    kube.create(CR, server_manifest("gamma", NS, spec))
    status = wait_for(lambda: _status(kube, "gamma").get("phase") == "Degraded" and _status(kube, "gamma"),
                      what="gamma Degraded")
    assert _cond(status, "Degraded")["reason"] == "SecretNotFound"
    assert "gamma-db" in _cond(status, "Degraded")["message"]
    password = "s3cr3t-Pa55"
    uri = f"postgresql://mlflow:{password}@db.{NS}.svc:5432/mlflow"
    encoded = base64.b64encode(uri.encode()).decode()
    kube.create("v1/secrets", {"metadata": {"name": "gamma-db"}, "data": {"url": encoded}}, namespace=NS)
    status = wait_for(lambda: _cond(_status(kube, "gamma"), "Degraded").get("reason") == "SecretKeyNotFound"
                      and _status(kube, "gamma"), timeout=15, what="gamma: the Secret lacks the key")
    assert "key 'uri' in Secret 'gamma-db'" in _cond(status, "Degraded")["message"]
    kube.patch("v1/secrets", NS, "gamma-db", {"data": {"uri": encoded}})
    status = wait_for(lambda: _status(kube, "gamma").get("phase") == "Progressing" and _status(kube, "gamma"),
                      timeout=15, what="gamma recovering once the Secret exists")
    assert uri in _secret_value(kube, "gamma-config", "backend-store-uri")
    # The URI's password is never shown: status, Events, operator log.
    assert password not in str(status)
    assert password not in str(_events(kube, "gamma"))
    assert password not in operator.log()


def test_user_supplied_admin_secret_is_adopted(opkube, operator):
    kube = opkube
    spec = {"auth": {"basicAuth": {"existingAdminSecret": "zeta-own-admin"}}}
    kube.create(CR, server_manifest("zeta", NS, spec))
    status = wait_for(lambda: _status(kube, "zeta").get("phase") == "Degraded" and _status(kube, "zeta"),
                      what="zeta Degraded until its admin Secret exists")
    assert "zeta-own-admin" in _cond(status, "Degraded")["message"]
    own = {"username": "admin", "password": "chosen-by-the-user-1234"}
    kube.create("v1/secrets", {"metadata": {"name": "zeta-own-admin"},
                               "data": {k: base64.b64encode(v.encode()).decode() for k, v in own.items()}},
                namespace=NS)
    status = wait_for(lambda: _status(kube, "zeta").get("phase") == "Progressing" and _status(kube, "zeta"),
                      timeout=15, what="zeta recovering")
    assert status["adminSecret"] == "zeta-own-admin"
    assert kube.get("v1/secrets", NS, "zeta-admin") is None  # nothing generated
    adopted = kube.get("v1/secrets", NS, "zeta-own-admin")
    assert "ownerReferences" not in adopted["metadata"]  # the user's Secret stays the user's
    assert _secret_value(kube, "zeta-own-admin", "password") == own["password"]


def _b64(values: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


def test_admin_secret_with_a_password_mlflow_refuses_degrades_until_fixed(opkube, operator):
    kube = opkube
    short = "tooShort-9"  # MLflow refuses admin passwords under 12 characters
    kube.create("v1/secrets", {"metadata": {"name": "iota-own-admin"},
                               "data": _b64({"username": "admin", "password": short})}, namespace=NS)
    kube.create(CR, server_manifest("iota", NS, {"auth": {"basicAuth": {"existingAdminSecret": "iota-own-admin"}}}))
    status = wait_for(lambda: _status(kube, "iota").get("phase") == "Degraded" and _status(kube, "iota"),
                      what="iota Degraded by its admin password")
    degraded = _cond(status, "Degraded")
    assert degraded["reason"] == "AdminSecretInvalid"
    assert "Secret 'iota-own-admin'" in degraded["message"]
    assert "at least 12 characters" in degraded["message"]
    warnings = wait_for(lambda: [e for e in _events(kube, "iota") if e["type"] == "Warning"],
                        what="a Warning Event for iota")
    assert warnings[0]["reason"] == "AdminSecretInvalid"
    # No pod that would crash-loop: nothing is rolled out.
    assert kube.get("apps/v1/deployments", NS, "iota") is None
    assert kube.get("v1/secrets", NS, "iota-config") is None
    # The publicly known default of older MLflow versions is refused too.
    kube.patch("v1/secrets", NS, "iota-own-admin", {"data": _b64({"password": "password1234"})})
    wait_for(lambda: "publicly known default" in _cond(_status(kube, "iota"), "Degraded").get("message", ""),
             timeout=15, what="iota Degraded by the legacy default password")
    kube.patch("v1/secrets", NS, "iota-own-admin", {"data": _b64({"password": "long-enough-Pa55word"})})
    status = wait_for(lambda: _status(kube, "iota").get("phase") == "Progressing" and _status(kube, "iota"),
                      timeout=15, what="iota recovering once the password is valid")
    assert _cond(status, "Degraded")["status"] == "False"
    # Kopf posts Events asynchronously: the status can be visible before them.
    wait_for(lambda: "Recovered" in _reasons(kube, "iota"), what="a Recovered Event for iota")
    # The refused values are never shown: status, Events, operator log.
    for value in (short, "password1234"):
        assert value not in str(kube.list(CR, NS))
        assert value not in str(_events(kube, "iota"))
        assert value not in operator.log()


def test_a_users_object_with_a_childs_name_is_not_overwritten(opkube, operator):
    kube = opkube
    kube.create("v1/services", {"metadata": {"name": "eta"}, "spec": {"ports": [{"port": 80}]}}, namespace=NS)
    kube.create(CR, server_manifest("eta", NS))
    status = wait_for(lambda: _status(kube, "eta").get("phase") == "Degraded" and _status(kube, "eta"),
                      what="eta Degraded by the name clash")
    assert _cond(status, "Degraded")["reason"] == "OwnershipConflict"
    assert "Service/eta" in _cond(status, "Degraded")["message"]
    assert kube.get("v1/services", NS, "eta")["spec"]["ports"] == [{"port": 80}]
    kube.delete("v1/services", NS, "eta")
    wait_for(lambda: _status(kube, "eta").get("phase") == "Progressing", timeout=15, what="eta recovering")
    assert kube.get("v1/services", NS, "eta")["metadata"]["ownerReferences"][0]["name"] == "eta"


def test_optional_objects_follow_the_spec(opkube, operator):
    kube = opkube
    db = {"uriSecretRef": {"name": "gamma-db", "key": "uri"}}  # created by the test above
    spec = {"replicas": 2, "backendStore": db, "auth": {"authDatabase": db},
            "artifacts": {"destination": "s3://bucket/mlflow"},
            "ingress": {"enabled": True, "host": "mlflow.example.com"},
            "networkPolicy": {"enabled": True}}
    kube.create(CR, server_manifest("delta", NS, spec))
    optional = [("networking.k8s.io/v1/ingresses", "delta"), ("networking.k8s.io/v1/networkpolicies", "delta"),
                ("policy/v1/poddisruptionbudgets", "delta")]
    for resource, name in optional:
        wait_for(lambda: kube.get(resource, NS, name), what=f"{resource} {name}")
    # Through the Ingress, the URL users reach is the external one.
    wait_for(lambda: _status(kube, "delta").get("url") == "http://mlflow.example.com", what="delta's url")
    assert kube.get("v1/persistentvolumeclaims", NS, "delta-data") is None  # nothing on a volume
    kube.patch(CR, NS, "delta", {"spec": {"replicas": 1, "ingress": {"enabled": False},
                                          "networkPolicy": {"enabled": False}}})
    for resource, name in optional:
        wait_for(lambda: kube.get(resource, NS, name) is None, what=f"{resource} {name} deleted")
    # Kopf posts Events asynchronously: the status can be visible before them.
    wait_for(lambda: "Deleted" in _reasons(kube, "delta"), what="a Deleted Event for delta")
    wait_for(lambda: _status(kube, "delta").get("url") == f"http://delta.{NS}.svc:5000", what="in-cluster url")


def test_api_failure_is_retried_and_reported(opkube, operator):
    kube = opkube
    fail_next(kube, "POST", f"/api/v1/namespaces/{NS}/services", 500)  # the next Service create fails once
    kube.create(CR, server_manifest("epsilon", NS))
    # Kopf posts its handler failures with its own type "Error" (core/v1 accepts it).
    warning = wait_for(lambda: [e for e in _events(kube, "epsilon") if e["type"] in ("Warning", "Error")],
                       what="an Event about the failed call")
    assert "create Service/epsilon failed with HTTP 500" in warning[0]["message"]
    wait_for(lambda: kube.get("v1/services", NS, "epsilon"), timeout=20, what="the retried Service create")
    wait_for(lambda: (_status(kube, "epsilon").get("migration") or {}).get("job"), what="epsilon reconciled")


def test_an_object_the_api_rejects_degrades_instead_of_retrying(opkube, operator):
    kube = opkube
    fail_next(kube, "POST", f"/api/v1/namespaces/{NS}/serviceaccounts", 422)
    kube.create(CR, server_manifest("theta", NS))
    status = wait_for(lambda: _status(kube, "theta").get("phase") == "Degraded" and _status(kube, "theta"),
                      what="theta Degraded: Rejected")
    assert _cond(status, "Degraded")["reason"] == "Rejected"
    assert "create ServiceAccount/theta-server failed with HTTP 422" in _cond(status, "Degraded")["message"]
    # The resync tries again (the API accepts it now): recovered.
    wait_for(lambda: _status(kube, "theta").get("phase") == "Progressing", timeout=15, what="theta recovering")


def test_restart_keeps_generated_secrets(opkube, operator):
    kube = opkube
    password = _secret_value(kube, "alpha-admin", "password")
    secret_key = _secret_value(kube, "alpha-secret-key", "secret-key")
    assert len(password) >= 20 and len(secret_key) >= 32
    operator.stop()
    kube.delete("v1/secrets", NS, "alpha-config")  # drift while the operator is down
    operator.start()
    wait_for(lambda: kube.get("v1/secrets", NS, "alpha-config"), timeout=15,
             what="config Secret restored after restart")
    assert _secret_value(kube, "alpha-admin", "password") == password
    assert _secret_value(kube, "alpha-secret-key", "secret-key") == secret_key
    for value in (password, secret_key):
        assert value not in operator.log()
        assert value not in str(kube.list("v1/events", NS))
        assert value not in str(kube.list(CR, NS))


def test_lost_admin_secret_is_reported_not_regenerated(opkube, operator):
    kube = opkube
    password = _secret_value(kube, "alpha-admin", "password")
    kube.delete("v1/secrets", NS, "alpha-admin")
    status = wait_for(lambda: _status(kube, "alpha").get("phase") == "Degraded" and _status(kube, "alpha"),
                      timeout=10, what="alpha Degraded: admin Secret lost")
    assert _cond(status, "Degraded")["reason"] == "AdminSecretLost"
    assert kube.get("v1/secrets", NS, "alpha-admin") is None  # no new password invented
    restored = {"username": "admin", "password": password}
    kube.create("v1/secrets", {"metadata": {"name": "alpha-admin"},
                               "data": {k: base64.b64encode(v.encode()).decode() for k, v in restored.items()}},
                namespace=NS)
    wait_for(lambda: _cond(_status(kube, "alpha"), "Degraded").get("status") == "False", timeout=15,
             what="alpha no longer Degraded")
    kube.mark_deployment_available(NS, "alpha")  # the drift repairs above changed its spec
    wait_for(lambda: _status(kube, "alpha").get("phase") == "Ready", timeout=15, what="alpha Ready again")
    assert _secret_value(kube, "alpha-admin", "password") == password


def test_delete_removes_cluster_role_binding(opkube, operator):
    kube = opkube
    name = f"mlflow-operator:{NS}:alpha:auth-delegator"
    assert kube.get("rbac.authorization.k8s.io/v1/clusterrolebindings", None, name) is not None
    kube.delete(CR, NS, "alpha")
    wait_for(lambda: kube.get(CR, NS, "alpha") is None, what="alpha gone (finalizer released)")
    assert kube.get("rbac.authorization.k8s.io/v1/clusterrolebindings", None, name) is None
    # The other servers' bindings stay.
    assert kube.get("rbac.authorization.k8s.io/v1/clusterrolebindings", None,
                    f"mlflow-operator:{NS}:beta:auth-delegator") is not None


def test_operator_calls_only_what_rbac_grants(opkube, operator):
    observed = set(opkube.api_calls)
    granted = rbac_record.observed_api_calls()
    assert observed <= granted, f"calls not in tests/operator/rbac_record.py: {sorted(observed - granted)}"
    log = operator.log()
    assert "Traceback" not in log
    # Structured logs: one JSON object per line, each with a message and a severity.
    for line in filter(None, log.splitlines()):
        record = json.loads(line)
        assert record["message"] and record["severity"] in ("debug", "info", "warn", "error")
