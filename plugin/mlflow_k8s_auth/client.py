"""Admin client: `mlflow.server.get_app_client("k8s-auth", tracking_uri)`.

Adds to MLflow's AuthServiceClient: `whoami()` and per-namespace permissions (one MLflow
role per Kubernetes namespace that every ServiceAccount of it gets on its next login).
Namespaces listed in the server's `[k8s_auth] namespace_permissions` are owned by that
config; this client manages the others.
"""

from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient
from mlflow.server.auth.routes import GET_CURRENT_USER, LIST_USERS

from .config import PERMISSIONS
from .namespace_roles import (
    CLIENT_MARKER,
    ROLE_RESOURCE_TYPES,
    ROLE_WORKSPACE,
    description,
    grantable,
    namespace_of,
    role_name,
)


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
        role = self._namespace_role(namespace) or self.create_role(
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
        if role is None:
            return None
        permissions = {rp.permission for rp in self.list_role_permissions(role.id)}
        if len(permissions) != 1:
            return None  # edited by hand into a mixed role
        permission = permissions.pop()
        return "NO_PERMISSIONS" if permission == "DENY" else permission

    def list_namespace_permissions(self) -> dict[str, str | None]:
        return {
            ns: self.get_namespace_permission(ns)
            for ns in (namespace_of(r.name) for r in self.list_roles(ROLE_WORKSPACE))
            if ns
        }

    def remove_namespace_permission(self, namespace: str) -> None:
        role = self._namespace_role(namespace)
        if role is not None:
            self.delete_role(role.id)

    def _namespace_users(self, namespace: str) -> list[str]:
        prefix = f"system:serviceaccount:{namespace}:"
        users = self._request(LIST_USERS, "GET").get("users", [])
        return [u["username"] for u in users if u.get("username", "").startswith(prefix)]
