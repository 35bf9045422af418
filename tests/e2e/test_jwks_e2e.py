"""`spec.auth.tokenValidation: JWKS` end to end on the real control plane.

The real operator renders the server without any ClusterRoleBinding; the real Job and
Deployment controllers run its migration and its pod (sandboxed by the process kubelet),
whose only rights are those every ServiceAccount has (OIDC discovery). A job's real
`mlflow` client logs a run with its projected token: the server verified it with the
cluster's signing keys alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import unique_namespace
from tests.e2e.stack import Stack
from tests.support.controlplane import API_AUDIENCE, ControlPlane
from tests.support.crd import install_crd
from tests.support.kubeapi import ApiError, Kube

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NS, NAME = unique_namespace("jwks-e2e"), "mlflow"
SPEC: dict[str, Any] = {"auth": {"tokenValidation": "JWKS"}, "server": {"workers": 1}}
CRB = "rbac.authorization.k8s.io/v1/clusterrolebindings"


@pytest.fixture(scope="module")
def stack(admin: Kube, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("jwks-e2e")
    install_crd(admin)
    admin.create_namespace(NS)
    try:
        with Stack(admin, control_plane.kubeconfig, root, [NS]) as stack:
            stack.start_operator([NS])
            yield stack
            stack.check_operator()
    finally:
        admin.delete("v1/namespaces", None, NS)


def test_a_jwks_server_logs_a_jobs_run_without_any_cluster_role_binding(stack: Stack) -> None:
    stack.apply_server(NS, NAME, SPEC)
    status = stack.wait_ready(NS, NAME)
    # The operator rendered no binding for this server (the API server's own list).
    ours = stack.admin.list(CRB, labels=f"mlflow-operator.dev/owner-namespace={NS}")
    assert ours == []
    # The server's ServiceAccount may not create TokenReviews: it never asks for one.
    server = stack.admin.with_token(stack.admin.token_for(NS, f"{NAME}-server", [API_AUDIENCE]))
    with pytest.raises(ApiError) as refused:
        server.token_review("not-a-token", [status["audience"]])
    assert refused.value.code == 403
    verdict = stack.run_job(NS, "train", service_account="trainer",
                            tracking_uri=status["url"], audience=status["audience"])
    assert verdict["ok"], verdict
    assert verdict["succeeded"]
    logs = "".join(stack.runner.logs(NS, pod["metadata"]["name"])
                   for pod in stack.server_pods(NS, NAME))
    assert "TokenReview" not in logs
    assert "Traceback" not in logs
