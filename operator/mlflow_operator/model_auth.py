"""`spec.auth` of the model: who may log in, with which permissions, and the plugin's caches."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from mlflow_operator.inputs import SpecError
from mlflow_operator.model_base import (
    NAMESPACE_PERMISSION_RE,
    NAMESPACE_RE,
    PERMISSIONS,
    SERVICE_ACCOUNT_RE,
    Permission,
    SecretKeyRef,
    SpecModel,
)


# The plugin's ini holds audiences, issuers and grants as comma-separated lists and refuses
# whitespace in them (`str.isspace`: no-break and other Unicode spaces too); the CRD says
# the same with patterns and a CEL rule. Raised as pydantic errors: reported with the
# field's path, next to the spec's other problems.
def _list_value(value: str) -> str:
    bad = sorted({ch for ch in value if ch.isspace() or ch == ","})
    if bad:
        raise PydanticCustomError(
            "list_value", "must not contain whitespace or ',' (found {found})",
            {"found": ", ".join(repr(ch) for ch in bad)})
    return value


def _no_space(value: str) -> str:
    # configparser strips values with str.strip(), which also takes \x1c-\x1f (not in \s).
    if any(ch.isspace() for ch in value):
        raise PydanticCustomError("no_space", "must not contain whitespace")
    return value


def _one_per_namespace(entries: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        namespace = entry.partition(":")[0]
        if namespace in seen:
            raise PydanticCustomError(
                "namespace_twice",
                "namespace '{namespace}' is listed at [{first}] and [{index}]; give each"
                " namespace one permission",
                {"namespace": namespace, "first": seen[namespace], "index": index})
        seen[namespace] = index
    return entries


class BasicAuth(SpecModel):
    enabled: bool = True
    existing_admin_secret: str | None = Field(default=None, max_length=253)


class AuthDatabase(SpecModel):
    uri_secret_ref: SecretKeyRef


DEFAULT_PERMISSION_CACHE_TTL_SECONDS = 30
TokenValidation = Literal["JWKSAndTokenReview", "TokenReview", "JWKS"]
# Who answers MLflow's permission checks for ServiceAccounts (the plugin's `authorization`):
# MLflow's roles and grants, or SubjectAccessReviews (needs workspaces.mode Namespaces).
Authorization = Literal["MLflow", "Kubernetes"]


class Auth(SpecModel):
    audience: Annotated[str, AfterValidator(_list_value)] | None = Field(
        default=None, min_length=1, max_length=512)
    allowed_namespaces: list[str] | None = Field(default=None, max_length=256)
    admin_service_accounts: list[str] = Field(default_factory=list, max_length=256)
    namespace_permissions: Annotated[list[str], AfterValidator(_one_per_namespace)] = Field(
        default_factory=list, max_length=256)
    default_permission: Permission = "READ"
    admin_username: Annotated[str, AfterValidator(_no_space)] = Field(
        default="admin", min_length=1, max_length=128, pattern=r"^[^\s:]+$")
    basic_auth: BasicAuth = Field(default_factory=BasicAuth)
    auth_database: AuthDatabase | None = None
    # 0: no positive token cache (a deleted ServiceAccount is refused as soon as
    # kube-apiserver itself refuses its token, ~10 s).
    token_cache_ttl_seconds: int = Field(
        default=120, ge=0, le=3600, alias="tokenCacheTTLSeconds"
    )
    token_review_timeout_seconds: int = Field(default=5, ge=1, le=60)
    # Unset: the default below, lowered to the token cache TTL (so a short token TTL alone
    # is never an invalid spec).
    permission_cache_ttl_seconds: int | None = Field(
        default=None, ge=0, le=3600, alias="permissionCacheTTLSeconds"
    )
    # How the server verifies a token (the plugin's token_validation, see render/config.py):
    # JWKS alone needs no TokenReview, so no system:auth-delegator binding is rendered.
    token_validation: TokenValidation = "JWKSAndTokenReview"
    authorization: Authorization = "MLflow"
    issuers: list[Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[^\s,]+$"),
                            AfterValidator(_list_value)]] = Field(
        default_factory=list, max_length=16
    )

    @model_validator(mode="after")
    def _check_caches(self) -> Auth:
        # The plugin refuses a permission cache outliving the token cache (its own rule).
        if self.permission_cache_ttl_seconds is not None \
                and self.permission_cache_ttl_seconds > self.token_cache_ttl_seconds:
            raise SpecError(
                "InvalidCacheTTL",
                f"auth.permissionCacheTTLSeconds ({self.permission_cache_ttl_seconds}) must not"
                f" exceed auth.tokenCacheTTLSeconds ({self.token_cache_ttl_seconds}); lower it too",
            )
        return self

    @property
    def effective_permission_cache_ttl_seconds(self) -> int:
        if self.permission_cache_ttl_seconds is not None:
            return self.permission_cache_ttl_seconds
        return min(DEFAULT_PERMISSION_CACHE_TTL_SECONDS, self.token_cache_ttl_seconds)

    @model_validator(mode="after")
    def _check_forms(self) -> Auth:
        for ns in self.allowed_namespaces or []:
            if ns != "*" and not NAMESPACE_RE.match(ns):
                raise SpecError(
                    "InvalidNamespace",
                    f"auth.allowedNamespaces: {ns!r} is not a namespace name or '*'",
                )
        for sa in self.admin_service_accounts:
            if not SERVICE_ACCOUNT_RE.match(sa):
                raise SpecError(
                    "InvalidServiceAccount",
                    f"auth.adminServiceAccounts: {sa!r} is not of the form namespace:name",
                )
        for entry in self.namespace_permissions:
            match = NAMESPACE_PERMISSION_RE.match(entry)
            if not match or match.group(2) not in PERMISSIONS:
                raise SpecError(
                    "InvalidPermission",
                    f"auth.namespacePermissions: {entry!r} is not of the form namespace:PERMISSION"
                    f" with PERMISSION one of {', '.join(PERMISSIONS)}",
                )
        return self
