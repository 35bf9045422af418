"""The injection webhook's RBAC in the chart is exactly what it needs, judged by the real
API server: without either of its two rules the operator meets a real 403 (and says so),
and the rules reach that one Secret and that one MutatingWebhookConfiguration only.
Then an operator outage with `failurePolicy: Fail`: labelled Pods wait, others do not;
restarted, the operator serves the certificate its Secret holds."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unique_namespace
from tests.operator.harness import CR, server_manifest, wait_for
from tests.operator.webhook_harness import LABEL, InjectionOperator, bare_pod, refusal
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import Kube

ADMISSION = "admissionregistration.k8s.io"


def _without_webhook_rule(kind: str):  # noqa: ANN202
    def change(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = copy.deepcopy(objects)
        (role,) = [o for o in out if o["kind"] == kind and o["metadata"]["name"].endswith("-webhook")]
        assert len(role["rules"]) == 1, role["rules"]
        role["rules"] = []
        return out
    return change


@pytest.mark.parametrize(("kind", "shown"), [("Role", "Secret/"), ("ClusterRole", "MutatingWebhookConfiguration/")])
def test_without_a_webhook_rule_the_operator_meets_a_real_403(admin: Kube, crd: dict, proxy: FaultProxy,
                                                              tmp_path: Path, kind: str, shown: str) -> None:
    ns = unique_namespace("hook-rbac")
    hook = InjectionOperator(admin, proxy.url, tmp_path, watch=[ns], scope=[ns], change=_without_webhook_rule(kind))
    try:
        hook.start(wait=False)
        line = wait_for(lambda: next((ln for ln in hook.log().splitlines()
                                      if "Webhook certificates not ready" in ln and shown in ln), None),
                        30, f"the operator to report the 403 without the webhook {kind} rule")
        assert "HTTP 403" in line, line
        print(f"\nwithout the webhook {kind} rule: {line[:300]}")
    finally:
        hook.stop()


def _injected(hook: InjectionOperator, namespace: str) -> bool:
    try:
        pod = hook.dry_run_pod(namespace, bare_pod({LABEL: "mlflow"}))
    except Exception:  # noqa: BLE001 - not back yet
        return False
    return any(v["name"] == "mlflow-operator-token" for v in pod["spec"].get("volumes") or [])


def _allowed(hook: InjectionOperator, verb: str, group: str, resource: str, namespace: str, name: str) -> bool:
    """kube-apiserver's verdict for the chart's ServiceAccount (SubjectAccessReview)."""
    assert hook.identity is not None
    release, account = hook.release, hook.identity.service_account
    review = hook.admin.create("authorization.k8s.io/v1/subjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": f"system:serviceaccount:{release}:{account}",
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{release}", "system:authenticated"],
                 "resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                        "namespace": namespace, "name": name}}})
    return bool(review["status"].get("allowed"))


def test_the_rules_reach_one_secret_and_one_configuration_and_an_outage_blocks_labelled_pods_only(
        admin: Kube, crd: dict, proxy: FaultProxy, tmp_path: Path) -> None:
    ns = unique_namespace("hook-outage")
    hook = InjectionOperator(admin, proxy.url, tmp_path, watch=[ns], scope=[ns])
    try:
        hook.start()
        admin.create(CR, server_manifest("mlflow", ns))
        release, secret = hook.release, hook.secret["metadata"]["name"]
        for verb in ("get", "patch"):
            assert _allowed(hook, verb, "", "secrets", release, secret)
            assert _allowed(hook, verb, ADMISSION, "mutatingwebhookconfigurations", "", hook.name)
        for verb, group, resource, namespace, name in [
                ("get", "", "secrets", release, "another-secret"), ("list", "", "secrets", release, ""),
                ("create", "", "secrets", release, ""), ("delete", "", "secrets", release, secret),
                ("get", ADMISSION, "mutatingwebhookconfigurations", "", "someone-elses"),
                ("patch", ADMISSION, "validatingwebhookconfigurations", "", hook.name),
                ("create", ADMISSION, "mutatingwebhookconfigurations", "", ""),
                ("delete", ADMISSION, "mutatingwebhookconfigurations", "", hook.name)]:
            assert not _allowed(hook, verb, group, resource, namespace, name), (verb, resource, name)
        # The operator stops: failurePolicy Fail (the chart's default) keeps labelled Pods
        # out (a Job's controller retries), and every other Pod is created as usual.
        wait_for(lambda: admin.get("v1/serviceaccounts", ns, "default"), 30, "the default ServiceAccount")
        assert hook.operator is not None
        serial = hook.served_certificate().serial_number
        hook.operator.stop()
        assert hook.create_pod(ns, bare_pod({"app": "other"}))["metadata"]["name"]
        error = refusal(lambda: hook.create_pod(ns, bare_pod({LABEL: "mlflow"})))
        assert f'failed calling webhook "{hook.hook_name}"' in error.message, error.message
        print(f"\noperator down, labelled Pod: {error.message[:200]}")
        # Back up: it serves the certificate its Secret holds (no new one, no caBundle change).
        hook.operator.start()
        wait_for(lambda: _injected(hook, ns), 30, "a labelled Pod injected again")
        assert hook.served_certificate().serial_number == serial
        assert "Webhook certificate issued" not in hook.log().split("Signal SIGTERM")[-1]
    finally:
        hook.stop()
