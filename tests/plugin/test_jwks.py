"""`token_validation`: the local signature check against the real API server's signing keys.

Real `mlflow server --app-name k8s-auth` processes (workers=1, so counts are exact) in
each mode, authenticating to kube-apiserver as their own ServiceAccount through the fault
proxy, which counts TokenReviews and signing-key fetches. Valid tokens come from
TokenRequest; forgeries (tests.support.tokens and hand-made signatures) play the attacker.
"""

from __future__ import annotations

import base64
import concurrent.futures
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from mlflow import MlflowClient
from mlflow.server import get_app_client

from tests.plugin.cluster import PluginCluster
from tests.plugin.conftest import ADMIN_PASSWORD, ADMIN_USER, AUDIENCE, MlflowServer, render_ini
from tests.support.tokens import sa_claims

GET_EXPERIMENT = "/api/2.0/mlflow/experiments/get?experiment_id=0"
JWKS = r"^/openid/v1/jwks$"
DISCOVERY = r"^/\.well-known/openid-configuration$"
TOKENREVIEWS = r"/apis/authentication.k8s.io/v1/tokenreviews$"
FLOOD = 10_000


@dataclass
class Site:
    cluster: PluginCluster
    jobs: str  # the namespace of the job ServiceAccounts
    servers: dict[str, MlflowServer]
    server_namespaces: dict[str, str]

    def get(self, mode: str, token: str, session: requests.Session | None = None) -> requests.Response:
        return (session or requests).get(self.servers[mode].url + GET_EXPERIMENT,
                                          headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def reviews(self) -> int:
        return self.cluster.proxy.count("POST", TOKENREVIEWS)

    def key_fetches(self) -> int:
        return self.cluster.proxy.count("GET", JWKS)


@pytest.fixture(scope="module")
def site(cluster: PluginCluster, module_dir: Path) -> Iterator[Site]:
    jobs = cluster.namespace("jwks-jobs")
    servers: dict[str, MlflowServer] = {}
    namespaces: dict[str, str] = {}
    try:
        for mode in ("tokenreview", "jwks+tokenreview", "jwks"):
            server_ns = namespaces[mode] = cluster.namespace("jwks-server")
            # In `jwks` mode the server's ServiceAccount has no ClusterRoleBinding at all:
            # only what every ServiceAccount may do (the default discovery binding).
            kubeconfig = cluster.server_kubeconfig(module_dir / f"kubeconfig-{mode}", server_ns,
                                                   bind=mode != "jwks")
            settings = {} if mode == "jwks+tokenreview" else {"token_validation": mode}  # the default
            ini = render_ini(f"sqlite:///{module_dir}/auth-{mode}.db", kubeconfig, allowed_namespaces=jobs,
                             **settings)
            metrics_dir = module_dir / f"metrics-{mode}"
            metrics_dir.mkdir()
            servers[mode] = MlflowServer(module_dir / mode, ini, f"sqlite:///{module_dir}/mlflow-{mode}.db",
                                         extra_args=["--expose-prometheus", str(metrics_dir)]).start()
        yield Site(cluster, jobs, servers, namespaces)
    finally:
        for server in servers.values():
            server.stop()
    for server in servers.values():
        assert "Traceback" not in server.log()


def _forged(site: Site, kind: str, real_kid: str) -> str:
    """One unique, well-shaped forgery: right issuer, audience, subject; bad signature."""
    claims = sa_claims(site.jobs, "trainer", [AUDIENCE], issuer=site.cluster.plane.issuer)
    if kind == "foreign-key":  # signed by the attacker's key, under its own kid
        return jwt.encode(claims, _ATTACKER_EC, algorithm="ES256", headers={"kid": "attacker-" + uuid.uuid4().hex})
    if kind == "foreign-key-real-kid":  # the attacker's signature under the cluster's kid
        return jwt.encode(claims, _ATTACKER_EC, algorithm="ES256", headers={"kid": real_kid})
    header = base64.urlsafe_b64encode(f'{{"alg":"RS256","kid":"{real_kid}"}}'.encode()).rstrip(b"=").decode()
    body = jwt.encode(claims, "unused-hmac-key-of-32-bytes-long!!", algorithm="HS256").split(".")[1]
    return f"{header}.{body}.{base64.urlsafe_b64encode(secrets.token_bytes(256)).rstrip(b'=').decode()}"


_ATTACKER_EC = ec.generate_private_key(ec.SECP256R1())
FORGERIES = ("foreign-key", "foreign-key-real-kid", "random-signature")


def _admin_metrics(server: MlflowServer) -> str:
    response = requests.get(f"{server.url}/metrics", auth=(ADMIN_USER, ADMIN_PASSWORD), timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def _metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize("mode", ["tokenreview", "jwks+tokenreview", "jwks"])
def test_a_real_token_works_in_every_mode(site: Site, mode: str) -> None:
    token = site.cluster.token(site.jobs, f"trainer-{mode.replace('+', '-')}")
    reviews = site.reviews()
    response = site.get(mode, token)
    assert response.status_code == 200, response.text
    # Only `jwks` trusts the verified claims alone.
    assert site.reviews() == reviews + (0 if mode == "jwks" else 1)
    assert site.get(mode, token).status_code == 200  # cached
    assert site.reviews() == reviews + (0 if mode == "jwks" else 1)


@pytest.mark.parametrize("mode", ["tokenreview", "jwks+tokenreview", "jwks"])
def test_a_forged_token_costs_a_tokenreview_only_without_jwks(site: Site, mode: str) -> None:
    kid = jwt.get_unverified_header(site.cluster.token(site.jobs, "trainer"))["kid"]
    reviews = site.reviews()
    for kind in FORGERIES:
        response = site.get(mode, _forged(site, kind, kid))
        assert response.status_code == 401, response.text
        assert response.json()["error_code"] == "UNAUTHENTICATED"
    assert site.reviews() == reviews + (len(FORGERIES) if mode == "tokenreview" else 0)


def test_jwks_mode_needs_no_auth_delegator_binding(site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's real MLflow client logs a run on a server whose ServiceAccount holds only the
    rights every ServiceAccount has: it may not create TokenReviews, yet tokens work."""
    server = site.servers["jwks"]
    assert not site.cluster.may_review(site.server_namespaces["jwks"])
    token_file = tmp_path / "token"
    token_file.write_text(site.cluster.token(site.jobs, "job") + "\n")
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "k8s-token")
    monkeypatch.setenv("MLFLOW_K8S_TOKEN_PATH", str(token_file))
    reviews = site.reviews()
    client = MlflowClient(tracking_uri=server.url)
    run = client.create_run(client.create_experiment("jwks-only"))
    client.log_metric(run.info.run_id, "loss", 0.5)
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
    whoami = get_app_client("k8s-auth", tracking_uri=server.url).whoami()
    assert whoami["username"] == f"system:serviceaccount:{site.jobs}:job"
    assert site.reviews() == reviews


def test_flood_of_unique_forgeries_sends_no_tokenreview(site: Site) -> None:
    kid = jwt.get_unverified_header(site.cluster.token(site.jobs, "trainer"))["kid"]
    forged = [_forged(site, FORGERIES[i % 3], kid) for i in range(FLOOD)]
    assert len(set(forged)) == FLOOD
    reviews, fetches = site.reviews(), site.key_fetches()
    local = threading.local()

    def send(token: str) -> tuple[int, float]:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        started = time.perf_counter()
        status = site.get("jwks+tokenreview", token, session).status_code
        return status, time.perf_counter() - started

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, forged))
    elapsed = time.perf_counter() - started
    statuses = {status for status, _ in results}
    latencies = sorted(seconds for _, seconds in results)
    new_fetches = site.key_fetches() - fetches
    print(f"\n{FLOOD} forged tokens in {elapsed:.1f} s: {elapsed / FLOOD * 1000:.2f} ms per rejected token"
          f" (8 client threads, 1 server worker); latency p50 {latencies[FLOOD // 2] * 1000:.1f} ms,"
          f" p99 {latencies[int(FLOOD * 0.99)] * 1000:.1f} ms; {new_fetches} JWKS fetches;"
          f" {site.reviews() - reviews} TokenReviews")
    assert statuses == {401}
    assert site.reviews() == reviews
    # Unknown kids refetch the keys at most once per jwks_refresh_min_interval_seconds (10).
    assert new_fetches <= elapsed / 10 + 1
    text = _admin_metrics(site.servers["jwks+tokenreview"])
    assert _metric(text, "mlflow_k8s_auth_signature_failures_total") >= FLOOD
    assert _metric(text, 'mlflow_k8s_auth_jwks_fetches_total{result="ok"}') >= 1
