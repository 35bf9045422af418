"""The real operator process (`mlflow-operator run`) on the real control plane, as a user
sees it: children appear with owner references, the rollout waits for the migration Job,
status and Events tell what is going on, steady state writes nothing, drift is repaired,
bad specs degrade and recover, restarts keep the generated secrets, deletion cleans the
cluster-scoped binding.

The operator authenticates as the chart's ServiceAccount with the chart's namespaced RBAC
(watchNamespaces), through the fault proxy. Pods run on the test Node: Job pods succeed
(or are held, or fail), the others become Ready, and the real Job and Deployment
controllers turn that into completed migrations and available Deployments.
One operator process serves the whole module (tests build on each other, in order).
"""
from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from mlflow_operator.apply import APPLIED_KEYS, LEGACY_ANNOTATION
from tests.conftest import unique_namespace
from tests.operator.chart_rbac import OperatorIdentity
from tests.operator.harness import (CR, GatedRunner, OperatorProcess, rbac_denials, release_namespace, requests_in,
                                    server_manifest, wait_for, write_paths, writes)
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import Kube
from tests.support.node import Node

# The operator runs with a mirrored default image, as in an air-gapped cluster.
MIRROR = "registry.internal:5000/mirror/mlflow-server:0.1.0"
DEPLOYMENTS, JOBS, SECRETS = "apps/v1/deployments", "batch/v1/jobs", "v1/secrets"
CRB = "rbac.authorization.k8s.io/v1/clusterrolebindings"


@dataclass
class Stack:
    admin: Kube
    ns: str
    other: str  # a second watched namespace, for the server whose migration fails
    proxy: FaultProxy
    runner: GatedRunner
    operator: OperatorProcess

    def status(self, name: str, ns: str | None = None) -> dict[str, Any]:
        return (self.admin.get(CR, ns or self.ns, name) or {}).get("status") or {}

    def events(self, name: str, ns: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.admin.list("v1/events", ns or self.ns)
                if (e.get("involvedObject") or {}).get("name") == name
                and (e.get("involvedObject") or {}).get("kind") == "MLflowServer"]

    def reasons(self, name: str) -> set[str]:
        return {e.get("reason") for e in self.events(name)}

    def secret_value(self, name: str, key: str) -> str:
        return base64.b64decode(self.admin.get(SECRETS, self.ns, name)["data"][key]).decode()

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        return self.admin.get(resource, self.ns, name)

    def phase(self, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: self.status(name).get("phase") == phase and self.status(name),
                        timeout, f"{name} {phase}")

    def image(self, resource: str, name: str) -> str:
        return self.get(resource, name)["spec"]["template"]["spec"]["containers"][0]["image"]


def cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def b64(values: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


@pytest.fixture(scope="module")
def stack(admin: Kube, crd, proxy: FaultProxy, tmp_path_factory) -> Iterator[Stack]:
    ns, other = unique_namespace("team-a"), unique_namespace("team-b")
    workdir = tmp_path_factory.mktemp("operator")
    identity = OperatorIdentity.install(admin, workdir, unique_namespace("op-int"), watch=[ns, other])
    runner = GatedRunner()
    node = Node(admin, f"node-{ns}", namespaces={ns, other}, runner=runner).start()
    operator = OperatorProcess(identity.kubeconfig(admin, proxy.url), workdir, [ns, other],
                               extra=["--default-server-image", MIRROR])
    try:
        operator.start()
        # The Job controller backs off 10, 20, 40 s between failed pods: this server's
        # migration needs over a minute to fail, so it starts first and is checked late.
        runner.fail_pods_named("kappa-migrate-")
        admin.create(CR, server_manifest("kappa", other))
        yield Stack(admin, ns, other, proxy, runner, operator)
    finally:
        operator.stop()
        node.stop()
        for namespace in (ns, other):
            release_namespace(admin, namespace)
        identity.uninstall(admin)


def _bring_up(stack: Stack, name: str) -> dict[str, Any]:
    return stack.phase(name, "Ready", timeout=60)


def test_create_renders_children_gated_on_migration(stack):
    admin, ns = stack.admin, stack.ns
    stack.runner.hold("alpha-migrate-")  # the migration runs until the test releases it
    uid = admin.create(CR, server_manifest("alpha", ns, {"auth": {"adminServiceAccounts": []}}))["metadata"]["uid"]
    status = wait_for(lambda: cond(stack.status("alpha"), "Progressing").get("reason") == "MigrationRunning"
                      and stack.status("alpha"), what="alpha Progressing/MigrationRunning")
    assert status["phase"] == "Progressing" and status["observedGeneration"] == 1
    job = status["migration"]["job"]
    assert job.startswith("alpha-migrate-")
    wait_for(lambda: (stack.get(JOBS, job) or {}).get("status", {}).get("active") == 1, what="the migration pod")
    assert stack.get(DEPLOYMENTS, "alpha") is None  # the rollout waits for the migration
    children = [(SECRETS, "alpha-config"), (SECRETS, "alpha-admin"), (SECRETS, "alpha-secret-key"),
                ("v1/serviceaccounts", "alpha-server"), ("v1/persistentvolumeclaims", "alpha-data"),
                (JOBS, job), ("v1/services", "alpha")]
    for resource, child in children:
        owners = stack.get(resource, child)["metadata"]["ownerReferences"]
        assert [(o["kind"], o["name"], o["uid"], o["controller"]) for o in owners] == \
            [("MLflowServer", "alpha", uid, True)], child
    binding = admin.get(CRB, None, f"mlflow-operator:{ns}:alpha:auth-delegator")
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "alpha-server", "namespace": ns}]

    stack.runner.release("alpha-migrate-")
    status = _bring_up(stack, "alpha")
    assert status["readyReplicas"] == 1
    assert status["url"] == f"http://alpha.{ns}.svc:5000"
    assert status["audience"] == f"https://alpha.{ns}.svc"
    assert status["adminSecret"] == "alpha-admin"
    assert cond(status, "Ready")["status"] == "True" and cond(status, "Degraded")["status"] == "False"
    deployment = stack.get(DEPLOYMENTS, "alpha")
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == uid
    assert deployment["status"]["availableReplicas"] == 1  # the Deployment controller says so
    # No spec.image: the operator's --default-server-image, for the Job and the server.
    assert stack.image(DEPLOYMENTS, "alpha") == MIRROR and stack.image(JOBS, job) == MIRROR
    reasons = wait_for(lambda: {"Created", "MigrationStarted", "MigrationSucceeded", "Ready"}
                       <= stack.reasons("alpha") and stack.reasons("alpha"), what="alpha's Events")
    assert "Degraded" not in reasons


def test_steady_state_writes_nothing(stack):
    time.sleep(1)  # the last child events of the rollout settle
    before_writes, before_requests = writes(stack.proxy, stack.ns), requests_in(stack.proxy, stack.ns)
    started = time.monotonic()
    time.sleep(6.5)  # three resync periods of 2 s: every reconcile reads, none writes
    resyncs = (time.monotonic() - started) / 2.0
    assert writes(stack.proxy, stack.ns) == before_writes, write_paths(stack.proxy, stack.ns)
    reads = requests_in(stack.proxy, stack.ns) - before_requests
    assert reads > 0  # the timer did run
    print(f"\nsteady state, one server: {reads / resyncs:.1f} requests and 0 writes per resync")


def test_update_propagates_and_rolls_the_deployment(stack):
    admin, ns = stack.admin, stack.ns
    checksum = "mlflow-operator.dev/config-checksum"
    old = stack.get(DEPLOYMENTS, "alpha")["spec"]["template"]["metadata"]["annotations"][checksum]
    admin.patch(CR, ns, "alpha", {"spec": {"auth": {"adminServiceAccounts": [f"{ns}:trainer"]}}})
    wait_for(lambda: f"{ns}:trainer" in stack.secret_value("alpha-config", "auth.ini"),
             what="the new admin ServiceAccount in the rendered ini")
    wait_for(lambda: stack.get(DEPLOYMENTS, "alpha")["spec"]["template"]["metadata"]["annotations"][checksum]
             != old, what="a new config checksum on the pod template")
    wait_for(lambda: stack.status("alpha").get("observedGeneration") == 2, what="observedGeneration 2")
    wait_for(lambda: "Updated" in stack.reasons("alpha"), what="an Updated Event for alpha")
    _bring_up(stack, "alpha")  # the new ReplicaSet's pod is Ready


