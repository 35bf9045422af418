"""Real kubectl v1.35 against the emulated API server: the chart's objects and
examples/minimal.yaml apply, `kubectl get mlflow` lists the server, and the operator
started with the chart Deployment's own args brings it to Ready for `kubectl wait`.

Flags the emulator forces (a real cluster needs none of them):
- `--validate=false` on apply: the emulator serves no OpenAPI document;
- namespaces are created with `kubectl apply -f` instead of `kubectl create namespace`:
  `kubectl create` sends protobuf, which the emulator cannot decode;
- the objects are rendered by `helm template` and applied by kubectl rather than
  `helm install`: helm stores its release record as a protobuf-encoded Secret.
"""
from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.chart import helm as h
from tests.operator.harness import CR, OPERATOR, free_port, wait_for
from tests.support.kube import KubeEmulator

MINIMAL = h.ROOT / "examples" / "minimal.yaml"
NAMESPACE_YAML = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"


class Kubectl:
    def __init__(self, kubeconfig: Path, home: Path):
        self.binary = h.require(h.KUBECTL)
        self.home = home
        self.env = {**os.environ, "HOME": str(home), "KUBECONFIG": str(kubeconfig)}

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.binary), "--cache-dir", str(self.home / "cache"), *args],
                                input=stdin, capture_output=True, text=True, env=self.env, timeout=60)
        if check and result.returncode:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def apply(self, *args: str, stdin: str | None = None) -> str:
        return self("apply", "--validate=false", *args, stdin=stdin).stdout

    def namespace(self, name: str) -> None:
        self.apply("-f", "-", stdin=NAMESPACE_YAML.format(name=name))


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    return Kubectl(kubeconfig, tmp_path)


def _operator_argv(objects: list[dict[str, Any]]) -> tuple[list[str], str]:
    """The chart Deployment's args, with the liveness endpoint on a free local port
    (the pod's 0.0.0.0:8080 may be taken on a shared test machine)."""
    (container,) = h.one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    args = [f"--liveness={liveness}" if a.startswith("--liveness=") else a for a in container["args"]]
    assert args != container["args"], "the chart passes --liveness=URL"
    return [str(OPERATOR), *args], liveness


def _alive(proc: subprocess.Popen[bytes], liveness: str, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"operator exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
    try:
        with urllib.request.urlopen(liveness, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def test_chart_objects_and_minimal_example_apply_and_show_in_kubectl_get(
        kube: KubeEmulator, kubectl: Kubectl, tmp_path: Path) -> None:
    objects = h.template(tmp_path)
    manifest = tmp_path / "chart.yaml"
    manifest.write_text(h.helm("template", h.RELEASE, str(h.CHART), "-n", h.NAMESPACE,
                               "--include-crds").stdout)
    kubectl.namespace(h.NAMESPACE)
    out = kubectl.apply("-f", str(manifest))
    for obj in objects:
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        kind = obj["kind"].lower() + (f".{group}" if group else "")
        assert f"{kind}/{obj['metadata']['name']} created" in out, out
    assert kube.get("apps/v1/deployments", h.NAMESPACE, h.RELEASE) is not None

    kubectl.namespace("ml-team")  # as the example's comment says (kubectl create namespace)
    out = kubectl.apply("-f", str(MINIMAL))
    assert out.strip() == "mlflowserver.mlflow-operator.dev/mlflow created"
    assert kubectl.apply("-f", str(MINIMAL)).strip() == "mlflowserver.mlflow-operator.dev/mlflow unchanged"

    listing = kubectl("get", "mlflow", "-n", "ml-team").stdout.splitlines()
    assert listing[0].split()[0] == "NAME" and listing[1].split()[0] == "mlflow"
    everywhere = kubectl("get", "mlflow", "-A", "-o", "name").stdout.split()
    assert everywhere == ["mlflowserver.mlflow-operator.dev/mlflow"]


@pytest.mark.slow
def test_operator_with_the_charts_args_makes_the_example_ready(
        kube: KubeEmulator, kubectl: Kubectl, kubeconfig: Path, tmp_path: Path) -> None:
    objects = h.template(tmp_path)
    argv, liveness = _operator_argv(objects)
    kubectl.namespace("ml-team")
    kubectl.apply("-f", str(MINIMAL))
    log = tmp_path / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: _alive(proc, liveness, log), 30, "the operator's liveness endpoint")

        def phase() -> str:
            return kubectl("get", "mlflow", "mlflow", "-n", "ml-team", "-o", "jsonpath={.status.phase}").stdout

        wait_for(lambda: phase() == "Progressing", what="status.phase Progressing")
        # No controllers in the emulator: play the Job and Deployment controllers.
        job = kube.get(CR, "ml-team", "mlflow")["status"]["migration"]["job"]
        wait_for(lambda: kube.get("batch/v1/jobs", "ml-team", job), what=f"Job {job}")
        kube.mark_job_finished("ml-team", job)
        wait_for(lambda: kube.get("apps/v1/deployments", "ml-team", "mlflow"), what="the server Deployment")
        kube.mark_deployment_available("ml-team", "mlflow")
        # The command NOTES.txt gives users.
        kubectl("-n", "ml-team", "wait", "mlflow/mlflow", "--for=condition=Ready", "--timeout=30s")
        url = kubectl("get", "mlflow", "mlflow", "-n", "ml-team", "-o", "jsonpath={.status.url}").stdout
        assert url == "http://mlflow.ml-team.svc:5000"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    text = log.read_text()
    assert "Traceback" not in text
    assert text.lstrip().startswith("{"), "logFormat json: one JSON object per line"
