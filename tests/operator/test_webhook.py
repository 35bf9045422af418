"""The injection webhook on the real control plane: kube-apiserver calls the real operator
over TLS (its own CA, in the chart's Secret, its caBundle patched into the chart's
MutatingWebhookConfiguration), and what it stores is what these tests read back.

The operator runs as the chart's ServiceAccount with the chart's RBAC (webhook rules
included) and watches `NS` only; `OTHER` holds Pods that use the server of `NS` through
the `<namespace>.<name>` label form; `STRANGER` is not in the server's allowedNamespaces.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest

from tests.conftest import unique_namespace
from tests.operator.harness import CR, server_manifest, wait_for
from tests.operator.webhook_harness import LABEL, InjectionOperator, bare_pod, refusal
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import Kube

TOKEN_DIR = "/var/run/secrets/mlflow/serviceaccount"


@pytest.fixture(scope="module")
def hook(admin: Kube, crd: dict, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InjectionOperator]:
    ns, other, stranger = unique_namespace("hook"), unique_namespace("hook-other"), unique_namespace("hook-stranger")
    operator = InjectionOperator(admin, proxy.url, tmp_path_factory.mktemp("hook"), watch=[ns],
                                 scope=[ns, other, stranger])
    operator.namespaces = (ns, other, stranger)  # type: ignore[attr-defined]
    try:
        for namespace in (other, stranger):
            admin.create_namespace(namespace)
        operator.start()
        admin.create(CR, server_manifest("mlflow", ns, {"auth": {"allowedNamespaces": [ns, other]}}))
        # Ready to answer: a dry-run Pod comes back mutated (the ServiceAccount exists, the
        # listener is up, the API server has the caBundle).
        wait_for(lambda: _try_mutated(operator, ns), 60, "the webhook to mutate a dry-run Pod", interval=0.5)
        yield operator
    finally:
        operator.stop()
        for namespace in (other, stranger):
            admin.delete("v1/namespaces", None, namespace)
        log = operator.log()
        assert "Traceback" not in log, log[-4000:]


def _try_mutated(hook: InjectionOperator, namespace: str) -> bool:
    try:
        pod = hook.dry_run_pod(namespace, bare_pod({LABEL: "mlflow"}))
    except Exception:  # noqa: BLE001 - not ready yet: SA missing, webhook unreachable
        return False
    return any(v["name"] == "mlflow-operator-token" for v in pod["spec"].get("volumes") or [])


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def test_a_pod_with_only_the_label_gets_token_mount_and_variables(hook: InjectionOperator, admin: Kube) -> None:
    ns, _, _ = hook.namespaces  # type: ignore[attr-defined]
    before = hook.calls()
    created = hook.create_pod(ns, bare_pod({LABEL: "mlflow"}))
    stored = admin.get("v1/pods", ns, created["metadata"]["name"])
    assert stored is not None
    volume = next(v for v in stored["spec"]["volumes"] if v["name"] == "mlflow-operator-token")
    assert volume["projected"]["sources"] == [{"serviceAccountToken": {
        "audience": f"https://mlflow.{ns}.svc", "expirationSeconds": 3600, "path": "token"}}]
    (container,) = stored["spec"]["containers"]
    assert {"name": "mlflow-operator-token", "mountPath": TOKEN_DIR, "readOnly": True} in container["volumeMounts"]
    assert _env(container) == {"MLFLOW_TRACKING_URI": f"http://mlflow.{ns}.svc:5000",
                               "MLFLOW_TRACKING_AUTH": "k8s-token",
                               "MLFLOW_K8S_TOKEN_PATH": f"{TOKEN_DIR}/token"}
    # The API server's own ServiceAccount volume is still there, untouched.
    assert any(v["name"].startswith("kube-api-access-") for v in stored["spec"]["volumes"])
    assert hook.calls() == before + 1


def test_an_unlabelled_pod_is_never_sent_and_stays_unchanged(hook: InjectionOperator, admin: Kube) -> None:
    ns, _, _ = hook.namespaces  # type: ignore[attr-defined]
    before = hook.calls()
    pods = [hook.create_pod(ns, bare_pod({"app": "other"})) for _ in range(3)]
    for pod in pods:
        stored = admin.get("v1/pods", ns, pod["metadata"]["name"])
        assert stored is not None
        assert not [v for v in stored["spec"]["volumes"] if v["name"].startswith("mlflow")]
        assert "env" not in stored["spec"]["containers"][0]
    assert hook.calls() == before, "the objectSelector keeps unlabelled Pods away from the webhook"


def test_a_pod_with_its_own_tracking_uri_keeps_it(hook: InjectionOperator, admin: Kube) -> None:
    ns, _, _ = hook.namespaces  # type: ignore[attr-defined]
    own = [{"name": "MLFLOW_TRACKING_URI", "value": "http://my-proxy:8080"}]
    created = hook.create_pod(ns, bare_pod({LABEL: "mlflow"}, env=own))
    stored = admin.get("v1/pods", ns, created["metadata"]["name"])
    env = _env(stored["spec"]["containers"][0])
    assert env["MLFLOW_TRACKING_URI"] == "http://my-proxy:8080"
    assert env["MLFLOW_TRACKING_AUTH"] == "k8s-token"


def test_a_job_with_only_the_label_gets_a_mutated_pod(hook: InjectionOperator, admin: Kube) -> None:
    """The Job controller creates the Pod (as its ServiceAccount); the webhook still applies."""
    ns, _, _ = hook.namespaces  # type: ignore[attr-defined]
    template = bare_pod({LABEL: "mlflow"})
    template.pop("apiVersion"), template.pop("kind")
    template["metadata"].pop("generateName")
    admin.create("batch/v1/jobs", {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train"},
                                   "spec": {"backoffLimit": 0, "template": template}}, ns)
    pods = wait_for(lambda: admin.list("v1/pods", ns, labels="job-name=train"), 30, "the Job's pod")
    assert _env(pods[0]["spec"]["containers"][0])["MLFLOW_TRACKING_AUTH"] == "k8s-token"


def test_a_pod_of_another_namespace_names_the_server_with_its_namespace(hook: InjectionOperator, admin: Kube) -> None:
    ns, other, _ = hook.namespaces  # type: ignore[attr-defined]
    created = hook.create_pod(other, bare_pod({LABEL: f"{ns}.mlflow"}))
    stored = admin.get("v1/pods", other, created["metadata"]["name"])
    assert _env(stored["spec"]["containers"][0])["MLFLOW_TRACKING_URI"] == f"http://mlflow.{ns}.svc:5000"


def test_an_unknown_server_is_refused_with_its_name(hook: InjectionOperator) -> None:
    ns, other, _ = hook.namespaces  # type: ignore[attr-defined]
    error = refusal(lambda: hook.create_pod(ns, bare_pod({LABEL: "no-such-server"})))
    assert error.code == 400
    assert "no-such-server" in error.message and f"not found in namespace {ns}" in error.message, error.message
    print(f"\nrefused: {error.message}")
    # A namespace the operator does not watch: it may not even read the server there.
    error = refusal(lambda: hook.create_pod(other, bare_pod({LABEL: "mlflow"})))
    assert f"MLflowServer {other}/mlflow" in error.message and "does not watch" in error.message, error.message


def test_a_namespace_the_server_does_not_accept_is_refused(hook: InjectionOperator) -> None:
    ns, _, stranger = hook.namespaces  # type: ignore[attr-defined]
    error = refusal(lambda: hook.create_pod(stranger, bare_pod({LABEL: f"{ns}.mlflow"})))
    assert f"MLflowServer {ns}/mlflow does not accept ServiceAccounts of namespace {stranger}" in error.message


def test_an_api_server_that_fails_or_stalls_the_servers_read_refuses_with_503(
        hook: InjectionOperator, proxy: FaultProxy) -> None:
    """The operator reaches the API server through the fault proxy: a failed or stalled
    read of the MLflowServer is a clear, retryable refusal before the API server's own
    5 s deadline (the Job controller creates the Pod again), then all is well again."""
    ns, _, _ = hook.namespaces  # type: ignore[attr-defined]
    path = f"/namespaces/{ns}/mlflowservers/mlflow"
    for rule in (proxy.fail(500, "GET", path), proxy.delay(4.5, "GET", path)):
        try:
            start = time.monotonic()
            error = refusal(lambda: hook.create_pod(ns, bare_pod({LABEL: "mlflow"})))
            took = time.monotonic() - start
        finally:
            proxy.remove(rule)
        assert error.code == 503 and f"could not read MLflowServer {ns}/mlflow" in error.message, error.message
        print(f"\n{rule.action}: refused after {took:.1f} s: {error.message[:160]}")
        assert took < 5
    assert _try_mutated(hook, ns)


def test_a_bad_label_value_is_refused(hook: InjectionOperator) -> None:
    ns, _, _ = hook.namespaces  # type: ignore[attr-defined]
    error = refusal(lambda: hook.create_pod(ns, bare_pod({LABEL: "a.b.c"})))
    assert "'a.b.c' does not name an MLflowServer" in error.message, error.message
    # The form a user may guess first: mutating admission runs before validation, so the
    # webhook's answer is what they see.
    error = refusal(lambda: hook.create_pod(ns, bare_pod({LABEL: f"{ns}/mlflow"})))
    assert "label values cannot hold '/', use <namespace>.<name>" in error.message, error.message


def test_a_server_not_ready_yet_is_a_warning_not_a_refusal(hook: InjectionOperator, admin: Kube) -> None:
    """No node runs the server in this module: the Pod is admitted, kubectl shows why its
    MLflow calls would fail for now."""
    ns, _, _ = hook.namespaces  # type: ignore[attr-defined]
    response = admin.session.post(f"{admin.server}/api/v1/namespaces/{ns}/pods", params={"dryRun": "All"},
                                  json=bare_pod({LABEL: "mlflow"}), timeout=30)
    assert response.status_code == 201, response.text
    warning = response.headers.get("Warning", "")
    assert f"MLflowServer {ns}/mlflow is not Ready" in warning, warning


def test_what_the_webhook_adds_to_a_pod_creation(hook: InjectionOperator) -> None:
    """Measured side by side (dry runs, interleaved): a labelled Pod's admission includes a
    TLS call to the operator and its read of the MLflowServer."""
    ns, _, _ = hook.namespaces  # type: ignore[attr-defined]
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(60):
        labelled = i % 2 == 0
        start = time.perf_counter()
        pod = hook.dry_run_pod(ns, bare_pod({LABEL: "mlflow"} if labelled else {"app": "other"}))
        times[labelled].append(time.perf_counter() - start)
        assert any(v["name"] == "mlflow-operator-token" for v in pod["spec"]["volumes"]) is labelled
    p50 = {k: statistics.median(v) * 1000 for k, v in times.items()}
    p95 = {k: sorted(v)[int(len(v) * 0.95) - 1] * 1000 for k, v in times.items()}
    print(f"\nPod dry-run create, 30 each: labelled p50 {p50[True]:.1f} ms / p95 {p95[True]:.1f} ms;"
          f" unlabelled p50 {p50[False]:.1f} ms / p95 {p95[False]:.1f} ms")
    # The API server gives the webhook timeoutSeconds=5: stay far below it on a loaded machine.
    assert p95[True] < 1500, p95