def test_keys_dropped_from_the_spec_leave_the_children(stack):
    admin, ns = stack.admin, stack.ns

    def pod(key: str) -> dict[str, Any]:
        return stack.get(DEPLOYMENTS, "alpha")["spec"]["template"].get(key) or {}

    admin.patch(CR, ns, "alpha", {"spec": {"nodeSelector": {"disk": "ssd", "zone": "a"},
                                           "podAnnotations": {"team": "a", "cost-center": "42"}}})
    wait_for(lambda: pod("spec").get("nodeSelector") == {"disk": "ssd", "zone": "a"}, what="the node selector")
    # Another controller annotates the pod template: not ours to remove.
    admin.patch(DEPLOYMENTS, ns, "alpha",
                {"spec": {"template": {"metadata": {"annotations": {"other.example/injected": "yes"}}}}})
    admin.patch(CR, ns, "alpha", {"spec": {"nodeSelector": {"zone": None}, "podAnnotations": {"cost-center": None}}})
    wait_for(lambda: pod("spec").get("nodeSelector") == {"disk": "ssd"}, what="zone gone from the node selector")
    annotations = wait_for(lambda: "cost-center" not in pod("metadata")["annotations"]
                           and pod("metadata")["annotations"], what="cost-center gone from the pod annotations")
    assert annotations["team"] == "a" and annotations["other.example/injected"] == "yes"
    admin.patch(CR, ns, "alpha", {"spec": {"nodeSelector": None, "podAnnotations": None}})
    wait_for(lambda: not pod("spec").get("nodeSelector"), what="the node selector gone")
    # What was applied is known from managedFields and a hash of key names: no value.
    config = stack.get(SECRETS, "alpha-config")["metadata"]
    assert LEGACY_ANNOTATION not in config["annotations"]
    assert len(config["annotations"][APPLIED_KEYS]) == 16
    _bring_up(stack, "alpha")


def test_new_image_migrates_before_it_rolls_out(stack):
    admin, ns = stack.admin, stack.ns
    old_job, old_image = stack.status("alpha")["migration"]["job"], stack.image(DEPLOYMENTS, "alpha")
    new_image = "registry.example.com/mlflow-server:2.0"
    stack.runner.hold("alpha-migrate-")
    admin.patch(CR, ns, "alpha", {"spec": {"image": new_image}})
    new_job = wait_for(lambda: (stack.status("alpha").get("migration") or {}).get("job") not in (None, old_job)
                       and stack.status("alpha")["migration"]["job"], what="a new migration Job")
    assert cond(stack.status("alpha"), "Progressing")["reason"] == "MigrationRunning"
    wait_for(lambda: stack.get(JOBS, new_job), what=f"Job {new_job}")
    assert stack.image(JOBS, new_job) == new_image
    wait_for(lambda: (stack.get(JOBS, new_job).get("status") or {}).get("active") == 1, what="the new migration pod")
    # The old pods keep serving the old image until the migration is done.
    assert stack.image(DEPLOYMENTS, "alpha") == old_image
    stack.runner.release("alpha-migrate-")
    wait_for(lambda: stack.image(DEPLOYMENTS, "alpha") == new_image, what="the Deployment on the new image")
    wait_for(lambda: stack.get(JOBS, old_job) is None, what="the old migration Job deleted")
    _bring_up(stack, "alpha")


def test_deleted_or_edited_child_is_restored(stack):
    admin, ns = stack.admin, stack.ns
    old_uid = stack.get("v1/services", "alpha")["metadata"]["uid"]
    admin.delete("v1/services", ns, "alpha")
    restored = wait_for(lambda: stack.get("v1/services", "alpha"), timeout=10, what="Service restored")
    assert restored["metadata"]["uid"] != old_uid
    admin.patch(DEPLOYMENTS, ns, "alpha", {"spec": {"replicas": 5}})
    wait_for(lambda: stack.get(DEPLOYMENTS, "alpha")["spec"]["replicas"] == 1,
             timeout=10, what="Deployment replicas repaired")
    _bring_up(stack, "alpha")


