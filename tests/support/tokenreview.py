"""TokenReview (authentication.k8s.io/v1) as kube-apiserver answers it.

Served by ``KubeEmulator`` for ``POST /apis/authentication.k8s.io/v1/tokenreviews``;
reviews are answered, never stored (a second identical review is not a 409).

Behaviour (mirrors the ServiceAccount token authenticator):

* the caller must send ``Authorization: Bearer <non-empty>`` (else 401); the
  caller's token is recorded in ``callers`` so tests can assert which
  credentials the plugin used;
* ``spec.token`` empty -> 400;
* not a JWT, or ``iss`` not ours -> ``{user: {}}`` (no authenticator claims it,
  no error, ``authenticated`` omitted — as the real API omits false);
* signature by an untrusted key, ``alg`` other than RS256 -> error;
* ``exp``/``nbf`` checked with ``leeway`` seconds (60, like go-jose);
* audiences: empty ``spec.audiences`` means ``api_audience``; the token's
  ``aud`` must intersect them; ``status.audiences`` is the intersection;
* the ServiceAccount must still exist in the emulator with the token's uid
  (and the pod, if the token is pod-bound) -> else "token has been invalidated";
* success: ``status.authenticated: true``, ``status.user`` with username
  ``system:serviceaccount:<ns>:<name>``, the SA uid, groups
  ``system:serviceaccounts``, ``system:serviceaccounts:<ns>``,
  ``system:authenticated`` and ``extra`` (credential id, pod name/uid).

Faults for tests (attributes, change any time, also from another thread):
``delay`` seconds before answering, ``fail_status`` (e.g. 500, 403, 429)
answered as a Status, ``disconnect=True`` drops the connection without an
answer. ``count`` counts reviews received (faulty ones included); ``callers``
holds the bearer tokens of the last 1000 callers; ``reset()`` clears counters
and faults.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import jwt

from tests.support import tokens
from tests.support.kubeproto import ApiError

# (namespace, name) -> uid of the live object, or None when absent.
UidLookup = Callable[[str, str], str | None]

_INVALIDATED = 'service account token has been invalidated'


def _failure(message: str) -> dict[str, Any]:
    return {'user': {}, 'error': f'[invalid bearer token, {message}]'}


@dataclass
class TokenReviewer:
    service_account_uid: UidLookup
    pod_uid: UidLookup
    issuer: str = tokens.ISSUER
    api_audience: str = tokens.API_AUDIENCE
    leeway: float = 60.0
    trusted_keys: list[Any] = field(default_factory=lambda: [tokens.signing_key()])

    delay: float = 0.0
    fail_status: int | None = None
    disconnect: bool = False
    count: int = 0
    callers: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.delay, self.fail_status, self.disconnect = 0.0, None, False
        self.count = 0
        self.callers.clear()

    async def serve(self, raw: aiohttp.web.BaseRequest, body: Any) -> aiohttp.web.StreamResponse:
        self.count += 1
        auth = raw.headers.get('Authorization', '')
        scheme, _, caller = auth.partition(' ')
        if scheme.lower() != 'bearer' or not caller.strip():
            raise ApiError(401, 'Unauthorized', 'Unauthorized')
        self.callers.append(caller.strip())
        del self.callers[:-1000]  # bounded for benchmarks; tests look at the last few
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.disconnect:
            assert raw.transport is not None
            raw.transport.abort()
            raise ConnectionResetError('TokenReview fault: connection dropped')
        if self.fail_status is not None:
            raise ApiError(self.fail_status, 'InternalError' if self.fail_status >= 500 else 'Failure',
                           f'TokenReview fault injected by the test ({self.fail_status})')
        spec = body.get('spec') if isinstance(body, dict) else None
        if not isinstance(spec, dict) or not spec.get('token'):
            raise ApiError(400, 'BadRequest', 'token is required for TokenReview in authentication')
        audiences = spec.get('audiences') or []
        status = self.review(str(spec['token']), [str(a) for a in audiences])
        answer = {
            'kind': 'TokenReview', 'apiVersion': 'authentication.k8s.io/v1',
            'metadata': {'creationTimestamp': None},
            'spec': {'token': spec['token'], **({'audiences': audiences} if audiences else {})},
            'status': status,
        }
        return aiohttp.web.json_response(answer, status=201)

    def review(self, token: str, audiences: Sequence[str]) -> dict[str, Any]:
        """The `status` of a TokenReview for this token and requested audiences."""
        requested = list(audiences) or [self.api_audience]
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={'verify_signature': False})
        except jwt.InvalidTokenError:
            return {'user': {}}
        if unverified.get('iss') != self.issuer:
            return {'user': {}}
        if header.get('alg') != 'RS256':
            return _failure(f'unexpected signature algorithm {json.dumps(header.get("alg"))}')
        try:
            claims = self._verify(token, header)
        except jwt.ExpiredSignatureError:
            return _failure('service account token has expired')
        except jwt.ImmatureSignatureError:
            return _failure('service account token is not valid yet')
        except jwt.InvalidTokenError:
            return _failure('square/go-jose: error in cryptographic primitive')
        token_aud = claims.get('aud')
        token_aud = [token_aud] if isinstance(token_aud, str) else list(token_aud or [])
        matched = [a for a in requested if a in token_aud]
        if not matched:
            return _failure(f'token audiences {json.dumps(token_aud)} is invalid for the '
                            f'target audiences {json.dumps(requested)}')
        return self._identity(claims, matched)

    def _verify(self, token: str, header: dict[str, Any]) -> dict[str, Any]:
        last: jwt.InvalidTokenError = jwt.InvalidSignatureError('no trusted key')
        for key in self.trusted_keys:
            if header.get('kid') not in (None, tokens.key_id(key)):
                continue
            try:
                return jwt.decode(token, key.public_key(), algorithms=['RS256'], leeway=self.leeway,
                                  options={'verify_aud': False, 'require': ['exp']})
            except jwt.InvalidSignatureError as exc:
                last = exc
        raise last

    def _identity(self, claims: dict[str, Any], audiences: list[str]) -> dict[str, Any]:
        k8s = claims.get('kubernetes.io') or {}
        namespace = k8s.get('namespace')
        sa = k8s.get('serviceaccount') or {}
        if not namespace or not sa.get('name') or not sa.get('uid'):
            return _failure('service account token claims could not be validated')
        if self.service_account_uid(namespace, sa['name']) != sa['uid']:
            return _failure(_INVALIDATED)
        extra = {'authentication.kubernetes.io/credential-id': [f"JTI={claims.get('jti', '')}"]}
        pod = k8s.get('pod')
        if pod:
            if self.pod_uid(namespace, pod.get('name', '')) != pod.get('uid'):
                return _failure(_INVALIDATED)
            extra['authentication.kubernetes.io/pod-name'] = [pod['name']]
            extra['authentication.kubernetes.io/pod-uid'] = [pod['uid']]
        return {
            'authenticated': True,
            'user': {
                'username': f"system:serviceaccount:{namespace}:{sa['name']}",
                'uid': sa['uid'],
                'groups': ['system:serviceaccounts', f'system:serviceaccounts:{namespace}',
                           'system:authenticated'],
                'extra': extra,
            },
            'audiences': audiences,
        }
