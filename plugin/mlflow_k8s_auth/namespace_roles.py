"""Names and ownership markers of the MLflow roles that carry per-namespace permissions.

Shared by the server (which syncs the roles listed in `[k8s_auth] namespace_permissions`)
and the admin client (which manages roles for other namespaces at runtime). Pure: no
MLflow store, no I/O.

Ownership is recorded in the role's description. A role is **config-owned** when its
description carries `CONFIG_MARKER`: the server created it for a namespace its config
names, keeps its grants equal to the config, refuses API edits of it (`role_guard`), and
deletes it when the config stops naming the namespace. Every other `k8s-namespace-<ns>`
role is **admin-owned** (made with the k8s-auth client or MLflow's role API): the server
assigns it to the namespace's ServiceAccounts and never rewrites it. While the config
names a namespace that also has an admin-owned role, that role is *parked* under
`k8s-parked-namespace-<ns>` with its grants intact, and put back when the config lets go.
"""

from __future__ import annotations

from typing import Literal, Protocol

ROLE_PREFIX = "k8s-namespace-"
PARKED_PREFIX = "k8s-parked-namespace-"
# Roles live in MLflow's default workspace, where grants resolve when workspaces are off.
ROLE_WORKSPACE = "default"
# Top-level resource types a namespace permission applies to.
ROLE_RESOURCE_TYPES = ("experiment", "registered_model", "prompt")
CONFIG_MARKER = "managed by [k8s_auth] namespace_permissions"
CLIENT_MARKER = "managed by the k8s-auth client"
PARKED_MARKER = "set aside while [k8s_auth] namespace_permissions names this namespace"

Owner = Literal["config", "admin"]


class NamedRole(Protocol):
    name: str
    description: str | None


def role_name(namespace: str) -> str:
    return f"{ROLE_PREFIX}{namespace}"


def parked_role_name(namespace: str) -> str:
    return f"{PARKED_PREFIX}{namespace}"


def namespace_of(role_name_: str) -> str | None:
    return role_name_[len(ROLE_PREFIX):] if role_name_.startswith(ROLE_PREFIX) else None


def grantable(permission: str) -> str:
    """MLflow has no NO_PERMISSIONS grant on resources; DENY is its explicit 'no access'."""
    return "DENY" if permission == "NO_PERMISSIONS" else permission


def description(namespace: str, marker: str) -> str:
    return f"ServiceAccounts of Kubernetes namespace {namespace} ({marker})"


def owner_of(role: NamedRole) -> Owner:
    return "config" if CONFIG_MARKER in (role.description or "") else "admin"


def is_config_owned(role: NamedRole) -> bool:
    """A namespace role the server's config made (and alone may change or delete)."""
    return namespace_of(role.name) is not None and owner_of(role) == "config"


def config_owned_message(namespace: str) -> str:
    return (
        f"namespace {namespace!r} is owned by the server's [k8s_auth] namespace_permissions "
        f"(role {role_name(namespace)}): change or remove it there (with the operator: the "
        "MLflowServer's spec.auth.namespacePermissions), not through the API"
    )
