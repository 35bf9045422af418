"""The signature check's parts on their own: the ini keys, where the keys are fetched from,
the JWKS parser, the verifier against the real API server's keys, the token bucket."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mlflow_k8s_auth.config import ConfigError, load_config
from mlflow_k8s_auth.jwks import (API_SERVER_JWKS_PATH, ApiServerDocuments, JwksVerifier, SigningKeys, Verified,
                                  identity, keys_path, parse_jwks)
from mlflow_k8s_auth.outcomes import Invalid
from mlflow_k8s_auth.ratelimit import TokenBucket
from mlflow_k8s_auth.tokenreview import build_api_client
from tests.plugin.conftest import render_ini
from tests.support.controlplane import ControlPlane
from tests.support.kubeapi import Kube
from tests.support.tokens import mint_alg_none_token, mint_hs256_token, mint_token

AUDIENCE = "units"


# ---- ini keys ---------------------------------------------------------------------------


def _config(tmp_path: Path, **settings: object):  # type: ignore[no-untyped-def]
    ini = tmp_path / "auth.ini"
    ini.write_text(render_ini("sqlite:///auth.db", tmp_path / "kc", **settings))
    return load_config(ini)


def test_defaults(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config.token_validation == "jwks+tokenreview"
    assert (config.jwks_refresh_min_interval_seconds, config.tokenreview_rate_per_second,
            config.tokenreview_burst) == (10.0, 50.0, 100)


@pytest.mark.parametrize(("settings", "message"), [
    ({"token_validation": "signature"}, "token_validation must be one of tokenreview | jwks+tokenreview | jwks"),
    ({"jwks_refresh_min_interval_seconds": "0"}, "jwks_refresh_min_interval_seconds must be > 0"),
    ({"tokenreview_rate_per_second": "0"}, "tokenreview_rate_per_second must be > 0"),
    ({"tokenreview_rate_per_second": "fast"}, "tokenreview_rate_per_second must be a number"),
    ({"tokenreview_burst": "0"}, "tokenreview_burst must be >= 1"),
    ({"tokenreview_burst": "1.5"}, "tokenreview_burst must be an integer"),
])
def test_bad_values_are_named(tmp_path: Path, settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("|", r"\|").replace("+", r"\+")):
        _config(tmp_path, **settings)


# ---- where the keys come from ------------------------------------------------------------


@pytest.mark.parametrize(("jwks_uri", "api", "path"), [
    # the issuer's in-cluster name: the API server's own path, never that host
    ("https://kubernetes.default.svc.cluster.local/openid/v1/jwks", "https://10.0.0.1:6443", API_SERVER_JWKS_PATH),
    # a public mirror (--service-account-jwks-uri): the same keys, from the API server
    ("https://storage.example.com/cluster/keys.json", "https://10.0.0.1:6443", API_SERVER_JWKS_PATH),
    # the API server itself: the path it names
    ("https://10.0.0.1:6443/openid/v1/jwks", "https://10.0.0.1:6443", "/openid/v1/jwks"),
    ("https://api.example.com/openid/v1/jwks", "https://api.example.com:443", "/openid/v1/jwks"),
    # an API server behind a path prefix (a proxy): the prefix is the client's, not the path's
    ("https://proxy.example.com/k8s/c1/openid/v1/jwks", "https://proxy.example.com/k8s/c1", "/openid/v1/jwks"),
    # same host, other scheme or port: another origin
    ("http://10.0.0.1:6443/openid/v1/jwks", "https://10.0.0.1:6443", API_SERVER_JWKS_PATH),
    ("https://10.0.0.1:8443/x", "https://10.0.0.1:6443", API_SERVER_JWKS_PATH),
])
def test_keys_path(jwks_uri: str, api: str, path: str) -> None:
    assert keys_path(jwks_uri, api) == path


def test_parse_jwks_keeps_signing_keys_of_accepted_algorithms(admin: Kube) -> None:
    published = admin.request("GET", "/openid/v1/jwks")
    real = published["keys"][0]
    document = {"keys": [
        real,
        {**real, "kid": "for-encryption", "use": "enc"},
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        {**real, "kid": None},
        "not-an-object",
    ]}
    assert list(parse_jwks(document)) == [real["kid"]]


# ---- the verifier against the real API server's keys --------------------------------------


@pytest.fixture(scope="module")
def verifier(control_plane: ControlPlane) -> JwksVerifier:
    documents = ApiServerDocuments(lambda: build_api_client(str(control_plane.kubeconfig)), 5)
    return JwksVerifier(SigningKeys(documents, 10), (AUDIENCE,), ())


def test_a_real_token_verifies_to_its_identity(verifier: JwksVerifier, admin: Kube, namespace: str) -> None:
    admin.create_service_account(namespace, "trainer")
    verified = verifier.verify(admin.token_for(namespace, "trainer", [AUDIENCE], 600))
    assert isinstance(verified, Verified)
    assert (verified.username, verified.namespace, verified.name) == (
        f"system:serviceaccount:{namespace}:trainer", namespace, "trainer")
    uid = admin.get("v1/serviceaccounts", namespace, "trainer")["metadata"]["uid"]
    assert verified.uid == uid
    assert 590 < verified.expires_at - time.time() <= 600


def test_forgeries_are_refused_with_a_reason(verifier: JwksVerifier, admin: Kube, namespace: str,
                                             control_plane: ControlPlane) -> None:
    admin.create_service_account(namespace, "trainer")
    real = admin.token_for(namespace, "trainer", [AUDIENCE], 600)
    kid = jwt.get_unverified_header(real)["kid"]
    head, body, _ = real.split(".")
    attacker = ec.generate_private_key(ec.SECP256R1())
    issuer = control_plane.issuer
    cases = {
        "token algorithm not accepted": [
            mint_alg_none_token(namespace, "trainer", [AUDIENCE], issuer=issuer),
            mint_hs256_token(namespace, "trainer", [AUDIENCE], issuer=issuer),
        ],
        "token signature is not valid": [f"{head}.{body}.{'A' * 342}"],
        "token algorithm does not match its key": [
            jwt.encode({"sub": "x"}, attacker, algorithm="ES256", headers={"kid": kid})],
        "token is not signed by a key of this cluster": [
            mint_token(namespace, "trainer", [AUDIENCE], issuer=issuer, key=None)],
        "token names no signing key": [jwt.encode({"sub": "x"}, attacker, algorithm="ES256")],
    }
    for reason, tokens in cases.items():
        for token in tokens:
            outcome = verifier.verify(token)
            assert isinstance(outcome, Invalid) and outcome.reason.startswith(reason), (reason, outcome)
    # Claims: a real key, but the wrong audience or issuer is refused after the signature.
    other = admin.token_for(namespace, "trainer", ["another-audience"], 600)
    assert verifier.verify(other) == Invalid("token audience not accepted")


def test_claims_must_agree_with_the_subject() -> None:
    claims = {"sub": "system:serviceaccount:jobs:trainer", "exp": time.time() + 60,
              "kubernetes.io": {"namespace": "jobs", "serviceaccount": {"name": "trainer", "uid": "u"}}}
    assert isinstance(identity(claims), Verified)
    for changed in ({"sub": "system:serviceaccount:jobs:admin"}, {"sub": "alice"}, {"kubernetes.io": None},
                    {"kubernetes.io": {"namespace": "other", "serviceaccount": {"name": "trainer"}}}):
        assert isinstance(identity({**claims, **changed}), Invalid)


# ---- the token bucket -----------------------------------------------------------------------


def test_token_bucket() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, 3, clock=lambda: now[0])
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert bucket.try_acquire() == pytest.approx(0.5)  # then one every 1/rate seconds
    now[0] += 0.5
    assert bucket.try_acquire() == 0.0
    now[0] += 60  # refills up to the burst, not beyond
    assert [bucket.try_acquire() for _ in range(4)][-1] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


def test_every_service_account_may_read_discovery_by_default(admin: Kube) -> None:
    """Why `jwks` needs no binding of its own (Kubernetes' bootstrap RBAC, 1.35 here)."""
    binding = admin.get("rbac.authorization.k8s.io/v1/clusterrolebindings", None,
                        "system:service-account-issuer-discovery")
    assert binding["roleRef"]["name"] == "system:service-account-issuer-discovery"
    assert {"kind": "Group", "name": "system:serviceaccounts",
            "apiGroup": "rbac.authorization.k8s.io"} in binding["subjects"]
    role = admin.get("rbac.authorization.k8s.io/v1/clusterroles", None, "system:service-account-issuer-discovery")
    urls = {url for rule in role["rules"] for url in rule.get("nonResourceURLs", [])}
    assert {"/.well-known/openid-configuration", "/openid/v1/jwks"} <= urls
