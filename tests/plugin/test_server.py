"""A real `mlflow server --app-name k8s-auth` against the real API server.

One server process for the module (workers=1, so TokenReview counts are exact). It
authenticates to kube-apiserver as its own ServiceAccount bound to system:auth-delegator,
through the fault proxy that counts its TokenReviews and injects faults. Job tokens come
from the TokenRequest API; the real MLflow client plays the job with
`MLFLOW_TRACKING_AUTH=k8s-token`. Forged tokens (tests.support.tokens) play the attacker.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.server import get_app_client

from mlflow_k8s_auth.responses import CHALLENGE_WITH_BASIC
from tests.plugin.cluster import TOKENREVIEWS, PluginCluster, wait_for
from tests.plugin.conftest import ADMIN_PASSWORD, ADMIN_USER, AUDIENCE, MlflowServer, render_ini
from tests.support.tokens import mint_alg_none_token, mint_token, other_private_key

ROLES = ("jobs", "team-edit", "team-read", "ops", "outsiders")
GET_EXPERIMENT = "/api/2.0/mlflow/experiments/get?experiment_id=0"


@dataclass
class Env:
    cluster: PluginCluster
    server: MlflowServer
    ns: dict[str, str]  # role (as in ROLES) -> this module's namespace

    def token(self, role: str, name: str, audiences: tuple[str, ...] = (AUDIENCE,),
              expiration_seconds: int = 3600) -> str:
        return self.cluster.token(self.ns[role], name, audiences, expiration_seconds)

    def user(self, role: str, name: str) -> str:
        return f"system:serviceaccount:{self.ns[role]}:{name}"

    def get(self, path: str, headers: dict[str, str | bytes] | None = None) -> requests.Response:
        return requests.get(self.server.url + path, headers=headers or {}, timeout=30)


@pytest.fixture(scope="module")
def env(cluster: PluginCluster, module_dir: Path) -> Iterator[Env]:
    ns = {role: cluster.namespace(role) for role in (*ROLES, "server")}
    kubeconfig = cluster.server_kubeconfig(module_dir / "kubeconfig", ns["server"])
    ini = render_ini(
        f"sqlite:///{module_dir}/auth.db",
        kubeconfig,
        allowed_namespaces=", ".join(ns[r] for r in ("jobs", "team-edit", "team-read", "ops")),
        admin_service_accounts=f"{ns['ops']}:deployer",
        namespace_permissions=f"{ns['team-edit']}:EDIT",
        issuers=cluster.plane.issuer,
        tokenreview_timeout_seconds=1,
    )
    metrics_dir = module_dir / "metrics"
    metrics_dir.mkdir()
    server = MlflowServer(
        module_dir, ini, f"sqlite:///{module_dir}/mlflow.db",
        extra_args=["--expose-prometheus", str(metrics_dir)],
    ).start()
    try:
        yield Env(cluster, server, ns)
    finally:
        server.stop()
    assert "Traceback" not in server.log()
    # Every test of this module ran through the permission middleware fast path.
    assert "permission middleware is skipped for requests it only passes on" in server.log()


@pytest.fixture
def faults(env: Env) -> Iterator[None]:
    yield
    env.cluster.proxy.reset()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def assert_no_secret_logged(server: MlflowServer, secret: str) -> None:
    log = server.log()
    for part in {secret, *[p for p in secret.split(".") if len(p) > 16]}:
        assert part not in log


def assert_unavailable(response: requests.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"].isdigit()
    assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert response.json()["message"]


def use_token_file(monkeypatch: pytest.MonkeyPatch, path: Path, token: str) -> None:
    path.write_text(token + "\n")
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "k8s-token")
    monkeypatch.setenv("MLFLOW_K8S_TOKEN_PATH", str(path))


# ---- the job's point of view --------------------------------------------------------


def test_job_logs_run_metric_and_artifact(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_token_file(monkeypatch, tmp_path / "token", env.token("jobs", "trainer"))
    client = MlflowClient(tracking_uri=env.server.url)
    experiment_id = client.create_experiment("job-experiment")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "loss", 0.25)
    artifact = tmp_path / "model.txt"
    artifact.write_text("weights")
    client.log_artifact(run.info.run_id, str(artifact))
    client.set_terminated(run.info.run_id)

    monkeypatch.delenv("MLFLOW_TRACKING_AUTH")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    stored = MlflowClient(tracking_uri=env.server.url).get_run(run.info.run_id)
    assert stored.data.metrics == {"loss": 0.25}
    assert [a.path for a in MlflowClient(tracking_uri=env.server.url).list_artifacts(run.info.run_id)] == ["model.txt"]


def test_token_rotation_mid_job(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    use_token_file(monkeypatch, token_file, env.token("jobs", "rotating"))
    client = MlflowClient(tracking_uri=env.server.url)
    run = client.create_run(client.create_experiment("rotation"))
    client.log_metric(run.info.run_id, "step", 1, step=1)
    reviews = env.cluster.reviews()
    # The kubelet writes a fresh token into the projected file (atomically, via rename).
    fresh = tmp_path / "token.new"
    fresh.write_text(env.token("jobs", "rotating", expiration_seconds=7200))
    os.replace(fresh, token_file)
    client.log_metric(run.info.run_id, "step", 2, step=2)
    client.log_metric(run.info.run_id, "step", 3, step=3)
    # The new token was sent (one new review), and the job never noticed.
    assert env.cluster.reviews() == reviews + 1
    history = client.get_metric_history(run.info.run_id, "step")
    assert [m.value for m in history] == [1, 2, 3]


def test_missing_token_file_is_a_clear_error(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "k8s-token")
    monkeypatch.setenv("MLFLOW_K8S_TOKEN_PATH", str(tmp_path / "absent"))
    with pytest.raises(Exception, match="no ServiceAccount token at .*absent.*MLFLOW_K8S_TOKEN_PATH"):
        MlflowClient(tracking_uri=env.server.url).get_experiment("0")


# ---- bad input: clear answers, no 500, no token in the log ------------------------------


def _forged(env: Env, **kw: object) -> str:
    """An attacker's token for an existing ServiceAccount: real issuer, audience and uid."""
    env.token("jobs", "trainer")
    uid = env.cluster.admin.get("v1/serviceaccounts", env.ns["jobs"], "trainer")["metadata"]["uid"]
    settings = {"issuer": env.cluster.plane.issuer, "uid": uid, **kw}
    return mint_token(env.ns["jobs"], "trainer", [AUDIENCE], **settings)  # type: ignore[arg-type]


