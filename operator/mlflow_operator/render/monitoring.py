"""The Prometheus Operator ServiceMonitor of a server (`spec.monitoring.serviceMonitor`).

MLflow serves `/metrics` (with `--expose-prometheus`, i.e. `server.exposeMetrics`) on the
server port, and through the k8s-auth app only to MLflow admins: an anonymous scrape gets
401, a non-admin 403. Prometheus therefore scrapes with the admin's HTTP Basic credentials,
which the ServiceMonitor references in the admin Secret (`basicAuth`, read by the
Prometheus Operator; the values never appear in the ServiceMonitor). The path is always
`/metrics`: MLflow's exporter does not follow `server.staticPrefix`.
"""

from __future__ import annotations

from typing import Any

from mlflow_operator import names
from mlflow_operator.model import MLflowServerSpec, ServerRef
from mlflow_operator.render.common import Manifest, metadata

API_VERSION = "monitoring.coreos.com/v1"
KIND = "ServiceMonitor"
METRICS_PATH = "/metrics"
SERVICE_PORT_NAME = "http"  # render/network.py's Service port


def service_monitor_name(ref: ServerRef) -> str:
    return ref.name


def _endpoint(ref: ServerRef, spec: MLflowServerSpec) -> dict[str, Any]:
    monitor = spec.monitoring.service_monitor
    admin = names.admin_secret_name(ref, spec)
    endpoint: dict[str, Any] = {
        "port": SERVICE_PORT_NAME,
        "path": METRICS_PATH,
        "scheme": "http",
        "basicAuth": {
            "username": {"name": admin, "key": names.ADMIN_USERNAME_KEY},
            "password": {"name": admin, "key": names.ADMIN_PASSWORD_KEY},
        },
    }
    if monitor.interval:
        endpoint["interval"] = monitor.interval
    if monitor.scrape_timeout:
        endpoint["scrapeTimeout"] = monitor.scrape_timeout
    return endpoint


def render_service_monitor(ref: ServerRef, spec: MLflowServerSpec) -> Manifest | None:
    """None unless `spec.monitoring.serviceMonitor.enabled` (the model then guarantees
    that metrics are exposed and Basic auth is on)."""
    monitor = spec.monitoring.service_monitor
    if not monitor.enabled:
        return None
    meta = metadata(ref, service_monitor_name(ref), "server")
    # The user's labels (a Prometheus serviceMonitorSelector) never replace ours.
    meta["labels"] = {**monitor.labels, **meta["labels"]}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": {
            # The Service carries its pods' selector labels, and nothing else does
            # that is a Service (the migration Job's labels name another component).
            "selector": {"matchLabels": names.selector_labels(ref)},
            "namespaceSelector": {"matchNames": [ref.namespace]},
            "endpoints": [_endpoint(ref, spec)],
        },
    }
