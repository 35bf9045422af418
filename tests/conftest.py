"""Root fixtures: the real control plane, one per session.

- ``control_plane``: tests.support.controlplane.ControlPlane (etcd, kube-apiserver,
  kube-controller-manager v1.35).
- ``admin``: tests.support.kubeapi.Kube acting as cluster admin.
- ``namespace``: a fresh namespace per test.
"""
from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest

from tests.support.controlplane import ControlPlane
from tests.support.kubeapi import Kube


# ---- the real control plane (tests.support.controlplane): one per session ----

@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager v1.35, shared by the session.

    Tests isolate themselves by namespace (the `namespace` fixture), never by cluster."""
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane")).start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def admin(control_plane: ControlPlane) -> Kube:
    """The cluster admin (client certificate in system:masters)."""
    return Kube.from_kubeconfig(control_plane.kubeconfig)


@pytest.fixture
def namespace(admin: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (the real namespace controller
    removes what is left in it)."""
    name = unique_namespace(request.node.name)
    admin.create_namespace(name)
    yield name
    admin.delete("v1/namespaces", None, name)


def unique_namespace(hint: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40].strip("-") or "t"
    return f"{stem}-{secrets.token_hex(3)}"
