"""Prometheus metrics for auth decisions, the token cache and TokenReview calls.

Registered on prometheus_client's default registry, which MLflow's `--expose-prometheus`
exporter (multiprocess mode under uvicorn workers) serves on `/metrics`.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