def test_invalid_spec_degrades_then_recovers(stack):
    admin, ns = stack.admin, stack.ns
    # A spec the CRD's schema and CEL rules let through, but the operator's model refuses.
    admin.create(CR, server_manifest("beta", ns, {"server": {"extraArgs": ["--port=1234"]}}))
    degraded = cond(stack.phase("beta", "Degraded"), "Degraded")
    assert degraded["reason"] == "ConflictingServerArgs"
    assert "--port is set by the operator" in degraded["message"]
    warnings = wait_for(lambda: [e for e in stack.events("beta") if e["type"] == "Warning"],
                        what="a Warning Event for beta")
    assert warnings[0]["reason"] == "ConflictingServerArgs"
    assert stack.get(SECRETS, "beta-config") is None  # nothing half-applied
    admin.patch(CR, ns, "beta", {"spec": {"server": {"extraArgs": []}}})
    status = wait_for(lambda: stack.status("beta").get("phase") in ("Progressing", "Ready")
                      and stack.status("beta"), what="beta recovering")
    assert cond(status, "Degraded")["status"] == "False"
    # Kopf posts Events asynchronously: the status can be visible before them.
    wait_for(lambda: "Recovered" in stack.reasons("beta"), what="a Recovered Event for beta")


def test_missing_secret_degrades_until_created(stack):
    admin, ns = stack.admin, stack.ns
    spec = {"backendStore": {"uriSecretRef": {"name": "gamma-db", "key": "uri"}}}
    admin.create(CR, server_manifest("gamma", ns, spec))
    degraded = cond(stack.phase("gamma", "Degraded"), "Degraded")
    assert degraded["reason"] == "SecretNotFound" and "gamma-db" in degraded["message"]
    password = "s3cr3t-Pa55"
    uri = f"postgresql://mlflow:{password}@db.{ns}.svc:5432/mlflow"
    admin.create(SECRETS, {"metadata": {"name": "gamma-db"}, "data": b64({"url": uri})}, ns)
    status = wait_for(lambda: cond(stack.status("gamma"), "Degraded").get("reason") == "SecretKeyNotFound"
                      and stack.status("gamma"), timeout=15, what="gamma: the Secret lacks the key")
    assert "key 'uri' in Secret 'gamma-db'" in cond(status, "Degraded")["message"]
    admin.patch(SECRETS, ns, "gamma-db", {"data": b64({"uri": uri})})
    status = wait_for(lambda: stack.status("gamma").get("phase") in ("Progressing", "Ready")
                      and stack.status("gamma"), timeout=15, what="gamma recovering once the Secret exists")
    assert uri in stack.secret_value("gamma-config", "backend-store-uri")
    # The URI's password is never shown: status, Events, operator log.
    assert password not in str(status) and password not in str(stack.events("gamma"))
    assert password not in stack.operator.log()


def test_user_supplied_admin_secret_is_adopted(stack):
    admin, ns = stack.admin, stack.ns
    admin.create(CR, server_manifest("zeta", ns, {"auth": {"basicAuth": {"existingAdminSecret": "zeta-own-admin"}}}))
    assert "zeta-own-admin" in cond(stack.phase("zeta", "Degraded"), "Degraded")["message"]
    own = {"username": "admin", "password": "chosen-by-the-user-1234"}
    admin.create(SECRETS, {"metadata": {"name": "zeta-own-admin"}, "data": b64(own)}, ns)
    status = wait_for(lambda: stack.status("zeta").get("phase") in ("Progressing", "Ready")
                      and stack.status("zeta"), timeout=15, what="zeta recovering")
    assert status["adminSecret"] == "zeta-own-admin"
    assert stack.get(SECRETS, "zeta-admin") is None  # nothing generated
    adopted = stack.get(SECRETS, "zeta-own-admin")
    assert "ownerReferences" not in adopted["metadata"]  # the user's Secret stays the user's
    assert stack.secret_value("zeta-own-admin", "password") == own["password"]


