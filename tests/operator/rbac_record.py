"""Every Kubernetes API call the operator makes, as RBAC sees it: (verb, group, resource).

Kept true by the real RBAC authorizer: tests/operator/test_rbac_real.py shows each rule
of the chart is needed (the operator meets a real 403 without it), and the operator's
integration tests run the whole lifecycle as the chart's ServiceAccount with no 403.
tests/chart/test_rbac.py checks, by SubjectAccessReview, that the chart grants exactly
`observed_api_calls()`. (Server-side apply is a PATCH: the verbs did not change; an apply
that creates an object is also authorized as a create.)

Group "" is the core group. `mode` tells which calls only happen in one operator mode.
"""
from __future__ import annotations

CORE, APPS, BATCH = "", "apps", "batch"
NET, POLICY, RBAC = "networking.k8s.io", "policy", "rbac.authorization.k8s.io"
OURS = "mlflow-operator.dev"

_APPLY = ("get", "create", "patch")  # create-or-patch by name; never a delete
_PRUNE = _APPLY + ("delete",)  # kinds that go away when the spec stops asking for them
_WATCHED = ("list", "watch")  # label-selected watches that react to child changes

CALLS: dict[tuple[str, str], tuple[str, ...]] = {
    # The custom resource: Kopf lists/watches it, patches finalizers and its annotations
    # (progress, last-handled-configuration), and the status subresource.
    (OURS, "mlflowservers"): ("get", "list", "watch", "patch"),
    (OURS, "mlflowservers/status"): ("patch",),
    # Children. Namespaced ones are garbage-collected through their ownerReferences.
    (CORE, "secrets"): _APPLY + _WATCHED,
    (CORE, "serviceaccounts"): _APPLY + _WATCHED,
    (CORE, "services"): _APPLY + _WATCHED,
    (CORE, "persistentvolumeclaims"): _APPLY + _WATCHED,
    (APPS, "deployments"): _APPLY + _WATCHED,
    (BATCH, "jobs"): _PRUNE + _WATCHED,  # finished Jobs of an earlier migration are deleted
    (NET, "ingresses"): _PRUNE,
    (NET, "networkpolicies"): _PRUNE,
    (POLICY, "poddisruptionbudgets"): _PRUNE,
    # Cluster-scoped: deleted by the finalizer when its MLflowServer goes.
    (RBAC, "clusterrolebindings"): _PRUNE,
    # Events about MLflowServers (Kopf posts them through the core API).
    (CORE, "events"): ("create",),
}

# Only with `--all-namespaces` (test_handlers_clusterwide.py): Kopf watches CRDs to
# notice the MLflowServer CRD appearing or changing.
CLUSTERWIDE_ONLY: dict[tuple[str, str], tuple[str, ...]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): ("list", "watch"),
}
# Only with patterns such as `--namespace 'team-*'` (test_handlers_globs.py): Kopf lists
# and watches namespaces to match them, and with that scanning on it also watches CRDs as
# in cluster-wide mode. Plain names and --all-namespaces do not list namespaces.
NAMESPACE_GLOBS: dict[tuple[str, str], tuple[str, ...]] = {
    (CORE, "namespaces"): ("list", "watch"),
    **CLUSTERWIDE_ONLY,
}

# Not a call but an authorization check: creating a ClusterRoleBinding to
# system:auth-delegator requires `bind` on that ClusterRole (RBAC escalation prevention),
# unless the operator itself holds every permission of system:auth-delegator.
BIND: dict[tuple[str, str], tuple[str, ...]] = {
    (RBAC, "clusterroles"): ("bind",),  # resourceNames: [system:auth-delegator]
}


def observed_api_calls(clusterwide: bool = True, globs: bool = False) -> set[tuple[str, str, str]]:
    """{(verb, group, resource)} the operator needs; resource may be `plural/subresource`."""
    table = {**CALLS, **BIND}
    if clusterwide:
        table.update(CLUSTERWIDE_ONLY)
    if globs:
        table.update(NAMESPACE_GLOBS)
    return {(verb, group, resource) for (group, resource), verbs in table.items() for verb in verbs}