def _deleted(env: Env) -> str:
    token = env.token("jobs", "leaver")
    env.cluster.admin.delete_service_account(env.ns["jobs"], "leaver")
    env.cluster.wait_refused(token)
    return token


def _recreated(env: Env) -> str:
    """A token of a ServiceAccount deleted and made again under the same name (new uid)."""
    token = env.token("jobs", "reborn")
    env.cluster.admin.delete_service_account(env.ns["jobs"], "reborn")
    env.cluster.admin.create_service_account(env.ns["jobs"], "reborn")
    env.cluster.wait_refused(token)
    assert env.get(GET_EXPERIMENT, bearer(env.token("jobs", "reborn"))).status_code == 200  # the new one works
    return token


BAD_BEARERS: dict[str, tuple[Callable[[Env], str], int]] = {
    "garbage": (lambda e: "garbage-" + secrets.token_hex(20), 401),
    "truncated-jwt": (lambda e: e.token("jobs", "trainer")[:-30], 401),
    "alg-none": (lambda e: mint_alg_none_token(e.ns["jobs"], "trainer", [AUDIENCE]), 401),
    "hs256": (lambda e: _forged(e, alg="HS256", key=secrets.token_bytes(32)), 401),
    # Algorithm confusion: HMAC keyed with the cluster's published RSA public key.
    "hs256-keyed-with-public-key": (lambda e: _forged(e, alg="HS256", key=e.cluster.public_key_pem()), 401),
    "wrong-audience": (lambda e: e.token("jobs", "trainer", audiences=("other",)), 401),
    "api-server-audience": (lambda e: e.token("jobs", "trainer", audiences=()), 401),
    "wrong-issuer": (lambda e: _forged(e, issuer="https://evil.example"), 401),
    # TokenRequest never hands out expired or future tokens: these are forged.
    "expired": (lambda e: _forged(e, expires_in=-600), 401),
    "not-yet-valid": (lambda e: _forged(e, not_before=time.time() + 600), 401),
    "untrusted-signing-key": (lambda e: _forged(e, key=other_private_key()), 401),
    "deleted-service-account": (_deleted, 401),
    "recreated-service-account": (_recreated, 401),
    "namespace-not-allowed": (lambda e: e.token("outsiders", "intruder"), 403),
}
# Which of them are refused without asking the API server: the pre-check and (with the
# default token_validation = jwks+tokenreview) the signature check; a gone or re-created
# ServiceAccount still has a valid signature and takes a TokenReview.
REFUSED_LOCALLY = {"garbage", "alg-none", "hs256", "hs256-keyed-with-public-key",
                   "wrong-audience", "api-server-audience", "wrong-issuer", "expired", "not-yet-valid",
                   "truncated-jwt", "untrusted-signing-key"}