def test_admin_secret_with_a_password_mlflow_refuses_degrades_until_fixed(stack):
    admin, ns = stack.admin, stack.ns
    short = "tooShort-9"  # MLflow refuses admin passwords under 12 characters
    admin.create(SECRETS, {"metadata": {"name": "iota-own-admin"},
                           "data": b64({"username": "admin", "password": short})}, ns)
    admin.create(CR, server_manifest("iota", ns, {"auth": {"basicAuth": {"existingAdminSecret": "iota-own-admin"}}}))
    degraded = cond(stack.phase("iota", "Degraded"), "Degraded")
    assert degraded["reason"] == "AdminSecretInvalid"
    assert "Secret 'iota-own-admin'" in degraded["message"] and "at least 12 characters" in degraded["message"]
    warnings = wait_for(lambda: [e for e in stack.events("iota") if e["type"] == "Warning"],
                        what="a Warning Event for iota")
    assert warnings[0]["reason"] == "AdminSecretInvalid"
    assert stack.get(DEPLOYMENTS, "iota") is None and stack.get(SECRETS, "iota-config") is None
    admin.patch(SECRETS, ns, "iota-own-admin", {"data": b64({"password": "password1234"})})
    wait_for(lambda: "publicly known default" in cond(stack.status("iota"), "Degraded").get("message", ""),
             timeout=15, what="iota Degraded by the legacy default password")
    admin.patch(SECRETS, ns, "iota-own-admin", {"data": b64({"password": "long-enough-Pa55word"})})
    status = wait_for(lambda: stack.status("iota").get("phase") in ("Progressing", "Ready")
                      and stack.status("iota"), timeout=15, what="iota recovering once the password is valid")
    assert cond(status, "Degraded")["status"] == "False"
    wait_for(lambda: "Recovered" in stack.reasons("iota"), what="a Recovered Event for iota")
    for value in (short, "password1234"):
        assert value not in str(admin.list(CR, ns))
        assert value not in str(stack.events("iota"))
        assert value not in stack.operator.log()


def test_a_users_object_with_a_childs_name_is_not_overwritten(stack):
    admin, ns = stack.admin, stack.ns
    admin.create("v1/services", {"metadata": {"name": "eta"}, "spec": {"ports": [{"port": 80}]}}, ns)
    admin.create(CR, server_manifest("eta", ns))
    degraded = cond(stack.phase("eta", "Degraded"), "Degraded")
    assert degraded["reason"] == "OwnershipConflict" and "Service/eta" in degraded["message"]
    assert [p["port"] for p in stack.get("v1/services", "eta")["spec"]["ports"]] == [80]
    assert "ownerReferences" not in stack.get("v1/services", "eta")["metadata"]
    admin.delete("v1/services", ns, "eta")
    wait_for(lambda: stack.status("eta").get("phase") in ("Progressing", "Ready"), timeout=15, what="eta recovering")
    assert stack.get("v1/services", "eta")["metadata"]["ownerReferences"][0]["name"] == "eta"


def test_optional_objects_follow_the_spec(stack):
    admin, ns = stack.admin, stack.ns
    db = {"uriSecretRef": {"name": "gamma-db", "key": "uri"}}  # created by the test above
    admin.create(CR, server_manifest("delta", ns, {
        "replicas": 2, "backendStore": db, "auth": {"authDatabase": db},
        "artifacts": {"destination": "s3://bucket/mlflow"},
        "ingress": {"enabled": True, "host": "mlflow.example.com"}, "networkPolicy": {"enabled": True}}))
    optional = [("networking.k8s.io/v1/ingresses", "delta"), ("networking.k8s.io/v1/networkpolicies", "delta"),
                ("policy/v1/poddisruptionbudgets", "delta")]
    for resource, name in optional:
        wait_for(lambda: stack.get(resource, name), what=f"{resource} {name}")
    wait_for(lambda: stack.status("delta").get("url") == "http://mlflow.example.com", what="delta's url")
    assert stack.get("v1/persistentvolumeclaims", "delta-data") is None  # nothing on a volume
    assert stack.phase("delta", "Ready", timeout=60)["readyReplicas"] == 2
    admin.patch(CR, ns, "delta", {"spec": {"replicas": 1, "ingress": {"enabled": False},
                                           "networkPolicy": {"enabled": False}}})
    for resource, name in optional:
        wait_for(lambda: stack.get(resource, name) is None, what=f"{resource} {name} deleted")
    wait_for(lambda: "Deleted" in stack.reasons("delta"), what="a Deleted Event for delta")
    wait_for(lambda: stack.status("delta").get("url") == f"http://delta.{ns}.svc:5000", what="in-cluster url")


def test_api_failure_is_retried_and_reported(stack):
    admin, ns = stack.admin, stack.ns
    stack.proxy.fail(500, "PATCH", rf"/namespaces/{ns}/services/epsilon$", times=1)  # the first apply fails
    admin.create(CR, server_manifest("epsilon", ns))
    # Kopf posts its handler failures with its own type "Error" (core/v1 accepts it).
    warning = wait_for(lambda: [e for e in stack.events("epsilon") if e["type"] in ("Warning", "Error")],
                       what="an Event about the failed call")
    assert "apply Service/epsilon failed with HTTP 500" in warning[0]["message"]
    wait_for(lambda: stack.get("v1/services", "epsilon"), timeout=30, what="the retried Service apply")
    wait_for(lambda: (stack.status("epsilon").get("migration") or {}).get("job"), what="epsilon reconciled")


