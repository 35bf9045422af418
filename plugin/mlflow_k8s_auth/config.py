"""Parse and validate the plugin's ini (`[k8s_auth]` plus the `[mlflow]` keys it relies on).

This module imports nothing from MLflow on purpose: the operator (whose image has no
MLflow) imports `load_config` to check the ini it renders before writing it.
"""

from __future__ import annotations

import configparser
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

AUTHORIZATION_FUNCTION = "mlflow_k8s_auth.authn:authenticate_request"
SECTION = "k8s_auth"
ANY_NAMESPACE = "*"

# MLflow's permission names (mlflow.server.auth.permissions); copied so this module stays
# importable without MLflow.
PERMISSIONS = frozenset({"READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"})

# Kubernetes namespace names are DNS-1123 labels; ServiceAccount names DNS-1123 subdomains.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

_KNOWN_KEYS = frozenset({
    "audiences",
    "issuers",
    "allowed_namespaces",
    "admin_service_accounts",
    "namespace_permissions",
    "token_cache_ttl_seconds",
    "negative_cache_ttl_seconds",
    "cache_max_entries",
    "tokenreview_timeout_seconds",
    "permission_cache_ttl_seconds",
    "revocation_check_interval_seconds",
    "allow_basic_auth",
    "kubeconfig",
    "token_validation",
    "jwks_refresh_min_interval_seconds",
    "tokenreview_rate_per_second",
    "tokenreview_burst",
    # Multi-tenancy: namespaces as workspaces, RBAC authorization, run attribution.
    "workspaces",
    "workspace_namespace_selector",
    "authorization",
    "authorization_allow_ttl_seconds",
    "authorization_deny_ttl_seconds",
    "attribute_runs",
})

# How a bearer token is verified (DESIGN.md's fixed names): TokenReview only, the
# signature checked locally first (forgeries never reach the API server), or only locally.
TOKEN_VALIDATION_MODES = ("tokenreview", "jwks+tokenreview", "jwks")
# MLflow workspaces: none (MLflow's single `default`) or the allowed Kubernetes namespaces.
WORKSPACE_MODES = ("none", "namespaces")
# Who answers MLflow's permission checks for ServiceAccounts: MLflow's grants or Kubernetes RBAC.
AUTHORIZATION_MODES = ("mlflow", "kubernetes")


# Safe as a default because the change counter (revocation.py) keeps the cache fresh.
DEFAULT_PERMISSION_CACHE_TTL_SECONDS = 30.0


class ConfigError(ValueError):
    """The ini is missing, unreadable or holds an invalid value. The message says which."""


@dataclass(frozen=True)
class ServiceAccountRef:
    namespace: str
    name: str

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


@dataclass(frozen=True)
class K8sAuthConfig:
    """The validated `[k8s_auth]` section plus the `[mlflow]` values the plugin needs."""

    audiences: tuple[str, ...]
    database_uri: str
    default_permission: str = "READ"
    admin_username: str | None = None
    issuers: tuple[str, ...] = ()
    allowed_namespaces: frozenset[str] = frozenset()
    admin_service_accounts: frozenset[ServiceAccountRef] = frozenset()
    namespace_permissions: tuple[tuple[str, str], ...] = ()
    token_cache_ttl_seconds: float = 120.0
    negative_cache_ttl_seconds: float = 5.0
    cache_max_entries: int = 10000
    tokenreview_timeout_seconds: float = 5.0
    # MLflow's per-request permission lookups are cached for at most this long (never
    # longer than the token cache); 0 disables that cache. Unset: 30 s, or the token TTL
    # when lower. Changes made through MLflow reach every process within the next key.
    permission_cache_ttl_seconds: float = 30.0
    # How often each process reads the auth DB's change counter (revocation.py).
    revocation_check_interval_seconds: float = 0.3
    allow_basic_auth: bool = True
    kubeconfig: str | None = None
    token_validation: str = "jwks+tokenreview"
    # An unknown key id refetches the cluster's signing keys at most this often.
    jwks_refresh_min_interval_seconds: float = 10.0
    # Uncached TokenReviews per process: a token bucket (rate refill, burst capacity).
    tokenreview_rate_per_second: float = 50.0
    tokenreview_burst: int = 100
    workspaces: str = "none"
    # A Kubernetes label selector: only matching allowed namespaces are workspaces.
    workspace_namespace_selector: str | None = None
    authorization: str = "mlflow"
    # SubjectAccessReview answers are cached this long (allowed / denied).
    authorization_allow_ttl_seconds: float = 30.0
    authorization_deny_ttl_seconds: float = 5.0
    # Runs carry the authenticated caller as user_id and mlflow.user tag.
    attribute_runs: bool = True
    source: str = field(default="", compare=False)

    @property
    def uses_jwks(self) -> bool:
        return self.token_validation in ("jwks", "jwks+tokenreview")

    @property
    def uses_tokenreview(self) -> bool:
        return self.token_validation in ("tokenreview", "jwks+tokenreview")

    def namespace_allowed(self, namespace: str) -> bool:
        return ANY_NAMESPACE in self.allowed_namespaces or namespace in self.allowed_namespaces

    def is_admin(self, namespace: str, name: str) -> bool:
        return ServiceAccountRef(namespace, name) in self.admin_service_accounts

    def permission_for(self, namespace: str) -> str | None:
        return dict(self.namespace_permissions).get(namespace)


