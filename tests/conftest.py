"""Root fixtures: the real control plane (session) and, while tests move off it, the
emulated Kubernetes API server.

- ``control_plane``: tests.support.controlplane.ControlPlane, one per session.
- ``admin``: tests.support.kubeapi.Kube acting as cluster admin.
- ``namespace``: a fresh namespace per test.

- ``kube``: a running ``tests.support.kube.KubeEmulator`` (fresh per test),
  reachable at ``kube.url`` from this process, its threads and subprocesses.
  Its helpers are documented in ``tests.support.harness``; TokenReview
  switches in ``tests.support.tokenreview``.
- ``kubeconfig``: path of a kubeconfig for ``kube`` (admin bearer token,
  namespace ``default``) usable by the ``kubernetes`` client, Kopf and kubectl.
- ``kube_client``: a ``kubernetes.client.ApiClient`` configured from it.
"""
from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from tests.support.controlplane import ControlPlane
from tests.support.kube import KubeEmulator
from tests.support.kubeapi import Kube


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    emulator = KubeEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def kubeconfig(kube: KubeEmulator, tmp_path: Path) -> Path:
    return kube.write_kubeconfig(tmp_path / 'kubeconfig')


@pytest.fixture
def kube_client(kubeconfig: Path) -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield client
    finally:
        client.close()


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
