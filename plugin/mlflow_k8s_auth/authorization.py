"""`authorization = kubernetes`: Kubernetes RBAC answers MLflow's permission checks for
ServiceAccount callers.

For security reviewers: the seam
--------------------------------
MLflow's auth app keeps every permission decision of its own (which permission each route
needs, the folds, DENY, the default-permission floor, search filtering). All of them read
a user's grants through ONE store method, `store.list_grants(user_id, workspace,
resource_types)`; workspace listing and `GetWorkspace` read
`store.list_accessible_workspace_names(username)`. This module replaces exactly those two
methods on the auth store instance. For any other caller (humans with Basic auth, the
internal gateway token, requests outside a Flask request) the original method runs
unchanged, so humans keep MLflow's permissions, and `is_admin` users (MLflow admins and
`admin_service_accounts`) are never asked about: MLflow lets admins through before it
reads grants.

A caller is a ServiceAccount only when our `authenticate_request` accepted a bearer token
for it in this request (Basic auth with a `system:serviceaccount:` name is refused there),
and only when the store is asked about that caller's own user id. On MLflow's
FastAPI-native routes (OTLP traces, gateway, jobs) MLflow checks permissions outside any
Flask request, after authenticating the request: there the ServiceAccount is the one the
bearer token names (caller_workspace.BEARER_CLAIMS), again only for that user's own id.
Its MLflow grants in the database are then not consulted at all: what RBAC says is all it
gets.

What is asked (SubjectAccessReview, API group `mlflow.kubeflow.org`, namespace = the
workspace; the resources and verbs of the Kubeflow MLflow plugin, so Roles written for it
work unchanged):
- resource `experiments` for MLflow's experiment, run, trace, assessment, logged model,
  scorer and review-queue grants; `registeredmodels` for registered models, model
  versions and prompts;
- the MLflow level is the highest whose verbs are all allowed: `get` -> READ,
  `get`+`update` -> EDIT, `get`+`update`+`delete` -> MANAGE (MLflow has no level that
  may delete without MANAGE); without `get`, an explicit DENY (so no workspace-wide
  fallback can grant a read RBAC refuses);
- creating in a workspace (MLflow's workspace-wide USE) needs `create` on
  `registeredmodels` for model-registry and prompt routes, on `experiments` otherwise;
- a workspace is listed (and `GetWorkspace` allowed) when `list` is allowed on
  `experiments`, `registeredmodels` or `jobs` there (the Kubeflow plugin's rule);
- gateway and MCP resources get no grant (DENY): they are not authorized by RBAC;
- MLflow's workspace-admin level (role management) is never granted through RBAC.

Answers are cached (`sar.AccessReviewer`); when the API server cannot answer, the request
gets 503 + Retry-After (MLflow turns the TEMPORARILY_UNAVAILABLE exception into a 503,
the Flask error handler below covers the paths where it does not, and
caller_workspace adds Retry-After to every 503), never a guess.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from flask import g, has_request_context, request

from . import responses
from .caller_workspace import BEARER_CLAIMS, token_payload
from .sar import AccessReviewer, AuthorizationUnavailable, Subject

_logger = logging.getLogger(__name__)
_SUBJECT = "_mlflow_k8s_auth_rbac_subject"
_MARK = "_mlflow_k8s_auth_rbac"
_SA_PREFIX = "system:serviceaccount:"

EXPERIMENTS, REGISTERED_MODELS, JOBS = "experiments", "registeredmodels", "jobs"
# MLflow grant resource types -> the Kubeflow plugin's RBAC resources.
RBAC_RESOURCE = {
    **dict.fromkeys(("experiment", "run", "trace", "assessment", "logged_model", "scorer", "scorer_version",
                     "review_queue"), EXPERIMENTS),
    **dict.fromkeys(("registered_model", "registered_model_version", "prompt", "prompt_version"),
                    REGISTERED_MODELS),
}
WORKSPACE_TYPE = "workspace"
# Highest level first: (verbs that must all be allowed, MLflow permission).
LEVELS = ((("get", "update", "delete"), "MANAGE"), (("get", "update"), "EDIT"), (("get",), "READ"))
_REGISTRY_PATH_PARTS = ("/registered-models/", "/model-versions/", "/prompts/", "/prompt-")


class KubernetesPermissions:
    """Grants for a ServiceAccount subject, decided by SubjectAccessReviews."""

    def __init__(self, reviewer: AccessReviewer) -> None:
        self._reviewer = reviewer

    def level(self, subject: Subject, namespace: str, resource: str) -> str:
        """READ/EDIT/MANAGE by RBAC, or DENY. Asks `get` first: a refused read costs one review."""
        allowed = functools.partial(self._reviewer.allowed, subject, namespace, resource)
        if not allowed("get"):
            return "DENY"
        if not allowed("update"):
            return "READ"
        return "MANAGE" if allowed("delete") else "EDIT"

    def grants(self, subject: Subject, workspace: str, resource_types: Iterable[str], path: str) -> list[Any]:
        from mlflow.server.auth.sqlalchemy_store import RoleGrantRow

        rows = []
        levels: dict[str, str] = {}
        types = set(resource_types)
        for resource_type in sorted(types):
            if resource_type == WORKSPACE_TYPE:
                continue
            resource = RBAC_RESOURCE.get(resource_type)
            if resource is None:
                rows.append(RoleGrantRow(resource_type, "*", "DENY"))
                continue
            if resource not in levels:
                levels[resource] = self.level(subject, workspace, resource)
            rows.append(RoleGrantRow(resource_type, "*", levels[resource]))
        # The workspace-wide row is only a fallback for types without a row of their own, and
        # every type gets one above: it matters (and costs a review) only when asked for.
        created = REGISTERED_MODELS if any(part in path for part in _REGISTRY_PATH_PARTS) else EXPERIMENTS
        if WORKSPACE_TYPE in types and self._reviewer.allowed(subject, workspace, created, "create"):
            rows.append(RoleGrantRow(WORKSPACE_TYPE, "*", "USE"))
        return rows

    def accessible(self, subject: Subject, names: Iterable[str]) -> set[str]:
        return {name for name in names
                if any(self._reviewer.allowed(subject, name, resource, "list")
                       for resource in (EXPERIMENTS, REGISTERED_MODELS, JOBS))}


def _token_uid(header: str) -> str | None:
    """The ServiceAccount's uid from the bearer token our authentication already verified."""
    claims = (token_payload(header.encode("latin-1", "replace")) or {}).get("kubernetes.io")
    account = claims.get("serviceaccount") if isinstance(claims, dict) else None
    uid = account.get("uid") if isinstance(account, dict) else None
    return uid if isinstance(uid, str) else None


