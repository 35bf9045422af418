"""Root fixtures: the emulated Kubernetes API server.

- ``kube``: a running ``tests.support.kube.KubeEmulator`` (fresh per test),
  reachable at ``kube.url`` from this process, its threads and subprocesses.
  Its helpers are documented in ``tests.support.harness``; TokenReview
  switches in ``tests.support.tokenreview``.
- ``kubeconfig``: path of a kubeconfig for ``kube`` (admin bearer token,
  namespace ``default``) usable by the ``kubernetes`` client, Kopf and kubectl.
- ``kube_client``: a ``kubernetes.client.ApiClient`` configured from it.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from tests.support.kube import KubeEmulator


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