@pytest.mark.parametrize("case", sorted(BAD_BEARERS))
def test_bad_bearer_tokens(env: Env, case: str) -> None:
    make, status = BAD_BEARERS[case]
    token = make(env)
    reviews = env.cluster.reviews()
    response = env.get(GET_EXPERIMENT, bearer(token))
    assert env.cluster.reviews() == reviews + (0 if case in REFUSED_LOCALLY else 1)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == ("UNAUTHENTICATED" if status == 401 else "PERMISSION_DENIED")
    assert body["message"] and token not in body["message"]
    if status == 401:
        assert response.headers["WWW-Authenticate"] == CHALLENGE_WITH_BASIC
    assert_no_secret_logged(env.server, token)


def test_no_credentials(env: Env) -> None:
    response = env.get(GET_EXPERIMENT)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == CHALLENGE_WITH_BASIC
    assert "Bearer" in response.json()["message"]


def test_basic_with_service_account_username_and_wrong_password(env: Env) -> None:
    token = env.token("jobs", "trainer")
    for headers in (basic(env.user("jobs", "trainer"), token), basic(ADMIN_USER, "wrong-password-1")):
        response = env.get(GET_EXPERIMENT, headers)
        assert response.status_code == 401
        assert response.json()["error_code"] == "UNAUTHENTICATED"
    assert_no_secret_logged(env.server, token)


def test_oversized_and_non_ascii_headers(env: Env) -> None:
    huge = "a" * (64 * 1024)
    response = env.get(GET_EXPERIMENT, {"Authorization": f"Bearer {huge}"})
    # uvicorn may refuse the header before MLflow sees it; either way no 500.
    assert response.status_code in (400, 401, 431)
    if response.status_code == 401:
        assert response.json()["error_code"] == "UNAUTHENTICATED"
    response = env.get(GET_EXPERIMENT, {"Authorization": "Bearer t\xe9st-\xff".encode("latin-1")})
    assert response.status_code in (400, 401)
    if response.status_code == 401:
        assert "ASCII" in response.json()["message"]
    assert huge not in env.server.log()


def _inject(env: Env, fault: str) -> None:
    proxy = env.cluster.proxy
    if fault == "status-500":
        proxy.fail(500, "POST", TOKENREVIEWS)
    elif fault == "connection-dropped":
        proxy.disconnect("POST", TOKENREVIEWS)
    else:
        proxy.delay(3, "POST", TOKENREVIEWS)  # tokenreview_timeout_seconds = 1


@pytest.mark.parametrize("fault", ["status-500", "connection-dropped", "slow"])
def test_api_server_trouble_is_503_and_not_cached(env: Env, faults: None, fault: str) -> None:
    token = env.token("jobs", f"unlucky-{fault}")
    _inject(env, fault)
    reviews = env.cluster.reviews()
    for _ in range(2):
        started = time.monotonic()
        assert_unavailable(env.get(GET_EXPERIMENT, bearer(token)))
        assert time.monotonic() - started < 3
    # Each request asked again: an API failure is never cached, not even briefly.
    assert env.cluster.reviews() == reviews + 2
    assert "retry shortly" in env.get(GET_EXPERIMENT, bearer(token)).json()["message"]  # a passing fault
    env.cluster.proxy.reset()
    # Once the API answers, the same token works.
    assert env.get(GET_EXPERIMENT, bearer(token)).status_code == 200
    assert_no_secret_logged(env.server, token)


def test_api_server_down_is_503(env: Env, faults: None) -> None:
    token = env.token("jobs", "while-down")
    with env.cluster.proxy.offline():
        started = time.monotonic()
        assert_unavailable(env.get(GET_EXPERIMENT, bearer(token)))
        assert time.monotonic() - started < 3
    assert "TokenReview failed: connection" in env.server.log()
    assert env.get(GET_EXPERIMENT, bearer(token)).status_code == 200
    assert_no_secret_logged(env.server, token)


def test_server_without_auth_delegator_binding_is_503(env: Env, faults: None) -> None:
    server_ns = env.ns["server"]
    env.cluster.unbind(server_ns)
    try:
        wait_for(lambda: not env.cluster.may_review(server_ns), what="RBAC to drop the binding")
        token = env.token("jobs", "before-rbac-fix")
        response = env.get(GET_EXPERIMENT, bearer(token))
        assert_unavailable(response)
        assert "refused this server's own credentials" in response.json()["message"]
        assert "system:auth-delegator" in response.json()["message"]
        # The operator of the server learns why from the log, the caller's token stays out of it.
        assert "TokenReview failed with HTTP 403 (may the server's ServiceAccount create tokenreviews?)" in env.server.log()
    finally:
        env.cluster.bind(server_ns)
    wait_for(lambda: env.cluster.may_review(server_ns), what="RBAC to see the binding")
    assert env.get(GET_EXPERIMENT, bearer(token)).status_code == 200  # the 503 was not cached
    assert_no_secret_logged(env.server, token)


