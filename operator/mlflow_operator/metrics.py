"""Prometheus metrics of the operator process (`mlflow-operator run --metrics-port PORT`).

Served by prometheus_client's own HTTP server on its own port, next to Kopf's liveness
endpoint, with the client's default process and Python collectors. No authentication: like
kube-state-metrics, the numbers name MLflowServers by reason counts only, never an object
name, a spec value or a secret. The chart renders a Service and, on request, a
ServiceMonitor for it (values `metrics.*`).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILES = Counter(
    "mlflow_operator_reconciles_total",
    "Reconcile passes of MLflowServers, by result: ok, degraded (a problem the user must fix,"
    " shown in the Degraded condition) or error (an API failure Kopf retries).",
    ["result"])
RECONCILE_SECONDS = Histogram(
    "mlflow_operator_reconcile_duration_seconds",
    "Time of one reconcile pass (reads, renders, applies, status), successful or not.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


class _Degraded(Collector):
    """`mlflow_operator_degraded_servers{reason}`: MLflowServers Degraded after their last
    reconcile in this process, counted by reason (the uid -> reason map is kept here)."""

    def __init__(self) -> None:
        self._reasons: dict[str, str] = {}
        self._lock = threading.Lock()

    def set(self, uid: str, reason: str | None) -> None:
        with self._lock:
            if reason is None:
                self._reasons.pop(uid, None)
            else:
                self._reasons[uid] = reason

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("mlflow_operator_degraded_servers",
                                   "MLflowServers whose Degraded condition is True, by reason.",
                                   labels=["reason"])
        with self._lock:
            counts: dict[str, int] = {}
            for reason in self._reasons.values():
                counts[reason] = counts.get(reason, 0) + 1
        for reason, count in sorted(counts.items()):
            family.add_metric([reason], count)
        yield family


DEGRADED = _Degraded()
REGISTRY.register(DEGRADED)


@contextmanager
def timed_reconcile() -> Iterator[None]:
    """Times the pass; an exception counts as result="error" (Kopf retries it)."""
    started = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILES.labels(result="error").inc()
        raise
    finally:
        RECONCILE_SECONDS.observe(time.perf_counter() - started)


def record(uid: str, degraded_reason: str | None) -> None:
    """The outcome of a finished pass: Degraded with this reason, or not Degraded."""
    RECONCILES.labels(result="degraded" if degraded_reason else "ok").inc()
    DEGRADED.set(uid, degraded_reason)


def forget(uid: str) -> None:
    """A deleted MLflowServer leaves the degraded count."""
    DEGRADED.set(uid, None)


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Start the metrics HTTP server in a daemon thread (GET /metrics)."""
    start_http_server(port, addr=host)
