"""Just-in-time MLflow users for ServiceAccounts, safe under concurrency.

Creation is insert-or-get on the users table's unique username, so any number of threads,
uvicorn workers or server replicas sharing one auth database create each user once. The
admin flag and the namespace role are brought in line with the config on every sync.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import TYPE_CHECKING, Any

from . import metrics
from .namespace_roles import (
    CONFIG_MARKER,
    ROLE_PREFIX,
    ROLE_RESOURCE_TYPES,
    ROLE_WORKSPACE,
    description,
    grantable,
    role_name,
)
from .policy import Grant

if TYPE_CHECKING:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

_logger = logging.getLogger(__name__)

def _is_duplicate(exc: Exception) -> bool:
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import IntegrityError

    if isinstance(exc, IntegrityError):
        return True
    # The store wraps a unique violation found at commit time as BAD_REQUEST.
    return isinstance(exc, MlflowException) and (
        exc.error_code == "RESOURCE_ALREADY_EXISTS" or isinstance(exc.__cause__, IntegrityError)
    )


class UserProvisioner:
    def __init__(self, store: SqlAlchemyStore) -> None:
        self._store = store
        self._role_ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def sync(self, grant: Grant) -> None:
        user = self._get_or_create(grant)
        if bool(user.is_admin) != grant.is_admin:
            self._store.update_user(grant.username, is_admin=grant.is_admin)
            _logger.info("%s MLflow admin: %s", "Granted" if grant.is_admin else "Revoked", grant.username)
        self._sync_roles(user.id, grant)

    def _get_or_create(self, grant: Grant) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self._store.get_user(grant.username)
        except MlflowException:
            pass
        try:
            # Nobody knows this password, so the account cannot log in with Basic auth.
            user = self._store.create_user(grant.username, secrets.token_urlsafe(48), is_admin=grant.is_admin)
            metrics.USERS_PROVISIONED.inc()
            _logger.info("Created MLflow user %s", grant.username)
            return user
        except Exception as exc:
            if not _is_duplicate(exc):
                raise
        # Another thread, worker or replica won the insert.
        return self._store.get_user(grant.username)

    def _sync_roles(self, user_id: int, grant: Grant) -> None:
        wanted = self._namespace_role_id(grant)
        current = {r.id for r in self._store.list_user_roles(user_id) if r.name.startswith(ROLE_PREFIX)}
        for role_id in current - {wanted}:
            self._ignore_missing(lambda: self._store.unassign_role_from_user(user_id, role_id))
        if wanted is not None and wanted not in current:
            try:
                self._store.assign_role_to_user(user_id, wanted)
            except Exception as exc:
                if not _is_duplicate(exc):
                    raise

    def _namespace_role_id(self, grant: Grant) -> int | None:
        """The config's role for the namespace, else one an admin made with the client."""
        if grant.namespace_permission:
            return self._ensure_role(grant.namespace, grant.namespace_permission)
        from mlflow.exceptions import MlflowException

        try:
            role = self._store.get_role_by_name(ROLE_WORKSPACE, role_name(grant.namespace))
        except MlflowException:
            return None
        # A config-made role whose namespace left the config no longer grants anything.
        return None if CONFIG_MARKER in (role.description or "") else role.id

    def _ensure_role(self, namespace: str, permission: str) -> int:
        key = (namespace, permission)
        with self._lock:
            if key in self._role_ids:
                return self._role_ids[key]
        role = self._get_or_create_role(namespace)
        self._sync_role_permissions(role.id, grantable(permission))
        with self._lock:
            self._role_ids[key] = role.id
        return role.id

    def _get_or_create_role(self, namespace: str) -> Any:
        name = role_name(namespace)
        try:
            return self._store.create_role(name, ROLE_WORKSPACE, description=description(namespace, CONFIG_MARKER))
        except Exception as exc:
            if not _is_duplicate(exc):
                raise
        return self._store.get_role_by_name(ROLE_WORKSPACE, name)

    def _sync_role_permissions(self, role_id: int, permission: str) -> None:
        existing = {rp.resource_type: rp for rp in self._store.list_role_permissions(role_id)}
        for resource_type in ROLE_RESOURCE_TYPES:
            row = existing.get(resource_type)
            if row is None:
                try:
                    self._store.add_role_permission(role_id, resource_type, "*", permission)
                except Exception as exc:
                    if not _is_duplicate(exc):
                        raise
            elif row.permission != permission:
                self._store.update_role_permission(row.id, permission)

    @staticmethod
    def _ignore_missing(action: Any) -> None:
        from mlflow.exceptions import MlflowException

        try:
            action()
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
