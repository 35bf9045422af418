"""Just-in-time MLflow users for ServiceAccounts, safe under concurrency.

Creation is insert-or-get on the users table's unique username, so any number of threads,
uvicorn workers or server replicas sharing one auth database create each user once. The
admin flag and the namespace role are brought in line with the config on every sync:
the config's role (owned by the config, see `namespace_ownership`) for a namespace the
config names, else the role an admin made for it, else none. The id of a config role is
trusted for `ROLE_ID_TTL_SECONDS` only, and forgotten at once when the role turns out to be
gone, so a deleted role is made again on the next login instead of failing every login.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import TYPE_CHECKING, Any

from cachetools import TTLCache

from . import metrics
from .namespace_ownership import ensure_config_role, find_role, ignore_missing, is_duplicate, is_missing, release
from .namespace_roles import ROLE_PREFIX, is_config_owned, role_name
from .policy import Grant

if TYPE_CHECKING:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

_logger = logging.getLogger(__name__)
# How long a process trusts the id of a config-owned role before reading it again; a role
# found gone (RESOURCE_DOES_NOT_EXIST) is forgotten at once and made again.
ROLE_ID_TTL_SECONDS = 30.0


class UserProvisioner:
    def __init__(self, store: SqlAlchemyStore, role_id_ttl_seconds: float = ROLE_ID_TTL_SECONDS) -> None:
        self._store = store
        self._role_ids: TTLCache[tuple[str, str], int] = TTLCache(maxsize=4096, ttl=role_id_ttl_seconds)
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
            if not is_duplicate(exc):
                raise
        # Another thread, worker or replica won the insert.
        return self._store.get_user(grant.username)

    def _sync_roles(self, user_id: int, grant: Grant) -> None:
        wanted = self._namespace_role_id(grant)
        current = {r.id for r in self._store.list_user_roles(user_id) if r.name.startswith(ROLE_PREFIX)}
        for role_id in current - {wanted}:
            ignore_missing(lambda: self._store.unassign_role_from_user(user_id, role_id))
        if wanted is None or wanted in current:
            return
        try:
            self._assign(user_id, wanted)
        except Exception as exc:
            if not is_missing(exc):
                raise
            # The role vanished (deleted by hand, or released by a replica with another
            # config): forget its id, resolve or make it again, and retry once.
            self._forget(grant.namespace)
            wanted = self._namespace_role_id(grant)
            if wanted is not None:
                self._assign(user_id, wanted)

    def _assign(self, user_id: int, role_id: int) -> None:
        try:
            self._store.assign_role_to_user(user_id, role_id)
        except Exception as exc:
            if not is_duplicate(exc):
                raise

    def _namespace_role_id(self, grant: Grant) -> int | None:
        """The config's role for the namespace, else the one an admin made."""
        if grant.namespace_permission:
            return self._config_role_id(grant.namespace, grant.namespace_permission)
        role = find_role(self._store, role_name(grant.namespace))
        if role is None or not is_config_owned(role):
            return None if role is None else role.id
        # Made by a process whose config named the namespace; ours does not: release it (an
        # admin's role it displaced comes back) so the grant cannot outlive the config.
        release(self._store, grant.namespace)
        role = find_role(self._store, role_name(grant.namespace))
        return None if role is None or is_config_owned(role) else role.id

    def _config_role_id(self, namespace: str, permission: str) -> int:
        key = (namespace, permission)
        with self._lock:
            cached = self._role_ids.get(key)
        if cached is not None:
            return cached
        role = ensure_config_role(self._store, namespace, permission)
        with self._lock:
            self._role_ids[key] = role.id
        return int(role.id)

    def _forget(self, namespace: str) -> None:
        with self._lock:
            for key in [k for k in self._role_ids if k[0] == namespace]:
                self._role_ids.pop(key, None)
