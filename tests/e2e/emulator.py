"""The emulated API server for the demo (the e2e test gets it from the ``kube`` fixture)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.kubelet import write_kubeconfig
from tests.support.kube import KubeEmulator
from tests.support.tokens import mint_token


class EmulatorThread:
    """``KubeEmulator`` served on 127.0.0.1 from a background thread, as a context manager."""

    def __init__(self) -> None:
        self.kube = KubeEmulator()

    @property
    def url(self) -> str:
        return self.kube.url

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> None:
        """For a human with kubectl: a cluster-admin-like identity (the emulator has no RBAC)."""
        write_kubeconfig(path, self.url, mint_token("kube-system", "demo-user", []), namespace)

    def __enter__(self) -> EmulatorThread:
        self.kube.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kube.stop()
