"""Cheap local checks on a bearer token before anything reaches the API server.

The signature is NOT verified here (jwks.py does that next, against the cluster's signing
keys, and/or TokenReview, per `token_validation`); this only rejects tokens that cannot
possibly pass, so junk costs neither a signature check nor an API call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from .credentials import MAX_TOKEN_BYTES

# Algorithms kube-apiserver signs ServiceAccount tokens with. `none` and HMAC never are.
ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"})
CLOCK_SKEW_SECONDS = 30.0
SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class Claims:
    subject: str
    expires_at: float
    audiences: tuple[str, ...]


@dataclass(frozen=True)
class Rejected:
    reason: str


def split_service_account(username: str) -> tuple[str, str] | None:
    """`system:serviceaccount:<ns>:<name>` -> (ns, name); None for any other identity."""
    if not username.startswith(SA_PREFIX):
        return None
    namespace, sep, name = username[len(SA_PREFIX):].partition(":")
    if not sep or not namespace or not name or ":" in name:
        return None
    return namespace, name


def _decode(token: str) -> tuple[dict, dict] | Rejected:
    if len(token) > MAX_TOKEN_BYTES:
        return Rejected("token too large")
    if token.count(".") != 2:
        return Rejected("token is not a JWT")
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return Rejected("token is not a well-formed JWT")
    if not isinstance(payload, dict):
        return Rejected("token payload is not a JSON object")
    return header, payload


def _audiences(payload: dict) -> tuple[str, ...] | None:
    aud = payload.get("aud")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    return None


def _time_claim(payload: dict, name: str) -> float | None | Rejected:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Rejected(f"token {name} claim is not a number")
    return float(value)


def _check_times(payload: dict, now: float) -> float | Rejected:
    exp = _time_claim(payload, "exp")
    nbf = _time_claim(payload, "nbf")
    for value in (exp, nbf):
        if isinstance(value, Rejected):
            return value
    if exp is None:
        return Rejected("token has no expiry (legacy tokens are not accepted)")
    if exp <= now - CLOCK_SKEW_SECONDS:
        return Rejected("token expired")
    if nbf is not None and nbf > now + CLOCK_SKEW_SECONDS:
        return Rejected("token not yet valid")
    return exp  # type: ignore[return-value]


def precheck(
    token: str,
    audiences: tuple[str, ...],
    issuers: tuple[str, ...] = (),
    now: float | None = None,
) -> Claims | Rejected:
    decoded = _decode(token)
    if isinstance(decoded, Rejected):
        return decoded
    header, payload = decoded
    if header.get("alg") not in ALLOWED_ALGORITHMS:
        return Rejected("token algorithm not accepted")
    exp = _check_times(payload, time.time() if now is None else now)
    if isinstance(exp, Rejected):
        return exp
    token_audiences = _audiences(payload)
    if not token_audiences or not set(token_audiences) & set(audiences):
        return Rejected("token audience not accepted")
    if issuers and payload.get("iss") not in issuers:
        return Rejected("token issuer not accepted")
    subject = payload.get("sub")
    if not isinstance(subject, str) or split_service_account(subject) is None:
        return Rejected("token subject is not a ServiceAccount")
    return Claims(subject=subject, expires_at=exp, audiences=token_audiences)
