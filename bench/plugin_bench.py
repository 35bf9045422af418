"""Auth plugin benchmark: `python -m bench.plugin_bench [--quick]` (printed numbers, not a test).

Side by side, same settings (1 uvicorn worker, SQLite stores, same endpoint
`experiments/get` as a non-admin user):
  * unauthenticated MLflow (`mlflow server`)
  * k8s-auth bearer, warm token cache, MLflow's permission lookups uncached
    (`permission_cache_ttl_seconds = 0`)
  * k8s-auth bearer, warm token cache, the defaults: permission cache (30 s) and fresh
    revocation (the auth DB's change counter read every 0.3 s) on
  * MLflow basic-auth (`--app-name basic-auth`, its credential cache on, ttl 120)
Method: one warm-up second each, then `rounds` rounds of `seconds` per variant; each round
starts with a different variant (rotation), ratios are taken within a round and the median
over rounds is printed with its min/max. The servers' own CPU time per request (process tree,
from /proc) is printed too: it measures the same thing with less noise from other load.
The client (8 keep-alive threads) runs in this process and shares the machine's cores.
plus, in the same run: the revocation latency across that server and a second replica
(2 workers) on its auth DB (bench.plugin_revocation); TokenReviews for 64 concurrent
requests with one new token, the in-process cost of a
token cache hit and of the plugin's whole warm-cache authentication, TokenReviews caused
by a flood of unique garbage tokens, and the uncached path against the real API server:
the plugin's TokenReview call (median/p95, a new token each time, so kube-apiserver's own
10 s token cache misses too) and a first request with a new token end to end.

Kubernetes is the real control plane (tests.support.controlplane, v1.35): `run` starts one
unless given one. The servers review tokens as their own ServiceAccount bound to
system:auth-delegator, straight to kube-apiserver (no proxy in the measured path);
TokenReviews are counted by kube-apiserver itself (`apiserver_request_total`). Job tokens
come from the TokenRequest API; the garbage is forged (tests.support.tokens).

`run(quick)` returns a flat dict; `python -m bench` prints it with the other suites.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from mlflow_k8s_auth.cache import ReviewCache
from mlflow_k8s_auth.outcomes import Reviewed
from mlflow_k8s_auth.precheck import Claims, precheck
from tests.plugin.conftest import ADMIN_PASSWORD, ADMIN_USER, AUDIENCE, MlflowServer, render_ini
from bench.plugin_apiserver import JOB_SA, BenchCluster, percentiles_ms, tokenreview_latency_ms
from bench.plugin_revocation import revocation_latency
from tests.support.controlplane import ControlPlane
from tests.support.tokens import mint_alg_none_token, mint_token

THREADS = 8
USER, PASSWORD = "bench-user", "bench-password-123"


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class _BasicAuthServer(MlflowServer):
    """MLflow's own basic-auth app, for comparison."""

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("k8s-auth")] = "basic-auth"
        return command


class _PlainServer(MlflowServer):
    """MLflow with no auth app at all."""

    def command(self) -> list[str]:
        command = super().command()
        at = command.index("--app-name")
        return command[:at] + command[at + 2:]


def _throughput(url: str, headers: dict[str, str], seconds: float) -> tuple[float, int]:
    """(requests per second, requests) from THREADS keep-alive clients hammering one URL."""
    stop = time.monotonic() + seconds
    counts = [0] * THREADS
    errors: list[int] = []

    def client(index: int) -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            response = session.get(url, headers=headers, timeout=30)
            if response.status_code != 200:
                errors.append(response.status_code)
                return
            counts[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"benchmark request failed with HTTP {errors[0]}")
    return sum(counts) / (time.monotonic() - started), sum(counts)


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and all its descendants, from /proc."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _per_call_us(fn: Callable[[], Any], iterations: int) -> float:
    started = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - started) / iterations * 1e6


