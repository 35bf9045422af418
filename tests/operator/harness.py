"""Running the real operator (`mlflow-operator run`, a subprocess) against the emulator;
shared by the operator tests and `bench/operator_bench.py`.

    kube = RecordingKube().start()   # a KubeEmulator that also tallies API calls by verb
    operator = OperatorProcess(kube, tmp_path, namespaces=['team-a']).start()
    operator.stop(); operator.log(); operator.peak_rss_bytes()
    wait_for(lambda: ..., timeout=20, what='...')
"""
from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import kmock

from tests.support import kubeproto as kp
from tests.support.kube import KubeEmulator

T = TypeVar("T")
CR = "mlflow-operator.dev/v1alpha1/mlflowservers"
OPERATOR = Path(sys.executable).with_name("mlflow-operator")


def _verb(method: str, name: str | None, watch: str | None) -> str:
    if method == "GET":
        return "watch" if watch in ("true", "1") else ("get" if name else "list")
    return {"POST": "create", "PATCH": "patch", "PUT": "update",
            "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())


class RecordingKube(KubeEmulator):
    """Counts API calls as RBAC sees them: (verb, group, resource[/subresource]).

    A local subclass, not a gap of the emulator: only these tests need the full tally
    (the emulator keeps a short request log on purpose)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.api_calls: collections.Counter[tuple[str, str, str]] = collections.Counter()
        # resource -> the labelSelector of each list/watch request on it ('' = none)
        self.list_selectors: collections.defaultdict[str, set[str]] = collections.defaultdict(set)

    async def _parse(self, raw: aiohttp.web.BaseRequest) -> kmock.Request:
        request = await super()._parse(raw)
        path = kp.parse_path(raw.path)
        if path is not None and path.plural:
            resource = path.plural + (f"/{path.subresource}" if path.subresource else "")
            verb = _verb(raw.method, path.name, raw.query.get("watch"))
            self.api_calls[(verb, path.group or "", resource)] += 1
            if verb in ("list", "watch"):
                self.list_selectors[resource].add(raw.query.get("labelSelector", ""))
        return request


def fail_next(kube: KubeEmulator, method: str, path: str, status: int) -> None:
    """Answer the next `method path` request with `status`, once.

    kmock's `[:1]` slices count the emulator's request log, which is trimmed (by tests and
    when it grows): a consumed slice then fires again, in a later test too. kmock also
    evaluates a reaction's filter over past requests: this one picks the first matching
    request newer than itself, by id, and keeps answering for that request alone.
    """
    newest = max((request.id for request in kube._requests), default=-1)
    chosen: list[int] = []

    def next_one(request: kmock.Request) -> bool:
        if request.id <= newest or getattr(request.method, "value", request.method) != method \
                or request.url.path != path:
            return False
        if not chosen:
            chosen.append(request.id)
        return request.id == chosen[0]

    kube[next_one] << status


def wait_for(check: Callable[[], T], timeout: float = 20, what: str = "condition",
             interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OperatorProcess:
    """`mlflow-operator run` as users run it, pointed at the emulator by KUBECONFIG."""

    def __init__(self, kube: KubeEmulator, workdir: Path, namespaces: list[str],
                 resync_seconds: float = 2.0, extra: list[str] | None = None):
        self.kube, self.workdir, self.namespaces = kube, workdir, namespaces
        self.resync_seconds, self.extra = resync_seconds, extra or []
        self.kubeconfig = kube.write_kubeconfig(workdir / "operator.kubeconfig")
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


def server_manifest(name: str, namespace: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "mlflow-operator.dev/v1alpha1", "kind": "MLflowServer",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec or {}}
