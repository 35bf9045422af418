"""`spec.monitoring.serviceMonitor`: a Prometheus Operator ServiceMonitor for the server.

- the model: off by default; on only with metrics exposed and Basic auth on;
- the rendered ServiceMonitor: the server's Service port, `/metrics`, the admin Secret's
  Basic credentials by reference; accepted by the real ServiceMonitor CRD schema (the
  Prometheus Operator's own CRD, vendored in tests/fixtures/) on the real API server, with
  server-side dry-run and apply; a value that schema refuses is refused;
- the real operator, with the chart's RBAC and its `rbac.serviceMonitors` rule: without the
  CRD the server is deployed and Degraded (ServiceMonitorCRDMissing); once the CRD is
  installed the ServiceMonitor appears and the server recovers; turned off, it is deleted;
- the operator's own metrics (`run --metrics-port`) as Prometheus scrapes them, and the
  chart's `metrics.*` values: the operator's Service and ServiceMonitor, the latter accepted
  by the real CRD and selecting that Service only.
"""
from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from mlflow_operator.model import ServerRef, SpecError, parse_spec
from mlflow_operator.render import render_all, render_service
from mlflow_operator.render.monitoring import render_service_monitor
from mlflow_operator.model import GeneratedSecrets
from tests.conftest import unique_namespace
from tests.operator.chart_rbac import CHART, HELM, RBAC_KINDS, OperatorIdentity
from tests.operator.harness import (GatedRunner, OperatorProcess, free_port, release_namespace, server_manifest,
                                    wait_for)
from tests.support.crd import CR
from tests.support.kubeapi import ApiError, Kube
from tests.support.node import Node

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "monitoring.coreos.com_servicemonitors.yaml"
SM_CRD = "servicemonitors.monitoring.coreos.com"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
SERVICE_MONITORS = "monitoring.coreos.com/v1/servicemonitors"
MONITORED = {"server": {"exposeMetrics": True},
             "monitoring": {"serviceMonitor": {"enabled": True, "interval": "30s", "scrapeTimeout": "10s",
                                               "labels": {"release": "kube-prometheus-stack"}}}}
REF = ServerRef(name="tracking", namespace="ml", uid="00000000-0000-0000-0000-000000000001")


# ---- model and render (pure) ----------------------------------------------------------

def test_off_by_default_and_only_with_metrics_and_basic_auth():
    assert render_service_monitor(REF, parse_spec({"server": {"exposeMetrics": True}})) is None
    for spec, needed in (({"monitoring": MONITORED["monitoring"]}, "server.exposeMetrics: true"),
                         ({**MONITORED, "auth": {"basicAuth": {"enabled": False}}},
                          "auth.basicAuth.enabled: true")):
        with pytest.raises(SpecError) as caught:
            parse_spec(spec)
        assert caught.value.reason == "InvalidMonitoring" and needed in caught.value.message
    with pytest.raises(SpecError) as caught:
        parse_spec({**MONITORED, "monitoring": {"serviceMonitor": {"enabled": True, "interval": "30 s"}}})
    assert caught.value.problems[0].startswith("spec.monitoring.serviceMonitor.interval: String should match")


def test_scrapes_the_service_port_as_the_admin_by_secret_reference():
    spec = parse_spec(MONITORED)
    monitor = render_service_monitor(REF, spec)
    assert monitor is not None and monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["ownerReferences"][0]["uid"] == REF.uid
    endpoint, = monitor["spec"]["endpoints"]
    service = render_service(REF, spec)
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert (endpoint["path"], endpoint["interval"], endpoint["scrapeTimeout"]) == ("/metrics", "30s", "10s")
    secret = {"name": "tracking-admin"}
    assert endpoint["basicAuth"] == {"username": {**secret, "key": "username"},
                                     "password": {**secret, "key": "password"}}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    # A user-supplied admin Secret is the one referenced.
    own = parse_spec({**MONITORED, "auth": {"basicAuth": {"existingAdminSecret": "ops-admin"}}})
    assert render_service_monitor(REF, own)["spec"]["endpoints"][0]["basicAuth"]["password"]["name"] == "ops-admin"
    # The ServiceMonitor is the last object: the operator applies it after the Deployment.
    kinds = [o["kind"] for o in render_all(REF, spec, GeneratedSecrets("k" * 64, "p" * 24))]
    assert kinds[-2:] == ["Deployment", "ServiceMonitor"]


