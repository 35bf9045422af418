"""A ``tests.support.node.Runner`` that runs each bound Pod as sandboxed local processes.

``Node`` binds the Pods that the real ReplicaSet and Job controllers create and hands
each one to ``ProcessRunner.start``; this module plays the rest of the kubelet:

- prepares the pod (``tests.e2e.kubelet``: volumes, env, TokenRequest, bubblewrap
  sandbox); a missing Secret or key keeps it Pending with ``CreateContainerConfigError``
  and is retried, as kubelet does;
- runs init containers in order, then starts the containers; reports ``Running``, then
  ``Ready`` once every readinessProbe passes (httpGet or tcpSocket; polled every
  ``probe_interval`` seconds until it first passes, so tests do not wait ``periodSeconds``,
  then every ``periodSeconds``; ``failureThreshold`` failures in a row make it unready);
  startup and liveness probes are not run;
- restarts exited containers by ``restartPolicy`` (Always, OnFailure: with kubelet's
  doubling back-off, here capped at 10 s); a pod that is done reports ``Succeeded`` or
  ``Failed`` with each container's exit code, so Job completion and Deployment
  availability come from the real controllers;
- stops the processes when the pod is deleted (SIGTERM, then SIGKILL after the grace
  period, at most 10 s here).

Each pod gets a pod IP (reported in ``status.podIP``, hence in the EndpointSlices the real
endpointslice controller writes); ``local_port(pod_ip, port)`` is how the Service proxy
(``tests.e2e.network``) reaches it. Container output goes to ``<root>/logs`` (what
``kubectl logs`` would show: ``logs()``).
"""
from __future__ import annotations

import datetime
import ipaddress
import itertools
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.e2e.kubelet import Kubelet, PodError, PodPlan, Prepared
from tests.support.kubeapi import Kube
from tests.support.node import Node

# Distinct from tests.support.node's simulated pods (10.244.0.0/16).
_POD_IPS = (str(ipaddress.ip_address("10.246.0.2") + i) for i in itertools.count())
_IP_LOCK = threading.Lock()
# Probes go straight to the pod, never through a proxy from this process's environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Container:
    """One container's process; restarted in place (same log, restartCount + 1)."""

    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started_at = ""
        self.ready = False
        self.next_probe = 0.0
        self.failures = 0

    def start(self) -> None:
        self.prepared.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.prepared.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.prepared.argv, env=self.prepared.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)  # its own group: workers die with it
        self.started_at = now()
        self.ready, self.next_probe, self.failures = False, 0.0, 0

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, grace: float) -> None:
        if self.proc is None:
            return
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def status(self) -> dict[str, Any]:
        code = self.exit_code()
        if self.proc is None:
            state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        elif code is None:
            state = {"running": {"startedAt": self.started_at}}
        else:
            state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                    "startedAt": self.started_at, "finishedAt": now()}}
        return {"name": self.prepared.container, "image": "", "imageID": "", "restartCount": self.restarts,
                "ready": self.ready and code is None, "started": code is None and self.proc is not None,
                "state": state}


