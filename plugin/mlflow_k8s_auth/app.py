"""`mlflow server --app-name k8s-auth`: MLflow's auth app with our authorization function.

The ini is validated when this module is imported. `mlflow server` imports it in the CLI
process (to see whether the app is a factory) before any uvicorn worker exists, so a bad
config ends the command with one message and exit code 1 instead of a worker respawn loop.
In that same CLI process the auth database and admin user are bootstrapped once, as MLflow
does for its own `basic-auth` app.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from . import namespace_ownership, permission_fast_path, revocation, role_guard, route_memo, runtime
from .config import ConfigError, K8sAuthConfig, load_config
from .redact import install_log_redaction, redact

_PREFIX = "mlflow-k8s-auth"
# Before anything below can log a database error (MLflow's engine retries quote them).
install_log_redaction()


def _fail(message: str) -> None:
    print(f"{_PREFIX}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _validated_config() -> K8sAuthConfig:
    path = os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
    if not path:
        _fail("MLFLOW_AUTH_CONFIG_PATH is not set; point it at the ini with [mlflow] and [k8s_auth]")
    try:
        config = load_config(path)  # type: ignore[arg-type]
    except ConfigError as exc:
        _fail(f"invalid auth config: {exc}")
        raise  # unreachable; keeps type checkers happy
    if config.kubeconfig and not Path(config.kubeconfig).is_file():
        _fail(f"invalid auth config: [k8s_auth] kubeconfig {config.kubeconfig!r} is not a readable file")
    from . import tenancy

    if problem := tenancy.startup_problem(config):
        _fail(f"invalid server flags: {problem}")
    return config


def _redact(text: str) -> str:
    """The first line of `text`, without any database password this process was given."""
    return redact(text.splitlines()[0] if text else "")


def _bootstrap_in_cli_process(config: K8sAuthConfig) -> None:
    """Open (and if needed migrate) the auth DB and create the admin user once, before any
    worker starts, as MLflow does for its own basic-auth app; then bring the namespace roles
    in line with `namespace_permissions` (revoking those the config no longer names)."""
    if os.environ.get("_MLFLOW_SGI_NAME") or os.environ.get("_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED"):
        return  # a worker, or already done
    try:
        from mlflow.server.auth import bootstrap_admin_user, get_flask_server_secret_key

        get_flask_server_secret_key()
        bootstrap_admin_user()
        from mlflow.server.auth import store

        namespace_ownership.reconcile(store, dict(config.namespace_permissions))
        revocation.record_change_at_start(store)  # running replicas drop cached grants
    except Exception as exc:  # one clear line, no traceback, no database password
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        _fail(f"cannot start: {_redact(str(message))}")
    # Inherited by the uvicorn workers `mlflow server` spawns next.
    os.environ["_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED"] = "true"
    # MLflow gives server-spawned job processes (online scoring via the gateway) a shared
    # random token only for its basic-auth app; do the same so they work under k8s-auth.
    os.environ.setdefault("_MLFLOW_INTERNAL_GATEWAY_AUTH_TOKEN", secrets.token_hex(32))


CONFIG = _validated_config()
_bootstrap_in_cli_process(CONFIG)


def _configure_logging() -> None:
    # MLflow gives only its own "mlflow" logger a handler; without one ours would be lost.
    logger = logging.getLogger(__package__)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y/%m/%d %H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def create_app(app: Any = None) -> Any:
    """App factory named by the `mlflow.app` entry point `k8s-auth`."""
    from mlflow.server import auth as mlflow_auth

    _configure_logging()
    if not CONFIG.allowed_namespaces:
        logging.getLogger(__name__).warning(
            "[k8s_auth] allowed_namespaces is empty: no ServiceAccount can log in (only Basic users)"
        )

    runtime.install(runtime.build_runtime(CONFIG, mlflow_auth.store))
    watcher = revocation.install(mlflow_auth.store, CONFIG.permission_cache_ttl_seconds, CONFIG.cache_max_entries,
                                 CONFIG.revocation_check_interval_seconds)
    route_memo.install()
    try:
        created = mlflow_auth.create_app() if app is None else mlflow_auth.create_app(app)
    except Exception as exc:  # e.g. the auth DB unreachable from a worker: no password in the trace
        raise RuntimeError(f"{_PREFIX}: cannot start: {_redact(str(exc) or type(exc).__name__)}") from None
    role_guard.install(app if app is not None else mlflow_auth.app)
    revocation.check_first_in_every_request(app if app is not None else mlflow_auth.app, watcher)
    from . import tenancy

    # Workspaces from namespaces, RBAC authorization, run attribution (each per the ini).
    tenancy.install(CONFIG, mlflow_auth.store, app if app is not None else mlflow_auth.app, created)
    permission_fast_path.install(created)  # the FastAPI app (uvicorn); a Flask app is left as is
    return created