def test_an_object_the_api_rejects_degrades_instead_of_retrying(stack):
    admin, ns = stack.admin, stack.ns
    stack.proxy.fail(422, "PATCH", rf"/namespaces/{ns}/serviceaccounts/theta-server$", times=1)
    admin.create(CR, server_manifest("theta", ns))
    degraded = cond(stack.phase("theta", "Degraded"), "Degraded")
    assert degraded["reason"] == "Rejected"
    assert "apply ServiceAccount/theta-server failed with HTTP 422" in degraded["message"]
    # The resync tries again (the API accepts it now): recovered.
    wait_for(lambda: stack.status("theta").get("phase") in ("Progressing", "Ready"), timeout=15,
             what="theta recovering")


def test_failed_migration_is_reported(stack):
    status = wait_for(lambda: cond(stack.status("kappa", stack.other), "Degraded").get("reason") == "MigrationFailed"
                      and stack.status("kappa", stack.other), timeout=150, what="kappa MigrationFailed")
    job = status["migration"]["job"]
    assert job in cond(status, "Degraded")["message"]
    conditions = {c["type"]: c["status"] for c in stack.admin.get(JOBS, stack.other, job)["status"]["conditions"]}
    assert conditions.get("Failed") == "True"  # the real Job controller gave up on it
    assert stack.admin.get(DEPLOYMENTS, stack.other, "kappa") is None


def test_restart_keeps_generated_secrets(stack):
    admin, ns = stack.admin, stack.ns
    password = stack.secret_value("alpha-admin", "password")
    secret_key = stack.secret_value("alpha-secret-key", "secret-key")
    assert len(password) >= 20 and len(secret_key) >= 32
    stack.operator.stop()
    admin.delete(SECRETS, ns, "alpha-config")  # drift while the operator is down
    stack.operator.start()
    wait_for(lambda: stack.get(SECRETS, "alpha-config"), timeout=20, what="config Secret restored after restart")
    assert stack.secret_value("alpha-admin", "password") == password
    assert stack.secret_value("alpha-secret-key", "secret-key") == secret_key
    for value in (password, secret_key):
        assert value not in stack.operator.log()
        assert value not in str(admin.list("v1/events", ns))
        assert value not in str(admin.list(CR, ns))


def test_lost_admin_secret_is_reported_not_regenerated(stack):
    admin, ns = stack.admin, stack.ns
    password = stack.secret_value("alpha-admin", "password")
    admin.delete(SECRETS, ns, "alpha-admin")
    assert cond(stack.phase("alpha", "Degraded", timeout=15), "Degraded")["reason"] == "AdminSecretLost"
    assert stack.get(SECRETS, "alpha-admin") is None  # no new password invented
    admin.create(SECRETS, {"metadata": {"name": "alpha-admin"},
                           "data": b64({"username": "admin", "password": password})}, ns)
    _bring_up(stack, "alpha")
    assert stack.secret_value("alpha-admin", "password") == password


def test_delete_removes_cluster_role_binding(stack):
    admin, ns = stack.admin, stack.ns
    name = f"mlflow-operator:{ns}:alpha:auth-delegator"
    assert admin.get(CRB, None, name) is not None
    admin.delete(CR, ns, "alpha")
    wait_for(lambda: admin.get(CR, ns, "alpha") is None, what="alpha gone (finalizer released)")
    assert admin.get(CRB, None, name) is None
    assert admin.get(CRB, None, f"mlflow-operator:{ns}:beta:auth-delegator") is not None  # others stay
    # The garbage collector removes the namespaced children through their ownerReferences.
    wait_for(lambda: stack.get(DEPLOYMENTS, "alpha") is None, what="alpha's Deployment collected")


def test_operator_log_is_clean_and_never_forbidden(stack):
    log = stack.operator.log()
    assert "Traceback" not in log
    # The chart's RBAC allowed every call of the whole lifecycle above.
    assert rbac_denials(log) == []
    for line in filter(None, log.splitlines()):  # one JSON object per line
        record = json.loads(line)
        assert record["message"] and record["severity"] in ("debug", "info", "warn", "error")
