"""Admin client: `mlflow.server.get_app_client("k8s-auth", tracking_uri)`.

Adds to MLflow's AuthServiceClient: `whoami()` and per-namespace permissions (one MLflow
role per Kubernetes namespace that every ServiceAccount of it gets on its next login).
Namespaces listed in the server's `[k8s_auth] namespace_permissions` are owned by that
config: the server refuses to change or remove them through the API (400, with a message
saying so), and this client raises that as an `MlflowException`. This client manages the
others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient
from mlflow.server.auth.routes import GET_CURRENT_USER, LIST_USERS

from .config import PERMISSIONS
from .namespace_roles import (
    CLIENT_MARKER,
    ROLE_RESOURCE_TYPES,
    ROLE_WORKSPACE,
    Owner,
    config_owned_message,
    description,
    grantable,
    is_config_owned,
    namespace_of,
    owner_of,
    role_name,
)


@dataclass(frozen=True)
class NamespacePermission:
    """A namespace's permission and who owns it: `config` (the server's
    `namespace_permissions`) or `admin` (this client or MLflow's role API)."""

    permission: str | None  # None: a role edited by hand into mixed grants
    owner: Owner


class K8sAuthServiceClient(AuthServiceClient):
    def whoami(self) -> dict[str, Any]:
        """The caller as the server sees it: `{"id", "username", "is_admin"}`."""
        return self._request(GET_CURRENT_USER, "GET")["user"]

    def _namespace_role(self, namespace: str) -> Any | None:
        wanted = role_name(namespace)
        return next((r for r in self.list_roles(ROLE_WORKSPACE) if r.name == wanted), None)

    def set_namespace_permission(self, namespace: str, permission: str) -> None:
        """Grant `permission` (READ, USE, EDIT, MANAGE, NO_PERMISSIONS) to the namespace's SAs."""
        permission = permission.upper()
        if permission not in PERMISSIONS:
            raise MlflowException.invalid_parameter_value(
                f"permission must be one of {', '.join(sorted(PERMISSIONS))}, got {permission!r}"
            )
        role = self._namespace_role(namespace)
        if role is not None and is_config_owned(role):
            raise MlflowException.invalid_parameter_value(config_owned_message(namespace))
        role = role or self.create_role(
            ROLE_WORKSPACE, role_name(namespace), description(namespace, CLIENT_MARKER)
        )
        existing = {rp.resource_type: rp for rp in self.list_role_permissions(role.id)}
        for resource_type in ROLE_RESOURCE_TYPES:
            row = existing.get(resource_type)
            if row is None:
                self.add_role_permission(role.id, resource_type, "*", grantable(permission))
            elif row.permission != grantable(permission):
                self.update_role_permission(row.id, grantable(permission))
        # Members already logged in get the role now, not at their next new token.
        for user in self._namespace_users(namespace):
            if role.id not in {r.id for r in self.list_user_roles(user)}:
                self.assign_role(user, role.id)

    def get_namespace_permission(self, namespace: str) -> str | None:
        role = self._namespace_role(namespace)
        return None if role is None else self._permission_of(role)

    def list_namespace_permissions(self) -> dict[str, NamespacePermission]:
        """The namespace permissions in effect, each with its owner. A role the server parked
        (an admin's, while the config names its namespace) is not in effect and not listed."""
        return {
            ns: NamespacePermission(self._permission_of(role), owner_of(role))
            for role in self.list_roles(ROLE_WORKSPACE)
            if (ns := namespace_of(role.name))
        }

    def remove_namespace_permission(self, namespace: str) -> None:
        """Delete an admin-owned namespace role; the server answers 400 for a config-owned one."""
        role = self._namespace_role(namespace)
        if role is not None:
            self.delete_role(role.id)

    def _permission_of(self, role: Any) -> str | None:
        permissions = {rp.permission for rp in self.list_role_permissions(role.id)}
        if len(permissions) != 1:
            return None  # edited by hand into a mixed role
        permission = permissions.pop()
        return "NO_PERMISSIONS" if permission == "DENY" else permission

    def _namespace_users(self, namespace: str) -> list[str]:
        prefix = f"system:serviceaccount:{namespace}:"
        users = self._request(LIST_USERS, "GET").get("users", [])
        return [u["username"] for u in users if u.get("username", "").startswith(prefix)]
