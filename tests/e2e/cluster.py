"""The controllers the emulator lacks, just enough to run what the operator renders.

The KMock emulator stores objects but runs nothing. ``LocalCluster`` plays, for the
objects the e2e test and the demo care about:

- the Job controller + kubelet: ``run_job`` runs the Job's pod template to completion
  (``tests.e2e.kubelet``) and writes ``status.succeeded``/``failed`` and a
  Complete/Failed condition through the status subresource, as kube-controller-manager
  would;
- the Deployment controller + kubelet: ``rollout`` starts one pod from the Deployment's
  current template, waits for its readinessProbe, and writes the Deployment status
  (replicas, readyReplicas, availableReplicas, Available condition). Called again after
  the template changed (e.g. the config-checksum annotation), it stops the old pod
  first, like a ``Recreate`` rollout of one replica;
- kube-proxy + DNS: every Service selecting a running pod is registered in the
  ``ServiceTable`` served by ``ServiceProxy`` (see ``tests.e2e.network``), and pods get
  ``HTTP_PROXY`` pointing at it.

All reads and writes go through the API server's HTTP interface, like the real
components; nothing here imports operator code.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests

from tests.e2e import kubelet, processes
from tests.e2e.network import ServiceProxy, ServiceTable
from tests.support import tokens
from tests.support.kubeproto import deployment_available_status

T = TypeVar("T")

_PATHS = {
    "Secret": "/api/v1/namespaces/{ns}/secrets/{name}",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps/{name}",
    "Service": "/api/v1/namespaces/{ns}/services/{name}",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
}


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.3) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def template_hash(template: dict[str, Any]) -> str:
    """Like the pod-template-hash label: identifies one revision of a pod template."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class ServerPod:
    namespace: str
    deployment: str
    revision: str
    template: dict[str, Any]
    running: processes.Running

    @property
    def url(self) -> str:
        """What `kubectl port-forward` would give you: the pod's port on 127.0.0.1."""
        return self.running.url

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.template.get("metadata", {}).get("annotations") or {})


