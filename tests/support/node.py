"""A Node for the real control plane: binds pods to itself and reports their status.

Test support. There is no container runtime here, so no real kubelet; this plays the
part of kubelet (and of the scheduler, for the namespaces it serves), talking to the
real API server like they do: it registers a Node, binds Pending pods through
`pods/binding`, writes `pods/status`, and finishes pods being deleted. Everything else
(ReplicaSets, Deployment availability, Job completion, garbage collection) is done by the
real kube-controller-manager from what it reports.

What a pod does comes from a runner:
- SimulatedRunner (the default; also what the benchmarks use): a container "starts" at
  once: pods owned by a Job succeed (exit 0), all others run and are Ready. A test makes
  a pod fail with `runner.fail_pods_named(prefix)`.
- tests/e2e provides a runner that starts the container as a local process.

    node = Node(kube, "node-1", namespaces={"team-a"}).start()
    node.stop()
"""
from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from tests.support.kubeapi import ApiError, Kube

_POD_IPS = (str(ipaddress.ip_address("10.244.0.2") + i) for i in itertools.count())
_IP_LOCK = threading.Lock()


def _cut(response: requests.Response) -> None:
    """End a watch blocked in a read from another thread: closing the response object
    does not wake the reader, shutting its socket down does."""
    try:
        response.raw.connection.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    except (AttributeError, OSError):
        pass


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def owner_kind(pod: dict[str, Any]) -> str | None:
    refs = pod["metadata"].get("ownerReferences") or []
    return next((ref["kind"] for ref in refs if ref.get("controller")), None)


def running_status(pod: dict[str, Any], *, ready: bool = True) -> dict[str, Any]:
    started = now()
    flag = "True" if ready else "False"
    with _IP_LOCK:
        ip = next(_POD_IPS)
    return {
        "phase": "Running", "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": started,
        "conditions": [{"type": kind, "status": status, "lastTransitionTime": started} for kind, status in (
            ("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", flag), ("Ready", flag))],
        "containerStatuses": [{
            "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": ready, "started": True,
            "restartCount": 0, "state": {"running": {"startedAt": started}}} for c in pod["spec"]["containers"]],
    }


