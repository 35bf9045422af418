"""The chart's RBAC grants exactly what the operator calls, in both watch modes.

Two independent checks:

* static: the rules the chart binds to the operator's ServiceAccount, expanded to
  (verb, group, resource), equal the operator's recorded API calls
  (tests/operator/rbac_record.py, kept honest by the handlers' integration test);
* behavioural: the real operator process (`mlflow-operator run`) reconciles MLflowServers
  against the emulator through create, rollout, drift repair, feature switch-off and
  deletion, every request is recorded with its namespace and name, and each one must be
  allowed by the chart's rendered Roles/bindings (a small RBAC authorizer,
  tests/chart/rbac.py); every granted (verb, group, resource) must have been used.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import pytest

from tests.chart import helm as h
from tests.chart.rbac import CLUSTER_SCOPED, Call, allows, expand, grants_for
from tests.operator import rbac_record
from tests.operator.harness import CR, OperatorProcess, RecordingKube, _verb, server_manifest, wait_for
from tests.support import kubeproto as kp

SA = h.RELEASE  # the ServiceAccount is named after the release
RBAC_GROUP = "rbac.authorization.k8s.io"
BIND = ("bind", RBAC_GROUP, "clusterroles")
# The record lists namespaces list/watch for cluster-wide mode, but Kopf only lists
# namespaces when it watches namespace *patterns* with scanning on; the operator runs
# cluster-wide or on exact names (scanning off), so it never does (the cluster-wide
# session below proves it: no such call is made, yet the check that every call is
# allowed passes without them).
NEVER_CALLED = {("list", "", "namespaces"), ("watch", "", "namespaces")}


def _chart_rbac(tmp_path: Path, namespaces: list[str]) -> list[dict[str, Any]]:
    values = {"watchNamespaces": namespaces} if namespaces else None
    return [o for o in h.template(tmp_path, values)
            if o["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]


def _expected(clusterwide: bool) -> set[tuple[str, str, str]]:
    return rbac_record.observed_api_calls(clusterwide=clusterwide) - NEVER_CALLED


# ---- static: rules == record ---------------------------------------------------------

def test_clusterwide_rules_equal_the_recorded_calls(tmp_path: Path) -> None:
    objects = _chart_rbac(tmp_path, [])
    assert {o["kind"] for o in objects} == {"ClusterRole", "ClusterRoleBinding"}
    granted = expand(g.rule for g in grants_for(objects, h.NAMESPACE, SA))
    expected = _expected(clusterwide=True)
    assert granted - expected == set(), "granted but never called"
    assert expected - granted == set(), "called but not granted"


def test_namespaced_rules_are_split_by_scope(tmp_path: Path) -> None:
    namespaces = ["team-a", "team-b"]
    objects = _chart_rbac(tmp_path, namespaces)
    grants = grants_for(objects, h.NAMESPACE, SA)
    cluster = expand(g.rule for g in grants if g.namespace is None)
    expected = _expected(clusterwide=False)
    assert cluster == {c for c in expected if c[2] in CLUSTER_SCOPED or c == BIND}
    for ns in namespaces:
        local = expand(g.rule for g in grants if g.namespace == ns)
        assert local == {c for c in expected if c[2] not in CLUSTER_SCOPED and c != BIND}, ns
    assert {g.namespace for g in grants} == {None, *namespaces}
    # Nothing namespaced is granted cluster-wide: other namespaces stay out of reach.
    assert not allows(grants, Call("get", "", "secrets", "kube-system", "any"))
    assert not allows(grants, Call("list", "", "secrets"))


def test_no_escalation_beyond_auth_delegator(tmp_path: Path) -> None:
    for namespaces in ([], ["team-a"]):
        grants = grants_for(_chart_rbac(tmp_path, namespaces), h.NAMESPACE, SA)
        bind_rules = [g.rule for g in grants if "bind" in g.rule["verbs"]]
        assert bind_rules == [{"apiGroups": [RBAC_GROUP], "resources": ["clusterroles"],
                               "verbs": ["bind"], "resourceNames": ["system:auth-delegator"]}]
        assert allows(grants, Call(*BIND, None, "system:auth-delegator"))
        assert not allows(grants, Call(*BIND, None, "cluster-admin"))
        for verb in ("escalate", "impersonate", "update", "deletecollection", "*"):
            assert not any(verb in g.rule["verbs"] for g in grants), verb
        # The operator never reviews tokens itself, and cannot edit roles.
        assert not allows(grants, Call("create", "authentication.k8s.io", "tokenreviews"))
        for resource in ("clusterroles", "roles", "rolebindings"):
            assert not allows(grants, Call("create", RBAC_GROUP, resource, "team-a", "x"))


def test_rbac_disabled_renders_no_rbac(tmp_path: Path) -> None:
    objects = h.template(tmp_path, {"rbac": {"create": False}})
    assert not [o for o in objects if o["kind"].endswith(("Role", "RoleBinding"))]


# ---- behavioural: a recorded operator session ----------------------------------------

class CallLog(RecordingKube):
    """RecordingKube plus the namespace and name of each call, for scope checks."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.calls: list[Call] = []

    async def _parse(self, raw: aiohttp.web.BaseRequest) -> kmock.Request:
        request = await super()._parse(raw)
        path = kp.parse_path(raw.path)
        if path is not None and path.plural:
            resource = path.plural + (f"/{path.subresource}" if path.subresource else "")
            self.calls.append(Call(_verb(raw.method, path.name, raw.query.get("watch")),
                                   path.group or "", resource, path.namespace or None, path.name or None))
        return request


