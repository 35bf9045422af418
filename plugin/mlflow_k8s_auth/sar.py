"""SubjectAccessReviews the server makes for its ServiceAccount callers.

`AccessReviewer.allowed(subject, namespace, resource, verb)` asks kube-apiserver whether
`subject` may `verb` the `resource` of API group `mlflow.kubeflow.org` in `namespace`
(authorization.k8s.io/v1 SubjectAccessReview, sent with the server's own credentials,
which need `create` on `subjectaccessreviews`, part of `system:auth-delegator`).

Answers are cached per (user, namespace, resource, verb): allowed ones for
`authorization_allow_ttl_seconds`, denied ones for `authorization_deny_ttl_seconds` (so a
new RoleBinding takes effect, and a deleted one stops granting, within those). Concurrent
callers with one key share one review (singleflight). When the API server cannot answer,
`AuthorizationUnavailable` is raised and nothing is cached: the request gets 503 with
Retry-After.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import urllib3
from cachetools import TTLCache
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException, OpenApiException
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2
from prometheus_client import Counter

API_GROUP = "mlflow.kubeflow.org"
_logger = logging.getLogger(__name__)

SUBJECT_ACCESS_REVIEWS = Counter(
    "mlflow_k8s_auth_subjectaccessreviews_total",
    "SubjectAccessReviews sent by the server (authorization = kubernetes), by result",
    ["result"],
)


@dataclass(frozen=True)
class Subject:
    """Who is asking: what TokenReview reports for a ServiceAccount token."""

    username: str
    groups: tuple[str, ...]
    uid: str | None = None

    @classmethod
    def service_account(cls, namespace: str, name: str, uid: str | None = None) -> Subject:
        # The groups kube-apiserver gives every ServiceAccount token (TokenReview's status.user.groups).
        return cls(
            username=f"system:serviceaccount:{namespace}:{name}",
            groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
            uid=uid,
        )


class AuthorizationUnavailable(MlflowException):
    """The API server gave no usable answer; the caller answers 503 + Retry-After.

    An MlflowException (TEMPORARILY_UNAVAILABLE), so MLflow's FastAPI permission middleware,
    which turns those into responses, answers 503 too."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__("cannot check Kubernetes permissions right now, retry shortly",
                         databricks_pb2.TEMPORARILY_UNAVAILABLE)
        self.reason = reason
        self.retry_after = retry_after


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.allowed: bool | None = None


Key = tuple[str, str, str, str]


class AccessReviewer:
    def __init__(
        self,
        api_factory: Callable[[], k8s.AuthorizationV1Api],
        allow_ttl_seconds: float,
        deny_ttl_seconds: float,
        max_entries: int,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api_factory = api_factory
        self._api: k8s.AuthorizationV1Api | None = None
        self._timeout = timeout_seconds
        self._allowed: TTLCache | None = TTLCache(max_entries, allow_ttl_seconds, timer=clock) \
            if allow_ttl_seconds > 0 else None
        # Denials get a smaller share, so a flood of refused calls cannot evict the grants.
        self._denied: TTLCache | None = TTLCache(max(1, max_entries // 4), deny_ttl_seconds, timer=clock) \
            if deny_ttl_seconds > 0 else None
        self._lock = threading.Lock()
        self._flights: dict[Key, _Flight] = {}

    def _cached(self, key: Key) -> bool | None:
        if self._allowed is not None and key in self._allowed:
            return True
        if self._denied is not None and key in self._denied:
            return False
        return None

    def allowed(self, subject: Subject, namespace: str, resource: str, verb: str) -> bool:
        """Whether `subject` may `verb` `resource` in `namespace`; raises AuthorizationUnavailable."""
        # RBAC decides by user name and groups (the groups follow from a ServiceAccount name).
        key: Key = (subject.username, namespace, resource, verb)
        with self._lock:
            cached = self._cached(key)
            if cached is not None:
                return cached
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        assert flight is not None
        if not leader:
            flight.done.wait(self._timeout + 1)
            if flight.allowed is None:
                raise AuthorizationUnavailable("shared review failed")
            return flight.allowed
        try:
            answer = self._review(subject, namespace, resource, verb)
            with self._lock:
                cache = self._allowed if answer else self._denied
                if cache is not None:
                    cache[key] = True
            flight.allowed = answer
            return answer
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def clear(self) -> None:
        with self._lock:
            for cache in (self._allowed, self._denied):
                if cache is not None:
                    cache.clear()

    def _client(self) -> k8s.AuthorizationV1Api:
        if self._api is None:
            self._api = self._api_factory()
        return self._api

    def _review(self, subject: Subject, namespace: str, resource: str, verb: str) -> bool:
        body = k8s.V1SubjectAccessReview(
            api_version="authorization.k8s.io/v1", kind="SubjectAccessReview",
            spec=k8s.V1SubjectAccessReviewSpec(
                user=subject.username, groups=list(subject.groups), uid=subject.uid,
                resource_attributes=k8s.V1ResourceAttributes(
                    group=API_GROUP, resource=resource, verb=verb, namespace=namespace),
            ),
        )
        try:
            answer = self._client().create_subject_access_review(body, _request_timeout=self._timeout)
        except ApiException as exc:
            hint = " (may the server's ServiceAccount create subjectaccessreviews?)" if exc.status in (401, 403) else ""
            _logger.warning("SubjectAccessReview failed with HTTP %s%s", exc.status, hint)
            SUBJECT_ACCESS_REVIEWS.labels(result="error").inc()
            raise AuthorizationUnavailable(f"http_{exc.status}") from None
        except (urllib3.exceptions.HTTPError, OSError, OpenApiException) as exc:
            _logger.warning("SubjectAccessReview failed: %s", type(exc).__name__)
            SUBJECT_ACCESS_REVIEWS.labels(result="error").inc()
            raise AuthorizationUnavailable("connection") from None
        except Exception as exc:  # kubeconfig or client errors: still a 503, never a 500
            _logger.warning("SubjectAccessReview could not be sent: %s", type(exc).__name__)
            SUBJECT_ACCESS_REVIEWS.labels(result="error").inc()
            raise AuthorizationUnavailable("client") from None
        allowed = bool(answer.status and answer.status.allowed)
        SUBJECT_ACCESS_REVIEWS.labels(result="allowed" if allowed else "denied").inc()
        return allowed
