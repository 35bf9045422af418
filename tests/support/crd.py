"""Install the project's CRD (crds/mlflowservers.yaml) on the real API server.

    install_crd(admin)      # server-side apply, then wait until the API serves the kind
    ServerCheck(admin, ns).create({"replicas": 2})   # -> (None, ["spec.backendStore: ..."])

Idempotent and safe to call from several tests and fixtures of one session: the apply is
forced with one field manager, so an unchanged file changes nothing.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.support.kubeapi import ApiError, Kube, resource_path

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


@contextmanager
def crd_namespace(admin: Kube, namespace: str) -> Iterator[ServerCheck]:
    """The CRD installed and a new namespace to create MLflowServers in (deleted after)."""
    install_crd(admin)
    admin.create_namespace(namespace)
    try:
        yield ServerCheck(admin, namespace)
    finally:
        admin.delete("v1/namespaces", None, namespace)


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


class ServerCheck:
    """Create MLflowServers in `namespace` (server-side dry-run unless told otherwise) and
    report what the API server answered: defaults applied, or the schema/CEL errors."""

    def __init__(self, admin: Kube, namespace: str):
        self.admin, self.namespace = admin, namespace

    def create(self, spec: dict[str, Any] | None, name: str = "demo", *, dry_run: bool = True,
               body: dict[str, Any] | None = None) -> tuple[dict[str, Any] | None, list[str]]:
        """(the object as the API server would store it, []) or (None, [field: message...])."""
        body = body or {"apiVersion": "mlflow-operator.dev/v1alpha1", "kind": "MLflowServer",
                        "metadata": {"name": name}, "spec": spec}
        response = self.admin.session.post(
            self.admin.server + resource_path(CR, self.namespace), json=body,
            params={"dryRun": "All"} if dry_run else None, timeout=30)
        if response.status_code == 201:
            return response.json(), []
        status = response.json()
        assert response.status_code == 422 and status["reason"] == "Invalid", status
        return None, [f"{c['field']}: {c['message']}" for c in status["details"]["causes"]]
