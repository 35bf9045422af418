"""Install the project's CRD (crds/mlflowservers.yaml) on the real API server.

    install_crd(admin)      # server-side apply, then wait until the API serves the kind

Idempotent and safe to call from several tests and fixtures of one session: the apply is
forced with one field manager, so an unchanged file changes nothing.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from tests.support.kubeapi import ApiError, Kube

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "mlflowservers.yaml"
CRD_NAME = "mlflowservers.mlflow-operator.dev"
CR = "mlflow-operator.dev/v1alpha1/mlflowservers"


def crd_manifest() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


def install_crd(admin: Kube, timeout: float = 30) -> dict[str, Any]:
    """Apply the CRD; return it once Established and its resource answers a list."""
    admin.apply(crd_manifest(), manager="tests-crd")
    deadline = time.monotonic() + timeout
    while True:
        crd = admin.get("apiextensions.k8s.io/v1/customresourcedefinitions", None, CRD_NAME) or {}
        conditions = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
        if conditions.get("Established") == "True" and _served(admin):
            return crd
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {CRD_NAME} not established: {conditions}")
        time.sleep(0.1)


def _served(admin: Kube) -> bool:
    # Established can precede the resource handler by a moment (404, or 429 "storage is
    # (re)initializing" while the watch cache fills): a list proves it is there.
    try:
        admin.list(CR, "default")
        return True
    except ApiError as exc:
        if exc.code in (404, 429, 503):
            return False
        raise
