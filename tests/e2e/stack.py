"""The whole product on one machine: API server (emulator), operator, and what it renders.

Shared by the e2e test and the demo so both exercise one code path:
``Stack(api_url, root)`` + ``start_operator()`` + ``apply_server()`` + ``bring_up()`` gives
a running MLflow server made from the operator's own Job and Deployment; ``run_job()``
runs the sample training job (``tests.e2e.sample_job``) as a pod.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.e2e import kubelet, sample_job
from tests.e2e.cluster import LocalCluster, ServerPod, template_hash, wait_for

GROUP_PATH = "/apis/mlflow-operator.dev/v1alpha1"
OPERATOR_NS, OPERATOR_SA = "mlflow-operator", "mlflow-operator"
Say = Callable[[str], None]


def cr_path(namespace: str, name: str | None = None) -> str:
    base = f"{GROUP_PATH}/namespaces/{namespace}/mlflowservers"
    return f"{base}/{name}" if name else base


class Stack:
    def __init__(self, api_url: str, root: Path, say: Say = lambda _msg: None) -> None:
        self.root = root
        self.say = say
        self.cluster = LocalCluster(api_url, root)
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_log = root / "logs" / "operator.log"

    def __enter__(self) -> Stack:
        self.cluster.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_operator()
        self.cluster.__exit__()

    # -- objects -------------------------------------------------------------------

    def ensure(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create unless it exists (several jobs share one ServiceAccount)."""
        existing = self.cluster.get(f"{path}/{body['metadata']['name']}")
        return existing if existing is not None else self.cluster.create(path, body)

    def service_account(self, namespace: str, name: str) -> dict[str, Any]:
        return self.ensure(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                           sample_job.service_account(namespace, name))

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """`kubectl create` for the kinds the examples use."""
        kind, meta = obj["kind"], obj["metadata"]
        ns = meta.get("namespace", "default")
        paths = {
            "ServiceAccount": f"/api/v1/namespaces/{ns}/serviceaccounts",
            "ConfigMap": f"/api/v1/namespaces/{ns}/configmaps",
            "Secret": f"/api/v1/namespaces/{ns}/secrets",
            "Job": f"/apis/batch/v1/namespaces/{ns}/jobs",
            "MLflowServer": cr_path(ns),
        }
        if kind not in paths:
            raise ValueError(f"the harness cannot apply kind {kind}")
        return self.ensure(paths[kind], dict(obj))

    def apply_file(self, path: Path) -> list[dict[str, Any]]:
        import yaml

        return [self.apply(doc) for doc in yaml.safe_load_all(path.read_text()) if doc]

    def apply_server(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "mlflow-operator.dev/v1alpha1", "kind": "MLflowServer",
                "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}
        return self.cluster.create(cr_path(namespace), body)

    def patch_server(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        return self.cluster.patch(cr_path(namespace, name), {"spec": dict(spec)})

    def server(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.cluster.get(cr_path(namespace, name))
        if obj is None:
            raise LookupError(f"MLflowServer {namespace}/{name} not found")
        return obj

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.server(namespace, name).get("status") or {})

    # -- operator ------------------------------------------------------------------

    def start_operator(self, namespaces: list[str]) -> None:
        """`mlflow-operator run` as its own process, logged in as its ServiceAccount."""
        self.service_account(OPERATOR_NS, OPERATOR_SA)
        kubeconfig = self.root / "operator.kubeconfig"
        token = self.cluster.request_token(OPERATOR_NS, OPERATOR_SA, [], 24 * 3600)
        kubelet.write_kubeconfig(kubeconfig, self.cluster.api_url, token, OPERATOR_NS)
        argv = [str(Path(sys.executable).with_name("mlflow-operator")), "run", "--standalone",
                "--log-format", "plain", "--resync-seconds", "5", "--watch-timeout", "30"]
        for ns in namespaces:
            argv += ["--namespace", ns]
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("MLFLOW_TRACKING_URI", None)
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

    # -- bringing servers up ---------------------------------------------------------

    def bring_up(self, namespace: str, name: str, timeout: float = 240) -> tuple[dict[str, Any], ServerPod]:
        """Play the cluster until the MLflowServer reports Ready; return its status and pod."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_operator()
            self.cluster.sync(namespace, self.say, owner=name)
            status = self.status(namespace, name)
            pod = self.cluster.pods.get((namespace, name))
            if status.get("phase") == "Ready" and pod is not None and \
                    status.get("observedGeneration") == self.server(namespace, name)["metadata"].get("generation"):
                return status, pod
            if status.get("phase") == "Degraded":
                raise RuntimeError(f"MLflowServer {namespace}/{name} is Degraded: {status.get('conditions')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"MLflowServer {namespace}/{name} not Ready after {timeout:.0f}s; status: {status}")
            time.sleep(0.5)

    def wait_for_rollout_trigger(self, namespace: str, name: str, old_revision: str, timeout: float = 60) -> dict[str, Any]:
        """Wait until the operator changed the Deployment's pod template; return the new template."""
        def changed() -> dict[str, Any] | None:
            self.check_operator()
            dep = self.cluster.read_object("Deployment", namespace, name)
            template = (dep or {}).get("spec", {}).get("template")
            return template if template and template_hash(template) != old_revision else None

        return wait_for(f"Deployment {namespace}/{name} to get a new pod template", changed, timeout)

    # -- jobs ----------------------------------------------------------------------

    def run_job(
        self, namespace: str, name: str, *, service_account: str, tracking_uri: str, audience: str,
        experiment: str = "sample-training",
    ) -> dict[str, Any]:
        """Create the sample Job (+ its ConfigMap), run its pod, return the script's JSON verdict."""
        self.service_account(namespace, service_account)
        for obj in sample_job.job_objects(name=name, namespace=namespace, service_account_name=service_account,
                                          tracking_uri=tracking_uri, audience=audience, experiment=experiment):
            plural = "configmaps" if obj["kind"] == "ConfigMap" else "jobs"
            prefix = "/api/v1" if obj["kind"] == "ConfigMap" else "/apis/batch/v1"
            self.cluster.create(f"{prefix}/namespaces/{namespace}/{plural}", obj)
        code, log = self.cluster.run_job(namespace, name, timeout=180)
        lines = [line for line in log.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"job {namespace}/{name} printed no verdict (exit {code}):\n{log[-3000:]}")
        verdict = json.loads(lines[-1])
        verdict["exit_code"] = code
        return verdict
