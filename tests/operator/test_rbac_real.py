"""Every rule of the chart's RBAC is needed: with any one rule removed, the real RBAC
authorizer refuses a call the operator makes, and the operator shows it (a Degraded
status with reason Forbidden, or the API server's 403 text in its log).

The other half, every call the operator makes is allowed by the chart, is asserted by the
integration tests (namespaced, cluster-wide, globs): they run the whole lifecycle with the
chart's RBAC and find no 403 in the log. Together they replace the emulator's recorded
call list (tests/operator/rbac_record.py) and its comparison with the rules.

The first reconcile touches every kind the namespaced rules name (a fresh server reads
its Secrets, applies its children, looks for a Deployment and for optional objects to
prune, posts Events, writes status), so one MLflowServer per case is enough.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import unique_namespace
from tests.operator import chart_rbac
from tests.operator.chart_rbac import OperatorIdentity, RuleRef
from tests.operator.harness import CR, OperatorProcess, rbac_denials, release_namespace, server_manifest, wait_for
from tests.support.kubeapi import Kube

WATCHED = "rbac-watched"  # a namespace name for rendering at collection; each case renders its own


def _rules(watch: list[str]) -> list[RuleRef]:
    return chart_rbac.rules(chart_rbac.render("collect", "collect", watch))


NAMESPACED = _rules([WATCHED])
# Cluster-wide mode adds a rule of its own (Kopf watches CRDs); the rest are the same.
CLUSTERWIDE_ONLY = [r for r in _rules([]) if "customresourcedefinitions" in r.rule.get("resources", [])]
CASES = [pytest.param(r, [WATCHED], id=r.label) for r in NAMESPACED] + \
        [pytest.param(r, [], id=f"clusterwide-{r.label}") for r in CLUSTERWIDE_ONLY]


def _refused(admin: Kube, operator: OperatorProcess, namespace: str, rule: RuleRef) -> str | None:
    """What shows the 403: the status message, or the log line with the API server's text."""
    status = (admin.get(CR, namespace, "tracking") or {}).get("status") or {}
    degraded = next((c for c in status.get("conditions") or [] if c["type"] == "Degraded"), {})
    if degraded.get("reason") == "Forbidden":
        return f"status: {degraded['message']}"
    resources = "|".join(re.escape(r) for r in rule.rule.get("resources") or [])
    for line in rbac_denials(operator.log()):
        if re.search(rf'resource \\*"({resources})\\*"', line):
            return f"log: {line[:400]}"
    return None


@pytest.mark.parametrize(("rule", "watch"), CASES)
def test_without_this_rule_the_operator_meets_a_real_403(admin, crd, proxy, tmp_path: Path,
                                                          rule: RuleRef, watch: list[str]) -> None:
    namespace = unique_namespace("rbac")
    release = unique_namespace("op-rbac")
    watched = [namespace] if watch else []
    rendered = chart_rbac.render(release, release, watched)
    dropped = next((r for r in chart_rbac.rules(rendered) if r == rule), None)
    assert dropped is not None, f"the chart of release {release} has no {rule.label}"
    admin.create_namespace(namespace)
    identity = OperatorIdentity.install(admin, tmp_path, release, watch=watched,
                                        change=lambda objects: chart_rbac.without(objects, dropped))
    operator = OperatorProcess(identity.kubeconfig(admin, proxy.url), tmp_path, watched,
                               extra=[] if watch else ["--all-namespaces"])
    try:
        admin.create(CR, server_manifest("tracking", namespace))
        operator.start()
        shown = wait_for(lambda: _refused(admin, operator, namespace, rule), timeout=30,
                         what=f"a 403 without {rule.label}", interval=0.3)
        assert "403" in shown or "forbidden" in shown.lower(), shown
        print(f"\nwithout {rule.label}: {shown}")
    finally:
        operator.stop()
        release_namespace(admin, namespace)
        identity.uninstall(admin)
