"""Prometheus metrics for auth decisions, the token cache and TokenReview calls.

Registered on prometheus_client's default registry, which MLflow's `--expose-prometheus`
exporter (multiprocess mode under uvicorn workers) serves on `/metrics`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

AUTH_DECISIONS = Counter(
    "mlflow_k8s_auth_decisions_total",
    "Authentication decisions by method and result",
    ["method", "result"],
)
CACHE_LOOKUPS = Counter(
    "mlflow_k8s_auth_token_cache_total",
    "Token cache lookups (hit includes waiting on a concurrent review of the same token)",
    ["result"],
)
TOKENREVIEW_SECONDS = Histogram(
    "mlflow_k8s_auth_tokenreview_seconds",
    "Latency of TokenReview calls to the Kubernetes API server",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TOKENREVIEW_ERRORS = Counter(
    "mlflow_k8s_auth_tokenreview_errors_total",
    "TokenReview calls that got no usable answer (answered 503)",
    ["reason"],
)
USERS_PROVISIONED = Counter(
    "mlflow_k8s_auth_users_created_total",
    "MLflow users created on first use of a ServiceAccount by this process",
)
JWKS_FETCHES = Counter(
    "mlflow_k8s_auth_jwks_fetches_total",
    "Fetches of the cluster's ServiceAccount signing keys (OIDC discovery + JWKS) by result",
    ["result"],
)
SIGNATURE_FAILURES = Counter(
    "mlflow_k8s_auth_signature_failures_total",
    "Bearer tokens refused by the local signature check, by reason"
    " (unknown_key, bad_signature, algorithm, claims); none of them cost a TokenReview",
    ["reason"],
)
RATE_LIMITED = Counter(
    "mlflow_k8s_auth_rate_limited_total",
    "Requests answered 503 because the per-process TokenReview rate limit was reached",
)
# Fresh revocation (revocation.py): the auth database's change counter.
PERMISSION_VERSION_CHECKS = Counter(
    "mlflow_k8s_auth_permission_version_checks_total",
    "Reads of the permission change counter by result (unchanged, changed, error)",
    ["result"],
)
PERMISSION_VERSION_BUMPS = Counter(
    "mlflow_k8s_auth_permission_version_bumps_total",
    "Auth store writes recorded in the permission change counter, by result",
    ["result"],
)
PERMISSION_CACHE_INVALIDATIONS = Counter(
    "mlflow_k8s_auth_permission_cache_invalidations_total",
    "Permission cache clears by cause (local_write, other_process, check_failed)",
    ["cause"],
)
# One series per worker process (pid label under uvicorn workers): a lagging worker shows.
PERMISSION_VERSION_SEEN = Gauge(
    "mlflow_k8s_auth_permission_version_seen",
    "The permission change counter as this worker process last read it",
    multiprocess_mode="all",
)