def _split(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _number(key: str, raw: str, *, integer: bool, minimum: float, allow_equal: bool) -> float:
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"[{SECTION}] {key} must be {kind}, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum or (value == minimum and not allow_equal):
        bound = f">= {minimum:g}" if allow_equal else f"> {minimum:g}"
        raise ConfigError(f"[{SECTION}] {key} must be {bound}, got {raw!r}")
    return value


def _float_setting(section: configparser.SectionProxy, key: str, default: str, *, zero_ok: bool) -> float:
    """`zero_ok` where 0 means "off" (a cache TTL), not where it would mean "never wait"."""
    return _number(key, section.get(key, default), integer=False, minimum=0, allow_equal=zero_ok)


def _int_setting(section: configparser.SectionProxy, key: str, default: str) -> int:
    return int(_number(key, section.get(key, default), integer=True, minimum=1, allow_equal=True))


def _boolean(key: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"[{SECTION}] {key} must be true or false, got {raw!r}")


def _namespace(key: str, value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ConfigError(f"[{SECTION}] {key}: {value!r} is not a valid namespace name")
    return value


def _pair(key: str, item: str) -> tuple[str, str]:
    left, sep, right = item.partition(":")
    if not sep or not left.strip() or not right.strip():
        raise ConfigError(f"[{SECTION}] {key}: {item!r} must look like namespace:value")
    return _namespace(key, left.strip()), right.strip()


def _audiences(raw: str | None) -> tuple[str, ...]:
    values = _split(raw or "")
    if not values:
        raise ConfigError(f"[{SECTION}] audiences is required (a comma-separated list)")
    for value in values:
        if any(ch.isspace() for ch in value):
            raise ConfigError(f"[{SECTION}] audiences: {value!r} must not contain spaces")
    return tuple(dict.fromkeys(values))


def _allowed_namespaces(raw: str) -> frozenset[str]:
    values = _split(raw)
    return frozenset(v if v == ANY_NAMESPACE else _namespace("allowed_namespaces", v) for v in values)


def _admins(raw: str) -> frozenset[ServiceAccountRef]:
    refs = set()
    for item in _split(raw):
        namespace, name = _pair("admin_service_accounts", item)
        if not _DNS_SUBDOMAIN.match(name):
            raise ConfigError(
                f"[{SECTION}] admin_service_accounts: {name!r} is not a valid ServiceAccount name"
            )
        refs.add(ServiceAccountRef(namespace, name))
    return frozenset(refs)


def _namespace_permissions(raw: str) -> tuple[tuple[str, str], ...]:
    grants: dict[str, str] = {}
    for item in _split(raw):
        namespace, permission = _pair("namespace_permissions", item)
        permission = permission.upper()
        if permission not in PERMISSIONS:
            raise ConfigError(
                f"[{SECTION}] namespace_permissions: {permission!r} is not one of "
                f"{', '.join(sorted(PERMISSIONS))}"
            )
        if grants.get(namespace, permission) != permission:
            raise ConfigError(
                f"[{SECTION}] namespace_permissions: namespace {namespace!r} is listed twice"
            )
        grants[namespace] = permission
    return tuple(sorted(grants.items()))


def _read(path: str | Path) -> configparser.ConfigParser:
    # The interpolation MLflow's own reader uses, so both see the same values ('%%' -> '%').
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read auth config {str(path)!r}: {exc.strerror}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"auth config {str(path)!r} is not a valid ini file: {first_line}") from None
    return parser


def _check_mlflow_section(parser: configparser.ConfigParser) -> configparser.SectionProxy:
    if not parser.has_section("mlflow"):
        raise ConfigError("auth config has no [mlflow] section")
    mlflow = parser["mlflow"]
    if not mlflow.get("database_uri", "").strip():
        raise ConfigError("[mlflow] database_uri is required")
    function = mlflow.get("authorization_function", "").strip()
    if function != AUTHORIZATION_FUNCTION:
        raise ConfigError(
            f"[mlflow] authorization_function must be {AUTHORIZATION_FUNCTION!r} "
            f"for --app-name k8s-auth, got {function or '(unset)'!r}"
        )
    default_permission = mlflow.get("default_permission", "").strip()
    if default_permission not in PERMISSIONS:
        raise ConfigError(
            f"[mlflow] default_permission must be one of {', '.join(sorted(PERMISSIONS))}, "
            f"got {default_permission!r}"
        )
    return mlflow


def _cache_settings(section: configparser.SectionProxy) -> dict[str, float | int]:
    # 0: every request asks the API server.
    token_ttl = _float_setting(section, "token_cache_ttl_seconds", "120", zero_ok=True)
    raw_permission_ttl = section.get("permission_cache_ttl_seconds")
    permission_ttl = min(DEFAULT_PERMISSION_CACHE_TTL_SECONDS, token_ttl) if raw_permission_ttl is None else _number(
        "permission_cache_ttl_seconds", raw_permission_ttl, integer=False, minimum=0, allow_equal=True,
    )
    if permission_ttl > token_ttl:
        raise ConfigError(
            f"[{SECTION}] permission_cache_ttl_seconds ({permission_ttl:g}) must not exceed "
            f"token_cache_ttl_seconds ({token_ttl:g})"
        )
    return {
        "token_cache_ttl_seconds": token_ttl,
        "permission_cache_ttl_seconds": permission_ttl,
        "revocation_check_interval_seconds": _float_setting(
            section, "revocation_check_interval_seconds", "0.3", zero_ok=False,
        ),
        "negative_cache_ttl_seconds": _float_setting(
            section, "negative_cache_ttl_seconds", "5", zero_ok=True,
        ),
        "cache_max_entries": _int_setting(section, "cache_max_entries", "10000"),
        "tokenreview_timeout_seconds": _float_setting(
            section, "tokenreview_timeout_seconds", "5", zero_ok=False,
        ),
    }


def _validation_settings(section: configparser.SectionProxy) -> dict[str, float | int | str]:
    mode = section.get("token_validation", "jwks+tokenreview").strip().lower()
    if mode not in TOKEN_VALIDATION_MODES:
        raise ConfigError(
            f"[{SECTION}] token_validation must be one of {' | '.join(TOKEN_VALIDATION_MODES)}, got {mode!r}"
        )
    return {
        "token_validation": mode,
        "jwks_refresh_min_interval_seconds": _float_setting(
            section, "jwks_refresh_min_interval_seconds", "10", zero_ok=False,
        ),
        "tokenreview_rate_per_second": _float_setting(
            section, "tokenreview_rate_per_second", "50", zero_ok=False,
        ),
        "tokenreview_burst": _int_setting(section, "tokenreview_burst", "100"),
    }


def _choice(section: configparser.SectionProxy, key: str, default: str, choices: tuple[str, ...]) -> str:
    value = section.get(key, default).strip().lower()
    if value not in choices:
        raise ConfigError(f"[{SECTION}] {key} must be one of {' | '.join(choices)}, got {value!r}")
    return value


def _tenancy_settings(section: configparser.SectionProxy) -> dict[str, object]:
    """Workspaces, authorization and run attribution (see workspaces.py, authorization.py)."""
    workspaces = _choice(section, "workspaces", "none", WORKSPACE_MODES)
    authorization = _choice(section, "authorization", "mlflow", AUTHORIZATION_MODES)
    if authorization == "kubernetes" and workspaces != "namespaces":
        raise ConfigError(
            f"[{SECTION}] authorization = kubernetes needs workspaces = namespaces "
            "(RBAC is checked in the namespace of the workspace)"
        )
    selector = section.get("workspace_namespace_selector", "").strip() or None
    if selector is not None and workspaces != "namespaces":
        raise ConfigError(f"[{SECTION}] workspace_namespace_selector needs workspaces = namespaces")
    return {
        "workspaces": workspaces,
        "workspace_namespace_selector": selector,
        "authorization": authorization,
        "authorization_allow_ttl_seconds": _float_setting(
            section, "authorization_allow_ttl_seconds", "30", zero_ok=True,
        ),
        "authorization_deny_ttl_seconds": _float_setting(
            section, "authorization_deny_ttl_seconds", "5", zero_ok=True,
        ),
        "attribute_runs": _boolean("attribute_runs", section.get("attribute_runs", "true")),
    }


def load_config(path: str | Path) -> K8sAuthConfig:
    """Read the ini at `path` and return the validated settings, or raise `ConfigError`."""
    return _parse_checked(_read(path), path)


def parse_config(text: str, source: str = "<rendered>") -> K8sAuthConfig:
    """`load_config` of an ini held in memory: the operator runs it on every ini it renders.

    Lines split as when the file is read (universal newlines), so both see the same values.
    """
    parser = configparser.ConfigParser()
    try:
        parser.read_file(io.StringIO(text, newline=None), source)
    except configparser.Error as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"auth config {source!r} is not a valid ini file: {first_line}") from None
    return _parse_checked(parser, source)