# ---- the real ServiceMonitor CRD on the real API server ---------------------------------

def install_service_monitor_crd(admin: Kube) -> None:
    admin.apply(yaml.safe_load(FIXTURE.read_text()), manager="tests-servicemonitor-crd")
    wait_for(lambda: _served(admin), timeout=30, what="the ServiceMonitor CRD served")


def remove_service_monitor_crd(admin: Kube) -> None:
    admin.delete(CRDS, None, SM_CRD)
    wait_for(lambda: admin.get(CRDS, None, SM_CRD) is None, timeout=60, what="the ServiceMonitor CRD gone")


def _served(admin: Kube) -> bool:
    try:
        admin.list(SERVICE_MONITORS, "default")
        return True
    except ApiError:
        return False


def test_the_rendered_servicemonitor_passes_the_real_crd_schema(admin: Kube, namespace: str):
    install_service_monitor_crd(admin)
    ref = ServerRef("tracking", namespace, "00000000-0000-0000-0000-000000000002")
    monitor = render_service_monitor(ref, parse_spec(MONITORED))
    monitor["metadata"].pop("ownerReferences")  # no such MLflowServer here: the GC would delete it
    path = f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/servicemonitors/tracking"
    params = {"fieldManager": "tests", "fieldValidation": "Strict"}
    dry = admin.request("PATCH", path, body=monitor, params={**params, "dryRun": "All"},
                        content_type="application/apply-patch+yaml")
    assert dry["spec"]["endpoints"][0]["basicAuth"]["password"]["key"] == "password"
    assert admin.get(SERVICE_MONITORS, namespace, "tracking") is None  # a dry run stores nothing
    created = admin.request("PATCH", path, body=monitor, params=params, content_type="application/apply-patch+yaml")
    assert created["spec"] == {**monitor["spec"], "endpoints": [created["spec"]["endpoints"][0]]}
    assert created["spec"]["endpoints"][0] == monitor["spec"]["endpoints"][0]  # nothing pruned or defaulted away
    # The schema is really checked: a scheme and an interval it refuses are refused.
    bad = {**monitor, "spec": {**monitor["spec"], "endpoints": [
        {**monitor["spec"]["endpoints"][0], "scheme": "ftp", "interval": "30 seconds"}]}}
    with pytest.raises(ApiError) as refused:
        admin.request("PATCH", path, body=bad, params={**params, "dryRun": "All"},
                      content_type="application/apply-patch+yaml")
    assert refused.value.code == 422
    assert "spec.endpoints[0].scheme" in str(refused.value) and "spec.endpoints[0].interval" in str(refused.value)


# ---- the real operator ------------------------------------------------------------------

def _rbac_with_service_monitors(release: str, watch: list[str]) -> list[dict[str, Any]]:
    """The chart's RBAC as `helm template --set rbac.serviceMonitors=true` renders it."""
    out = subprocess.run(
        [str(HELM), "template", release, str(CHART), "--namespace", release,
         "--set-json", f"watchNamespaces={json.dumps(watch)}",
         "--set", "rbac.serviceMonitors=true", "--set", "webhook.enabled=false"],
        capture_output=True, text=True, timeout=60, check=True,
        env={"HELM_CACHE_HOME": "/tmp/helm-test/cache", "HELM_CONFIG_HOME": "/tmp/helm-test/config",
             "HELM_DATA_HOME": "/tmp/helm-test/data", "PATH": "/usr/bin:/bin"}).stdout
    objects = [doc for doc in yaml.safe_load_all(out) if doc and doc.get("kind") in RBAC_KINDS]
    rules = [r for o in objects if o["kind"] == "Role" for r in o.get("rules") or []]
    assert {"apiGroups": ["monitoring.coreos.com"], "resources": ["servicemonitors"],
            "verbs": ["get", "create", "patch", "delete"]} in rules
    return objects