def finished_status(pod: dict[str, Any], exit_code: int) -> dict[str, Any]:
    stamp = now()
    return {
        "phase": "Succeeded" if exit_code == 0 else "Failed", "hostIP": "127.0.0.1", "startTime": stamp,
        "conditions": [{"type": kind, "status": "True" if kind in ("PodScheduled", "Initialized") else "False",
                        "lastTransitionTime": stamp, **({"reason": "PodCompleted"} if kind == "Ready" else {})}
                       for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
        "containerStatuses": [{
            "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "started": False,
            "restartCount": 0, "state": {"terminated": {
                "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": stamp, "finishedAt": stamp}}} for c in pod["spec"]["containers"]],
    }


class Runner(Protocol):
    def start(self, node: Node, pod: dict[str, Any]) -> None: ...
    def stop(self, node: Node, pod: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


@dataclass
class SimulatedRunner:
    """Pods start at once: Job pods exit 0, the others are Running and Ready."""

    failing_prefixes: set[str] = field(default_factory=set)

    def fail_pods_named(self, prefix: str) -> None:
        """Pods whose name starts with `prefix` exit 1 (a Job's pods: the Job fails)."""
        self.failing_prefixes.add(prefix)

    def start(self, node: Node, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if any(name.startswith(prefix) for prefix in self.failing_prefixes):
            node.report(pod, finished_status(pod, 1))
        elif owner_kind(pod) == "Job":
            node.report(pod, finished_status(pod, 0))
        else:
            node.report(pod, running_status(pod))

    def stop(self, node: Node, pod: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Node:
    def __init__(self, kube: Kube, name: str, namespaces: Iterable[str] | None = None,
                 runner: Runner | None = None):
        self.kube, self.name = kube, name
        self.namespaces = set(namespaces) if namespaces is not None else None  # None = all
        self.runner: Runner = runner or SimulatedRunner()
        self.started: set[str] = set()   # pod uids handed to the runner
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: set[requests.Response] = set()  # watch streams, cut by stop()

    def serves(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def add_namespace(self, namespace: str) -> None:
        if self.namespaces is not None:
            self.namespaces.add(namespace)

    # ---- lifecycle ----

    def start(self) -> Node:
        self._register()
        for target, selector in ((self._on_unbound, "spec.nodeName="),
                                 (self._on_mine, f"spec.nodeName={self.name}")):
            thread = threading.Thread(target=self._watch_pods, args=(selector, target), daemon=True,
                                      name=f"node-{self.name}-{'bind' if selector.endswith('=') else 'run'}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.runner.close()
        for response in list(self._open):
            _cut(response)
        for thread in self._threads:
            thread.join(10)
        try:
            self.kube.delete("v1/nodes", None, self.name)
        except (ApiError, requests.RequestException):
            pass

    def _register(self) -> None:
        stamp = now()
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"}
        body = {"metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name,
                                                           "kubernetes.io/os": "linux",
                                                           "kubernetes.io/arch": "amd64"}}}
        if self.kube.get("v1/nodes", None, self.name) is None:
            self.kube.create("v1/nodes", body)
        self.kube.patch("v1/nodes", None, self.name, {"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node",
                            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
            "nodeInfo": {"kubeletVersion": "v1.35.4", "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "test://1", "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                         "machineID": "", "systemUUID": "", "bootID": ""}}}, subresource="status")

    # ---- what the node does with a pod ----

    def report(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            self.kube.patch("v1/pods", meta["namespace"], meta["name"], {"status": status}, subresource="status")
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise

    def _on_unbound(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if not self.serves(meta["namespace"]) or meta.get("deletionTimestamp"):
            return
        try:
            self.kube.request("POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", body={
                "apiVersion": "v1", "kind": "Binding", "metadata": {"name": meta["name"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.name}})
        except ApiError as exc:
            if exc.code not in (404, 409):  # gone, or bound already
                raise

    def _on_mine(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            if meta["uid"] in self.started:
                self.started.discard(meta["uid"])
                self.runner.stop(self, pod)
            # The kubelet confirms the deletion once the containers are gone.
            try:
                self.kube.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                  body={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                        "preconditions": {"uid": meta["uid"]}})
            except ApiError as exc:
                if exc.code not in (404, 409):
                    raise
            return
        if meta["uid"] not in self.started and (pod.get("status") or {}).get("phase", "Pending") == "Pending":
            self.started.add(meta["uid"])
            self.runner.start(self, pod)

    # ---- list + watch, resumed after every timeout or error ----

    def _watch_pods(self, field_selector: str, handle: Any) -> None:
        while not self._stopping.is_set():
            try:
                listing = self.kube.request("GET", "/api/v1/pods", params={"fieldSelector": field_selector})
                for pod in listing["items"]:
                    self._safely(handle, pod)
                self._stream(field_selector, listing["metadata"]["resourceVersion"], handle)
            except (ApiError, requests.RequestException, ValueError):
                self._stopping.wait(0.5)

    def _stream(self, field_selector: str, version: str, handle: Any) -> None:
        params = {"fieldSelector": field_selector, "watch": "1", "resourceVersion": version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": "30"}
        with self.kube.session.get(self.kube.server + "/api/v1/pods", params=params, stream=True,
                                   timeout=(10, 60)) as response:
            if response.status_code != 200:
                return
            self._open.add(response)
            try:
                self._read_events(response, handle)
            finally:
                self._open.discard(response)

    def _read_events(self, response: requests.Response, handle: Any) -> None:
        for line in response.iter_lines():
            if self._stopping.is_set():
                return
            if not line:
                continue
            event = json.loads(line)
            if event["type"] in ("ADDED", "MODIFIED"):
                self._safely(handle, event["object"])
            elif event["type"] == "ERROR":
                return

    def _safely(self, handle: Any, pod: dict[str, Any]) -> None:
        try:
            handle(pod)
        except (ApiError, requests.RequestException):
            time.sleep(0.1)  # transient: the next event or relist brings the pod back
