"""Running the real operator (`mlflow-operator run`, a subprocess) against the real control
plane; shared by the operator tests and `bench/operator_bench.py`.

    identity = OperatorIdentity.install(admin, tmp, release, watch=[ns])   # chart RBAC
    operator = OperatorProcess(identity.kubeconfig(admin, proxy.url), tmp, [ns]).start()
    node = Node(admin, "node-x", namespaces={ns}, runner=GatedRunner()).start()
    operator.stop(); operator.log(); operator.peak_rss_bytes()
    wait_for(lambda: ..., timeout=20, what='...')
    with chart_operator(admin, proxy, tmp, [ns], release, runner=SimulatedRunner()) as operator: ...

The operator talks to kube-apiserver through the fault proxy (request counts, injected
faults) with the token of the chart's ServiceAccount; pods of its Deployments and Jobs
are run by the test Node, so the real Deployment and Job controllers report rollouts and
migrations.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.operator.chart_rbac import OperatorIdentity
from tests.support.crd import CR
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import ApiError, Kube
from tests.support.node import Node, SimulatedRunner
from tests.support.waiting import wait_for  # noqa: F401  (re-exported to the tests)

OPERATOR = Path(sys.executable).with_name("mlflow-operator")
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OperatorProcess:
    """`mlflow-operator run` as users run it, with the kubeconfig it is given."""

    def __init__(self, kubeconfig: Path, workdir: Path, namespaces: list[str],
                 resync_seconds: float = 2.0, extra: list[str] | None = None):
        self.kubeconfig, self.workdir, self.namespaces = kubeconfig, workdir, namespaces
        self.resync_seconds, self.extra = resync_seconds, extra or []
        self.logfile = workdir / "operator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.liveness = ""

    def argv(self) -> list[str]:
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"
        argv = [str(OPERATOR), "run", "--standalone", "--liveness", self.liveness,
                "--resync-seconds", str(self.resync_seconds), "--watch-timeout", "10", *self.extra]
        for ns in self.namespaces:
            argv += ["--namespace", ns]
        return argv

    def start(self, timeout: float = 30) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        wait_for(self._alive, timeout, "the operator's liveness endpoint")
        return self

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        try:
            with urllib.request.urlopen(self.liveness, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def peak_rss_bytes(self) -> int:
        """The operator process's peak resident memory so far (Linux VmHWM)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmHWM not available")

    def cpu_seconds(self) -> float:
        """User + system CPU time the operator process used so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


class GatedRunner(SimulatedRunner):
    """SimulatedRunner whose pods named with a held prefix stay Pending until released:
    a migration that is still running, as long as a test needs it to be."""

    def __init__(self) -> None:
        super().__init__()
        self._held: dict[str, list[tuple[Node, dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    def hold(self, prefix: str) -> None:
        with self._lock:
            self._held.setdefault(prefix, [])

    def release(self, prefix: str) -> None:
        with self._lock:
            waiting = self._held.pop(prefix, [])
        for node, pod in waiting:
            super().start(node, pod)

    def start(self, node: Node, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        with self._lock:
            prefix = next((p for p in self._held if name.startswith(p)), None)
            if prefix is not None:
                self._held[prefix].append((node, pod))
                return
        super().start(node, pod)


def server_manifest(name: str, namespace: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "mlflow-operator.dev/v1alpha1", "kind": "MLflowServer",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec or {}}


def _scope(namespace: str) -> str:
    # Objects of `namespace`, and the cluster-scoped ClusterRoleBindings named after it.
    return rf"/namespaces/{re.escape(namespace)}/|:{re.escape(namespace)}:"


def writes(proxy: FaultProxy, namespace: str) -> int:
    """Write requests (POST, PUT, PATCH, DELETE) that passed the proxy for `namespace`."""
    return sum(proxy.count(method, _scope(namespace)) for method in WRITE_METHODS)


def requests_in(proxy: FaultProxy, namespace: str) -> int:
    return sum(proxy.count(method, _scope(namespace)) for method in ("GET", *WRITE_METHODS))


def write_paths(proxy: FaultProxy, namespace: str) -> list[str]:
    """The distinct write requests for `namespace`, for assertion messages."""
    pattern = re.compile(_scope(namespace))
    for _ in range(5):
        try:
            return sorted(f"{m} {p}" for (m, p) in list(proxy.seen) if m in WRITE_METHODS and pattern.search(p))
        except RuntimeError:  # counted meanwhile by the proxy's thread
            continue
    return []


# How kube-apiserver's RBAC authorizer words a refusal (a 403 for other reasons, such as
# a terminating namespace refusing new Events, says something else).
_RBAC_DENIAL = re.compile(r'cannot \w+ resource \\*"[^"\\]+\\*"')


def rbac_denials(log: str) -> list[str]:
    """Log lines of the operator that carry an RBAC refusal of the API server."""
    return [line[:500] for line in log.splitlines() if _RBAC_DENIAL.search(line)]


def release_namespace(admin: Kube, namespace: str) -> None:
    """Delete a test namespace whose operator is gone: its MLflowServers' finalizers are
    dropped first (nobody is left to run them), and their ClusterRoleBindings deleted."""
    try:
        for server in admin.list(CR, namespace):
            admin.patch(CR, namespace, server["metadata"]["name"], {"metadata": {"finalizers": None}})
        for binding in admin.list("rbac.authorization.k8s.io/v1/clusterrolebindings",
                                  labels=f"mlflow-operator.dev/owner-namespace={namespace}"):
            admin.delete("rbac.authorization.k8s.io/v1/clusterrolebindings", None, binding["metadata"]["name"])
        admin.delete("v1/namespaces", None, namespace)
    except ApiError:
        pass


@contextlib.contextmanager
def chart_operator(admin: Kube, proxy: FaultProxy, workdir: Path, namespaces: list[str], release: str, *,
                   runner: SimulatedRunner | None = None, extra: list[str] | None = None) -> Iterator[OperatorProcess]:
    """The real operator, as the chart's ServiceAccount of release `release`, watching
    `namespaces` through `proxy`; with a test Node running their pods when `runner` is
    given. Afterwards the namespaces and the chart's RBAC are gone."""
    identity = OperatorIdentity.install(admin, workdir, release, watch=namespaces)
    node = Node(admin, f"node-{namespaces[0]}", namespaces=set(namespaces), runner=runner).start() \
        if runner is not None else None
    operator = OperatorProcess(identity.kubeconfig(admin, proxy.url), workdir, namespaces, extra=extra)
    try:
        operator.start()
        yield operator
    finally:
        operator.stop()
        if node is not None:
            node.stop()
        for namespace in namespaces:
            release_namespace(admin, namespace)
        identity.uninstall(admin)
