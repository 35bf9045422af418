"""Fixtures for the plugin tests: the real control plane seen through a fault proxy
(tests.plugin.cluster), real `mlflow server --app-name k8s-auth` processes, fresh
PostgreSQL databases.

Servers are started once per module (they take several seconds each) and write their
stdout/stderr to a file so tests can assert that no token text ever reaches the log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.plugin.cluster import AUDIENCE, PluginCluster
from tests.support.controlplane import ControlPlane
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import Kube
from tests.support.postgres import Database as Postgres
from tests.support.postgres import create_database

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-password-1234"
__all__ = ["AUDIENCE", "ADMIN_PASSWORD", "ADMIN_USER", "MlflowServer", "Postgres", "free_port", "render_ini"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render_ini(database_uri: str, kube_config: Path | str, **k8s_auth: object) -> str:
    settings = {"audiences": AUDIENCE, "allowed_namespaces": "*", "kubeconfig": str(kube_config), **k8s_auth}
    lines = "\n".join(f"{key} = {value}" for key, value in settings.items())
    return textwrap.dedent(f"""\
        [mlflow]
        default_permission = READ
        database_uri = {database_uri}
        admin_username = {ADMIN_USER}
        admin_password = {ADMIN_PASSWORD}
        authorization_function = mlflow_k8s_auth.authn:authenticate_request

        [k8s_auth]
        """) + lines + "\n"


@dataclass
class MlflowServer:
    """One real `mlflow server --app-name k8s-auth` process (uvicorn)."""

    workdir: Path
    ini: str
    backend_uri: str
    workers: int = 1
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.port}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server", "--app-name", "k8s-auth",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
            "--backend-store-uri", self.backend_uri,
            "--artifacts-destination", str(self.workdir / "artifacts"),
            *self.extra_args,
        ]

    def env(self) -> dict[str, str]:
        ini_path = self.workdir / f"auth-{self.port}.ini"
        ini_path.write_text(self.ini)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KUBECONFIG"))}
        env.update({
            "MLFLOW_AUTH_CONFIG_PATH": str(ini_path),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def start(self, timeout: float = 90) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not become healthy:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # The server and its uvicorn workers share the session this process leads.
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane, admin: Kube) -> Iterator[PluginCluster]:
    """Namespaces, ServiceAccounts and a fault proxy for one module; all removed after it."""
    proxy = FaultProxy(control_plane.url, control_plane.ca_file, control_plane.pki).start()
    state = PluginCluster(admin, control_plane, proxy)
    try:
        yield state
    finally:
        state.close()


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("plugin")


@pytest.fixture(scope="module")
def fresh_databases() -> Iterator[Callable[[], Postgres]]:
    """Factory for fresh PostgreSQL databases, dropped when the module ends."""
    created: list[Postgres] = []

    def make() -> Postgres:
        database = create_database("plugin")
        created.append(database)
        return database

    yield make
    for database in created:
        database.drop()
