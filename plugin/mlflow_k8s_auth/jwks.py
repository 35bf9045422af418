"""Local signature check of ServiceAccount tokens against the cluster's signing keys.

kube-apiserver publishes its ServiceAccount token signing keys through OIDC discovery:
`/.well-known/openid-configuration` names the issuer and a JWKS; every ServiceAccount may
read both (the default ClusterRoleBinding `system:service-account-issuer-discovery` grants
the group `system:serviceaccounts`). With those keys a forged token is refused here, at
the cost of one signature check, instead of costing the API server a TokenReview.

- Keys are fetched with the server's own credentials (the client TokenReview uses),
  cached, refetched when a token names an unknown `kid` (key rotation), and refetched at
  most once per `min_refresh_interval`: a flood of made-up `kid`s costs one fetch per
  interval, not one per token.
- A failed fetch is not a verdict on the token: the caller answers 503 + Retry-After and
  nothing is cached. Keys already known stay in use while fetches fail.
- RS256 and ES256 only (what kube-apiserver signs with); `none` and HMAC never.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from kubernetes import client as k8s

from . import metrics
from .outcomes import Invalid, Unavailable
from .precheck import CLOCK_SKEW_SECONDS, split_service_account

_logger = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
# kube-apiserver always serves its own public keys here, whatever jwks_uri names.
API_SERVER_JWKS_PATH = "/openid/v1/jwks"
ALGORITHMS = ("RS256", "ES256")
# Keys are refetched after this long even without an unknown kid, so a key the cluster
# dropped stops being trusted.
KEYS_MAX_AGE_SECONDS = 300.0
MAX_DOCUMENT_BYTES = 1024 * 1024
# kube-apiserver answers 406 to a JWKS request accepting only application/json.
_ACCEPT = "application/json, application/jwk-set+json"


class FetchError(Exception):
    """A discovery or JWKS document could not be fetched. `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def keys_path(jwks_uri: str, api_url: str) -> str:
    """The path of the API server to GET the JWKS from, for discovery's `jwks_uri`.

    The keys always come from the API server this process already talks to, with its own
    credentials. `jwks_uri` names the issuer's host: by default the issuer URL, usually an
    in-cluster name (`https://kubernetes.default.svc...`) that need not resolve, nor lead
    to this API server, from where the server runs; with `--service-account-jwks-uri` it
    may name a public mirror. Sending the server's credentials to another host would hand
    them out, so: the same origin as the API server -> the path it names; any other origin
    -> the path kube-apiserver serves its own keys at (the mirror holds the same keys).
    """
    named, api = urlsplit(jwks_uri), urlsplit(api_url)
    if (named.scheme, named.hostname, named.port or 443) != (api.scheme, api.hostname, api.port or 443):
        return API_SERVER_JWKS_PATH
    prefix = api.path.rstrip("/")  # an API server behind a path prefix (a proxy)
    path = named.path or API_SERVER_JWKS_PATH
    return path[len(prefix):] if prefix and path.startswith(prefix + "/") else path


class ApiServerDocuments:
    """GETs JSON documents from the API server as this server (kubeconfig or in-cluster)."""

    def __init__(self, client_factory: Callable[[], k8s.ApiClient], timeout_seconds: float) -> None:
        self._client_factory = client_factory
        self._client: k8s.ApiClient | None = None
        self._timeout = timeout_seconds

    def _api(self) -> k8s.ApiClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    @property
    def api_url(self) -> str:
        return str(self._api().configuration.host)

    def get(self, path: str) -> dict[str, Any]:
        try:
            api = self._api()
            request = api.param_serialize(method="GET", resource_path=path, header_params={"Accept": _ACCEPT},
                                          auth_settings=["BearerToken"])
            response = api.call_api(*request, _request_timeout=self._timeout)
            body = response.read()
        except Exception as exc:  # connection, TLS, timeout, kubeconfig: all "cannot fetch now"
            raise FetchError(f"{path}: {type(exc).__name__}") from None
        if response.status != 200:
            hint = " (may the server's ServiceAccount read it? ClusterRole system:service-account-issuer-discovery)" \
                if response.status in (401, 403) else ""
            raise FetchError(f"{path}: HTTP {response.status}{hint}")
        if len(body) > MAX_DOCUMENT_BYTES:
            raise FetchError(f"{path}: document too large")
        try:
            document = json.loads(body)
        except ValueError:
            raise FetchError(f"{path}: not JSON") from None
        if not isinstance(document, dict):
            raise FetchError(f"{path}: not a JSON object")
        return document


@dataclass(frozen=True)
class KeySet:
    issuer: str
    keys: Mapping[str, jwt.PyJWK]  # by kid
    fetched_at: float  # monotonic


def parse_jwks(document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """The usable signing keys by kid; keys of other types or algorithms are skipped."""
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document.get("keys") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        if key.algorithm_name in ALGORITHMS:
            keys[entry["kid"]] = key
    return keys


class SigningKeys:
    """The cluster's signing keys, fetched through discovery, cached, refetch rate-limited."""

    def __init__(self, documents: ApiServerDocuments, min_refresh_interval: float,
                 clock: Callable[[], float] = time.monotonic, max_age: float = KEYS_MAX_AGE_SECONDS) -> None:
        self._documents = documents
        self._min_interval = min_refresh_interval
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._current: KeySet | None = None
        self._last_attempt: float | None = None
        self._failing = False

    def _fresh(self, current: KeySet | None, kid: str, now: float) -> bool:
        return current is not None and kid in current.keys and now - current.fetched_at < self._max_age

    def find(self, kid: str) -> tuple[jwt.PyJWK, str] | Invalid | Unavailable:
        """(key, issuer) for `kid`; Invalid for a kid the cluster does not sign with."""
        current = self._current
        if not self._fresh(current, kid, self._clock()):
            current = self._refresh(kid)
        if current is not None and kid in current.keys:
            return current.keys[kid], current.issuer
        if current is None or self._failing:
            # We cannot tell a rotated key from a forged one: no verdict, retry later.
            return Unavailable("jwks", retry_after=self._retry_after())
        metrics.SIGNATURE_FAILURES.labels(reason="unknown_key").inc()
        return Invalid("token is not signed by a key of this cluster")

    def _retry_after(self) -> float:
        waited = self._clock() - (self._last_attempt or 0.0)
        return max(1.0, self._min_interval - waited)

    def _refresh(self, kid: str) -> KeySet | None:
        with self._lock:  # one fetch at a time; the others then find its result
            now = self._clock()
            if self._fresh(self._current, kid, now):
                return self._current
            if self._last_attempt is not None and now - self._last_attempt < self._min_interval:
                return self._current  # rate-limited: an unknown-kid flood costs no fetch
            self._last_attempt = now
            try:
                self._current = self._fetch(now)
                self._failing = False
                metrics.JWKS_FETCHES.labels(result="ok").inc()
            except FetchError as exc:
                self._failing = True
                metrics.JWKS_FETCHES.labels(result="error").inc()
                _logger.warning("cannot fetch the cluster's signing keys: %s", exc.reason)
            return self._current

    def _fetch(self, now: float) -> KeySet:
        discovery = self._documents.get(DISCOVERY_PATH)
        issuer, jwks_uri = discovery.get("issuer"), discovery.get("jwks_uri")
        if not isinstance(issuer, str) or not isinstance(jwks_uri, str):
            raise FetchError(f"{DISCOVERY_PATH}: no issuer or jwks_uri")
        keys = parse_jwks(self._documents.get(keys_path(jwks_uri, self._documents.api_url)))
        if not keys:
            raise FetchError("the JWKS holds no RS256/ES256 signing key")
        return KeySet(issuer=issuer, keys=keys, fetched_at=now)


