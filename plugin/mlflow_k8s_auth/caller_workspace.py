"""A ServiceAccount caller without `X-MLFLOW-WORKSPACE` works in its own namespace's workspace.

A pure ASGI middleware placed outermost, before MLflow's workspace middleware reads the
header. It also keeps the bearer token's claimed ServiceAccount in a context variable for
the request (`BEARER_CLAIMS`), which authorization.py uses on FastAPI-native routes, where
MLflow checks permissions outside any Flask request. For the workspace: for a request with no `X-MLFLOW-WORKSPACE` and a bearer token that names a
ServiceAccount namespace (the `kubernetes.io.namespace` claim) which is a workspace
right now, it adds the header with that namespace. Nothing else changes: the token is
still verified by `authenticate_request`, so a forged one gets its 401 as before, and
the workspace so chosen is then authorized like any other (it is only a default, never a
permission). A header the client sent always wins. Namespaces that are not workspaces
(not allowed, not labelled, one-character names) add nothing: the request goes to
MLflow's `default` workspace, as without this middleware.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any, Protocol

import anyio.to_thread

from .credentials import GATEWAY_AUTH_HEADER, is_gateway_route
from .responses import RETRY_AFTER_SECONDS

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
HEADER = b"x-mlflow-workspace"
_MAX_TOKEN = 16 * 1024
# The bearer token's claimed ServiceAccount user name and uid, for this request (unverified
# here; authorization.py only uses it after authentication accepted that very user).
BEARER_CLAIMS: ContextVar[tuple[str, str | None] | None] = ContextVar("mlflow_k8s_auth_bearer_claims", default=None)


def token_payload(authorization: bytes) -> dict[str, Any] | None:
    """The claims of a bearer JWT, unverified (verification happens in authenticate_request)."""
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"bearer" or len(token) > _MAX_TOKEN:
        return None
    parts = token.strip().split(b".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def token_namespace(authorization: bytes) -> str | None:
    """The namespace a ServiceAccount token was issued in (its `kubernetes.io` claim)."""
    claims = (token_payload(authorization) or {}).get("kubernetes.io")
    namespace = claims.get("namespace") if isinstance(claims, dict) else None
    return namespace if isinstance(namespace, str) and namespace.isascii() else None


def _credentials_header(headers: list[tuple[bytes, bytes]], path: str) -> bytes | None:
    """The header authenticate_request reads (credentials.py): on /gateway/ routes
    X-MLflow-Authorization when set, else Authorization."""
    def value(wanted: bytes) -> bytes | None:
        return next((v for name, v in headers if name.lower() == wanted), None)

    if is_gateway_route(path):
        gateway = value(GATEWAY_AUTH_HEADER.lower().encode())
        if gateway:
            return gateway
    return value(b"authorization")


def _with_retry_after(send: Any) -> Any:
    """Every 503 carries Retry-After: MLflow turns a failed permission check (the API server
    not answering a SubjectAccessReview) into a 503 of its own without one."""

    async def sending(message: MutableMapping[str, Any]) -> None:
        if message.get("type") == "http.response.start" and message.get("status") == 503:
            headers = list(message.get("headers") or [])
            if not any(name.lower() == b"retry-after" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"retry-after", str(RETRY_AFTER_SECONDS).encode())]}
        await send(message)

    return sending


def _claims(payload: dict[str, Any] | None) -> tuple[str, str | None] | None:
    subject = (payload or {}).get("sub")
    if not isinstance(subject, str) or not subject.startswith("system:serviceaccount:"):
        return None
    claims = (payload or {}).get("kubernetes.io")
    account = claims.get("serviceaccount") if isinstance(claims, dict) else None
    uid = account.get("uid") if isinstance(account, dict) else None
    return subject, uid if isinstance(uid, str) else None


class Workspaces(Protocol):
    def has(self, name: str) -> bool: ...  # without waiting
    def synced(self) -> bool: ...
    def wait_synced(self) -> bool: ...


class CallerWorkspace:
    def __init__(self, app: ASGIApp, workspaces: Workspaces) -> None:
        self.app = app
        self._workspaces = workspaces

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        claims = None
        if scope.get("type") == "http":
            headers = scope.get("headers") or []
            authorization = _credentials_header(headers, scope.get("path") or "")
            payload = token_payload(authorization) if authorization is not None else None
            claims = _claims(payload)
            namespace = token_namespace(authorization) if payload is not None else None
            if namespace and not any(name.lower() == HEADER for name, _ in headers) \
                    and await self._is_workspace(namespace):
                scope = dict(scope)
                scope["headers"] = [*headers, (HEADER, namespace.encode())]
        reset = BEARER_CLAIMS.set(claims)
        try:
            await self.app(scope, receive, _with_retry_after(send))
        finally:
            BEARER_CLAIMS.reset(reset)

    async def _is_workspace(self, namespace: str) -> bool:
        if not self._workspaces.synced():  # only right after start: wait off the event loop
            await anyio.to_thread.run_sync(self._workspaces.wait_synced)
        return self._workspaces.has(namespace)


def install(fastapi_app: Any, workspaces: Workspaces) -> bool:
    """Add the middleware outermost. False when the app's middleware stack is already built."""
    if getattr(fastapi_app, "middleware_stack", None) is not None or not hasattr(fastapi_app, "add_middleware"):
        return False
    fastapi_app.add_middleware(CallerWorkspace, workspaces=workspaces)
    return True
