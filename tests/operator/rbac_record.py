"""Every Kubernetes API call the operator makes, as RBAC sees it: (verb, group, resource).

`test_handlers_integration.py::test_operator_calls_only_what_rbac_grants` runs the whole
lifecycle (create, update, drift repair, degrade/recover, restart, delete) against the
emulator, records each call the operator process makes, and fails if one is missing
here. The Helm chart's ClusterRole test compares its rules with `observed_api_calls()`.

Group "" is the core group. `mode` tells which calls only happen in one operator mode.
"""
from __future__ import annotations

CORE, APPS, BATCH = "", "apps", "batch"
NET, POLICY, RBAC = "networking.k8s.io", "policy", "rbac.authorization.k8s.io"
OURS = "mlflow-operator.dev"

_CHILD_WRITES = ("get", "create", "patch", "delete")
_WATCHED = ("list", "watch")

CALLS: dict[tuple[str, str], tuple[str, ...]] = {
    # The custom resource: Kopf lists/watches it, patches finalizers and its annotations
    # (progress, last-handled-configuration), and the status subresource.
    (OURS, "mlflowservers"): ("get", "list", "watch", "patch"),
    (OURS, "mlflowservers/status"): ("patch",),
    # Children: create-or-patch by name; watched (label selector) to react to changes.
    (CORE, "secrets"): _CHILD_WRITES + _WATCHED,
    (CORE, "serviceaccounts"): _CHILD_WRITES + _WATCHED,
    (CORE, "services"): _CHILD_WRITES + _WATCHED,
    (CORE, "persistentvolumeclaims"): _CHILD_WRITES + _WATCHED,
    (APPS, "deployments"): _CHILD_WRITES + _WATCHED,
    (BATCH, "jobs"): _CHILD_WRITES + _WATCHED,
    (NET, "ingresses"): _CHILD_WRITES,
    (NET, "networkpolicies"): _CHILD_WRITES,
    (POLICY, "poddisruptionbudgets"): _CHILD_WRITES,
    (RBAC, "clusterrolebindings"): _CHILD_WRITES,
    # Events about MLflowServers (Kopf posts them through the core API).
    (CORE, "events"): ("create",),
}

# Only with `--all-namespaces` (cluster-wide mode): Kopf scans namespaces and CRDs to
# follow new ones. Not exercised by the namespaced integration test.
CLUSTERWIDE_ONLY: dict[tuple[str, str], tuple[str, ...]] = {
    (CORE, "namespaces"): ("list", "watch"),
    ("apiextensions.k8s.io", "customresourcedefinitions"): ("list", "watch"),
}

# Not a call but an authorization check: creating a ClusterRoleBinding to
# system:auth-delegator requires `bind` on that ClusterRole (RBAC escalation prevention),
# unless the operator itself holds every permission of system:auth-delegator.
BIND: dict[tuple[str, str], tuple[str, ...]] = {
    (RBAC, "clusterroles"): ("bind",),  # resourceNames: [system:auth-delegator]
}


def observed_api_calls(clusterwide: bool = True) -> set[tuple[str, str, str]]:
    """{(verb, group, resource)} the operator needs; resource may be `plural/subresource`."""
    table = {**CALLS, **BIND}
    if clusterwide:
        table.update(CLUSTERWIDE_ONLY)
    return {(verb, group, resource) for (group, resource), verbs in table.items() for verb in verbs}