@dataclass(frozen=True)
class Verified:
    """A token whose signature and claims checked out; the identity its claims state."""

    username: str
    namespace: str
    name: str
    uid: str | None
    pod: str | None
    expires_at: float


# pyjwt's refusals as safe, stable messages (pyjwt's own text never quotes the token, but
# these stay the same across versions).
_CLAIM_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "token audience not accepted"),
    (jwt.InvalidIssuerError, "token issuer not accepted"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
)


class JwksVerifier:
    def __init__(self, keys: SigningKeys, audiences: tuple[str, ...], issuers: tuple[str, ...]) -> None:
        self._keys = keys
        self._audiences = list(audiences)
        self._issuers = issuers

    def verify(self, token: str) -> Verified | Invalid | Unavailable:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return Invalid("token is not a well-formed JWT")
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            metrics.SIGNATURE_FAILURES.labels(reason="algorithm").inc()
            return Invalid("token algorithm not accepted")
        if not isinstance(kid, str) or not kid:
            metrics.SIGNATURE_FAILURES.labels(reason="unknown_key").inc()
            return Invalid("token names no signing key (kid)")
        found = self._keys.find(kid)
        if isinstance(found, (Invalid, Unavailable)):
            return found
        key, issuer = found
        if key.algorithm_name != alg:
            metrics.SIGNATURE_FAILURES.labels(reason="algorithm").inc()
            return Invalid("token algorithm does not match its key")
        return self._decode(token, key, alg, self._issuers or (issuer,))

    def _decode(self, token: str, key: jwt.PyJWK, alg: str, issuers: tuple[str, ...]) -> Verified | Invalid:
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self._audiences, issuer=list(issuers),
                                leeway=CLOCK_SKEW_SECONDS, options={"require": ["exp", "iss", "aud", "sub"]})
        except (jwt.InvalidSignatureError, jwt.DecodeError):
            metrics.SIGNATURE_FAILURES.labels(reason="bad_signature").inc()
            return Invalid("token signature is not valid")
        except jwt.PyJWTError as exc:
            metrics.SIGNATURE_FAILURES.labels(reason="claims").inc()
            return Invalid(next((m for cls, m in _CLAIM_ERRORS if isinstance(exc, cls)), "token claims not accepted"))
        return identity(claims)


def identity(claims: Mapping[str, Any]) -> Verified | Invalid:
    """The ServiceAccount a verified token speaks for: `sub` and the `kubernetes.io` claims,
    which must agree (kube-apiserver writes both; a mismatch is no token of its)."""
    subject = claims.get("sub")
    parts = split_service_account(subject) if isinstance(subject, str) else None
    info = claims.get("kubernetes.io")
    if parts is None or not isinstance(info, dict):
        return Invalid("token is not a ServiceAccount token")
    account = info.get("serviceaccount") if isinstance(info.get("serviceaccount"), dict) else {}
    if info.get("namespace") != parts[0] or account.get("name") != parts[1]:
        return Invalid("token identity does not match its subject")
    pod = info.get("pod") if isinstance(info.get("pod"), dict) else {}
    exp = claims["exp"]
    return Verified(username=str(subject), namespace=parts[0], name=parts[1],
                    uid=account.get("uid") if isinstance(account.get("uid"), str) else None,
                    pod=pod.get("name") if isinstance(pod.get("name"), str) else None,
                    expires_at=float(exp) if isinstance(exp, (int, float)) and math.isfinite(exp) else 0.0)
