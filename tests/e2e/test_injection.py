"""End to end with the injection webhook: a Job whose pod carries only the label
`mlflow-operator.dev/server: mlflow` and whose "image" holds only `mlflow-skinny` and the
job package `mlflow-k8s-token` (tests/e2e/job_image.py) logs a run with the real MLflow
client through a real MLflowServer.

The real operator serves the webhook (chart RBAC, its own CA; tests/operator/webhook_harness.py)
and reconciles the server; the real Job and Deployment controllers make the pods; the
API server calls the webhook over TLS when the Job controller creates the job's pod; the
process kubelet runs that pod sandboxed, with the projected token the webhook asked for,
from the TokenRequest API; the server checks it with a TokenReview.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import unique_namespace
from tests.e2e import job_image, sample_job
from tests.e2e.stack import Stack
from tests.operator.webhook_harness import LABEL, InjectionOperator
from tests.support.controlplane import ControlPlane
from tests.support.crd import install_crd
from tests.support.kubeapi import Kube

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NS, NAME, JOB, SA = unique_namespace("inject"), "mlflow", "train", "trainer"
EXAMPLE = job_image.ROOT / "examples" / "labelled-job.yaml"


@pytest.fixture(scope="module")
def stack(admin: Kube, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("inject")
    install_crd(admin)
    hook = InjectionOperator(admin, control_plane.url, root, watch=[NS], scope=[NS])
    try:
        with Stack(admin, control_plane.kubeconfig, root, [NS]) as stack:
            hook.start()  # creates NS (the chart's Role for the watched namespace)
            stack.hook = hook  # type: ignore[attr-defined]
            yield stack
    finally:
        hook.stop()
        assert "Traceback" not in hook.log(), hook.log()[-4000:]


def _job(python: str) -> list[dict[str, Any]]:
    return [sample_job.service_account(NS, SA), *sample_job.labelled_job_objects(
        name=JOB, namespace=NS, service_account_name=SA, label={LABEL: NAME}, experiment="injected", python=python)]


def test_a_job_with_only_the_label_logs_a_run(stack: Stack, admin: Kube) -> None:
    python = job_image.job_python()
    installed = job_image.distributions(python)
    assert "mlflow-k8s-token" in installed and "mlflow-skinny" in installed and "mlflow" not in installed
    assert "mlflow-operator" not in installed and "kopf" not in installed
    stack.apply_server(NS, NAME, {"server": {"workers": 1}})
    status = stack.wait_ready(NS, NAME)
    for obj in _job(str(python)):
        stack.ensure(obj)
    ok, log = stack.wait_job(NS, JOB)
    lines = [line for line in log.splitlines() if line.startswith("{")]
    assert lines, f"no verdict (succeeded={ok}):\n{log[-3000:]}"
    verdict = json.loads(lines[-1])
    assert ok and verdict["ok"], verdict
    # What the API server stored for the job's pod: the webhook's additions.
    (pod,) = admin.list("v1/pods", NS, labels=f"job-name={JOB}")
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == f"http://{NAME}.{NS}.svc:5000"
    assert env["MLFLOW_TRACKING_AUTH"] == "k8s-token"
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "mlflow-operator-token"]
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == status["audience"]
    print(f"\nrun {verdict['run_id']} logged by a pod with only the label; job image: "
          f"{len(installed)} distributions (mlflow-skinny {installed['mlflow-skinny']},"
          f" mlflow-k8s-token {installed['mlflow-k8s-token']})")


def test_the_readme_example_runs_as_written(stack: Stack, admin: Kube) -> None:
    """examples/labelled-job.yaml in this test's namespace, its `python` being the job image's."""
    python = str(job_image.job_python())
    stack.wait_ready(NS, NAME)
    for doc in yaml.safe_load_all(EXAMPLE.read_text()):
        doc["metadata"]["namespace"] = NS
        if doc["kind"] == "Job":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            assert container["command"][0] == "python" and "env" in container
            container["command"][0] = python
            container["env"].append({"name": "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "value": "1"})
        stack.ensure(doc)
    ok, log = stack.wait_job(NS, "train-labelled")
    assert ok and "logged run" in log, log[-3000:]
