"""The auth ini and the config Secret that carries it.

The ini can hold a database URI with a password, so it lives in a Secret. Database URIs
come from the user's Secrets: the handlers read them at reconcile time and pass them in
(`StoreUris`) rather than the server expanding variables at start, because
- MLflow reads `[mlflow] database_uri` only from the ini (no environment override) and
  configparser cannot expand environment variables;
- the config checksum then covers the URIs, so a rotated database password rolls the pods;
- a missing Secret or key becomes a Degraded condition with a clear message at reconcile
  time instead of a crash-looping pod.
The backend store URI travels in the same Secret and reaches the server and the migration
Job as MLFLOW_BACKEND_STORE_URI (from secretKeyRef), so no URI ever appears in a pod spec.
"""

from __future__ import annotations

import configparser
import io

from mlflow_k8s_auth.db_uri import normalize as normalize_db_uri
from mlflow_operator import names
from mlflow_operator.model import MLflowServerSpec, ServerRef, SpecError, StoreUris
from mlflow_operator.render.common import Manifest, metadata
from mlflow_operator.render.ini_check import check_auth_ini

# Kept in sync with DESIGN.md and the plugin (tests parse this ini with the plugin's loader).
AUTHORIZATION_FUNCTION = "mlflow_k8s_auth.authn:authenticate_request"
# spec.auth.tokenValidation -> the plugin's ini value (names fixed in the plugin's README).
TOKEN_VALIDATION = {"JWKSAndTokenReview": "jwks+tokenreview", "TokenReview": "tokenreview", "JWKS": "jwks"}


def backend_store_uri(spec: MLflowServerSpec, uris: StoreUris) -> str:
    if spec.backend_store.uri_secret_ref is None:
        return names.SQLITE_BACKEND_URI
    if not uris.backend_store:
        raise ValueError("spec.backendStore.uriSecretRef is set but its value was not passed in")
    # Percent-encoded user and password: a raw `@` in the password would otherwise put
    # its tail into the host, shown by every connection error (mlflow_k8s_auth.db_uri).
    return normalize_db_uri(uris.backend_store)


def auth_database_uri(spec: MLflowServerSpec, uris: StoreUris) -> str:
    if spec.auth.auth_database is None:
        return names.SQLITE_AUTH_URI
    if not uris.auth_database:
        raise ValueError("spec.auth.authDatabase is set but its value was not passed in")
    return normalize_db_uri(uris.auth_database)


def _mlflow_value(value: str) -> str:
    # MLflow reads [mlflow] with configparser's default BasicInterpolation, where '%'
    # starts a reference: URL-encoded passwords (p%40ss) must be written as '%%'.
    return value.replace("%", "%%")


def render_auth_ini(ref: ServerRef, spec: MLflowServerSpec, uris: StoreUris) -> str:
    """`[mlflow]` for MLflow's auth app and `[k8s_auth]` for the plugin, in one file.

    The admin password is not in the ini: the server gets it from the admin Secret as
    MLFLOW_AUTH_ADMIN_PASSWORD, so the ini never duplicates it.
    """
    auth = spec.auth
    parser = configparser.ConfigParser(interpolation=None)
    parser["mlflow"] = {
        "default_permission": auth.default_permission,
        "database_uri": _mlflow_value(auth_database_uri(spec, uris)),
        "admin_username": _mlflow_value(auth.admin_username),
        "authorization_function": AUTHORIZATION_FUNCTION,
    }
    parser["k8s_auth"] = {
        "audiences": names.audience(spec, ref),
        "allowed_namespaces": ",".join(names.allowed_namespaces(spec, ref)),
        "admin_service_accounts": ",".join(auth.admin_service_accounts),
        "namespace_permissions": ",".join(auth.namespace_permissions),
        "token_cache_ttl_seconds": str(auth.token_cache_ttl_seconds),
        "tokenreview_timeout_seconds": str(auth.token_review_timeout_seconds),
        "permission_cache_ttl_seconds": str(auth.effective_permission_cache_ttl_seconds),
        "allow_basic_auth": "true" if auth.basic_auth.enabled else "false",
    }
    parser["k8s_auth"]["token_validation"] = TOKEN_VALIDATION[auth.token_validation]
    if auth.issuers:  # absent: not checked locally
        parser["k8s_auth"]["issuers"] = ",".join(auth.issuers)
    # Written only when not the plugin's default, so servers without them render as before.
    if spec.workspaces.enabled:
        parser["k8s_auth"]["workspaces"] = "namespaces"
        if spec.workspaces.namespace_selector is not None and spec.workspaces.namespace_selector.render():
            parser["k8s_auth"]["workspace_namespace_selector"] = spec.workspaces.namespace_selector.render()
    if auth.authorization == "Kubernetes":
        parser["k8s_auth"]["authorization"] = "kubernetes"
    for key, value in list(parser["k8s_auth"].items()):  # the plugin reads it like MLflow does
        parser["k8s_auth"][key] = _mlflow_value(value)
    out = io.StringIO()
    out.write("# Rendered by mlflow-operator; edits are overwritten.\n")
    parser.write(out)
    return out.getvalue()


# Backends whose tracking store keeps workspaces (MLflow's SQLAlchemy stores).
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def check_workspace_backend(spec: MLflowServerSpec, uris: StoreUris) -> None:
    """Workspaces need a SQL backend store (the artifact root is always rendered: the volume
    or artifacts.destination). Raises SpecError WorkspacesNeedSQLBackend."""
    if not spec.workspaces.enabled:
        return
    uri = backend_store_uri(spec, uris)
    scheme = uri.partition(":")[0].partition("+")[0].lower() if ":" in uri else ""
    if scheme not in SQL_SCHEMES:
        raise SpecError("WorkspacesNeedSQLBackend", f"workspaces.mode Namespaces needs a SQL backend store"
                        f" ({', '.join(SQL_SCHEMES)}); backendStore.uriSecretRef holds a {scheme or 'schemeless'} URI")


def config_data(ref: ServerRef, spec: MLflowServerSpec, uris: StoreUris) -> dict[str, str]:
    """Raises SpecError (InvalidSpec, naming the field) for an ini the plugin would refuse."""
    check_workspace_backend(spec, uris)
    ini = render_auth_ini(ref, spec, uris)
    check_auth_ini(ini, spec, uris)
    return {
        names.AUTH_INI_KEY: ini,
        names.BACKEND_URI_KEY: backend_store_uri(spec, uris),
        names.AUTH_DB_URI_KEY: auth_database_uri(spec, uris),
    }


def render_config_secret(ref: ServerRef, spec: MLflowServerSpec, uris: StoreUris) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(ref, names.config_secret_name(ref), "config"),
        "type": "Opaque",
        "stringData": config_data(ref, spec, uris),
    }
