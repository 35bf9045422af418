"""Hand namespace roles between the config and the admins, in MLflow's auth store.

Why ownership is a marker in the role's description (`namespace_roles.CONFIG_MARKER`)
rather than a table of ours: MLflow's migrations (`python -m mlflow.server.auth db
upgrade`, run by the operator's Job) know nothing of extra tables, while the description
column already exists on every role; the marker is created, renamed and deleted together
with its role (no row of ours can point at a role that is gone); admins see it in MLflow's
role list; and the server refuses API edits of config-owned roles (`role_guard`), so only
someone with direct database access could forge or erase it.

Rules (one rule for one namespace, whatever the order of events):

- the config names it, no role: a config-owned role is created;
- the config names it, an admin-owned role exists: that role is *parked* (renamed to
  `k8s-parked-namespace-<ns>`, its members unassigned, its grants kept) and a config-owned
  role takes the name: while the config names a namespace, the config wins;
- a config-owned role whose namespace the config does not name is *released*: deleted
  (its grants and assignments go with it, so every member loses them at once) and, if one
  was parked, the admin's role is put back and assigned to the namespace's users.

Every step tolerates another process doing the same step at the same time (replicas and
workers share the database): missing rows and duplicate names are expected, not errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from .namespace_roles import (
    CLIENT_MARKER,
    CONFIG_MARKER,
    PARKED_MARKER,
    PARKED_PREFIX,
    ROLE_RESOURCE_TYPES,
    ROLE_WORKSPACE,
    description,
    grantable,
    is_config_owned,
    namespace_of,
    parked_role_name,
    role_name,
)

_logger = logging.getLogger(__name__)
_ATTEMPTS = 4


def error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def is_duplicate(exc: Exception) -> bool:
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import IntegrityError

    if isinstance(exc, IntegrityError):
        return True
    # The store wraps a unique violation found at commit time as BAD_REQUEST.
    return isinstance(exc, MlflowException) and (
        exc.error_code == "RESOURCE_ALREADY_EXISTS" or isinstance(exc.__cause__, IntegrityError)
    )


def is_missing(exc: Exception) -> bool:
    return error_code(exc) == "RESOURCE_DOES_NOT_EXIST"


def ignore_missing(action: Callable[[], object]) -> None:
    """Run `action`; what it would remove being gone already is its goal reached."""
    try:
        action()
    except Exception as exc:
        if not is_missing(exc):
            raise


def find_role(store: Any, name: str) -> Any | None:
    try:
        return store.get_role_by_name(ROLE_WORKSPACE, name)
    except Exception as exc:
        if is_missing(exc):
            return None
        raise


def ensure_config_role(store: Any, namespace: str, permission: str) -> Any:
    """The namespace's config-owned role with the config's grants (parking an admin's role)."""
    for _ in range(_ATTEMPTS):
        role = find_role(store, role_name(namespace))
        if role is None:
            try:
                role = store.create_role(role_name(namespace), ROLE_WORKSPACE,
                                         description=description(namespace, CONFIG_MARKER))
            except Exception as exc:
                if is_duplicate(exc):
                    continue  # another process created it first: look again
                raise
        elif not is_config_owned(role):
            _park(store, role, namespace)
            continue
        try:
            sync_grants(store, role.id, grantable(permission))
        except Exception as exc:
            if is_missing(exc):
                continue  # released by a process with another config meanwhile
            raise
        return role
    raise RuntimeError(f"could not take ownership of the role of namespace {namespace!r}")


def sync_grants(store: Any, role_id: int, permission: str) -> None:
    existing = {rp.resource_type: rp for rp in store.list_role_permissions(role_id)}
    for resource_type in ROLE_RESOURCE_TYPES:
        row = existing.get(resource_type)
        if row is None:
            try:
                store.add_role_permission(role_id, resource_type, "*", permission)
            except Exception as exc:
                if not is_duplicate(exc):
                    raise
        elif row.permission != permission:
            store.update_role_permission(row.id, permission)


def release(store: Any, namespace: str) -> None:
    """Delete the namespace's config-owned role, then put back a parked admin role."""
    role = find_role(store, role_name(namespace))
    if role is not None and is_config_owned(role):
        ignore_missing(lambda: store.delete_role(role.id))
        _logger.info("Revoked namespace permission of %s: it left [k8s_auth] namespace_permissions", namespace)
    _unpark(store, namespace)


def reconcile(store: Any, config_permissions: Mapping[str, str]) -> None:
    """Make the store match the config: called once when the server starts."""
    for namespace, permission in config_permissions.items():
        ensure_config_role(store, namespace, permission)
    for role in store.list_roles([ROLE_WORKSPACE]):
        namespace = namespace_of(role.name)
        if namespace is not None and namespace not in config_permissions and is_config_owned(role):
            release(store, namespace)
        elif role.name.startswith(PARKED_PREFIX):
            namespace = role.name[len(PARKED_PREFIX):]
            if namespace not in config_permissions:
                _unpark(store, namespace)  # e.g. a process stopped between delete and rename


def _park(store: Any, role: Any, namespace: str) -> None:
    parked = parked_role_name(namespace)
    stale = find_role(store, parked)
    if stale is not None and stale.id == role.id:
        return  # another process parked this very role a moment ago
    if stale is not None:
        # A role parked earlier whose namespace role an admin made again: the newer one wins.
        ignore_missing(lambda: store.delete_role(stale.id))
    try:
        store.update_role(role.id, name=parked, description=description(namespace, PARKED_MARKER))
    except Exception as exc:
        if is_missing(exc) or is_duplicate(exc):
            return  # another process moved it first
        raise
    for assignment in _members(store, role.id):
        ignore_missing(lambda a=assignment: store.unassign_role_from_user(a.user_id, role.id))
    _logger.warning(
        "Namespace %s: [k8s_auth] namespace_permissions takes over from the role an admin made; "
        "that role is kept as %s and restored when the config no longer names the namespace",
        namespace, parked,
    )


def _unpark(store: Any, namespace: str) -> None:
    parked = find_role(store, parked_role_name(namespace))
    if parked is None:
        return
    try:
        store.update_role(parked.id, name=role_name(namespace), description=description(namespace, CLIENT_MARKER))
    except Exception as exc:
        if is_missing(exc) or is_duplicate(exc):
            return  # restored by another process, or the config role is back
        raise
    prefix = f"system:serviceaccount:{namespace}:"
    for user in store.list_users():
        if user.username.startswith(prefix):
            _assign(store, user.id, parked.id)
    _logger.info("Namespace %s: the role an admin made is in effect again", namespace)


def _assign(store: Any, user_id: int, role_id: int) -> None:
    try:
        store.assign_role_to_user(user_id, role_id)
    except Exception as exc:
        if not (is_duplicate(exc) or is_missing(exc)):
            raise


def _members(store: Any, role_id: int) -> list[Any]:
    try:
        return list(store.list_role_users(role_id))
    except Exception as exc:
        if is_missing(exc):
            return []
        raise