@pytest.fixture(scope="module")
def operator_ns(admin: Kube, crd, proxy, tmp_path_factory) -> Iterator[tuple[str, OperatorProcess]]:
    ns = unique_namespace("monitoring")
    release = unique_namespace("op-mon")
    workdir = tmp_path_factory.mktemp("operator")
    identity = OperatorIdentity.install(admin, workdir, release, watch=[ns],
                                        change=lambda _: _rbac_with_service_monitors(release, [ns]))
    node = Node(admin, f"node-{ns}", namespaces={ns}, runner=GatedRunner()).start()
    port = free_port()
    operator = OperatorProcess(identity.kubeconfig(admin, proxy.url), workdir, [ns],
                               extra=["--metrics-port", str(port)])
    operator.metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
    try:
        operator.start()
        yield ns, operator
    finally:
        operator.stop()
        node.stop()
        release_namespace(admin, ns)
        identity.uninstall(admin)
        remove_service_monitor_crd(admin)


def scrape(url: str) -> dict[str, float]:
    """The operator's metrics as Prometheus reads them: `name{labels}` -> value."""
    session = requests.Session()
    session.trust_env = False  # straight to the local port
    text = session.get(url, timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def _degraded(admin: Kube, ns: str, name: str) -> dict[str, Any]:
    status = (admin.get(CR, ns, name) or {}).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "Degraded"), {})


def test_operator_without_the_crd_degrades_then_creates_and_deletes_the_servicemonitor(admin: Kube, operator_ns):
    ns, operator = operator_ns
    remove_service_monitor_crd(admin)
    admin.create(CR, server_manifest("metrics", ns, MONITORED))
    missing = wait_for(lambda: _degraded(admin, ns, "metrics").get("reason") == "ServiceMonitorCRDMissing"
                       and _degraded(admin, ns, "metrics"), timeout=60, what="Degraded ServiceMonitorCRDMissing")
    assert "servicemonitors.monitoring.coreos.com" in missing["message"]
    # The server itself is deployed: only its scraping is missing.
    assert admin.get("apps/v1/deployments", ns, "metrics") is not None
    # The operator's own metrics count it (the gauge by reason, never a name).
    degraded_gauge = 'mlflow_operator_degraded_servers{reason="ServiceMonitorCRDMissing"}'
    assert scrape(operator.metrics_url).get(degraded_gauge) == 1.0
    started = time.monotonic()
    install_service_monitor_crd(admin)
    monitor = wait_for(lambda: admin.get(SERVICE_MONITORS, ns, "metrics"), timeout=60, what="the ServiceMonitor")
    wait_for(lambda: _degraded(admin, ns, "metrics").get("status") == "False", timeout=60, what="recovered")
    after = scrape(operator.metrics_url)
    assert degraded_gauge not in after
    assert after['mlflow_operator_reconciles_total{result="ok"}'] >= 1
    assert after['mlflow_operator_reconciles_total{result="degraded"}'] >= 1
    assert after["mlflow_operator_reconcile_duration_seconds_count"] >= 2
    assert "process_resident_memory_bytes" in after
    print(f"ServiceMonitor created and server recovered {time.monotonic() - started:.1f} s after the CRD")
    assert monitor["spec"]["endpoints"][0]["basicAuth"]["username"] == {"name": "metrics-admin", "key": "username"}
    assert monitor["metadata"]["ownerReferences"][0]["kind"] == "MLflowServer"
    admin.patch(CR, ns, "metrics", {"spec": {"monitoring": {"serviceMonitor": {"enabled": False}}}})
    wait_for(lambda: admin.get(SERVICE_MONITORS, ns, "metrics") is None, timeout=60, what="ServiceMonitor deleted")
    log = operator.log()
    assert "Traceback" not in log


