"""Revocation latency for the plugin benchmark, measured in the same run as its throughput.

Two `mlflow server --app-name k8s-auth` processes share one auth database: the benchmarked
server (1 uvicorn worker, permission cache and fresh revocation on: the defaults) and a
second replica with 2 workers. A job's ServiceAccount can read an experiment (the default
permission); an admin then revokes it on the first server (a NO_PERMISSIONS grant through
MLflow's permission API) while client threads send requests on new connections to both
servers (so every worker answers some). Latency: from the revoking call's return to the
start of the last request that still got 200. The grant is removed again between rounds.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import requests
from mlflow.server.auth.routes import GRANT_USER_PERMISSION, REVOKE_USER_PERMISSION

from tests.plugin.conftest import MlflowServer

POLL_THREADS = 4
WINDOW_SECONDS = 1.5


def _status(url: str, token: str) -> int:
    return requests.get(url, headers={"Authorization": f"Bearer {token}", "Connection": "close"},
                        timeout=30).status_code


def _everywhere(urls: list[str], token: str, wanted: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_status(url, token) == wanted for _ in range(10) for url in urls):
            return
        time.sleep(0.1)
    raise RuntimeError(f"revocation bench: not {wanted} on every server after {timeout:.0f} s")


def _one_round(urls: list[str], token: str, revoke: Any) -> float:
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def poll(offset: int) -> None:
        n = offset
        while not stop.is_set():
            started = time.monotonic()
            samples.append((started, _status(urls[n % len(urls)], token)))
            n += 1

    threads = [threading.Thread(target=poll, args=(i,)) for i in range(POLL_THREADS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)
        revoke()
        revoked = time.monotonic()
        time.sleep(WINDOW_SECONDS)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if {status for _, status in samples} - {200, 403}:
        raise RuntimeError(f"revocation bench: unexpected statuses {sorted({s for _, s in samples})}")
    last_allowed = max((started for started, status in samples if status == 200), default=revoked)
    return max(0.0, last_allowed - revoked)


def revocation_latency(primary: MlflowServer, replica: MlflowServer, admin: dict[str, str], token: str,
                       username: str, rounds: int) -> dict[str, Any]:
    response = requests.post(f"{primary.url}/api/2.0/mlflow/experiments/create", json={"name": "revocation"},
                             headers=admin, timeout=30)
    response.raise_for_status()
    experiment = str(response.json()["experiment_id"])
    urls = [f"{server.url}/api/2.0/mlflow/experiments/get?experiment_id={experiment}" for server in (primary, replica)]
    grant = {"username": username, "resource_type": "experiment", "resource_id": experiment}

    def revoke() -> None:
        requests.post(primary.url + GRANT_USER_PERMISSION, json={**grant, "permission": "DENY"},
                      headers=admin, timeout=30).raise_for_status()

    latencies = []
    for _ in range(rounds):
        _everywhere(urls, token, 200)
        latencies.append(_one_round(urls, token, revoke))
        requests.post(replica.url + REVOKE_USER_PERMISSION, json=grant, headers=admin, timeout=30).raise_for_status()
    return {
        "revocation_rounds": rounds,
        "revocation_latency_ms_median": round(statistics.median(latencies) * 1000),
        "revocation_latency_ms_max": round(max(latencies) * 1000),
        "revocation_latency_ms_max_target": "<= 1000",
    }
