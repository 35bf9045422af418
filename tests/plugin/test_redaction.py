"""Database passwords never show, however oddly the URI is written: the real driver's
errors through `redact`, and real `mlflow server --app-name k8s-auth` processes whose auth
database URI is unreachable, names a missing driver, or fails its migration."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy

from mlflow_k8s_auth.redact import redact
from tests.plugin.conftest import Postgres, free_port, render_ini
from tests.support.postgres import HOST, PORT, USER

# Each piece between the characters that end or split a URI's userinfo is distinctive, so
# "no piece in the output" is a plain substring check.
PASSWORDS = [
    "Pw1@Qx2",                  # raw @: parsers take "Qx2@host" as the host
    "Pw1@Qx2/Zz3#Yy4?Ww5",      # raw @ then path, fragment and query characters
    "Pw1%40Qx2%3AZz3",          # percent-encoded @ and :
    "Pw1:Qx2:Zz3",              # raw :
    "Pw1/Qx2",                  # raw /
    "Pw1#Qx2",                  # raw #
    "Pw1?Qx2",                  # raw ?
    "Pw1@Qx2@Zz3%2FYy4",        # two raw @ and an encoded /
]


def pieces(password: str) -> list[str]:
    return [p for p in re.split(r"%[0-9A-F]{2}|[@:/#?]", password) if p]


def closed_port() -> int:
    """A local port nobody listens on (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def assert_no_piece(text: str, password: str) -> None:
    shown = [p for p in pieces(password) if p in text]
    assert not shown, f"password pieces {shown} in:\n{text[-3000:]}"


@pytest.mark.parametrize("password", PASSWORDS)
def test_real_driver_errors_redacted(password: str, fresh_databases: Callable[[], Postgres]) -> None:
    """psycopg's own answers to each odd form: unresolvable host, refused port, missing database."""
    db = fresh_databases()
    targets = [f"{HOST}:{closed_port()}/{db.name}", f"{HOST}:{PORT}/{db.name}_missing", "nohost.invalid/x"]
    for target in targets:
        uri = f"postgresql://{USER}:{password}@{target}"
        engine = sqlalchemy.create_engine(uri)
        with pytest.raises(sqlalchemy.exc.SQLAlchemyError) as caught:
            with engine.connect():
                pass
        engine.dispose()
        text = f"{caught.value!s} {caught.value!r} {uri}"
        assert_no_piece(redact(text, [uri]), password)


def test_redact_keeps_ordinary_text() -> None:
    uri = "postgresql://u:ss@db.example/x"
    assert redact("class ss@db.example failed", [uri]) == "class ***@db.example failed"
    assert redact("connecting to mysql://bob:Pw1@Qx2@h/x and sqlite:///a.db", []) == (
        "connecting to mysql://bob:***@h/x and sqlite:///a.db")


# ---- real servers ---------------------------------------------------------------------


def run_server(workdir: Path, auth_uri: str, timeout: float = 330) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = workdir / "kc"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    ini = render_ini(auth_uri.replace("%", "%%"), kubeconfig)  # '%' is written '%%' in the ini
    (workdir / "auth.ini").write_text(ini)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KUBECONFIG"))}
    env.update({"MLFLOW_AUTH_CONFIG_PATH": str(workdir / "auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "k8s-auth", "--port", str(free_port()),
               "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db", "--workers", "1"]
    # Its own session: a server that unexpectedly starts is killed with its uvicorn workers.
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the server did not stop within {timeout} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def assert_one_clean_line(result: subprocess.CompletedProcess[str], password: str, expected: str) -> str:
    output = result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("mlflow-k8s-auth:")]
    assert result.returncode == 1, output[-3000:]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith("mlflow-k8s-auth: cannot start: ") and expected in lines[0], lines[0]
    assert "Traceback" not in output
    assert "Uvicorn running" not in output
    assert_no_piece(output, password)
    return lines[0]


# Between them: raw @ / # ? :, and %40 %3A %2F.
SERVER_PASSWORDS = ["Pw1@Qx2/Zz3#Yy4?Ww5", "Pw1%40Qx2%3AZz3", "Pw1:Qx2:Zz3", "Pw1@Qx2@Zz3%2FYy4"]


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_unreachable_auth_database(tmp_path: Path) -> None:
    """MLflow retries the engine for about 100 s, logging each driver error: all in parallel."""
    port = closed_port()
    forms = {password: f"postgresql://{USER}:{password}@{HOST}:{port}/auth" for password in SERVER_PASSWORDS}
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(forms)) as pool:
        results = dict(zip(forms, pool.map(
            lambda item: run_server(tmp_path / str(abs(hash(item[0]))), item[1]), forms.items())))
    print(f"{len(forms)} servers gave up after {time.monotonic() - started:.0f} s")
    for password, result in results.items():
        line = assert_one_clean_line(result, password, "")
        print(line)
        # What the driver said is kept, with the password's pieces masked.
        assert "resolve host" in line or "Connection refused" in line or "connection" in line, line
        assert "SQLAlchemy engine could not be created" in result.stderr  # MLflow's retries, redacted


def test_missing_driver(tmp_path: Path) -> None:
    password = "Pw1@Qx2/Zz3#Yy4?Ww5"
    result = run_server(tmp_path, f"postgresql+nodriver://{USER}:{password}@{HOST}:{PORT}/auth")
    assert_one_clean_line(result, password, "nodriver")


def test_migration_error(tmp_path: Path, fresh_databases: Callable[[], Postgres]) -> None:
    """A reachable database (the test server trusts any password) whose auth schema is at a
    revision MLflow does not know: the migration fails."""
    db = fresh_databases()
    db.query("CREATE TABLE alembic_version_auth (version_num varchar(32) PRIMARY KEY); "
             "INSERT INTO alembic_version_auth VALUES ('0123456789ab') RETURNING version_num")
    password = "Pw1%40Qx2%3AZz3%2FYy4"
    result = run_server(tmp_path, f"postgresql://{USER}:{password}@{HOST}:{PORT}/{db.name}")
    assert_one_clean_line(result, password, "")


def test_worker_losing_the_auth_database(tmp_path: Path) -> None:
    """The database answered the `mlflow server` command but is gone when a worker opens it
    (`_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED` set, as the command sets it for its workers): MLflow's
    retry warnings in the worker are redacted too."""
    password = "Pw1@Qx2/Zz3#Yy4?Ww5"
    uri = f"postgresql://{USER}:{password}@{HOST}:{closed_port()}/auth"
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    (tmp_path / "auth.ini").write_text(render_ini(uri, kubeconfig))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KUBECONFIG"))}
    env.update({"MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED": "true"})
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "k8s-auth", "--port", str(free_port()),
               "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--workers", "1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while log.read_text(errors="replace").count("SQLAlchemy engine could not be created") < 3:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker sleeps between retries: no clean stop
        proc.wait(30)
    text = log.read_text(errors="replace")
    assert "failed to resolve host '***'" in text  # the driver's error, its password piece masked
    assert_no_piece(text, password)