def test_an_existing_admin_secret_without_a_username_is_reported(admin: Kube, operator_ns):
    """Prometheus reads the username from the admin Secret: a user's Secret with only the
    password (all MLflow itself needs) would make every scrape fail, so it is Degraded."""
    ns, _ = operator_ns
    install_service_monitor_crd(admin)
    admin.create("v1/secrets", {"metadata": {"name": "ops-admin"}, "stringData": {"password": "a-long-admin-password"}},
                 ns)
    admin.create(CR, server_manifest("ops", ns, {
        **MONITORED, "auth": {"basicAuth": {"existingAdminSecret": "ops-admin"}}}))
    missing = wait_for(lambda: _degraded(admin, ns, "ops").get("reason") == "SecretKeyNotFound"
                       and _degraded(admin, ns, "ops"), timeout=60, what="Degraded SecretKeyNotFound")
    assert "'username'" in missing["message"] and "ops-admin" in missing["message"]
    assert "a-long-admin-password" not in missing["message"]
    admin.patch("v1/secrets", ns, "ops-admin", {"stringData": {"username": "admin"}})
    wait_for(lambda: _degraded(admin, ns, "ops").get("status") == "False", timeout=60, what="recovered")
    monitor = wait_for(lambda: admin.get(SERVICE_MONITORS, ns, "ops"), timeout=60, what="the ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["basicAuth"]["username"] == {"name": "ops-admin", "key": "username"}


# ---- the chart's metrics values ----------------------------------------------------------

def _helm_template(*values: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), "template", "mon", str(CHART), "--namespace", "ops", *values],
                          capture_output=True, text=True, timeout=60,
                          env={"HELM_CACHE_HOME": "/tmp/helm-test/cache", "HELM_CONFIG_HOME": "/tmp/helm-test/config",
                               "HELM_DATA_HOME": "/tmp/helm-test/data", "PATH": "/usr/bin:/bin"})


def test_the_chart_renders_the_operators_metrics_service_and_servicemonitor(admin: Kube, namespace: str):
    default = [d for d in yaml.safe_load_all(_helm_template().stdout) if d]
    assert not [d for d in default if d["kind"] == "ServiceMonitor" or d["metadata"]["name"].endswith("-metrics")]
    out = _helm_template("--set", "metrics.enabled=true", "--set", "metrics.serviceMonitor.enabled=true",
                         "--set", "metrics.serviceMonitor.interval=30s",
                         "--set", "metrics.serviceMonitor.labels.release=kube-prometheus-stack")
    assert out.returncode == 0, out.stderr
    objects = [d for d in yaml.safe_load_all(out.stdout) if d]
    deployment = next(d for d in objects if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port=8081" in container["args"]
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    services = [d for d in objects if d["kind"] == "Service"]
    monitor = next(d for d in objects if d["kind"] == "ServiceMonitor")
    selected = [s for s in services
                if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["mon-mlflow-operator-metrics"]  # not the webhook's
    assert monitor["spec"]["endpoints"][0]["port"] == selected[0]["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Accepted by the real ServiceMonitor CRD (server-side, strict field validation).
    install_service_monitor_crd(admin)
    for obj in (selected[0], monitor):
        obj["metadata"]["namespace"] = namespace
        admin.request("PATCH", f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/servicemonitors/"
                      f"{obj['metadata']['name']}" if obj["kind"] == "ServiceMonitor" else
                      f"/api/v1/namespaces/{namespace}/services/{obj['metadata']['name']}",
                      body=obj, params={"fieldManager": "tests", "fieldValidation": "Strict", "dryRun": "All"},
                      content_type="application/apply-patch+yaml")
    refused = _helm_template("--set", "metrics.serviceMonitor.enabled=true")
    assert refused.returncode != 0
    assert "metrics.serviceMonitor.enabled needs metrics.enabled" in refused.stderr
