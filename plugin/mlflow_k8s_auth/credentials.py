"""Pull credentials out of request headers: Bearer, Basic, none, or malformed.

Works from a plain header mapping so it serves both Flask's `before_request` and MLflow's
FastAPI bridge (which builds a partial request context from headers alone).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass

# A ServiceAccount JWT is 1-2 KiB; anything far beyond is junk or an attack.
MAX_TOKEN_BYTES = 16 * 1024
MAX_BASIC_BYTES = 4 * 1024
# MLflow's gateway routes carry MLflow credentials here because the standard header
# holds the upstream provider's key (mlflow.gateway.constants.MLFLOW_GATEWAY_AUTH_HEADER).
GATEWAY_AUTH_HEADER = "X-MLflow-Authorization"


@dataclass(frozen=True)
class Bearer:
    token: str

    def __repr__(self) -> str:  # never let a token reach a log through repr()
        return "Bearer(<redacted>)"


@dataclass(frozen=True)
class Basic:
    username: str
    password: str

    def __repr__(self) -> str:
        return "Basic(<redacted>)"


@dataclass(frozen=True)
class Malformed:
    reason: str


Credentials = Bearer | Basic | Malformed | None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value or None


def is_gateway_route(path: str) -> bool:
    # As MLflow does: strip `--static-prefix` (set by `mlflow server`), then match.
    prefix = os.environ.get("_MLFLOW_STATIC_PREFIX", "").rstrip("/")
    if prefix and path.startswith(prefix):
        path = path[len(prefix):]
    return path.startswith("/gateway/")


def select_header(headers: Mapping[str, str], path: str) -> str | None:
    """The header MLflow itself would read: X-MLflow-Authorization first on /gateway/."""
    if is_gateway_route(path):
        gateway = _header(headers, GATEWAY_AUTH_HEADER)
        if gateway:
            return gateway
    return _header(headers, "Authorization")


def _parse_basic(encoded: str) -> Basic | Malformed:
    if len(encoded) > MAX_BASIC_BYTES:
        return Malformed("basic credentials too large")
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return Malformed("basic credentials are not valid base64 UTF-8")
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        return Malformed("basic credentials must be username:password")
    return Basic(username, password)


def parse_authorization(value: str | None) -> Credentials:
    if value is None:
        return None
    if not value.isascii():
        return Malformed("authorization header must be ASCII")
    if len(value) > MAX_TOKEN_BYTES + 16:
        return Malformed("authorization header too large")
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if not rest or " " in rest:
        return Malformed("authorization header must be '<scheme> <credentials>'")
    lowered = scheme.lower()
    if lowered == "bearer":
        return Bearer(rest)
    if lowered == "basic":
        return _parse_basic(rest)
    return Malformed("unsupported authorization scheme (use Bearer or Basic)")


def extract(headers: Mapping[str, str], path: str) -> Credentials:
    return parse_authorization(select_header(headers, path))
