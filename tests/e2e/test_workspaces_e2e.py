"""End to end with workspaces and Kubernetes authorization: the real operator renders an
MLflowServer with `workspaces.mode: Namespaces` and `auth.authorization: Kubernetes`; the
real Deployment and Job controllers make the pods, the process kubelet runs them; a Job
with only the injection label logs a run with the real MLflow client (job image:
mlflow-skinny + mlflow-k8s-token). The server, in its pod, lists and watches namespaces
and asks SubjectAccessReviews with its own ServiceAccount, bound by the operator to the
chart's mlflow-operator:workspace-server; the job's rights are a RoleBinding to Kubernetes'
`edit`-like ClusterRole on mlflow.kubeflow.org. The run lands in the namespace's workspace
and records the job's ServiceAccount as its user.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chart import helm as h
from tests.conftest import unique_namespace
from tests.e2e import job_image
from tests.e2e.stack import Stack
from tests.e2e import sample_job
from tests.operator.webhook_harness import LABEL, InjectionOperator
from tests.support.controlplane import ControlPlane
from tests.support.crd import install_crd
from tests.support.kubeapi import Kube

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NS, NAME, JOB, SA = unique_namespace("teams-e2e"), "mlflow", "train", "trainer"
CLUSTER_ROLES = "rbac.authorization.k8s.io/v1/clusterroles"
WORKSPACE_SERVER = "mlflow-operator:workspace-server"


@pytest.fixture(scope="module")
def stack(admin: Kube, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("teams-e2e")
    install_crd(admin)
    # The chart's ClusterRole the operator binds the server to (helm installs it).
    (role,) = [o for o in h.template(root, None) if o["kind"] == "ClusterRole"
               and o["metadata"]["name"] == WORKSPACE_SERVER]
    created_role = admin.get(CLUSTER_ROLES, None, WORKSPACE_SERVER) is None
    if created_role:
        admin.create(CLUSTER_ROLES, role)
    edit = {"metadata": {"name": f"{NS}-mlflow-edit"}, "rules": [{
        "apiGroups": ["mlflow.kubeflow.org"], "resources": ["experiments", "registeredmodels", "jobs"],
        "verbs": ["get", "list", "create", "update", "delete"]}]}
    admin.create(CLUSTER_ROLES, edit)
    hook = InjectionOperator(admin, control_plane.url, root, watch=[NS], scope=[NS])
    try:
        with Stack(admin, control_plane.kubeconfig, root, [NS]) as stack:
            hook.start()  # creates NS
            yield stack
    finally:
        hook.stop()
        admin.delete(CLUSTER_ROLES, None, edit["metadata"]["name"])
        if created_role:  # a later `helm install` in this cluster must be able to own it
            admin.delete(CLUSTER_ROLES, None, WORKSPACE_SERVER)
        assert "Traceback" not in hook.log(), hook.log()[-4000:]


def _job(python: str) -> list[dict[str, Any]]:
    return [sample_job.service_account(NS, SA), *sample_job.labelled_job_objects(
        name=JOB, namespace=NS, service_account_name=SA, label={LABEL: NAME}, experiment="team-training", python=python)]


def _binding() -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "trainer-mlflow", "namespace": NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{NS}-mlflow-edit"},
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": NS}]}


def test_a_job_logs_into_its_namespace_workspace_as_its_service_account(stack: Stack, admin: Kube) -> None:
    python = job_image.job_python()
    stack.apply_server(NS, NAME, {"server": {"workers": 1}, "workspaces": {"mode": "Namespaces"},
                                  "auth": {"authorization": "Kubernetes"}})
    stack.wait_ready(NS, NAME)
    binding = admin.get("rbac.authorization.k8s.io/v1/clusterrolebindings", None,
                        f"mlflow-operator:{NS}:{NAME}:workspaces")
    assert binding is not None and binding["roleRef"]["name"] == WORKSPACE_SERVER
    stack.ensure(_binding())
    for obj in _job(str(python)):
        stack.ensure(obj)
    ok, log = stack.wait_job(NS, JOB)
    lines = [line for line in log.splitlines() if line.startswith("{")]
    assert lines, f"no verdict (succeeded={ok}):\n{log[-3000:]}"
    verdict = json.loads(lines[-1])
    assert ok and verdict["ok"], verdict
    assert verdict["user"] == f"system:serviceaccount:{NS}:{SA}"
    # The server's own log: its workspace provider listed the namespaces.
    server_log = "\n".join(stack.runner.logs(NS, pod["metadata"]["name"])
                           for pod in stack.server_pods(NS, NAME))
    assert "workspaces from Kubernetes namespaces" in server_log, server_log[-3000:]
    print(f"\nrun {verdict['run_id']} logged in workspace {NS} by {verdict['user']}")