def _phase(kube: CallLog, ns: str, name: str) -> str | None:
    return ((kube.get(CR, ns, name) or {}).get("status") or {}).get("phase")


def _bring_up(kube: CallLog, ns: str, name: str) -> None:
    job = wait_for(lambda: ((kube.get(CR, ns, name) or {}).get("status") or {})
                   .get("migration", {}).get("job"), what=f"{name}'s migration Job")
    wait_for(lambda: kube.get("batch/v1/jobs", ns, job), what=f"Job {job}")
    kube.mark_job_finished(ns, job)
    wait_for(lambda: kube.get("apps/v1/deployments", ns, name), what=f"Deployment {name}")
    kube.mark_deployment_available(ns, name)
    wait_for(lambda: _phase(kube, ns, name) == "Ready", what=f"{name} Ready")


def _tamper(kube: CallLog, resource: str, ns: str | None, name: str) -> None:
    """Drift: someone edits a label the operator owns; the resync must patch it back."""
    kube.patch(resource, ns, name, {"metadata": {"labels": {"app.kubernetes.io/name": "tampered"}}})
    wait_for(lambda: kube.get(resource, ns, name)["metadata"]["labels"]["app.kubernetes.io/name"] != "tampered",
             what=f"{resource} {name} repaired")


def _session(kube: CallLog, ns: str) -> list[str]:
    """Everything the operator does for two servers; returns the roles its bindings name."""
    uri = f"postgresql://mlflow:pw@db.{ns}.svc:5432/mlflow"
    kube.create("v1/secrets", {"metadata": {"name": "db"},
                               "data": {"uri": base64.b64encode(uri.encode()).decode()}}, namespace=ns)
    db = {"uriSecretRef": {"name": "db", "key": "uri"}}
    kube.create(CR, server_manifest("plain", ns, {}))  # sqlite on a PVC
    kube.create(CR, server_manifest("full", ns, {
        "replicas": 2, "backendStore": db, "auth": {"authDatabase": db},
        "artifacts": {"destination": "s3://bucket/mlflow"},
        "ingress": {"enabled": True, "host": "mlflow.example.com"},
        "networkPolicy": {"enabled": True}}))
    for name in ("plain", "full"):
        _bring_up(kube, ns, name)
    bindings = kube.list("rbac.authorization.k8s.io/v1/clusterrolebindings")
    roles = [b["roleRef"]["name"] for b in bindings]
    job = kube.get(CR, ns, "plain")["status"]["migration"]["job"]
    for resource, name in [("v1/secrets", "plain-config"), ("v1/serviceaccounts", "plain-server"),
                           ("v1/services", "plain"), ("v1/persistentvolumeclaims", "plain-data"),
                           ("apps/v1/deployments", "plain"), ("batch/v1/jobs", job),
                           ("networking.k8s.io/v1/ingresses", "full"),
                           ("networking.k8s.io/v1/networkpolicies", "full"),
                           ("policy/v1/poddisruptionbudgets", "full")]:
        _tamper(kube, resource, ns, name)
    _tamper(kube, "rbac.authorization.k8s.io/v1/clusterrolebindings", None,
            f"mlflow-operator:{ns}:plain:auth-delegator")
    # A new image migrates again; the earlier migration Job is deleted once that succeeds.
    kube.patch(CR, ns, "plain", {"spec": {"image": "registry.example.com/mlflow-server:2.0"}})
    new_job = wait_for(lambda: kube.get(CR, ns, "plain")["status"]["migration"]["job"] != job
                       and kube.get(CR, ns, "plain")["status"]["migration"]["job"], what="a new migration Job")
    wait_for(lambda: kube.get("batch/v1/jobs", ns, new_job), what=f"Job {new_job}")
    kube.mark_job_finished(ns, new_job)
    wait_for(lambda: kube.get("batch/v1/jobs", ns, job) is None, what="the earlier migration Job deleted")
    kube.patch(CR, ns, "full", {"spec": {"replicas": 1, "ingress": {"enabled": False},
                                         "networkPolicy": {"enabled": False}}})
    for resource in ("networking.k8s.io/v1/ingresses", "networking.k8s.io/v1/networkpolicies",
                     "policy/v1/poddisruptionbudgets"):
        wait_for(lambda: kube.get(resource, ns, "full") is None, what=f"{resource} full deleted")
    for name in ("plain", "full"):
        kube.delete(CR, ns, name)
        wait_for(lambda: kube.get(CR, ns, name) is None, what=f"{name} deleted (finalizer released)")
    return roles


