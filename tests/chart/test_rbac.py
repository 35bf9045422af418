"""The chart's RBAC grants exactly what the operator calls, in both watch modes, as
judged by kube-apiserver's own RBAC authorizer (SubjectAccessReview for the chart's
ServiceAccount, and real requests with its token for the escalation check).

What the operator calls is tests/operator/rbac_record.py; that the real operator gets by
with exactly these rules, running as this ServiceAccount, is the operator tests' part
(tests/operator/chart_rbac.py). Here every (verb, resource) of a wide probe set must be
allowed if and only if the record lists it, in the namespaces the mode says.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart import helm as h
from tests.chart.rbac import ChartRbac
from tests.conftest import unique_namespace
from tests.operator import rbac_record
from tests.support.kubeapi import ApiError, Kube

RBAC_GROUP = "rbac.authorization.k8s.io"
BIND = ("bind", RBAC_GROUP, "clusterroles")
CLUSTER_SCOPED = {"clusterrolebindings", "clusterroles", "namespaces", "customresourcedefinitions"}
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
# Beyond what the operator calls: what a compromised operator would want.
EXTRA = {("", "pods"), ("", "configmaps"), ("", "namespaces"), ("", "serviceaccounts/token"),
         ("", "pods/exec"), ("apps", "replicasets"), ("apps", "deployments/scale"),
         ("authentication.k8s.io", "tokenreviews"), (RBAC_GROUP, "roles"), (RBAC_GROUP, "rolebindings"),
         (RBAC_GROUP, "clusterroles"), ("apiextensions.k8s.io", "customresourcedefinitions"),
         ("mlflow-operator.dev", "mlflowservers/finalizers")}
RULES_TPL = h.CHART / "templates" / "_rbac_rules.tpl"


def _expected(clusterwide: bool) -> set[tuple[str, str, str]]:
    return rbac_record.observed_api_calls(clusterwide=clusterwide)


def _probes() -> set[tuple[str, str]]:
    return {(g, r) for _, g, r in _expected(True)} | EXTRA


def _scoped(resource: str) -> bool:
    return resource.split("/")[0] not in CLUSTER_SCOPED


@pytest.fixture(scope="module")
def clusterwide(admin: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartRbac]:
    rbac = ChartRbac.install(admin, tmp_path_factory.mktemp("rbac"), [])
    yield rbac
    rbac.uninstall()


@pytest.fixture(scope="module")
def namespaced(admin: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartRbac]:
    watch = [unique_namespace("team-a"), unique_namespace("team-b")]
    rbac = ChartRbac.install(admin, tmp_path_factory.mktemp("rbac"), watch)
    yield rbac
    rbac.uninstall()


def _mismatches(rbac: ChartRbac, expected: set[tuple[str, str, str]], namespace: str | None,
                scoped: bool) -> list[str]:
    """Probes whose answer differs from `expected`; namespaced resources are asked in
    `namespace`, cluster-scoped ones cluster-wide, each set only when `scoped` says."""
    out = []
    for group, resource in sorted(_probes()):
        if _scoped(resource) != scoped:
            continue
        for verb in VERBS:
            want = (verb, group, resource) in expected
            if rbac.allowed(verb, group, resource, namespace) != want:
                out.append(f"{verb} {group or 'core'}/{resource} in {namespace}: "
                           f"{'denied' if want else 'allowed'} by the API server")
    return out


def test_clusterwide_grants_exactly_the_recorded_calls(clusterwide: ChartRbac) -> None:
    expected = _expected(clusterwide=True)
    somewhere = unique_namespace("anywhere")  # need not exist: RBAC judges names only
    assert _mismatches(clusterwide, expected, somewhere, scoped=True) == []
    # Bound by a ClusterRoleBinding: also across every namespace at once (Kopf's watches).
    assert _mismatches(clusterwide, expected, None, scoped=True) == []
    assert _mismatches(clusterwide, expected, None, scoped=False) == []


def test_namespaced_grants_the_recorded_calls_in_the_watched_namespaces_only(namespaced: ChartRbac) -> None:
    expected = _expected(clusterwide=False)
    for namespace in namespaced.watch:
        assert _mismatches(namespaced, expected, namespace, scoped=True) == [], namespace
    # Other namespaces, and every namespace at once, stay out of reach.
    assert _mismatches(namespaced, set(), "kube-system", scoped=True) == []
    assert _mismatches(namespaced, set(), None, scoped=True) == []
    assert _mismatches(namespaced, expected, None, scoped=False) == []
    assert not namespaced.allowed("list", "apiextensions.k8s.io", "customresourcedefinitions")


@pytest.mark.parametrize("mode", ["clusterwide", "namespaced"])
def test_bind_only_auth_delegator_and_no_escalation(mode: str, request: pytest.FixtureRequest) -> None:
    rbac: ChartRbac = request.getfixturevalue(mode)
    assert rbac.allowed(*BIND, name="system:auth-delegator")
    for role in ("cluster-admin", "admin", "edit", None):
        assert not rbac.allowed(*BIND, name=role), role
    for verb, group, resource in [("escalate", RBAC_GROUP, "clusterroles"), ("impersonate", "", "users"),
                                  ("impersonate", "", "serviceaccounts"), ("*", "", "secrets")]:
        assert not rbac.allowed(verb, group, resource, rbac.watch[0] if rbac.watch else None), verb


def _binding(rbac: ChartRbac, role: str) -> dict:
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{rbac.release}-{role.replace(':', '-')}"},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "server", "namespace": rbac.release}]}


def test_the_operator_token_can_grant_token_reviews_and_nothing_more(clusterwide: ChartRbac) -> None:
    """The real escalation check on the real write the operator makes per server."""
    operator = clusterwide.as_operator()
    resource = f"{RBAC_GROUP}/v1/clusterrolebindings"
    created = operator.create(resource, _binding(clusterwide, "system:auth-delegator"))
    assert operator.delete(resource, None, created["metadata"]["name"])
    with pytest.raises(ApiError) as refused:
        operator.create(resource, _binding(clusterwide, "cluster-admin"))
    assert refused.value.code == 403
    assert "attempting to grant RBAC permissions not currently held" in refused.value.message
    with pytest.raises(ApiError) as refused:
        operator.list("v1/pods", "kube-system")  # never granted, in any mode
    assert refused.value.code == 403


def test_rbac_disabled_renders_no_rbac(tmp_path: Path) -> None:
    objects = h.template(tmp_path, {"rbac": {"create": False}})
    assert not [o for o in objects if o["kind"].endswith(("Role", "RoleBinding"))]


def test_every_rule_says_why(clusterwide: ChartRbac, namespaced: ChartRbac) -> None:
    """Each group of rules in _rbac_rules.tpl follows a comment, and the rendered roles
    hold no rule from anywhere else."""
    lines = [line.strip() for line in RULES_TPL.read_text().splitlines()]
    rule_starts = [i for i, line in enumerate(lines) if line.startswith("- apiGroups:")]
    for i in rule_starts:
        j = i - 1
        while lines[j].startswith(("verbs:", "resources:", "resourceNames:", "- apiGroups:")):
            j -= 1  # the rule above shares this rule's comment
        assert lines[j].startswith("#"), f"rule at line {i + 1} of {RULES_TPL.name} has no comment"
    # Rules behind a values switch that is off by default (rbac.serviceMonitors) are not
    # rendered here.
    off = [i for i in rule_starts if any(lines[k].startswith("{{- if .Values.rbac.serviceMonitors")
                                         for k in range(i) if "{{- end" not in " ".join(lines[k:i]))]
    rule_starts = [i for i in rule_starts if i not in off]
    # The CRD rule is rendered in cluster-wide mode only; a Role repeats per namespace.
    for rbac, missing in ((clusterwide, 0), (namespaced, 1)):
        # templates/mlflow-roles.yaml: roles for MLflow servers and users, not the operator's.
        rendered = {(o["kind"], o["metadata"]["name"]): len(o["rules"])
                    for o in rbac.objects if o["kind"] in ("ClusterRole", "Role")
                    and o["metadata"].get("labels", {}).get("mlflow-operator.dev/rbac") != "workspaces"}
        assert sum(rendered.values()) == len(rule_starts) - missing, rendered
