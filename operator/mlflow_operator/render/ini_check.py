"""The plugin's own validation, run on every auth ini the operator renders.

The spec model and the CRD refuse what they can say (patterns, CEL rules), but the last
word belongs to the program that reads the file: `mlflow_k8s_auth.config.parse_config` is
the code the server runs at start. Running it here turns an ini the plugin would refuse
(a server that never starts) into a Degraded `InvalidSpec` naming the MLflowServer field
the bad value came from. It catches what the model cannot, e.g. objects stored under an
older, looser CRD.
"""

from __future__ import annotations

import configparser
import io
import re
from collections.abc import Sequence

from mlflow_k8s_auth.config import ConfigError, parse_config
from mlflow_operator.model import MLflowServerSpec, SpecError, StoreUris

# `[section] key` at the start of the plugin's messages.
_KEY_RE = re.compile(r"^\[(?P<section>\w+)\] (?P<key>\w+)")

# ini key -> the spec field its value is rendered from.
SPEC_PATHS: dict[tuple[str, str], str] = {
    ("k8s_auth", "audiences"): "spec.auth.audience",
    ("k8s_auth", "issuers"): "spec.auth.issuers",
    ("k8s_auth", "allowed_namespaces"): "spec.auth.allowedNamespaces",
    ("k8s_auth", "admin_service_accounts"): "spec.auth.adminServiceAccounts",
    ("k8s_auth", "namespace_permissions"): "spec.auth.namespacePermissions",
    ("k8s_auth", "token_cache_ttl_seconds"): "spec.auth.tokenCacheTTLSeconds",
    ("k8s_auth", "tokenreview_timeout_seconds"): "spec.auth.tokenReviewTimeoutSeconds",
    ("k8s_auth", "permission_cache_ttl_seconds"): "spec.auth.permissionCacheTTLSeconds",
    ("k8s_auth", "allow_basic_auth"): "spec.auth.basicAuth.enabled",
    ("k8s_auth", "token_validation"): "spec.auth.tokenValidation",
    ("k8s_auth", "authorization"): "spec.auth.authorization",
    ("k8s_auth", "workspaces"): "spec.workspaces.mode",
    ("k8s_auth", "workspace_namespace_selector"): "spec.workspaces.namespaceSelector",
    ("mlflow", "default_permission"): "spec.auth.defaultPermission",
    ("mlflow", "admin_username"): "spec.auth.adminUsername",
    ("mlflow", "database_uri"): "spec.auth.authDatabase.uriSecretRef",
}


def _list_items(spec: MLflowServerSpec) -> dict[tuple[str, str], Sequence[str]]:
    """Keys rendered from a spec list (in the spec's order): errors get an index."""
    auth = spec.auth
    items: dict[tuple[str, str], Sequence[str]] = {
        ("k8s_auth", "issuers"): auth.issuers,
        ("k8s_auth", "admin_service_accounts"): auth.admin_service_accounts,
        ("k8s_auth", "namespace_permissions"): auth.namespace_permissions,
    }
    if auth.allowed_namespaces is not None:
        items[("k8s_auth", "allowed_namespaces")] = auth.allowed_namespaces
    return items


def check_auth_ini(text: str, spec: MLflowServerSpec, uris: StoreUris) -> None:
    """Raise SpecError("InvalidSpec", "<spec path>: <plugin message>") if the plugin
    would refuse `text`. The message never carries a database URI."""
    try:
        parse_config(text)
    except ConfigError as exc:
        message = _redact(str(exc), uris)
    else:
        return
    found = _KEY_RE.match(message)
    where = (found.group("section"), found.group("key")) if found else None
    path = SPEC_PATHS.get(where, "spec.auth") if where else "spec.auth"
    if where in _list_items(spec):
        index = _first_bad_prefix(text, where, _list_items(spec)[where])
        if index is not None:
            path = f"{path}[{index}]"
    raise SpecError("InvalidSpec", f"{path}: the server's auth plugin would refuse it: {message}")


def _first_bad_prefix(text: str, where: tuple[str, str], items: Sequence[str]) -> int | None:
    """Index of the item that makes the list invalid: the shortest failing prefix (so a
    duplicate is reported at its second occurrence)."""
    section, key = where
    for end in range(1, len(items) + 1):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(text)
        except configparser.Error:  # not the case for what render_auth_ini writes
            return None
        parser[section][key] = ",".join(items[:end]).replace("%", "%%")
        out = io.StringIO()
        parser.write(out)
        try:
            parse_config(out.getvalue())
        except ConfigError as exc:
            match = _KEY_RE.match(str(exc))
            if match and match.group("key") == key:
                return end - 1
    return None


def _redact(message: str, uris: StoreUris) -> str:
    # The plugin's messages do not quote database URIs; kept out here all the same.
    for uri in (uris.backend_store, uris.auth_database):
        if uri:
            message = message.replace(uri, "<redacted>")
    return message
