"""Config-owned namespace roles are read-only through MLflow's role API.

The server's `[k8s_auth] namespace_permissions` owns those roles (`namespace_ownership`):
an API edit would be undone on the next sync, and deleting one would only make it come
back. So deleting, renaming or changing the grants of such a role answers 400 with a
message that says where to change it, for every client (the k8s-auth client, MLflow's
`AuthServiceClient`, the UI, curl). The hook runs after MLflow's own `before_request`,
so callers who may not manage roles still get MLflow's 401/403 first.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response, request

from .namespace_roles import config_owned_message, is_config_owned, namespace_of


def _guarded_paths() -> tuple[frozenset[str], frozenset[str]]:
    """(paths naming a role by role_id, paths naming it by role_permission_id)."""
    from mlflow.server.auth import routes

    by_role = {routes.DELETE_ROLE, routes.AJAX_DELETE_ROLE, routes.UPDATE_ROLE, routes.AJAX_UPDATE_ROLE,
               routes.ADD_ROLE_PERMISSION, routes.AJAX_ADD_ROLE_PERMISSION}
    by_permission = {routes.REMOVE_ROLE_PERMISSION, routes.AJAX_REMOVE_ROLE_PERMISSION,
                     routes.UPDATE_ROLE_PERMISSION, routes.AJAX_UPDATE_ROLE_PERMISSION}
    return frozenset(by_role), frozenset(by_permission)


def install(flask_app: Any) -> None:
    by_role, by_permission = _guarded_paths()

    def refuse_config_owned() -> Response | None:
        if request.path not in by_role and request.path not in by_permission:
            return None
        try:
            role = _target_role(request.path in by_role)
        except Exception:
            return None  # a bad or unknown id: MLflow's handler answers it as usual
        if role is None or not is_config_owned(role):
            return None
        message = config_owned_message(namespace_of(role.name) or role.name)
        body = json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": message})
        return Response(body, status=400, mimetype="application/json")

    flask_app.before_request(refuse_config_owned)


def _target_role(by_role_id: bool) -> Any | None:
    from mlflow.server.auth import _get_int_request_param, store

    if by_role_id:
        return store.get_role(_get_int_request_param("role_id"))
    permission = store.get_role_permission(_get_int_request_param("role_permission_id"))
    return store.get_role(permission.role_id)
