"""Fixtures of the operator tests on the real control plane (helpers live in
tests.operator.harness and tests.operator.chart_rbac).

- ``crd``: the MLflowServer CRD installed (session, idempotent).
- ``proxy``: the fault proxy in front of the API server (session); the operator always
  goes through it, so requests are counted and faults can be injected.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.controlplane import ControlPlane
from tests.support.crd import install_crd
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import Kube


@pytest.fixture(scope="session")
def crd(admin: Kube) -> dict:
    return install_crd(admin)


@pytest.fixture(scope="session")
def proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(control_plane.url, control_plane.ca_file, control_plane.pki).start()
    try:
        yield fault_proxy
    finally:
        fault_proxy.stop()
