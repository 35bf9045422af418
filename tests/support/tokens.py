"""Forged ServiceAccount-shaped JWTs: the attacker's tokens in the plugin's tests.

A valid token always comes from the real TokenRequest API
(``tests.support.kubeapi.Kube.token_for``). What this module signs, with a
per-session key the API server has never seen (or with none, or with HMAC), is
what an attacker could send: kube-apiserver refuses every one of them, so they
test the plugin's local pre-check and what a forgery costs.

Usage::

    from tests.support.tokens import mint_token

    forged = mint_token('jobs', 'trainer', ['mlflow'])             # well-shaped, unknown key
    expired = mint_token('jobs', 'trainer', ['mlflow'], expires_in=-600)
    alg_none = mint_alg_none_token('jobs', 'trainer', ['mlflow'])
    confused = mint_hs256_token('jobs', 'trainer', ['mlflow'])     # HMAC keyed with a public key

Claims are shaped like a projected token: ``iss``, ``sub``
(``system:serviceaccount:<ns>:<name>``), ``aud`` (always a list), ``exp``,
``iat``, ``nbf``, ``jti`` and ``kubernetes.io: {namespace, serviceaccount:
{name, uid}}`` (plus ``pod: {name, uid}`` when ``pod=`` is given). The header
carries ``kid`` like the real thing.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# The emulated API server's issuer and its own audience (what an empty
# TokenReview spec.audiences means), as with `--service-account-issuer` and
# `--api-audiences` defaulting to the issuer.
ISSUER = 'https://kubernetes.default.svc'
API_AUDIENCE = ISSUER


@functools.cache
def signing_key() -> rsa.RSAPrivateKey:
    """The per-session (per-process) RS256 key the emulator trusts."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def other_private_key() -> rsa.RSAPrivateKey:
    """A fresh key the emulator does NOT trust (for forged-signature tests)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey | None = None) -> bytes:
    key = key or signing_key()
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: rsa.RSAPrivateKey | None = None) -> str:
    # Real clusters derive `kid` from the public key too; any stable id works.
    digest = hashlib.sha256(public_pem(key)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b'=').decode()


def sa_claims(
    namespace: str,
    name: str,
    audiences: Sequence[str],
    *,
    uid: str | None = None,
    expires_in: float = 3600,
    not_before: float | None = None,
    issuer: str = ISSUER,
    pod: Mapping[str, str] | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The claim set of a projected ServiceAccount token.

    ``not_before`` is an absolute UNIX time (default: now). ``extra_claims``
    are merged last, so they can override or (with value ``None``) remove a
    standard claim: ``extra_claims={'exp': None}`` yields a token without exp.
    """
    now = int(time.time())
    k8s: dict[str, Any] = {
        'namespace': namespace,
        'serviceaccount': {'name': name, 'uid': uid or str(uuid.uuid4())},
    }
    if pod is not None:
        k8s['pod'] = dict(pod)
    claims: dict[str, Any] = {
        'aud': list(audiences),
        'exp': int(now + expires_in),
        'iat': now,
        'iss': issuer,
        'jti': str(uuid.uuid4()),
        'kubernetes.io': k8s,
        'nbf': int(not_before if not_before is not None else now),
        'sub': f'system:serviceaccount:{namespace}:{name}',
    }
    for key, value in (extra_claims or {}).items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


def mint_token(
    namespace: str,
    name: str,
    audiences: Sequence[str],
    *,
    uid: str | None = None,
    expires_in: float = 3600,
    not_before: float | None = None,
    issuer: str = ISSUER,
    alg: str = 'RS256',
    key: Any = None,
    pod: Mapping[str, str] | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """A signed ServiceAccount token (see the module docstring).

    ``alg='RS256'`` signs with ``key`` (an RSA private key; default: the
    trusted session key). ``alg='none'`` gives an unsigned token.
    ``alg='HS256'`` (etc.) signs with ``key`` as the HMAC secret; by default
    the trusted key's public PEM — the classic algorithm-confusion forgery.
    """
    claims = sa_claims(
        namespace, name, audiences, uid=uid, expires_in=expires_in,
        not_before=not_before, issuer=issuer, pod=pod, extra_claims=extra_claims)
    if alg == 'none':
        return _unsigned(claims)
    if alg.startswith('HS'):
        return _hmac_signed(claims, key if key is not None else public_pem(), alg)
    private = key if key is not None else signing_key()
    return jwt.encode(claims, private, algorithm=alg, headers={'kid': key_id(private)})


def mint_alg_none_token(namespace: str, name: str, audiences: Sequence[str], **kw: Any) -> str:
    return mint_token(namespace, name, audiences, alg='none', **kw)


def mint_hs256_token(namespace: str, name: str, audiences: Sequence[str], **kw: Any) -> str:
    return mint_token(namespace, name, audiences, alg='HS256', **kw)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b'=').decode()


def _segment(data: Mapping[str, Any]) -> str:
    return _b64(json.dumps(data, separators=(',', ':')).encode())


def _unsigned(claims: Mapping[str, Any]) -> str:
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(claims)}."


def _hmac_signed(claims: Mapping[str, Any], secret: bytes | str, alg: str) -> str:
    # By hand: pyjwt (rightly) refuses a PEM key as an HMAC secret.
    digest = {'HS256': hashlib.sha256, 'HS384': hashlib.sha384, 'HS512': hashlib.sha512}[alg]
    signing_input = f"{_segment({'alg': alg, 'typ': 'JWT'})}.{_segment(claims)}"
    key = secret.encode() if isinstance(secret, str) else secret
    return f'{signing_input}.{_b64(hmac.new(key, signing_input.encode(), digest).digest())}'