class LocalCluster:
    def __init__(self, api_url: str, root: Path) -> None:
        self.api_url = api_url.rstrip("/")
        self.root = root
        self.http = requests.Session()
        self.http.trust_env = False  # the API server is local; never through a proxy
        self.services = ServiceTable()
        self.proxy = ServiceProxy(self.services)
        self.kubelet = kubelet.Kubelet(root, self.read_object, self.request_token, self.api_url)
        self.pods: dict[tuple[str, str], ServerPod] = {}
        self.finished_jobs: dict[tuple[str, str], int] = {}

    def __enter__(self) -> LocalCluster:
        self.proxy.__enter__()
        self.kubelet.proxy_url = self.proxy.url
        return self

    def __exit__(self, *exc: object) -> None:
        for pod in self.pods.values():
            pod.running.stop()
        self.pods.clear()
        self.proxy.__exit__()

    # -- API access ----------------------------------------------------------------

    def get(self, path: str) -> dict[str, Any] | None:
        resp = self.http.get(self.api_url + path, timeout=10)
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.json()

    def read_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(_PATHS[kind].format(ns=namespace, name=name))

    def list(self, path: str) -> list[dict[str, Any]]:
        body = self.get(path) or {}
        return list(body.get("items") or [])

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(self.api_url + path, json=body, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.patch(
            self.api_url + path, data=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"}, timeout=10,
        )
        resp.raise_for_status()
        return resp.json()

    def request_token(self, namespace: str, name: str, audiences: list[str], expiration: int) -> str:
        """What the kubelet gets from TokenRequest: a token bound to the live ServiceAccount.

        Signed by the key the emulator's TokenReview trusts; carries the SA's current uid,
        so deleting the ServiceAccount invalidates it, as in a cluster.
        """
        sa = self.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
        if sa is None:
            raise kubelet.PodError(f"ServiceAccount {namespace}/{name} not found")
        return tokens.mint_token(
            namespace, name, audiences or [tokens.API_AUDIENCE],
            uid=sa["metadata"].get("uid"), expires_in=expiration,
        )

    # -- Jobs ----------------------------------------------------------------------

    def run_job(self, namespace: str, name: str, timeout: float = 300) -> tuple[int, str]:
        """Run the Job's pod once; record the outcome in the Job's status. Returns (exit code, log)."""
        path = _PATHS["Job"].format(ns=namespace, name=name)
        job = self.get(path)
        if job is None:
            raise kubelet.PodError(f"Job {namespace}/{name} not found")
        template = job["spec"]["template"]
        pod_name = f"{name}-{secrets.token_hex(3)}"
        started = _now()
        plan = self.kubelet.prepare(pod_name, namespace, template["spec"], template.get("metadata"))
        code, log = processes.run_pod(plan, self.root / "logs", timeout)
        kind = "Complete" if code == 0 else "Failed"
        status: dict[str, Any] = {
            "startTime": started,
            "conditions": [{"type": kind, "status": "True", "lastTransitionTime": _now(),
                            "reason": "Completed" if code == 0 else "BackoffLimitExceeded",
                            "message": f"pod {pod_name} exited with code {code}"}],
        }
        status.update({"succeeded": 1, "completionTime": _now()} if code == 0 else {"failed": 1})
        self.patch(path + "/status", {"status": status})
        self.finished_jobs[(namespace, name)] = code
        return code, log

    def pending_jobs(self, namespace: str, owner: str | None = None) -> list[str]:
        jobs = self.list(f"/apis/batch/v1/namespaces/{namespace}/jobs")
        return [
            j["metadata"]["name"] for j in jobs
            if _owned_by(j, owner)
            and not (j.get("status") or {}).get("succeeded") and not (j.get("status") or {}).get("failed")
            and (namespace, j["metadata"]["name"]) not in self.finished_jobs
        ]

    # -- Deployments ---------------------------------------------------------------

    def rollout(self, namespace: str, name: str, timeout: float = 120) -> ServerPod:
        """Make the running pod match the Deployment's current template (restart if it changed)."""
        path = _PATHS["Deployment"].format(ns=namespace, name=name)
        deployment = self.get(path)
        if deployment is None:
            raise kubelet.PodError(f"Deployment {namespace}/{name} not found")
        template = deployment["spec"]["template"]
        revision = template_hash(template)
        current = self.pods.get((namespace, name))
        if current is not None and current.revision == revision and current.running.proc.poll() is None:
            return current
        port_hint = None
        if current is not None:  # Recreate: the old pod goes first, and frees its port
            current.running.stop()
            port_hint = current.running.prepared.ports
            del self.pods[(namespace, name)]
        pod_name = f"{name}-{revision}-{secrets.token_hex(3)}"
        plan = self.kubelet.prepare(pod_name, namespace, template["spec"], template.get("metadata"), port_hint)
        running = processes.start_pod(plan, self.root / "logs", timeout)
        try:
            processes.wait_ready(running, timeout)
        except BaseException:
            running.stop()
            raise
        pod = ServerPod(namespace, name, revision, template, running)
        self.pods[(namespace, name)] = pod
        self._publish_services(namespace, pod)
        # one local pod stands in for the replica set
        self.patch(path + "/status", {"status": deployment_available_status(deployment, 1, _now())})
        return pod

    def _publish_services(self, namespace: str, pod: ServerPod) -> None:
        pod_labels = pod.template.get("metadata", {}).get("labels") or {}
        for svc in self.list(f"/api/v1/namespaces/{namespace}/services"):
            selector = svc["spec"].get("selector") or {}
            if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
                continue
            for port in svc["spec"].get("ports", []):
                target = port.get("targetPort", port["port"])
                if isinstance(target, str) and target.isdigit():
                    target = int(target)
                self.services.set_service(svc["metadata"]["name"], namespace, port["port"], pod.running.prepared.local_port(target))

    def sync(self, namespace: str, on_event: Callable[[str], None] = lambda _msg: None,
             owner: str | None = None) -> None:
        """One pass of the controllers: run new Jobs, roll Deployments whose template changed.

        ``owner``: only the children of that MLflowServer (others in the namespace stay
        unscheduled, as if no node had room for them).
        """
        for job in self.pending_jobs(namespace, owner):
            on_event(f"running Job {namespace}/{job}")
            code, _ = self.run_job(namespace, job)
            on_event(f"Job {namespace}/{job} {'succeeded' if code == 0 else f'failed (exit {code})'}")
        for deployment in self.list(f"/apis/apps/v1/namespaces/{namespace}/deployments"):
            if not _owned_by(deployment, owner):
                continue
            name = deployment["metadata"]["name"]
            current = self.pods.get((namespace, name))
            if current is None or current.revision != template_hash(deployment["spec"]["template"]) \
                    or current.running.proc.poll() is not None:
                on_event(f"starting a pod for Deployment {namespace}/{name}")
                pod = self.rollout(namespace, name)
                on_event(f"Deployment {namespace}/{name} ready at {pod.url}")

    def client_env(self) -> dict[str, str]:
        """Env for a process in the role of an in-cluster client (Service URLs work)."""
        return {"HTTP_PROXY": self.proxy.url, "http_proxy": self.proxy.url,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def _owned_by(obj: dict[str, Any], owner: str | None) -> bool:
    if owner is None:
        return True
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r.get("kind") == "MLflowServer" and r.get("name") == owner for r in refs)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
