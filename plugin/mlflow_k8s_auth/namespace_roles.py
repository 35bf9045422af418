"""Names and markers of the MLflow roles that carry per-namespace permissions.

Shared by the server (which syncs roles listed in `[k8s_auth] namespace_permissions`) and
the admin client (which manages roles for other namespaces at runtime). The description
marks who owns a role, so the server never undoes what an admin set with the client.
"""

from __future__ import annotations

ROLE_PREFIX = "k8s-namespace-"
# Roles live in MLflow's default workspace, where grants resolve when workspaces are off.
ROLE_WORKSPACE = "default"
# Top-level resource types a namespace permission applies to.
ROLE_RESOURCE_TYPES = ("experiment", "registered_model", "prompt")
CONFIG_MARKER = "managed by [k8s_auth] namespace_permissions"
CLIENT_MARKER = "managed by the k8s-auth client"


def role_name(namespace: str) -> str:
    return f"{ROLE_PREFIX}{namespace}"


def namespace_of(role_name_: str) -> str | None:
    return role_name_[len(ROLE_PREFIX):] if role_name_.startswith(ROLE_PREFIX) else None


def grantable(permission: str) -> str:
    """MLflow has no NO_PERMISSIONS grant on resources; DENY is its explicit 'no access'."""
    return "DENY" if permission == "NO_PERMISSIONS" else permission


def description(namespace: str, marker: str) -> str:
    return f"ServiceAccounts of Kubernetes namespace {namespace} ({marker})"
