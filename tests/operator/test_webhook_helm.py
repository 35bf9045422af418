"""`helm upgrade` keeps what the operator wrote into the chart's webhook objects: the
certificates in the (empty-rendered) Secret and the caBundle of the
MutatingWebhookConfiguration. Real helm v4, real kube-apiserver, the real operator with
the installed Deployment's args and a token of the chart's ServiceAccount."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.chart import helm as h
from tests.conftest import unique_namespace
from tests.operator.harness import OPERATOR, free_port, wait_for
from tests.support.controlplane import API_AUDIENCE, ControlPlane
from tests.support.crd import install_crd
from tests.support.kubeapi import Kube

MWC = "admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def _args(admin: Kube, name: str) -> list[str]:
    (container,) = admin.get("apps/v1/deployments", name, name)["spec"]["template"]["spec"]["containers"]
    port = free_port()
    swap = {"--liveness=": f"--liveness=http://127.0.0.1:{free_port()}/healthz",
            "--webhook-port=": f"--webhook-port={port}"}
    return [next((v for k, v in swap.items() if a.startswith(k)), a) for a in container["args"]] + \
        ["--webhook-listen=127.0.0.1"]


def test_helm_upgrade_keeps_the_operators_certificates_and_ca_bundle(
        admin: Kube, control_plane: ControlPlane, tmp_path: Path) -> None:
    install_crd(admin)
    name = unique_namespace("mlflow-operator")  # release, namespace and object names

    def helm(verb: str, *args: str) -> None:
        h.helm(verb, name, str(h.CHART), "-n", name, *args, kubeconfig=control_plane.kubeconfig)

    secret_name = f"{name}-webhook-tls"
    proc = None
    try:
        helm("install", "--create-namespace")
        assert admin.get("v1/secrets", name, secret_name).get("data") is None  # rendered empty
        token = admin.token_for(name, name, [API_AUDIENCE])
        kubeconfig = admin.write_kubeconfig(tmp_path / "operator.kubeconfig", token=token)
        with open(tmp_path / "operator.log", "wb") as log:
            proc = subprocess.Popen([str(OPERATOR), *_args(admin, name)], stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "KUBECONFIG": str(kubeconfig)}, stdin=subprocess.DEVNULL)

        def ca_bundle() -> str:
            return admin.get(MWC, None, name)["webhooks"][0]["clientConfig"].get("caBundle", "")

        bundle = wait_for(ca_bundle, 30, "the operator's caBundle")
        data = admin.get("v1/secrets", name, secret_name)["data"]
        assert set(data) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
        proc.terminate()
        proc.wait(20)
        helm("upgrade", "--set", "resyncSeconds=30", "--set", "webhook.timeoutSeconds=7")
        assert admin.get("v1/secrets", name, secret_name)["data"] == data
        hook = admin.get(MWC, None, name)["webhooks"][0]
        assert hook["clientConfig"]["caBundle"] == bundle and hook["timeoutSeconds"] == 7
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        h.helm("uninstall", name, "-n", name, "--ignore-not-found", kubeconfig=control_plane.kubeconfig, check=False)
        admin.delete("v1/namespaces", None, name)
    log_text = (tmp_path / "operator.log").read_text()
    assert "Traceback" not in log_text and " 403" not in log_text, log_text[-3000:]


def test_chart_values_of_the_webhook(tmp_path: Path) -> None:
    off = h.template(tmp_path, {"webhook": {"enabled": False}})
    assert not [o for o in off if "webhook" in o["metadata"]["name"] or o["kind"] == "MutatingWebhookConfiguration"]
    (container,) = h.one(off, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert not [a for a in container["args"] if a.startswith("--webhook")]
    assert [p["name"] for p in container["ports"]] == ["liveness"]
    on = h.template(tmp_path, {"webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 3, "port": 10443}})
    (hook,) = h.one(on, "MutatingWebhookConfiguration")["webhooks"]
    assert (hook["failurePolicy"], hook["timeoutSeconds"], hook["sideEffects"]) == ("Ignore", 3, "None")
    assert hook["objectSelector"] == {"matchExpressions": [{"key": "mlflow-operator.dev/server", "operator": "Exists"}]}
    assert hook["rules"][0]["operations"] == ["CREATE"] and hook["reinvocationPolicy"] == "IfNeeded"
    service = h.one(on, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "webhook"
    (container,) = h.one(on, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {"name": "webhook", "containerPort": 10443, "protocol": "TCP"} in container["ports"]
    assert "--webhook-port=10443" in container["args"]
    assert f"--webhook-host={service['metadata']['name']}.{h.NAMESPACE}.svc" in container["args"]
    assert "/webhook/timeoutSeconds" in h.template_error(tmp_path, {"webhook": {"timeoutSeconds": 31}})
    assert "/webhook/failurePolicy" in h.template_error(tmp_path, {"webhook": {"failurePolicy": "fail"}})