class PodRun:
    """The life of one pod on the node, in its own thread."""

    def __init__(self, runner: ProcessRunner, node: Node, pod: dict[str, Any]) -> None:
        self.runner, self.node, self.pod = runner, node, pod
        with _IP_LOCK:
            self.ip = next(_POD_IPS)
        self.plan: PodPlan | None = None
        self.containers: list[Container] = []
        self.started_at = now()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._live, daemon=True, name=f"pod-{pod['metadata']['name']}")

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    def _live(self) -> None:
        try:
            if self._prepare() and self._init():
                self._run()
        except Exception as exc:  # the harness must say why a pod never ran, not hang a test
            self._report_pending("RunContainerError", f"{type(exc).__name__}: {exc}")

    def _prepare(self) -> bool:
        while not self.stopping.is_set():
            try:
                self.plan = self.runner.kubelet.prepare(self.pod, self.ip)
                return True
            except PodError as exc:
                self._report_pending("CreateContainerConfigError", str(exc))
                self.stopping.wait(1.0)
        return False

    def _init(self) -> bool:
        assert self.plan is not None
        policy = self.pod["spec"].get("restartPolicy", "Always")
        for prepared in self.plan.init:
            init = Container(prepared)
            backoff = 1.0
            while not self.stopping.is_set():
                init.start()
                assert init.proc is not None
                while init.exit_code() is None and not self.stopping.wait(0.2):
                    pass
                if self.stopping.is_set():
                    init.stop(1.0)
                    return False
                if init.exit_code() == 0:
                    break
                if policy == "Never":  # the pod fails; its containers never started
                    waiting = [{"name": c["name"], "image": "", "imageID": "", "ready": False, "restartCount": 0,
                                "started": False, "state": {"waiting": {"reason": "PodInitializing"}}}
                               for c in self.pod["spec"]["containers"]]
                    self._report_finished(waiting, phase="Failed", init=[init.status()])
                    return False
                init.restarts += 1
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        return not self.stopping.is_set()

    def _run(self) -> None:
        assert self.plan is not None
        policy = self.pod["spec"].get("restartPolicy", "Always")
        self.containers = [Container(p) for p in self.plan.main]
        for container in self.containers:
            container.start()
        backoff: dict[str, tuple[float, float]] = {}  # container -> (restart at, next delay)
        last: Any = None
        while not self.stopping.is_set():
            for container in self.containers:
                code = container.exit_code()
                if code is None:
                    self.runner.check_readiness(container)
                elif policy == "Always" or (policy == "OnFailure" and code != 0):
                    self._restart_later(container, backoff)
            codes = [c.exit_code() for c in self.containers]
            if all(code is not None for code in codes) and policy != "Always" and not (
                    policy == "OnFailure" and any(codes)):
                self._report_finished([c.status() for c in self.containers],
                                      phase="Succeeded" if not any(codes) else "Failed")
                return
            status = self._running_status()
            key = [(c["ready"], c["restartCount"], next(iter(c["state"]))) for c in status["containerStatuses"]]
            if key != last:  # write only what changed, as kubelet's status manager does
                self.node.report(self.pod, status)
                last = key
            self.stopping.wait(self.runner.probe_interval)

    def _restart_later(self, container: Container, backoff: dict[str, tuple[float, float]]) -> None:
        name = container.prepared.container
        at, delay = backoff.get(name, (0.0, 1.0))
        if at == 0.0:
            backoff[name] = (time.monotonic() + delay, delay)
        elif time.monotonic() >= at:
            container.restarts += 1
            container.start()
            backoff[name] = (0.0, min(delay * 2, 10.0))

    def stop(self) -> None:
        self.stopping.set()
        grace = min(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)), 10.0)
        for container in self.containers:
            container.stop(grace)
        self.thread.join(15)

    # -- pod status ------------------------------------------------------------------

    def _conditions(self, ready: bool, initialized: bool = True) -> list[dict[str, Any]]:
        stamp = now()
        flags = {"PodScheduled": True, "Initialized": initialized, "ContainersReady": ready, "Ready": ready}
        return [{"type": kind, "status": "True" if flag else "False", "lastTransitionTime": stamp}
                for kind, flag in flags.items()]

    def _base(self, phase: str) -> dict[str, Any]:
        return {"phase": phase, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}], "podIP": self.ip,
                "podIPs": [{"ip": self.ip}], "startTime": self.started_at}

    def _running_status(self) -> dict[str, Any]:
        statuses = [c.status() for c in self.containers]
        ready = all(s["ready"] for s in statuses)
        return {**self._base("Running"), "conditions": self._conditions(ready), "containerStatuses": statuses}

    def _report_pending(self, reason: str, message: str) -> None:
        statuses = [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                     "restartCount": 0, "started": False, "state": {"waiting": {"reason": reason, "message": message}}}
                    for c in self.pod["spec"]["containers"]]
        self.node.report(self.pod, {**self._base("Pending"), "conditions": self._conditions(False, False),
                                    "containerStatuses": statuses})

    def _report_finished(self, statuses: list[dict[str, Any]], phase: str,
                         init: list[dict[str, Any]] | None = None) -> None:
        conditions = self._conditions(False, initialized=init is None)
        conditions[-1]["reason"] = "PodCompleted"
        status = {**self._base(phase), "conditions": conditions, "containerStatuses": statuses}
        if init is not None:
            status["initContainerStatuses"] = init
        self.node.report(self.pod, status)


