"""Signing-key fetches and the TokenReview rate limit against the real API server.

Each test starts its own `mlflow server --app-name k8s-auth` (workers=1) so that it begins
without cached keys. The fault proxy in front of kube-apiserver counts the discovery and
JWKS fetches and fails them on demand.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from tests.plugin.cluster import PluginCluster
from tests.plugin.conftest import ADMIN_PASSWORD, ADMIN_USER, AUDIENCE, MlflowServer, render_ini
from tests.support.tokens import sa_claims

GET_EXPERIMENT = "/api/2.0/mlflow/experiments/get?experiment_id=0"
JWKS = r"^/openid/v1/jwks$"
DISCOVERY = r"^/\.well-known/openid-configuration$"
TOKENREVIEWS = r"/apis/authentication.k8s.io/v1/tokenreviews$"
REFRESH_INTERVAL = 3  # jwks_refresh_min_interval_seconds of these servers
_ATTACKER = ec.generate_private_key(ec.SECP256R1())

Start = Callable[..., MlflowServer]


@pytest.fixture(scope="module")
def jobs(cluster: PluginCluster) -> str:
    return cluster.namespace("keys-jobs")


@pytest.fixture
def start(cluster: PluginCluster, jobs: str, tmp_path: Path) -> Iterator[Start]:
    """Starts a fresh server (no keys cached yet) with these [k8s_auth] settings."""
    servers: list[MlflowServer] = []

    def make(**settings: object) -> MlflowServer:
        kubeconfig = cluster.server_kubeconfig(tmp_path / "kubeconfig", cluster.namespace("keys-server"))
        ini = render_ini(f"sqlite:///{tmp_path}/auth.db", kubeconfig, allowed_namespaces=jobs,
                         jwks_refresh_min_interval_seconds=REFRESH_INTERVAL, **settings)
        metrics_dir = tmp_path / "metrics"
        metrics_dir.mkdir()
        server = MlflowServer(tmp_path, ini, f"sqlite:///{tmp_path}/mlflow.db",
                              extra_args=["--expose-prometheus", str(metrics_dir)])
        servers.append(server)
        return server.start()

    yield make
    cluster.proxy.reset()
    for server in servers:
        server.stop()
        assert "Traceback" not in server.log()


def get(server: MlflowServer, token: str) -> requests.Response:
    return requests.get(server.url + GET_EXPERIMENT, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def assert_503(response: requests.Response, words: str) -> int:
    assert response.status_code == 503, response.text
    assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert words in response.json()["message"]
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def unknown_kid_token(cluster: PluginCluster, jobs: str) -> str:
    """A forgery naming a signing key the cluster never had."""
    claims = sa_claims(jobs, "trainer", [AUDIENCE], issuer=cluster.plane.issuer)
    return jwt.encode(claims, _ATTACKER, algorithm="ES256", headers={"kid": uuid.uuid4().hex})


def metric(server: MlflowServer, prefix: str) -> float:
    text = requests.get(f"{server.url}/metrics", auth=(ADMIN_USER, ADMIN_PASSWORD), timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize("down", ["discovery", "jwks"])
def test_key_endpoint_down_is_503_then_recovers(cluster: PluginCluster, jobs: str, start: Start, down: str) -> None:
    server = start()
    path = DISCOVERY if down == "discovery" else JWKS
    rule = cluster.proxy.fail(500, "GET", path)
    token = cluster.token(jobs, "trainer")
    fetches = cluster.proxy.count("GET", path)
    reviews = cluster.proxy.count("POST", TOKENREVIEWS)
    assert_503(get(server, token), "signing keys")
    # Within the refresh interval nobody refetches: the second request is 503 at no cost.
    retry_after = assert_503(get(server, token), "signing keys")
    assert cluster.proxy.count("GET", path) == fetches + 1
    assert cluster.proxy.count("POST", TOKENREVIEWS) == reviews  # no verdict, no TokenReview
    assert "cannot fetch the cluster's signing keys: " in server.log()
    cluster.proxy.remove(rule)
    time.sleep(retry_after)
    # The failure was not cached as a verdict on the token.
    assert get(server, token).status_code == 200
    assert metric(server, 'mlflow_k8s_auth_jwks_fetches_total{result="error"}') == 1
    assert metric(server, 'mlflow_k8s_auth_jwks_fetches_total{result="ok"}') == 1


def test_unknown_kid_refetches_once_per_interval(cluster: PluginCluster, jobs: str, start: Start) -> None:
    server = start()
    token = cluster.token(jobs, "trainer")
    assert get(server, token).status_code == 200
    fetches = cluster.proxy.count("GET", JWKS)
    time.sleep(REFRESH_INTERVAL)
    # One refetch for the first unknown kid (it could be a rotated key) ...
    started = time.monotonic()
    assert get(server, unknown_kid_token(cluster, jobs)).status_code == 401
    assert cluster.proxy.count("GET", JWKS) == fetches + 1
    # ... and none for a burst of other unknown kids within the interval.
    sent = 0
    while time.monotonic() - started < REFRESH_INTERVAL - 1:
        response = get(server, unknown_kid_token(cluster, jobs))
        assert response.status_code == 401
        assert "not signed by a key of this cluster" in response.json()["message"]
        sent += 1
    assert sent >= 5
    assert cluster.proxy.count("GET", JWKS) == fetches + 1
    time.sleep(REFRESH_INTERVAL)
    assert get(server, unknown_kid_token(cluster, jobs)).status_code == 401
    assert cluster.proxy.count("GET", JWKS) == fetches + 2
    assert metric(server, 'mlflow_k8s_auth_signature_failures_total{reason="unknown_key"}') == sent + 2


def test_keys_in_hand_survive_an_outage(cluster: PluginCluster, jobs: str, start: Start) -> None:
    server = start()
    assert get(server, cluster.token(jobs, "trainer")).status_code == 200
    time.sleep(REFRESH_INTERVAL)
    rule = cluster.proxy.fail(500, "GET", JWKS)
    # A valid token (a kid already known) still works; an unknown kid cannot be judged now.
    assert get(server, cluster.token(jobs, "during-outage")).status_code == 200
    retry_after = assert_503(get(server, unknown_kid_token(cluster, jobs)), "signing keys")
    cluster.proxy.remove(rule)
    time.sleep(retry_after)
    assert get(server, unknown_kid_token(cluster, jobs)).status_code == 401


def test_tokenreview_rate_limit(cluster: PluginCluster, jobs: str, start: Start) -> None:
    # A burst of two, then one TokenReview per 10 s.
    server = start(tokenreview_rate_per_second=0.1, tokenreview_burst=2)
    tokens = [cluster.token(jobs, f"member-{i}") for i in range(3)]
    reviews = cluster.proxy.count("POST", TOKENREVIEWS)
    # Forgeries never reach the bucket (the signature check refuses them first) ...
    for _ in range(20):
        assert get(server, unknown_kid_token(cluster, jobs)).status_code == 401
    # ... so the genuine tokens get the burst.
    assert get(server, tokens[0]).status_code == 200
    assert get(server, tokens[1]).status_code == 200
    limited = get(server, tokens[2])
    retry_after = assert_503(limited, "rate limit")
    assert retry_after <= 10
    assert cluster.proxy.count("POST", TOKENREVIEWS) == reviews + 2
    # Cached tokens keep working, at no TokenReview.
    for _ in range(5):
        assert get(server, tokens[0]).status_code == 200
        assert get(server, tokens[1]).status_code == 200
    assert cluster.proxy.count("POST", TOKENREVIEWS) == reviews + 2
    assert metric(server, "mlflow_k8s_auth_rate_limited_total") >= 1
    time.sleep(retry_after)
    assert get(server, tokens[2]).status_code == 200
    assert cluster.proxy.count("POST", TOKENREVIEWS) == reviews + 3