def current_subject() -> Subject | None:
    """The ServiceAccount this request authenticated as with a bearer token, else None.

    In a Flask request: what our `authenticate_request` accepted. On MLflow's FastAPI-native
    routes (OTLP traces, gateway, jobs), whose permission checks run outside Flask: the
    ServiceAccount the request's bearer token names (`caller_workspace.BEARER_CLAIMS`);
    MLflow authenticated that token before it checks permissions, and the grant reads are
    only answered for that user's own id (`_is_own_user`)."""
    if not has_request_context():
        claims = BEARER_CLAIMS.get()
        if claims is None:
            return None
        namespace, _, name = claims[0][len(_SA_PREFIX):].partition(":")
        return Subject.service_account(namespace, name, claims[1])
    memo = g.get(_SUBJECT)
    if memo is not None:
        return memo or None
    subject: Subject | bool = False
    try:
        from mlflow.server.auth import authenticate_request

        result = authenticate_request()
        username = getattr(result, "username", None)
        if getattr(result, "type", None) == "bearer" and isinstance(username, str) and username.startswith(_SA_PREFIX):
            namespace, _, name = username[len(_SA_PREFIX):].partition(":")
            subject = Subject.service_account(namespace, name, _token_uid(request.headers.get("Authorization", "")))
    except Exception:  # noqa: BLE001 - not authenticated here: MLflow's own path decides
        subject = False
    setattr(g, _SUBJECT, subject)
    return subject or None


def _is_own_user(store: Any, subject: Subject, user_id: int) -> bool:
    if not has_request_context():
        try:
            return store.get_user(subject.username).id == user_id
        except Exception:  # noqa: BLE001 - no such MLflow user: not this caller
            return False
    key = f"{_SUBJECT}_id"
    user_id_of_subject = g.get(key)
    if user_id_of_subject is None:
        user_id_of_subject = store.get_user(subject.username).id
        setattr(g, key, user_id_of_subject)
    return user_id_of_subject == user_id


def install(store: Any, permissions: KubernetesPermissions, workspace_names: Callable[[], Iterable[str]]) -> bool:
    """Replace the two grant reads on `store` (see the module doc). False if already done."""
    if getattr(store, _MARK, False):
        return False
    list_grants = store.list_grants
    list_accessible = store.list_accessible_workspace_names

    @functools.wraps(list_grants)
    def rbac_list_grants(user_id: int, workspace: str, resource_types: Any) -> list[Any]:
        subject = current_subject()
        if subject is None or not _is_own_user(store, subject, user_id):
            return list_grants(user_id, workspace, resource_types)
        return permissions.grants(subject, workspace, resource_types,
                                  request.path if has_request_context() else "")

    @functools.wraps(list_accessible)
    def rbac_list_accessible(username: str | None) -> Any:
        subject = current_subject()
        if subject is None or username != subject.username:
            return list_accessible(username)
        return permissions.accessible(subject, workspace_names())

    store.list_grants = rbac_list_grants
    store.list_accessible_workspace_names = rbac_list_accessible
    setattr(store, _MARK, True)
    return True


def _unavailable(exc: AuthorizationUnavailable) -> Any:
    return responses.unavailable("cannot check Kubernetes permissions right now, retry shortly", exc.retry_after)


def install_error_handler(flask_app: Any) -> None:
    """503 + Retry-After for a review that could not be made, wherever MLflow asked for it
    (validators run in `before_request`, search filters in `after_request`)."""
    flask_app.register_error_handler(AuthorizationUnavailable, _unavailable)

    def server_error(exc: Any) -> Any:
        original = getattr(exc, "original_exception", None)
        if isinstance(original, AuthorizationUnavailable):
            return _unavailable(original)
        return exc

    flask_app.register_error_handler(500, server_error)
    # Flask logs an exception from after_request with its traceback before it picks the 500
    # handler; this one was logged (one line, sar.py) when the review failed.
    log_exception = flask_app.log_exception

    def log_unless_unavailable(exc_info: Any) -> None:
        if not isinstance(exc_info[1], AuthorizationUnavailable):
            log_exception(exc_info)

    flask_app.log_exception = log_unless_unavailable
