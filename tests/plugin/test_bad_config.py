"""`mlflow server --app-name k8s-auth` with a bad ini: one clear line, exit code 1, no loop."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.plugin.conftest import Postgres, free_port, render_ini


def run_server(tmp_path: Path, ini: str | None, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KUBECONFIG"))}
    env.update({"MLFLOW_FLASK_SERVER_SECRET_KEY": "k", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    if ini is not None:
        (tmp_path / "auth.ini").write_text(ini)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(tmp_path / "auth.ini")
    env.update(extra_env or {})
    command = [
        sys.executable, "-m", "mlflow", "server", "--app-name", "k8s-auth", "--port", str(free_port()),
        "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--workers", "1",
    ]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def plugin_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("mlflow-k8s-auth:")]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"audiences": ""}, "[k8s_auth] audiences is required"),
        ({"token_cache_ttl_seconds": "forever"}, "[k8s_auth] token_cache_ttl_seconds must be a number"),
        ({"kubeconfig": "/nonexistent/kubeconfig"}, "kubeconfig '/nonexistent/kubeconfig' is not a readable file"),
    ],
)
def test_bad_value_stops_the_server_with_one_message(tmp_path: Path, settings: dict[str, str], message: str) -> None:
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    result = run_server(tmp_path, render_ini(f"sqlite:///{tmp_path}/auth.db", kubeconfig, **settings))
    assert result.returncode == 1
    assert len(plugin_lines(result)) == 1
    assert message in plugin_lines(result)[0]
    assert "Traceback" not in result.stderr
    assert "Uvicorn running" not in result.stderr + result.stdout


def test_missing_config_path(tmp_path: Path) -> None:
    result = run_server(tmp_path, None)
    assert result.returncode == 1
    assert "MLFLOW_AUTH_CONFIG_PATH is not set" in plugin_lines(result)[0]


def test_bootstrap_failure_is_one_line_without_secrets(
    tmp_path: Path, fresh_databases: Callable[[], Postgres]
) -> None:
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    # PostgreSQL here trusts any password; the point is that it is never echoed.
    uri = fresh_databases().uri.replace("postgres@", "postgres:s3cret-pw@")
    ini = render_ini(uri, kubeconfig).replace("admin_password = ", "# admin_password = ")
    result = run_server(tmp_path, ini)
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(plugin_lines(result)) == 1
    assert "cannot start" in plugin_lines(result)[0] and "password" in plugin_lines(result)[0]
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
