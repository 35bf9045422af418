"""The per-process objects behind `authenticate_request`, built once from the config."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from .cache import ReviewCache
from .config import K8sAuthConfig, load_config
from .jwks import ApiServerDocuments, JwksVerifier, SigningKeys
from .ratelimit import TokenBucket
from .tokenreview import TokenReviewer, build_api, build_api_client
from .users import UserProvisioner


@dataclass
class Runtime:
    config: K8sAuthConfig
    cache: ReviewCache
    reviewer: TokenReviewer
    provisioner: UserProvisioner
    # The local signature check (token_validation jwks or jwks+tokenreview), else None.
    verifier: JwksVerifier | None = None


def build_verifier(config: K8sAuthConfig) -> JwksVerifier | None:
    if not config.uses_jwks:
        return None
    documents = ApiServerDocuments(lambda: build_api_client(config.kubeconfig), config.tokenreview_timeout_seconds)
    keys = SigningKeys(documents, config.jwks_refresh_min_interval_seconds)
    return JwksVerifier(keys, config.audiences, config.issuers)


def build_runtime(config: K8sAuthConfig, store: Any) -> Runtime:
    return Runtime(
        config=config,
        cache=ReviewCache(
            config.audiences,
            config.token_cache_ttl_seconds,
            config.negative_cache_ttl_seconds,
            config.cache_max_entries,
        ),
        reviewer=TokenReviewer(
            lambda: build_api(config.kubeconfig), config.audiences, config.tokenreview_timeout_seconds,
            TokenBucket(config.tokenreview_rate_per_second, config.tokenreview_burst),
        ),
        provisioner=UserProvisioner(store),
        verifier=build_verifier(config),
    )


_runtime: Runtime | None = None
_lock = threading.Lock()


def install(runtime: Runtime) -> None:
    global _runtime
    with _lock:
        _runtime = runtime


def current() -> Runtime:
    """The installed runtime; built from MLFLOW_AUTH_CONFIG_PATH if create_app did not run."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                from mlflow.server.auth import store

                _runtime = build_runtime(load_config(os.environ["MLFLOW_AUTH_CONFIG_PATH"]), store)
    return _runtime