class ProcessRunner:
    """Runs bound pods as local processes (see the module docstring)."""

    def __init__(self, kube: Kube, root: Path, proxy_url: str | None = None, probe_interval: float = 0.5) -> None:
        self.kubelet = Kubelet(kube, root, proxy_url)
        self.root = root
        self.probe_interval = probe_interval
        self.pods: dict[str, PodRun] = {}  # pod uid -> its run
        self._lock = threading.Lock()

    def start(self, node: Node, pod: dict[str, Any]) -> None:
        run = PodRun(self, node, pod)
        with self._lock:
            self.pods[pod["metadata"]["uid"]] = run
        run.thread.start()

    def stop(self, node: Node, pod: dict[str, Any]) -> None:
        with self._lock:
            run = self.pods.pop(pod["metadata"]["uid"], None)
        if run is not None:
            run.stop()

    def close(self) -> None:
        with self._lock:
            runs = list(self.pods.values())
            self.pods.clear()
        for run in runs:
            run.stop()

    # -- what kube-proxy and `kubectl logs` need -------------------------------------

    def local_port(self, pod_ip: str, container_port: int) -> int | None:
        with self._lock:
            runs = list(self.pods.values())
        for run in runs:
            if run.ip == pod_ip and run.plan is not None:
                for prepared in run.plan.main:
                    if container_port in prepared.ports:
                        return prepared.ports[container_port]
        return None

    def running(self, namespace: str, prefix: str = "") -> list[PodRun]:
        """Live pods of a namespace whose name starts with ``prefix``, oldest first."""
        with self._lock:
            runs = list(self.pods.values())
        return [r for r in runs if r.pod["metadata"]["namespace"] == namespace and r.name.startswith(prefix)]

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        """What ``kubectl logs`` shows (also for pods already gone, as long as the file is)."""
        pattern = f"{namespace}.{pod}.{container or '*'}.log"
        return "".join(p.read_text(errors="replace") for p in sorted((self.root / "logs").glob(pattern)))

    # -- probes ------------------------------------------------------------------------

    def check_readiness(self, container: Container) -> None:
        """Probe when due: every ``probe_interval`` until Ready, then every ``periodSeconds``;
        ``failureThreshold`` failures in a row make the container unready again."""
        if time.monotonic() < container.next_probe:
            return
        probe = container.prepared.readiness or {}
        passed = self.probe(container.prepared)
        container.failures = 0 if passed else container.failures + 1
        if passed:
            container.ready = True
        elif container.failures >= int(probe.get("failureThreshold", 3)):
            container.ready = False
        period = float(probe.get("periodSeconds", 10)) if container.ready else self.probe_interval
        container.next_probe = time.monotonic() + period

    def probe(self, prepared: Prepared) -> bool:
        """One readiness check; a container without a readinessProbe is ready once started."""
        probe = prepared.readiness
        if not probe:
            return True
        if http := probe.get("httpGet"):
            url = f"http://127.0.0.1:{prepared.local_port(http['port'])}{http.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in http.get("httpHeaders", [])}
            try:
                with _DIRECT.open(urllib.request.Request(url, headers=headers),
                                  timeout=float(probe.get("timeoutSeconds", 1))) as resp:
                    return 200 <= resp.status < 400
            except (urllib.error.URLError, OSError):
                return False
        if tcp := probe.get("tcpSocket"):
            try:
                with socket.create_connection(("127.0.0.1", prepared.local_port(tcp["port"])), timeout=1):
                    return True
            except OSError:
                return False
        raise PodError(f"container {prepared.container!r}: only httpGet and tcpSocket probes are supported")
