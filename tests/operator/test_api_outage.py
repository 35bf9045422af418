"""The real operator while the API server cannot be reached: its reconcile calls fail
with one clear line (a Kopf TemporaryError: "... the Kubernetes API server is
unreachable (...)") instead of urllib3 tracebacks, nothing secret is logged, and the
MLflowServer is reconciled again once the API server answers.

The operator runs with the chart's RBAC and talks to kube-apiserver through a fault
proxy of this module's own (taking it offline must not disturb other modules' operators).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import unique_namespace
from tests.operator.chart_rbac import OperatorIdentity
from tests.operator.harness import CR, OperatorProcess, release_namespace, server_manifest, wait_for
from tests.support.controlplane import ControlPlane
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import Kube
from tests.support.node import Node, SimulatedRunner

UNREACHABLE = "the Kubernetes API server is unreachable ("


@dataclass
class Outage:
    admin: Kube
    ns: str
    proxy: FaultProxy
    operator: OperatorProcess
    identity: OperatorIdentity

    def annotate(self, name: str, value: str) -> None:
        self.admin.patch(CR, self.ns, name, {"spec": {"podAnnotations": {"outage-test/mark": value}}})

    def deployed_mark(self, name: str) -> str | None:
        deployment = self.admin.get("apps/v1/deployments", self.ns, name) or {}
        template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
        return (template.get("annotations") or {}).get("outage-test/mark")

    def wait_reconciled(self, name: str, mark: str, timeout: float) -> float:
        started = time.monotonic()
        wait_for(lambda: self.deployed_mark(name) == mark, timeout, f"{name}'s Deployment with mark {mark}",
                 interval=0.3)
        return time.monotonic() - started

    def unreachable_lines(self) -> list[str]:
        return [line for line in self.operator.log().splitlines() if UNREACHABLE in line]

    def assert_clean_log(self) -> None:
        log = self.operator.log()
        assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]
        assert self.identity.token not in log
        assert self.identity.token.split(".")[2] not in log  # not even the signature


@pytest.fixture(scope="module")
def outage(admin: Kube, crd: dict, control_plane: ControlPlane, tmp_path_factory) -> Iterator[Outage]:
    proxy = FaultProxy(control_plane.url, control_plane.ca_file, control_plane.pki).start()
    ns = unique_namespace("outage")
    admin.create_namespace(ns)
    workdir = tmp_path_factory.mktemp("outage")
    identity = OperatorIdentity.install(admin, workdir, unique_namespace("op-outage"), watch=[ns])
    node = Node(admin, f"node-{ns}", namespaces={ns}, runner=SimulatedRunner()).start()
    operator = OperatorProcess(identity.kubeconfig(admin, proxy.url), workdir, [ns])
    try:
        operator.start()
        admin.create(CR, server_manifest("tracking", ns))
        state = Outage(admin, ns, proxy, operator, identity)
        state.annotate("tracking", "start")
        state.wait_reconciled("tracking", "start", 90)
        yield state
    finally:
        operator.stop()
        node.stop()
        proxy.stop()
        release_namespace(admin, ns)
        identity.uninstall(admin)


def test_dropped_connections_are_one_line_temporary_errors(outage: Outage) -> None:
    # Only the operator's own reads of single Secrets (every reconcile makes them) lose
    # their connection; Kopf's watches and status patches still pass, so its retry
    # message reaches the log.
    rule = outage.proxy.disconnect("GET", rf"^/api/v1/namespaces/{outage.ns}/secrets/")
    try:
        outage.annotate("tracking", "dropped")
        line = wait_for(lambda: outage.unreachable_lines(), 60, "a reconcile failing on a dropped connection")[0]
        print(f"\nlogged: {line[:400]}")
        assert "Secret/" in line, line
        assert outage.deployed_mark("tracking") != "dropped"
    finally:
        outage.proxy.remove(rule)
    took = outage.wait_reconciled("tracking", "dropped", 60)
    print(f"reconciled {took:.1f} s after the connections were let through")
    outage.assert_clean_log()


def test_an_offline_api_server_logs_no_traceback_and_the_server_recovers(outage: Outage) -> None:
    before = len(outage.unreachable_lines())
    with outage.proxy.offline():
        # The resync timer (2 s) keeps calling while nothing answers; the change made
        # meanwhile (straight to the API server) waits for the way back.
        outage.annotate("tracking", "offline")
        wait_for(lambda: len(outage.unreachable_lines()) > before, 60, "a reconcile failing while offline")
        time.sleep(5)
    took = outage.wait_reconciled("tracking", "offline", 90)
    print(f"\nreconciled {took:.1f} s after the API server came back;"
          f" {len(outage.unreachable_lines()) - before} unreachable lines while offline")
    outage.assert_clean_log()
    phase: Any = ((outage.admin.get(CR, outage.ns, "tracking") or {}).get("status") or {}).get("phase")
    print(f"phase: {phase}")