# ---- cache behaviour seen from outside ------------------------------------------------


def test_concurrent_first_requests_cause_one_tokenreview(env: Env) -> None:
    token = env.token("jobs", "burst")
    before = env.cluster.reviews()
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(lambda _: env.get(GET_EXPERIMENT, bearer(token)).status_code, range(64)))
    assert statuses == [200] * 64
    assert env.cluster.reviews() == before + 1


def test_garbage_flood_reaches_no_tokenreview(env: Env) -> None:
    forged = [_forged(env, expires_in=-600), _forged(env, issuer="https://evil.example"),
              mint_alg_none_token(env.ns["jobs"], "trainer", [AUDIENCE])]
    before = env.cluster.reviews()
    session = requests.Session()
    for i in range(300):
        junk = (secrets.token_urlsafe(40), "eyJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(60) + ".sig",
                forged[i % 3])[i % 3]
        assert session.get(env.server.url + GET_EXPERIMENT, headers=bearer(junk)).status_code == 401
    assert env.cluster.reviews() == before


# ---- policy: admins, namespace permissions, the admin client --------------------------


def test_admin_service_account_and_whoami(env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_token_file(monkeypatch, tmp_path / "token", env.token("ops", "deployer"))
    client = get_app_client("k8s-auth", tracking_uri=env.server.url)
    assert client.whoami() == {"id": client.whoami()["id"], "username": env.user("ops", "deployer"), "is_admin": True}
    use_token_file(monkeypatch, tmp_path / "token", env.token("jobs", "trainer"))
    assert client.whoami()["is_admin"] is False


def test_namespace_permissions(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    experiment_id = MlflowClient(tracking_uri=env.server.url).create_experiment("owned-by-admin")
    set_tag = f"{env.server.url}/api/2.0/mlflow/experiments/set-experiment-tag"
    body = {"experiment_id": experiment_id, "key": "k", "value": "v"}

    editor = bearer(env.token("team-edit", "writer"))
    reader = bearer(env.token("team-read", "viewer"))
    assert requests.post(set_tag, json=body, headers=editor, timeout=10).status_code == 200
    assert requests.post(set_tag, json=body, headers=reader, timeout=10).status_code == 403
    assert env.get(f"/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}", reader).status_code == 200

    # An admin grants team-read EDIT at runtime; its logged-in members get it at once.
    admin_client = get_app_client("k8s-auth", tracking_uri=env.server.url)
    team_read = env.ns["team-read"]
    admin_client.set_namespace_permission(team_read, "EDIT")
    assert admin_client.get_namespace_permission(team_read) == "EDIT"
    assert admin_client.list_namespace_permissions()[env.ns["team-edit"]].permission == "EDIT"
    assert requests.post(set_tag, json=body, headers=reader, timeout=10).status_code == 200
    admin_client.remove_namespace_permission(team_read)
    assert admin_client.get_namespace_permission(team_read) is None


# ---- FastAPI-native routes and metrics ------------------------------------------------


def test_fastapi_native_route_uses_the_plugin(env: Env) -> None:
    tracer = bearer(env.token("jobs", "tracer"))
    created = requests.post(
        f"{env.server.url}/api/2.0/mlflow/experiments/create", json={"name": "traces"}, headers=tracer, timeout=10
    )
    url = f"{env.server.url}/v1/traces"
    headers = {"Content-Type": "application/x-protobuf", "x-mlflow-experiment-id": created.json()["experiment_id"]}
    anonymous = requests.post(url, data=b"", headers=headers, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error_code"] == "UNAUTHENTICATED"
    authed = requests.post(url, data=b"", headers={**headers, **tracer}, timeout=10)
    assert authed.status_code not in (401, 403, 500, 503), authed.text


def test_prometheus_metrics(env: Env) -> None:
    env.get(GET_EXPERIMENT, bearer(env.token("jobs", "trainer")))
    assert requests.get(f"{env.server.url}/metrics", timeout=10).status_code == 401
    # MLflow's auth app fails closed on /metrics for non-admins; an admin SA may scrape.
    non_admin = bearer(env.token("jobs", "prometheus"))
    assert requests.get(f"{env.server.url}/metrics", headers=non_admin, timeout=10).status_code == 403
    scraper = bearer(env.token("ops", "deployer"))
    text = requests.get(f"{env.server.url}/metrics", headers=scraper, timeout=10).text
    assert 'mlflow_k8s_auth_decisions_total{method="bearer",result="ok"}' in text
    assert "mlflow_k8s_auth_tokenreview_seconds_bucket" in text
    assert 'mlflow_k8s_auth_token_cache_total{result="hit"}' in text
