"""Reading user Secrets and generating the operator's own secret values.

Values read here go into rendered manifests only; they are never logged, never put in an
exception message, an Event or the status (errors name the Secret and key, nothing else).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from mlflow_operator.api import RESOURCES, KubeApi

SECRET = RESOURCES[("v1", "Secret")]


# MLflow's rules for the admin password it bootstraps (mlflow.utils.validation.
# _validate_password and mlflow.server.auth._validate_bootstrap_admin_password): a value
# breaking them stops every server start, i.e. a crash-looping pod.
MIN_ADMIN_PASSWORD_LENGTH = 12
LEGACY_DEFAULT_ADMIN_PASSWORD = "password1234"  # GHSA-gq3w-7jj3-x7gr


class SecretProblem(Exception):
    """A user Secret the server cannot run with; `reason` is CamelCase for conditions."""

    reason = "SecretProblem"


class MissingSecret(SecretProblem):
    """A Secret (or a key in it) that the spec refers to does not exist (yet)."""

    def __init__(self, namespace: str, name: str, key: str | None = None, empty: bool = False):
        self.namespace, self.name, self.key = namespace, name, key
        self.reason = "SecretKeyNotFound" if key else "SecretNotFound"
        what = f"key {key!r} in Secret {name!r}" if key else f"Secret {name!r}"
        problem = "is empty" if empty else "not found"
        super().__init__(f"{what} {problem} in namespace {namespace!r}; fix it and the"
                         " server recovers on the next reconcile")


class LostSecret(MissingSecret):
    """A generated Secret vanished after the server was set up with its value."""

    def __init__(self, namespace: str, name: str):
        Exception.__init__(
            self, f"Secret {name!r} holding the admin password was deleted after the server was"
            " set up; the password also lives in the auth database, so the operator does not"
            " invent a new one. Recreate the Secret with the old keys username and password,"
            " or point auth.basicAuth.existingAdminSecret at a Secret that has them")
        self.namespace, self.name, self.key = namespace, name, None
        self.reason = "AdminSecretLost"


class InvalidAdminSecret(SecretProblem):
    """The user's admin Secret holds a password MLflow refuses (the value is never shown)."""

    reason = "AdminSecretInvalid"

    def __init__(self, namespace: str, name: str, rule: str):
        self.namespace, self.name = namespace, name
        super().__init__(f"key 'password' in Secret {name!r} in namespace {namespace!r} is not"
                         f" a password MLflow accepts for its admin user: {rule}. Fix the"
                         " Secret and the server recovers on the next reconcile")


def check_admin_password(namespace: str, name: str, password: str) -> None:
    """Raise InvalidAdminSecret when MLflow would refuse `password` at its first start."""
    if len(password) < MIN_ADMIN_PASSWORD_LENGTH:
        raise InvalidAdminSecret(namespace, name, f"it must be at least {MIN_ADMIN_PASSWORD_LENGTH}"
                                 " characters long")
    if hmac.compare_digest(password.encode(), LEGACY_DEFAULT_ADMIN_PASSWORD.encode()):
        raise InvalidAdminSecret(namespace, name, "it must not be the publicly known default"
                                 " password of older MLflow versions")


def generate_password() -> str:
    # URL-safe: the password ends up in an ini file and in HTTP Basic credentials.
    return secrets.token_urlsafe(24)


def generate_secret_key() -> str:
    return secrets.token_hex(32)


def value_of(secret: Mapping[str, Any] | None, key: str) -> str | None:
    """The decoded value of `key`, or None when the Secret or key is absent or unreadable."""
    if not secret:
        return None
    raw = (secret.get("data") or {}).get(key)
    if raw is not None:
        try:
            return base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
    # Objects that never met a real API server (the emulator) may keep stringData.
    plain = (secret.get("stringData") or {}).get(key)
    return str(plain) if plain is not None else None


def required_value(secret: Mapping[str, Any] | None, namespace: str, name: str, key: str) -> str:
    """The key's value; MissingSecret when the Secret or the key is missing or empty."""
    if secret is None:
        raise MissingSecret(namespace, name)
    value = value_of(secret, key)
    if not value:
        raise MissingSecret(namespace, name, key, empty=value == "")
    return value


def read_key(api: KubeApi, namespace: str, name: str, key: str) -> str:
    return required_value(api.get(SECRET, namespace, name), namespace, name, key)
