"""Ask the Kubernetes API server whether a token is valid (authentication.k8s.io/v1 TokenReview).

Every failure of the call itself (timeout, connection refused, 5xx, our own RBAC missing)
becomes `Unavailable`, which the caller answers with 503 and never caches.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException, OpenApiException

from . import metrics
from .outcomes import Invalid, ReviewOutcome, Reviewed, Unavailable
from .precheck import Claims, split_service_account
from .ratelimit import TokenBucket

_logger = logging.getLogger(__name__)


def build_api_client(kubeconfig: str | None) -> k8s.ApiClient:
    """The server's own identity: the kubeconfig file, or the in-cluster ServiceAccount when
    empty. TokenReviews and the signing-key fetches (jwks.py) both go out as it."""
    configuration = k8s.Configuration()
    if kubeconfig:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    elif os.environ.get("KUBECONFIG"):
        # kubectl's convention: an explicit KUBECONFIG wins over the in-cluster account
        # (lets the server run outside a pod, e.g. the e2e harness against plain-http APIs).
        k8s_config.load_kube_config(client_configuration=configuration)
    else:
        # Re-reads the projected token file as the kubelet rotates it.
        k8s_config.load_incluster_config(client_configuration=configuration)
    # Fail fast: the client answers 503 + Retry-After and retries itself.
    configuration.retries = 0
    return k8s.ApiClient(configuration)


def build_api(kubeconfig: str | None) -> k8s.AuthenticationV1Api:
    return k8s.AuthenticationV1Api(build_api_client(kubeconfig))


def _failure_kind(exc: BaseException) -> str:
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    # urllib3's NewConnectionError (refused, unreachable) subclasses its TimeoutError.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "connection"
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return "timeout"
    return "connection"


class TokenReviewer:
    def __init__(
        self,
        api_factory: Callable[[], k8s.AuthenticationV1Api],
        audiences: tuple[str, ...],
        timeout_seconds: float,
        limiter: TokenBucket | None = None,
    ) -> None:
        self._api_factory = api_factory
        self._limiter = limiter
        self._api: k8s.AuthenticationV1Api | None = None
        self._audiences = list(audiences)
        self._timeout = timeout_seconds

    def _client(self) -> k8s.AuthenticationV1Api:
        if self._api is None:
            self._api = self._api_factory()
        return self._api

    def review(self, token: str, claims: Claims) -> ReviewOutcome:
        """One TokenReview, unless this process is over its rate limit (then 503 + Retry-After)."""
        if self._limiter is not None:
            wait = self._limiter.try_acquire()
            if wait > 0:
                metrics.RATE_LIMITED.inc()
                return Unavailable("rate_limited", retry_after=wait)
        started = time.perf_counter()
        try:
            outcome = self._call(token, claims)
        finally:
            metrics.TOKENREVIEW_SECONDS.observe(time.perf_counter() - started)
        if isinstance(outcome, Unavailable):
            metrics.TOKENREVIEW_ERRORS.labels(reason=outcome.reason).inc()
        return outcome

    def _call(self, token: str, claims: Claims) -> ReviewOutcome:
        body = k8s.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=k8s.V1TokenReviewSpec(token=token, audiences=self._audiences),
        )
        try:
            answer = self._client().create_token_review(body, _request_timeout=self._timeout)
        except ApiException as exc:
            # The exception body may echo the request (the token): log the status only.
            hint = " (may the server's ServiceAccount create tokenreviews?)" if exc.status in (401, 403) else ""
            _logger.warning("TokenReview failed with HTTP %s%s", exc.status, hint)
            return Unavailable(f"http_{exc.status}")
        except (urllib3.exceptions.HTTPError, OSError, OpenApiException) as exc:
            kind = _failure_kind(exc)
            _logger.warning("TokenReview failed: %s", kind)
            return Unavailable(kind)
        except Exception as exc:  # kubeconfig/auth plugin errors: still a 503, not a 500
            _logger.warning("TokenReview could not be sent: %s", type(exc).__name__)
            return Unavailable("client")
        return self._judge(answer, claims)

    def _judge(self, answer: k8s.V1TokenReview, claims: Claims) -> ReviewOutcome:
        status = answer.status
        if status is None or not status.authenticated:
            return Invalid("token rejected by the Kubernetes API server")
        if not set(status.audiences or ()) & set(self._audiences):
            return Invalid("token audience not accepted by the Kubernetes API server")
        username = status.user.username if status.user else None
        if not username or username != claims.subject:
            return Invalid("token identity does not match its subject")
        parts = split_service_account(username)
        if parts is None:
            return Invalid("token is not a ServiceAccount token")
        return Reviewed(username=username, namespace=parts[0], name=parts[1], expires_at=claims.expires_at)
