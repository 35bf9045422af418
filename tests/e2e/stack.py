"""The whole product on one machine, on the real control plane: shared by the e2e tests
and the demo so both exercise one code path.

``Stack(admin, root, namespaces)`` is the node side of a cluster: a ``Node`` that binds
the pods of ``namespaces`` and a ``ProcessRunner`` that runs them as sandboxed local
processes (tests/e2e/kubelet.py lists what is faithful and what is remapped), plus the
Service proxy (cluster DNS + kube-proxy). ``start_operator()`` runs `mlflow-operator run`;
``apply_server()`` + ``wait_ready()`` give a running MLflow server made by the real
Deployment/ReplicaSet controllers from the operator's Deployment, after the real Job
controller ran its migration Job; ``run_job()`` runs the sample training job
(``tests.e2e.sample_job``) and waits for the Job controller's verdict. Nothing here plays a
controller.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.e2e import sample_job
from tests.e2e.network import PortForward, ServiceProxy, ServiceResolver
from tests.e2e.process_runner import PodRun, ProcessRunner
from tests.support.crd import CR
from tests.support.kubeapi import ApiError, Kube, resource_of
from tests.support.node import Node
from tests.support.waiting import wait_for


def node_name(root: Path) -> str:
    """A valid Node name from a work folder's name: mkdtemp's suffix may end in `_`, and
    a name (also a label value) must start and end with an alphanumeric character."""
    return re.sub(r"[^a-z0-9-]", "-", f"e2e-{root.name}".lower())[:60].strip("-")


class Stack:
    def __init__(self, admin: Kube, kubeconfig: Path, root: Path, namespaces: Iterable[str]) -> None:
        self.admin, self.kubeconfig, self.root = admin, kubeconfig, root
        self.runner = ProcessRunner(admin, root)
        self.resolver = ServiceResolver(admin, self.runner.local_port)
        self.proxy = ServiceProxy(self.resolver)
        self.runner.kubelet.proxy_url = self.proxy.url
        self.node = Node(admin, node_name(root), namespaces=set(namespaces), runner=self.runner)
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_log = root / "logs" / "operator.log"

    def __enter__(self) -> Stack:
        self.proxy.__enter__()
        self.node.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_operator()
        self.node.stop()  # stops every pod process
        self.proxy.__exit__()

    # -- objects -------------------------------------------------------------------

    def ensure(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create unless it exists (several jobs share one ServiceAccount)."""
        try:
            return self.admin.create(resource_of(dict(obj)), dict(obj))
        except ApiError as exc:
            if exc.code != 409:
                raise
            meta = obj["metadata"]
            return self.admin.get(resource_of(dict(obj)), meta.get("namespace"), meta["name"]) or {}

    def apply_file(self, path: Path) -> list[dict[str, Any]]:
        """`kubectl create -f` for a manifest file (what exists already is kept)."""
        return [self.ensure(doc) for doc in yaml.safe_load_all(path.read_text()) if doc]

    def service_account(self, namespace: str, name: str) -> dict[str, Any]:
        return self.ensure(sample_job.service_account(namespace, name))

    def apply_server(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        return self.admin.create(CR, {"apiVersion": "mlflow-operator.dev/v1alpha1", "kind": "MLflowServer",
                                          "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)})

    def patch_server(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        return self.admin.patch(CR, namespace, name, {"spec": dict(spec)})

    def server(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.admin.get(CR, namespace, name)
        if obj is None:
            raise LookupError(f"MLflowServer {namespace}/{name} not found")
        return obj

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.server(namespace, name).get("status") or {})

    # -- operator ------------------------------------------------------------------

    def start_operator(self, namespaces: list[str]) -> None:
        """`mlflow-operator run` as its own process, with the admin kubeconfig."""
        argv = [str(Path(sys.executable).with_name("mlflow-operator")), "run", "--standalone",
                "--log-format", "plain", "--resync-seconds", "5", "--watch-timeout", "30"]
        for ns in namespaces:
            argv += ["--namespace", ns]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env.pop("CR_TRACKING_URI", None)
        self.operator_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.operator_log, "ab") as log:
            self.operator = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)

    def stop_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(15)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait(5)
        self.operator = None

    def check_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is not None:
            tail = self.operator_log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the operator exited with {self.operator.returncode}:\n{tail}")

    # -- servers ---------------------------------------------------------------------

    def wait_ready(self, namespace: str, name: str, timeout: float = 240) -> dict[str, Any]:
        """Wait until the MLflowServer reports Ready for its current generation; its status."""
        def ready() -> dict[str, Any] | None:
            self.check_operator()
            server = self.server(namespace, name)
            status = server.get("status") or {}
            if status.get("phase") == "Degraded":
                raise RuntimeError(f"MLflowServer {namespace}/{name} is Degraded: {status.get('conditions')}")
            current = status.get("observedGeneration") == server["metadata"].get("generation")
            return status if current and status.get("phase") == "Ready" else None

        try:
            return wait_for(ready, timeout, what=f"MLflowServer {namespace}/{name} to be Ready", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status: {self.status(namespace, name)}; pods: "
                               f"{[(p.name, p.ip) for p in self.runner.running(namespace)]}") from None

    def server_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The server's Pods as the API server has them (made by the real ReplicaSet controller)."""
        return self.admin.list("v1/pods", namespace,
                               labels=f"app.kubernetes.io/instance={name},app.kubernetes.io/component=server")

    def port_forward(self, namespace: str, service: str, port: int = 5000, local_port: int = 0) -> PortForward:
        """`kubectl port-forward svc/<service> <local_port>:<port>`; use as a context manager."""
        return PortForward(self.resolver, service, namespace, port, local_port)

    def client_env(self) -> dict[str, str]:
        """Env for a process in the role of an in-cluster client (Service URLs work)."""
        return {"HTTP_PROXY": self.proxy.url, "http_proxy": self.proxy.url,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    # -- jobs ----------------------------------------------------------------------

    def wait_job(self, namespace: str, name: str, timeout: float = 180) -> tuple[bool, str]:
        """Wait for the Job controller's verdict; (succeeded, the last pod's log)."""
        def finished() -> tuple[bool] | None:
            self.check_operator()
            job = self.admin.get("batch/v1/jobs", namespace, name) or {}
            for condition in (job.get("status") or {}).get("conditions") or []:
                if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
                    return (condition["type"] == "Complete",)
            return None

        (ok,) = wait_for(finished, timeout, what=f"Job {namespace}/{name} to finish", interval=0.5)
        pods = self.admin.list("v1/pods", namespace, labels=f"job-name={name}")
        pods.sort(key=lambda p: p["metadata"]["creationTimestamp"])
        log = self.runner.logs(namespace, pods[-1]["metadata"]["name"]) if pods else ""
        return ok, log

    def run_job(self, namespace: str, name: str, *, service_account: str, tracking_uri: str, audience: str,
                experiment: str = "sample-training") -> dict[str, Any]:
        """Create the sample Job (+ its ConfigMap), wait for it, return the script's JSON verdict."""
        self.service_account(namespace, service_account)
        for obj in sample_job.job_objects(name=name, namespace=namespace, service_account_name=service_account,
                                          tracking_uri=tracking_uri, audience=audience, experiment=experiment):
            self.admin.create(resource_of(obj), obj, namespace)
        ok, log = self.wait_job(namespace, name)
        lines = [line for line in log.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"job {namespace}/{name} printed no verdict (succeeded={ok}):\n{log[-3000:]}")
        verdict = dict(json.loads(lines[-1]))
        verdict["succeeded"] = ok
        return verdict

    def pod_runs(self, namespace: str, prefix: str = "") -> list[PodRun]:
        return self.runner.running(namespace, prefix)
