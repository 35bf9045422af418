"""Which reviewed ServiceAccounts may log in, and with what MLflow rights. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from .config import K8sAuthConfig
from .outcomes import Reviewed


@dataclass(frozen=True)
class Grant:
    username: str
    namespace: str
    is_admin: bool
    namespace_permission: str | None  # MLflow permission name for the namespace role


@dataclass(frozen=True)
class Forbidden:
    reason: str


def decide(config: K8sAuthConfig, reviewed: Reviewed) -> Grant | Forbidden:
    if not config.namespace_allowed(reviewed.namespace):
        return Forbidden(f"ServiceAccounts of namespace '{reviewed.namespace}' may not use this server")
    return Grant(
        username=reviewed.username,
        namespace=reviewed.namespace,
        is_admin=config.is_admin(reviewed.namespace, reviewed.name),
        namespace_permission=config.permission_for(reviewed.namespace),
    )
