"""`authenticate_request`: MLflow's `authorization_function` for ServiceAccount tokens.

Flow: credentials -> (cache | pre-check -> signature check and/or TokenReview (per
`token_validation`) -> policy -> JIT user) -> werkzeug Authorization. Works from headers
alone (MLflow's FastAPI bridge gives a partial request context), memoises per request in
`flask.g`, and never raises.
"""

from __future__ import annotations

import logging
import os
import secrets

from flask import Response, g, request
from werkzeug.datastructures import Authorization

from . import metrics, responses, runtime
from .jwks import Verified
from .credentials import Basic, Bearer, Malformed, extract, is_gateway_route
from .outcomes import Invalid, ReviewOutcome, Reviewed, Unavailable
from .policy import Forbidden, Grant, decide
from .precheck import Claims, Rejected, precheck, split_service_account

_logger = logging.getLogger(__name__)
_MEMO = "_mlflow_k8s_auth_result"
Result = Authorization | Response


def authenticate_request() -> Result:
    memo = g.get(_MEMO)
    if memo is not None:
        return memo
    result = _authenticate_safely()
    setattr(g, _MEMO, result)
    return result


def _authenticate_safely() -> Result:
    try:
        return _authenticate(request.headers, request.path)
    except Exception as exc:  # a bug or a dead database must not become a 500 with a trace
        _logger.error("authentication failed unexpectedly: %s", type(exc).__name__)
        metrics.AUTH_DECISIONS.labels(method="unknown", result="error").inc()
        return responses.unavailable("authentication is temporarily unavailable")


def _authenticate(headers, path: str) -> Result:  # type: ignore[no-untyped-def]
    state = runtime.current()
    allow_basic = state.config.allow_basic_auth
    credentials = extract(headers, path)
    if credentials is None:
        return _deny("none", "no credentials: send 'Authorization: Bearer <ServiceAccount token>'", allow_basic)
    if isinstance(credentials, Malformed):
        return _deny("malformed", credentials.reason, allow_basic)
    if isinstance(credentials, Basic):
        return _basic(credentials, path, allow_basic)
    return _bearer(credentials, allow_basic)


def _deny(method: str, message: str, allow_basic: bool) -> Response:
    metrics.AUTH_DECISIONS.labels(method=method, result="unauthenticated").inc()
    return responses.unauthenticated(message, allow_basic)


def _bearer(credentials: Bearer, allow_basic: bool) -> Result:
    state = runtime.current()
    token = credentials.token
    key = state.cache.key(token)
    outcome: ReviewOutcome | None = state.cache.lookup(key)
    if outcome is not None:
        metrics.CACHE_LOOKUPS.labels(result="hit").inc()
    else:
        claims = precheck(token, state.config.audiences, state.config.issuers)
        if isinstance(claims, Rejected):
            return _deny("bearer", claims.reason, allow_basic)
        outcome, shared = state.cache.get_or_review(key, lambda: _review(token, claims))
        metrics.CACHE_LOOKUPS.labels(result="hit" if shared else "miss").inc()
    return _answer(outcome, allow_basic)


def _validate(state: runtime.Runtime, token: str, claims: Claims) -> ReviewOutcome:
    """`token_validation`: with jwks a forged token stops at the local signature check (no
    TokenReview); jwks+tokenreview then asks the API server, which alone sees a deleted
    ServiceAccount or pod; jwks alone trusts the verified claims until the token expires."""
    if state.verifier is not None:
        verified = state.verifier.verify(token)
        if not isinstance(verified, Verified):
            return verified
        if not state.config.uses_tokenreview:
            return Reviewed(username=verified.username, namespace=verified.namespace, name=verified.name,
                            expires_at=verified.expires_at)
    return state.reviewer.review(token, claims)


def _review(token: str, claims: Claims) -> ReviewOutcome:
    """Validate the token, then (for a valid, allowed ServiceAccount) make its MLflow user current."""
    state = runtime.current()
    outcome = _validate(state, token, claims)
    if isinstance(outcome, Reviewed):
        grant = decide(state.config, outcome)
        if isinstance(grant, Grant):
            try:
                state.provisioner.sync(grant)
            except Exception as exc:
                # Store exceptions can quote SQL parameters (password hashes): name the type only.
                _logger.error(
                    "could not provision MLflow user %s: %s (%s, caused by %s)",
                    grant.username, type(exc).__name__, getattr(exc, "error_code", "-"),
                    type(exc.__cause__).__name__ if exc.__cause__ else "-",
                )
                return Unavailable("user store")
    return outcome


def _answer(outcome: ReviewOutcome, allow_basic: bool) -> Result:
    state = runtime.current()
    if isinstance(outcome, Unavailable):
        metrics.AUTH_DECISIONS.labels(method="bearer", result="unavailable").inc()
        return responses.unavailable(_unavailable_message(outcome), outcome.retry_after)
    if isinstance(outcome, Invalid):
        return _deny("bearer", outcome.reason, allow_basic)
    grant = decide(state.config, outcome)
    if isinstance(grant, Forbidden):
        metrics.AUTH_DECISIONS.labels(method="bearer", result="forbidden").inc()
        return responses.forbidden(grant.reason)
    metrics.AUTH_DECISIONS.labels(method="bearer", result="ok").inc()
    return Authorization("bearer", {"username": grant.username})


def _unavailable_message(outcome: Unavailable) -> str:
    if outcome.reason in ("http_401", "http_403"):
        # The API server refused the server's own credentials: waiting alone will not fix it.
        return ("cannot verify the token: the Kubernetes API refused this server's own credentials "
                "(its ServiceAccount needs permission to create TokenReviews: system:auth-delegator)")
    if outcome.reason == "rate_limited":
        return "this server is verifying too many new tokens right now (TokenReview rate limit), retry shortly"
    if outcome.reason == "jwks":
        return "cannot fetch the cluster's token signing keys right now, retry shortly"
    return "cannot verify the token right now, retry shortly"


def _basic(credentials: Basic, path: str, allow_basic: bool) -> Result:
    if not allow_basic:
        return _deny("basic", "Basic auth is disabled on this server: use a bearer token", allow_basic)
    if split_service_account(credentials.username) is not None:
        return _deny("basic", "ServiceAccounts must authenticate with a bearer token", allow_basic)
    username = _basic_user(credentials, path)
    if username is None:
        return _deny("basic", "invalid username or password", allow_basic)
    metrics.AUTH_DECISIONS.labels(method="basic", result="ok").inc()
    return Authorization("basic", {"username": username, "password": credentials.password})


def _basic_user(credentials: Basic, path: str) -> str | None:
    """MLflow's own check (with its credential cache), plus its internal gateway job token."""
    from mlflow.server import auth as mlflow_auth

    internal = os.environ.get("_MLFLOW_INTERNAL_GATEWAY_AUTH_TOKEN")
    if internal and is_gateway_route(path) and secrets.compare_digest(credentials.password.encode(), internal.encode()):
        return credentials.username if mlflow_auth.store.has_user(credentials.username) else None
    user = mlflow_auth._authenticate_cached(credentials.username, credentials.password)
    return user.username if user is not None else None
