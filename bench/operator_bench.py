"""Operator benchmark: N MLflowServers created at once on the real control plane.

`python -m bench.operator_bench [--quick] [--count N]` (or via `python -m bench`). A
control plane of its own (tests.support.controlplane: etcd, kube-apiserver,
kube-controller-manager v1.35) with the MLflowServer CRD; the real operator process
(`mlflow-operator run`) watches one namespace as the chart's ServiceAccount (the chart's
RBAC, a TokenRequest token), through the fault proxy, which counts its requests. The
test Node runs the pods (SimulatedRunner: Job pods exit 0, server pods become Ready), so
the real Job and Deployment controllers complete migrations and roll out. Measured:

- seconds until every object is reconciled (status written, migration Job created),
- seconds until every object is Ready (migration done, Deployment available),
- API requests per object (everything the operator sent, watches and Events included),
  and the writes (POST/PUT/PATCH/DELETE) among them,
- requests per object and resync in steady state (measured over two resync periods, the
  operator's watch requests included), and the writes in that time (none expected),
- the operator's peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.operator.chart_rbac import OperatorIdentity
from tests.operator.harness import CR, WRITE_METHODS, OperatorProcess, server_manifest, wait_for
from tests.support.controlplane import ControlPlane
from tests.support.crd import install_crd
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import Kube
from tests.support.node import Node

NS = "bench"
TARGETS = {"seconds_to_all_ready": "< 120", "operator_peak_rss_mb": "< 200", "steady_resync_writes": "== 0"}


def _calls(proxy: FaultProxy) -> tuple[int, int]:
    """(all requests, writes) the proxy passed: only the operator goes through it."""
    total = sum(proxy.count(m, "") for m in ("GET", *WRITE_METHODS))
    return total, sum(proxy.count(m, "") for m in WRITE_METHODS)


def _count(admin: Kube, test) -> int:
    return sum(1 for item in admin.list(CR, NS) if test(item.get("status") or {}))


def _reconciled(status: dict[str, Any]) -> bool:
    return status.get("observedGeneration") == 1 and bool((status.get("migration") or {}).get("job"))


def _measure(admin: Kube, proxy: FaultProxy, operator: OperatorProcess, count: int, resync: float) -> dict[str, Any]:
    calls0, writes0 = _calls(proxy)
    cpu0 = operator.cpu_seconds()
    started = time.monotonic()
    for i in range(count):
        admin.create(CR, server_manifest(f"s{i:04d}", NS))
    timeout = 120 + count
    wait_for(lambda: _count(admin, _reconciled) == count, timeout=timeout, what="all reconciled", interval=1)
    reconciled = time.monotonic() - started
    wait_for(lambda: _count(admin, lambda s: s.get("phase") == "Ready") == count, timeout=timeout,
             what="all Ready", interval=1)
    ready = time.monotonic() - started
    calls1, writes1 = _calls(proxy)
    window = 2 * resync  # two resync periods with nothing to do
    time.sleep(window)
    calls2, writes2 = _calls(proxy)
    periods = window / resync
    return {
        "objects": count,
        "seconds_to_all_reconciled": round(reconciled, 1),
        "seconds_to_all_ready": round(ready, 1),
        "requests_per_object": round((calls1 - calls0) / count, 1),
        "writes_per_object": round((writes1 - writes0) / count, 1),
        "steady_resync_requests_per_object": round((calls2 - calls1) / count / periods, 1),
        "steady_resync_writes": writes2 - writes1,
        "operator_peak_rss_mb": round(operator.peak_rss_bytes() / 2**20, 1),
        "operator_cpu_seconds": round(operator.cpu_seconds() - cpu0, 1),
    }


def run(quick: bool = False, count: int | None = None) -> dict[str, Any]:
    count = count or (20 if quick else 200)
    resync = 10.0 if quick else 30.0
    workdir = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    plane = ControlPlane(workdir / "control-plane").start()
    proxy = node = operator = None
    try:
        admin = Kube.from_kubeconfig(plane.kubeconfig)
        install_crd(admin)
        proxy = FaultProxy(plane.url, plane.ca_file, plane.pki).start()
        identity = OperatorIdentity.install(admin, workdir, "mlflow-operator", watch=[NS])
        node = Node(admin, "bench-node", namespaces={NS}).start()
        operator = OperatorProcess(identity.kubeconfig(admin, proxy.url), workdir, [NS], resync_seconds=resync)
        operator.start()
        result = _measure(admin, proxy, operator, count, resync)
    finally:
        for part in (operator, node, proxy, plane):
            if part is not None:
                part.stop()
    return {**result, "targets": TARGETS}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.operator_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 objects instead of 200")
    parser.add_argument("--count", type=int, help="number of MLflowServers (default 200)")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick, count=args.count), indent=2))


if __name__ == "__main__":
    main()
