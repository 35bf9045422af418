"""Two `mlflow server --app-name k8s-auth` processes share one fresh PostgreSQL auth DB; both
review tokens with the real API server as the server's ServiceAccount."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from mlflow_k8s_auth.namespace_roles import role_name
from tests.plugin.cluster import PluginCluster
from tests.plugin.conftest import MlflowServer, Postgres, render_ini


@pytest.mark.slow
def test_100_concurrent_first_requests_from_20_new_service_accounts(
    cluster: PluginCluster, module_dir: Path, fresh_databases: Callable[[], Postgres]
) -> None:
    auth_db, tracking_db = fresh_databases(), fresh_databases()
    fleet = cluster.namespace("fleet")
    kubeconfig = cluster.server_kubeconfig(module_dir / "kubeconfig", cluster.namespace("server"))
    ini = render_ini(auth_db.uri, kubeconfig, namespace_permissions=f"{fleet}:EDIT")
    # Started one after the other: the first creates the schemas (in a cluster the
    # operator's migration Job does that before any replica starts).
    servers = [MlflowServer(module_dir / f"replica-{i}", ini, tracking_db.uri, workers=2).start() for i in range(2)]
    try:
        tokens = [cluster.token(fleet, f"worker-{i}") for i in range(20)]
        reviews = cluster.reviews()
        calls = [(servers[n % 2].url, tokens[n % 20]) for n in range(100)]

        def call(target: tuple[str, str]) -> int:
            url, token = target
            response = requests.get(
                f"{url}/api/2.0/mlflow/experiments/get?experiment_id=0",
                headers={"Authorization": f"Bearer {token}"}, timeout=60,
            )
            return response.status_code

        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            statuses = list(pool.map(call, calls))
        assert statuses == [200] * 100
        rows = auth_db.query("SELECT username, count(*) FROM users WHERE username LIKE 'system:%%' GROUP BY username")
        assert sorted(rows) == sorted((f"system:serviceaccount:{fleet}:worker-{i}", 1) for i in range(20))
        assert auth_db.query("SELECT count(*) FROM user_role_assignments") == [(20,)]
        assert auth_db.query("SELECT count(*) FROM roles WHERE name = %s", (role_name(fleet),)) == [(1,)]
        # 4 workers in 2 processes: at most one review per token per worker.
        assert 20 <= cluster.reviews() - reviews <= 80
        for server in servers:
            assert "Traceback" not in server.log()
            for token in tokens:
                assert token not in server.log()
    finally:
        for server in servers:
            server.stop()
