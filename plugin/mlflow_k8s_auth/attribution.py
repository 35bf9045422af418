"""Runs are attributed to their caller (`[k8s_auth] attribute_runs`, default true).

A run created through the server gets, as its `user_id` and its `mlflow.user` tag, the
identity the server authenticated: `system:serviceaccount:<namespace>:<name>` for a
ServiceAccount token, the login name for Basic auth. What the client sent (MLflow's client
sends the OS user of the process, `root` in most containers) is replaced, so a run always
says which job or person logged it.

The tracking store's `create_run` is wrapped on the server's store instance (every route
that creates a run goes through it); the identity comes from `g.mlflow_authenticated_user`,
which MLflow's auth app sets for every authenticated request. Outside a request (or when
MLflow set no user) the run is left as the client made it.
"""

from __future__ import annotations

import functools
from typing import Any

from flask import g, has_request_context

USER_TAG = "mlflow.user"
_MARK = "_mlflow_k8s_auth_attributed"


def caller() -> str | None:
    if not has_request_context():
        return None
    user = getattr(g, "mlflow_authenticated_user", None)
    return user if isinstance(user, str) and user else None


def _retagged(tags: Any, user: str) -> list[Any]:
    from mlflow.entities import RunTag

    kept = [tag for tag in (tags or []) if tag.key != USER_TAG]
    return [*kept, RunTag(USER_TAG, user)]


def wrap(store: Any) -> bool:
    """Wrap `store.create_run` in place. False if already wrapped."""
    if getattr(store, _MARK, False):
        return False
    create_run = store.create_run

    @functools.wraps(create_run)
    def attributed(experiment_id: Any, user_id: Any, start_time: Any, tags: Any, run_name: Any, *args: Any,
                   **kwargs: Any) -> Any:
        user = caller()
        if user is not None:
            user_id, tags = user, _retagged(tags, user)
        return create_run(experiment_id, user_id, start_time, tags, run_name, *args, **kwargs)

    store.create_run = attributed
    setattr(store, _MARK, True)
    return True


def install(flask_app: Any) -> None:
    """Wrap the tracking store on the first request (it is built lazily, per worker)."""

    def ensure_wrapped() -> None:
        from mlflow.server.handlers import _get_tracking_store

        wrap(_get_tracking_store())

    flask_app.before_request(ensure_wrapped)