@pytest.mark.slow
@pytest.mark.parametrize("watch", [[], ["team-a", "team-b"]], ids=["all-namespaces", "namespaced"])
def test_operator_session_is_allowed_by_the_chart(tmp_path: Path, watch: list[str]) -> None:
    kube = CallLog().start()
    operator = None
    try:
        for ns in ("team-a", "team-b", "elsewhere"):
            kube.create_namespace(ns)
        operator = OperatorProcess(kube, tmp_path, watch, resync_seconds=0.5).start()
        try:
            roles = _session(kube, "team-a")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log (tail):\n{operator.log()[-4000:]}") from None
        operator.stop()
        log = operator.log()
    finally:
        if operator is not None:
            operator.stop()
        kube.stop()

    assert "Traceback" not in log
    grants = grants_for(_chart_rbac(tmp_path, watch), h.NAMESPACE, SA)
    denied = sorted({c for c in kube.calls if not allows(grants, c)}, key=str)
    assert denied == [], f"the chart's RBAC would forbid these operator calls: {denied}"
    # Escalation check of each ClusterRoleBinding the operator created.
    assert roles and all(allows(grants, Call(*BIND, None, role)) for role in roles), roles
    # Every granted permission was used (bind is checked just above).
    used = {(c.verb, c.group, c.resource) for c in kube.calls}
    granted = expand(g.rule for g in grants)
    assert granted - used - {BIND} == set(), "granted but unused in a full session"
    assert not used & NEVER_CALLED
