"""The real operator serving the injection webhook on 127.0.0.1, called by the real API
server over TLS; shared by tests/operator/test_webhook*.py and tests/e2e/test_injection.py.

    hook = InjectionOperator(admin, proxy.url, workdir, watch=[ns], scope=[ns, other]).start()
    hook.dry_run_pod(ns, pod)     # what the API server would store (the webhook ran)
    hook.calls()                  # the API server's own count of calls to the webhook
    hook.stop()

The chart is rendered for the release (`helm template`): its RBAC (with the webhook's
rules), its empty certificate Secret and its MutatingWebhookConfiguration are applied as
the chart has them, except that the configuration calls `https://127.0.0.1:<port>/inject`
instead of the chart's Service (no cluster network here), carries a webhook name of its
own (so the API server's metrics count this test's calls only) and a namespaceSelector
limited to the test's namespaces (other tests' Pods are never sent to it). The operator
runs as the chart's ServiceAccount, with the webhook flags the chart's Deployment passes.
"""
from __future__ import annotations

import copy
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from tests.chart import helm as h
from tests.conftest import unique_namespace
from tests.operator.chart_rbac import OperatorIdentity
from tests.operator.harness import OperatorProcess, free_port, release_namespace, wait_for
from tests.support.kubeapi import ApiError, Kube, resource_path

MWC = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
LABEL = "mlflow-operator.dev/server"


def bare_pod(labels: dict[str, str] | None = None, **container: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "job-", "labels": labels or {}},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "train", "image": "python:3.11", "command": ["python"], **container}]}}


class InjectionOperator:
    def __init__(self, admin: Kube, api_url: str, workdir: Path, watch: list[str], scope: list[str],
                 extra: list[str] | None = None, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None):
        """`api_url`: where the operator finds the API server (the fault proxy, or the
        control plane itself)."""
        self.admin, self.api_url, self.workdir = admin, api_url, workdir
        self.watch, self.scope, self.extra, self.change = watch, scope, extra or [], change
        self.release = unique_namespace("op-hook")
        self.port = free_port()
        self.hook_name = f"inject.{self.release}.mlflow-operator.dev"
        objects = h.template(workdir, {"watchNamespaces": watch}, namespace=self.release, release=self.release)
        self.configuration = h.one(objects, "MutatingWebhookConfiguration")
        self.secret = h.one(objects, "Secret")
        self.args = h.one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        self.identity: OperatorIdentity | None = None
        self.operator: OperatorProcess | None = None

    @property
    def name(self) -> str:
        return self.configuration["metadata"]["name"]

    def _configuration(self) -> dict[str, Any]:
        config = copy.deepcopy(self.configuration)
        (hook,) = config["webhooks"]
        hook["name"] = self.hook_name
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{self.port}/inject"}
        hook["namespaceSelector"] = {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": self.scope}]}
        return config

    def _webhook_args(self) -> list[str]:
        """The chart's --webhook-* args, host and port changed to the local listener."""
        args = [a for a in self.args if a.startswith("--webhook-")
                and not a.startswith(("--webhook-host=", "--webhook-port="))]
        assert args, "the chart passes --webhook-* args"
        return [*args, "--webhook-host=127.0.0.1", "--webhook-listen=127.0.0.1",
                f"--webhook-port={self.port}", *self.extra]

    def start(self, wait: bool = True) -> InjectionOperator:
        """Install, start, and (`wait`) wait until the caBundle is set."""
        self.identity = OperatorIdentity.install(self.admin, self.workdir, self.release, self.watch,
                                                 change=self.change, webhook=True)
        self.admin.create("v1/secrets", self.secret, self.release)
        self.admin.create(MWC, self._configuration())
        self.operator = OperatorProcess(self.identity.kubeconfig(self.admin, self.api_url), self.workdir,
                                        self.watch, extra=self._webhook_args()).start()
        if wait:
            wait_for(self._ca_bundle, 30, "the operator to set the caBundle")
        return self

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        self.admin.delete(MWC, None, self.name)
        for namespace in self.watch:
            release_namespace(self.admin, namespace)
        if self.identity is not None:
            self.identity.uninstall(self.admin)

    def log(self) -> str:
        return self.operator.log() if self.operator else ""

    # ---- what the API server sees ------------------------------------------------------

    def _ca_bundle(self) -> str:
        live = self.admin.get(MWC, None, self.name) or {}
        return (live.get("webhooks") or [{}])[0].get("clientConfig", {}).get("caBundle", "")

    def ca_count(self) -> int:
        import base64

        return base64.b64decode(self._ca_bundle()).count(b"BEGIN CERTIFICATE")

    def served_certificate(self) -> x509.Certificate:
        """The certificate the webhook presents to a new TLS client right now."""
        pem = ssl.get_server_certificate(("127.0.0.1", self.port), timeout=5)
        return x509.load_pem_x509_certificate(pem.encode())

    def create_pod(self, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
        return self.admin.create("v1/pods", pod, namespace)

    def dry_run_pod(self, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
        return self.admin.request("POST", resource_path("v1/pods", namespace), body=pod, params={"dryRun": "All"})

    def calls(self) -> int:
        """Calls of the API server to this webhook (admitted or rejected), from its metrics."""
        text = self.admin.session.get(self.admin.server + "/metrics", timeout=30).text
        pattern = re.compile(r'^apiserver_admission_webhook_admission_duration_seconds_count\{([^}]*)\} (\S+)$', re.M)
        return sum(int(float(value)) for labels, value in pattern.findall(text)
                   if f'name="{self.hook_name}"' in labels)


def refusal(call: Any) -> ApiError:
    """The ApiError a refused create raises."""
    try:
        call()
    except ApiError as exc:
        return exc
    raise AssertionError("the API server accepted what the webhook should refuse")
