"""`MLFLOW_TRACKING_AUTH=k8s-token`: the MLflow client sends the pod's ServiceAccount token.

The only module a job image needs to log to an mlflow-operator server. It depends on
nothing beyond MLflow itself (`mlflow-skinny` is enough; `requests` comes with it). The
token file is read on every request, so a token the kubelet rotates is picked up with no
restart and no cache to go stale.

Workspaces: `MLFLOW_WORKSPACE` is sent as `X-MLFLOW-WORKSPACE` (recent MLflow clients do so
themselves; older ones do not). Without it, an mlflow-operator server with workspaces puts
the job in the workspace of the namespace its token was issued in. The client does not
send that namespace itself: a server without workspaces refuses any workspace header.
"""

from __future__ import annotations

import os

import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider

TOKEN_PATH_ENV = "MLFLOW_K8S_TOKEN_PATH"
DEFAULT_TOKEN_PATH = "/var/run/secrets/mlflow/serviceaccount/token"
_MAX_TOKEN_BYTES = 16 * 1024
WORKSPACE_HEADER = "X-MLFLOW-WORKSPACE"


def token_path() -> str:
    return os.environ.get(TOKEN_PATH_ENV) or DEFAULT_TOKEN_PATH


def read_token(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_TOKEN_BYTES + 1)
    except FileNotFoundError:
        raise MlflowException(
            f"k8s-token auth: no ServiceAccount token at {path}. Mount a projected token there "
            f"(audience of the MLflow server) or set {TOKEN_PATH_ENV} to its path."
        ) from None
    except OSError as exc:
        raise MlflowException(f"k8s-token auth: cannot read the token file {path}: {exc.strerror}") from None
    token = raw.decode("ascii", errors="replace").strip()
    if not token or len(raw) > _MAX_TOKEN_BYTES or "\ufffd" in token:
        raise MlflowException(f"k8s-token auth: the token file {path} does not hold a token")
    return token


class ServiceAccountTokenAuth(requests.auth.AuthBase):
    """Sets `Authorization: Bearer <token>` from the token file, read for each request."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {read_token(self.path)}"
        if WORKSPACE_HEADER not in request.headers:
            workspace = (os.environ.get("MLFLOW_WORKSPACE") or "").strip()
            if workspace:
                request.headers[WORKSPACE_HEADER] = workspace
        return request


class K8sTokenAuthProvider(RequestAuthProvider):
    """Registered as `k8s-token` (entry point group `mlflow.request_auth_provider`)."""

    def get_name(self) -> str:
        return "k8s-token"

    def get_auth(self) -> ServiceAccountTokenAuth:
        return ServiceAccountTokenAuth(token_path())