def _parse_checked(parser: configparser.ConfigParser, path: str | Path) -> K8sAuthConfig:
    try:
        return _parse(parser, path)
    except configparser.InterpolationError as exc:
        raise ConfigError(
            f"[{exc.section}] {exc.option}: a literal '%' must be written as '%%'"
        ) from None


def _parse(parser: configparser.ConfigParser, path: str | Path) -> K8sAuthConfig:
    mlflow = _check_mlflow_section(parser)
    if not parser.has_section(SECTION):
        raise ConfigError(f"auth config has no [{SECTION}] section")
    section = parser[SECTION]
    unknown = sorted(set(section.keys()) - _KNOWN_KEYS - set(parser.defaults()))
    if unknown:
        raise ConfigError(f"[{SECTION}] unknown key(s): {', '.join(unknown)}")
    kubeconfig = section.get("kubeconfig", "").strip() or None
    return K8sAuthConfig(
        audiences=_audiences(section.get("audiences")),
        database_uri=mlflow["database_uri"].strip(),
        default_permission=mlflow.get("default_permission", "READ").strip(),
        admin_username=mlflow.get("admin_username", "").strip() or None,
        issuers=tuple(_split(section.get("issuers", ""))),
        allowed_namespaces=_allowed_namespaces(section.get("allowed_namespaces", "")),
        admin_service_accounts=_admins(section.get("admin_service_accounts", "")),
        namespace_permissions=_namespace_permissions(section.get("namespace_permissions", "")),
        allow_basic_auth=_boolean("allow_basic_auth", section.get("allow_basic_auth", "true")),
        kubeconfig=kubeconfig,
        source=str(path),
        **_cache_settings(section),  # type: ignore[arg-type]
        **_validation_settings(section),  # type: ignore[arg-type]
        **_tenancy_settings(section),  # type: ignore[arg-type]
    )
