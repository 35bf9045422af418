"""Wires the multi-tenancy features into the server (called from `app.create_app`).

- `workspaces = namespaces`: the `k8s-namespaces` workspace provider (workspaces.py) and the
  caller's own namespace as its default workspace (caller_workspace.py);
- `authorization = kubernetes`: RBAC answers the grant reads for ServiceAccounts
  (authorization.py, sar.py);
- `attribute_runs = true`: runs carry their caller (attribution.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from . import attribution, authorization, caller_workspace
from .config import K8sAuthConfig
from .sar import AccessReviewer
from .tokenreview import build_api_client
from .workspaces import SCHEME, NamespaceWorkspaceStore

_logger = logging.getLogger(__name__)


def startup_problem(config: K8sAuthConfig) -> str | None:
    """Why `mlflow server` was started with flags that do not match the ini, or None.

    `mlflow server` sets these variables from its flags before it loads the app."""
    if config.workspaces != "namespaces":
        return None
    enabled = os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() in ("1", "true")
    uri = os.environ.get("MLFLOW_WORKSPACE_STORE_URI", "").strip()
    if not enabled or not uri.startswith(f"{SCHEME}:"):
        return (f"[k8s_auth] workspaces = namespaces needs `mlflow server --enable-workspaces "
                f"--workspace-store-uri {SCHEME}://`")
    return None


def workspace_store() -> NamespaceWorkspaceStore:
    from mlflow.server.workspace_helpers import _get_workspace_store

    store = _get_workspace_store()
    if not isinstance(store, NamespaceWorkspaceStore):
        raise RuntimeError(f"the workspace store is {type(store).__name__}, not the {SCHEME} provider")
    return store


def install(config: K8sAuthConfig, auth_store: Any, flask_app: Any, fastapi_app: Any) -> None:
    if config.attribute_runs:
        attribution.install(flask_app)
    if config.workspaces != "namespaces":
        return
    workspaces = workspace_store()
    workspaces.start()  # the first list is usually done before the first request arrives
    if not caller_workspace.install(fastapi_app, workspaces):
        _logger.warning("ServiceAccount callers get no default workspace: the app's middleware is already built")
    if config.authorization == "kubernetes":
        reviewer = AccessReviewer(
            lambda: _authorization_api(config), config.authorization_allow_ttl_seconds,
            config.authorization_deny_ttl_seconds, config.cache_max_entries, config.tokenreview_timeout_seconds,
        )
        authorization.install(auth_store, authorization.KubernetesPermissions(reviewer), lambda: workspaces.names())
        authorization.install_error_handler(flask_app)


def _authorization_api(config: K8sAuthConfig) -> Any:
    from kubernetes import client as k8s

    return k8s.AuthorizationV1Api(build_api_client(config.kubeconfig))