def _cache_costs(token: str, iterations: int) -> dict[str, float]:
    cache = ReviewCache((AUDIENCE,), 120, 5, 10000)
    claims = precheck(token, (AUDIENCE,))
    assert isinstance(claims, Claims)
    cache.store(cache.key(token), Reviewed(claims.subject, "bench", "cached", time.time() + 3600))
    assert cache.lookup(cache.key(token)) is not None
    return {
        "cache_hit_us": _per_call_us(lambda: cache.lookup(cache.key(token)), iterations),
        "precheck_us": _per_call_us(lambda: precheck(token, (AUDIENCE,)), iterations // 10),
    }


def _authenticate_cost_us(cluster: BenchCluster, workdir: Path, iterations: int) -> float:
    """Our whole `authenticate_request` for a known token (warm cache), minus the memo."""
    import flask
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    from mlflow_k8s_auth import authn, runtime
    from mlflow_k8s_auth.config import load_config

    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{workdir}/inproc-auth.db")
    ini = workdir / "inproc.ini"
    ini.write_text(render_ini(f"sqlite:///{workdir}/inproc-auth.db", cluster.server_kubeconfig))
    runtime.install(runtime.build_runtime(load_config(ini), store))
    headers = {"Authorization": f"Bearer {cluster.job_token()}"}
    with flask.Flask(__name__).test_request_context("/api/2.0/mlflow/experiments/get", headers=headers):
        first = authn._authenticate_safely()  # reviews once, fills the cache
        if getattr(first, "username", None) != f"system:serviceaccount:{cluster.namespace}:{JOB_SA}":
            raise RuntimeError("in-process authentication failed")
        return _per_call_us(authn._authenticate_safely, iterations)


def _request_latency_ms(session: requests.Session, url: str, tokens: list[str]) -> dict[str, float]:
    """Sequential requests on one keep-alive connection: per-request wall time."""
    samples = []
    for token in tokens:
        started = time.perf_counter()
        response = session.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        samples.append(time.perf_counter() - started)
        if response.status_code != 200:  # the server's message names the cause, never the token
            raise RuntimeError(f"latency request got HTTP {response.status_code}: {response.text[:300]}")
    return percentiles_ms(samples)


def _garbage(i: int) -> str:
    kind = i % 4
    if kind == 0:
        return secrets.token_urlsafe(48)
    if kind == 1:
        return mint_alg_none_token("bench", f"g{i}", [AUDIENCE])
    if kind == 2:
        return mint_token("bench", f"g{i}", ["someone-else"], key=_GARBAGE_KEY)
    return mint_token("bench", f"g{i}", [AUDIENCE], expires_in=-3600, key=_GARBAGE_KEY)


_GARBAGE_KEY: Any = None


def _flood(url: str, count: int) -> tuple[int, float]:
    global _GARBAGE_KEY
    from tests.support.tokens import other_private_key

    _GARBAGE_KEY = other_private_key()
    tokens = [_garbage(i) for i in range(count)]
    local = threading.local()

    def send(token: str) -> int:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        return session.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        statuses = list(pool.map(send, tokens))
    elapsed = time.monotonic() - started
    if set(statuses) != {401}:
        raise RuntimeError(f"garbage flood got unexpected statuses {sorted(set(statuses))}")
    return count, elapsed


def _start_servers(kubeconfig: Path, workdir: Path) -> dict[str, MlflowServer]:

    def ini(name: str, **extra: object) -> str:
        return render_ini(f"sqlite:///{workdir}/{name}-auth.db", kubeconfig, **extra).replace(
            "[k8s_auth]", "auth_cache_ttl_seconds = 120\n\n[k8s_auth]"
        )

    basic_ini = "\n".join(
        line for line in ini("basic").splitlines()
        if not line.startswith("authorization_function") and "[k8s_auth]" not in line
        and not line.startswith(("audiences", "allowed_namespaces", "kubeconfig", "permission_cache"))
    )
    specs = {
        "plain": _PlainServer(workdir / "plain", "", f"sqlite:///{workdir}/plain.db"),
        # Its TokenReview rate limit (50/s by default) is lifted: the new-token latency
        # rounds below send new tokens back to back and measure latency, not the limiter.
        "k8s": MlflowServer(workdir / "k8s", ini("k8s", permission_cache_ttl_seconds=0, tokenreview_rate_per_second=10000,
                                                 tokenreview_burst=10000), f"sqlite:///{workdir}/k8s.db"),
        "k8s_permcache": MlflowServer(workdir / "k8s_pc", ini("k8s_pc"), f"sqlite:///{workdir}/k8s_pc.db"),
        # A second replica on the same databases, for the revocation latency (not benchmarked).
        "k8s_replica": MlflowServer(workdir / "k8s_replica", ini("k8s_pc"), f"sqlite:///{workdir}/k8s_pc.db",
                                    workers=2),
        "basic": _BasicAuthServer(workdir / "basic", basic_ini + "\n", f"sqlite:///{workdir}/basic.db"),
    }
    started: dict[str, MlflowServer] = {}
    try:
        for name, server in specs.items():
            started[name] = server.start()
    except Exception:
        for server in started.values():
            server.stop()
        raise
    return started


def _experiment(server: MlflowServer, admin_headers: dict[str, str]) -> str:
    response = requests.post(
        f"{server.url}/api/2.0/mlflow/experiments/create", json={"name": "bench"}, headers=admin_headers, timeout=30
    )
    response.raise_for_status()
    return str(response.json()["experiment_id"])


def run(quick: bool = False, plane: ControlPlane | None = None) -> dict[str, Any]:
    """Measure on `plane`, or on a control plane started (and stopped) for this run."""
    seconds, rounds = (2.0, 4) if quick else (5.0, 8)
    flood_count = 1000 if quick else 10000
    latency_count = 40 if quick else 300
    with tempfile.TemporaryDirectory(prefix="plugin-bench-") as tmp:
        workdir = Path(tmp)
        own = plane is None
        plane = plane or ControlPlane(workdir / "control-plane").start()
        try:
            with BenchCluster.open(plane, workdir) as cluster:
                servers = _start_servers(cluster.server_kubeconfig, workdir)
                try:
                    result = _measure(cluster, servers, seconds, rounds, flood_count)
                    result.update(revocation_latency(
                        servers["k8s_permcache"], servers["k8s_replica"], _basic(ADMIN_USER, ADMIN_PASSWORD),
                        cluster.job_token(), f"system:serviceaccount:{cluster.namespace}:{JOB_SA}", 3 if quick else 10,
                    ))
                    result.update(_uncached(cluster, servers["k8s"], latency_count))
                finally:
                    for server in servers.values():
                        server.stop()
                result["authenticate_warm_us"] = round(_authenticate_cost_us(cluster, workdir, 20_000), 2)
                if own:
                    result["control_plane_start_seconds"] = round(plane.started_in, 1)
                return result
        finally:
            if own:
                plane.stop()


def _uncached(cluster: BenchCluster, server: MlflowServer, count: int) -> dict[str, Any]:
    """The path a new token takes, against the real API server (median and p95)."""
    review = tokenreview_latency_ms(cluster, count)
    url = f"{server.url}/api/2.0/mlflow/experiments/get?experiment_id=0"
    session, known = requests.Session(), cluster.job_token()
    _request_latency_ms(session, url, [known])  # reviews it, opens the connection
    warm = _request_latency_ms(session, url, [known] * count)
    first = _request_latency_ms(session, url, [cluster.job_token() for _ in range(count)])
    return {
        "tokenreview_uncached_ms_median": review["median"],
        "tokenreview_uncached_ms_p95": review["p95"],
        "request_new_token_ms_median": first["median"],
        "request_new_token_ms_p95": first["p95"],
        "request_cached_token_ms_median": warm["median"],
        "request_cached_token_ms_p95": warm["p95"],
    }


def _measure(
    cluster: BenchCluster, servers: dict[str, MlflowServer], seconds: float, rounds: int, flood_count: int
) -> dict[str, Any]:
    admin = _basic(ADMIN_USER, ADMIN_PASSWORD)
    requests.post(
        f"{servers['basic'].url}/api/2.0/mlflow/users/create",
        json={"username": USER, "password": PASSWORD}, headers=admin, timeout=30,
    ).raise_for_status()
    token = cluster.job_token()
    bearer = {"Authorization": f"Bearer {token}"}
    targets = {
        "plain": ({}, _experiment(servers["plain"], {})),
        "k8s": (bearer, _experiment(servers["k8s"], admin)),
        "k8s_permcache": (bearer, _experiment(servers["k8s_permcache"], admin)),
        "basic": (_basic(USER, PASSWORD), _experiment(servers["basic"], admin)),
    }
    urls = {n: f"{servers[n].url}/api/2.0/mlflow/experiments/get?experiment_id={e}" for n, (_, e) in targets.items()}
    for name, (headers, _) in targets.items():  # warm caches and connections
        _throughput(urls[name], headers, 1.0)
    rps: dict[str, list[float]] = {name: [] for name in targets}
    cpu_us: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    for index in range(rounds):
        # Each round starts with a different variant, so slow drifts in machine load and
        # any order effect hit every variant alike; ratios are taken within a round.
        for name in names[index % len(names):] + names[:index % len(names)]:
            pid = servers[name].proc.pid  # type: ignore[union-attr]
            cpu_before = _cpu_seconds(pid)
            rate, count = _throughput(urls[name], targets[name][0], seconds)
            rps[name].append(rate)
            cpu_us[name].append((_cpu_seconds(pid) - cpu_before) / max(count, 1) * 1e6)

    new_token = cluster.job_token(expiration_seconds=7000)
    before = cluster.tokenreviews()
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        burst = list(pool.map(lambda _: requests.get(urls["k8s"], headers={"Authorization": f"Bearer {new_token}"}, timeout=30).status_code, range(64)))
    burst_reviews = cluster.tokenreviews() - before
    if set(burst) != {200}:
        raise RuntimeError(f"burst got statuses {sorted(set(burst))}")

    before = cluster.tokenreviews()
    flooded, flood_seconds = _flood(urls["k8s"], flood_count)
    flood_reviews = cluster.tokenreviews() - before

    costs = _cache_costs(token, 200_000)
    median = {name: statistics.median(values) for name, values in rps.items()}

    def ratio(name: str, base: str = "plain") -> float:
        """Median over rounds of this round's throughput ratio."""
        return round(statistics.median(a / b for a, b in zip(rps[name], rps[base], strict=True)), 3)

    def spread(name: str) -> list[float]:
        values = [a / b for a, b in zip(rps[name], rps["plain"], strict=True)]
        return [round(min(values), 3), round(max(values), 3)]

    return {
        "rounds": rounds,
        "seconds_per_round_per_variant": seconds,
        "rps_unauthenticated": round(median["plain"], 1),
        "rps_k8s_bearer": round(median["k8s"], 1),
        "rps_k8s_bearer_permission_cache": round(median["k8s_permcache"], 1),
        "rps_mlflow_basic_auth": round(median["basic"], 1),
        "ratio_k8s_vs_unauthenticated": ratio("k8s"),
        "ratio_k8s_permission_cache_vs_unauthenticated": ratio("k8s_permcache"),
        "ratio_k8s_permission_cache_vs_unauthenticated_min_max": spread("k8s_permcache"),
        "ratio_k8s_permission_cache_vs_unauthenticated_target": ">= 0.9",
        "fresh_revocation": "on (revocation_check_interval_seconds 0.3)",
        "ratio_basic_vs_unauthenticated": ratio("basic"),
        "ratio_k8s_vs_basic": ratio("k8s", "basic"),
        # Server CPU per request (whole process tree): the same comparison, less sensitive to
        # other load on the machine and to the client's own CPU use.
        **{f"server_cpu_us_per_request_{name}": round(statistics.median(v)) for name, v in cpu_us.items()},
        # The throughput ratio CPU cost alone predicts (unauthenticated CPU per request over
        # the permission-cache variant's, median of per-round ratios): steadier under load.
        "cpu_ratio_k8s_permission_cache_vs_unauthenticated": round(statistics.median(
            a / b for a, b in zip(cpu_us["plain"], cpu_us["k8s_permcache"], strict=True)), 3),
        "tokenreviews_for_64_concurrent_new_token": burst_reviews,
        "tokenreviews_for_64_concurrent_new_token_target": 1,
        "cache_hit_us": round(costs["cache_hit_us"], 2),
        "cache_hit_us_target": "< 20",
        "precheck_us": round(costs["precheck_us"], 2),
        "garbage_tokens_sent": flooded,
        "garbage_flood_rps": round(flooded / flood_seconds, 1),
        "tokenreviews_for_garbage_flood": flood_reviews,
        "tokenreviews_for_garbage_flood_target": 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
