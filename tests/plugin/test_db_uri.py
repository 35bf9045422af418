"""Database URIs with odd passwords, normalized once where the operator reads them, parse
with SQLAlchemy's own `make_url` to what their authors meant; and the real migration
commands (as the migration Job runs them) and `mlflow server --app-name k8s-auth`, given
such a URI of an unreachable PostgreSQL, print no piece of the password."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from mlflow_k8s_auth.db_uri import normalize
from mlflow_operator.model import MLflowServerSpec, StoreUris
from mlflow_operator.render.config import auth_database_uri, backend_store_uri
from tests.support.controlplane import free_port

MLFLOW = Path(sys.executable).with_name("mlflow")

# (as written, user, password, host, port, database, query)
CASES = [
    ("postgresql://u:p@ss@w0rd@db.example:5432/mlflow", "u", "p@ss@w0rd", "db.example", 5432, "mlflow", {}),
    ("postgresql://u:p:a/ss#?@db/mlflow", "u", "p:a/ss#?", "db", None, "mlflow", {}),
    ("postgresql://u:p%40ss@db/mlflow", "u", "p@ss", "db", None, "mlflow", {}),   # already encoded
    ("postgresql://u:50%off@db/mlflow", "u", "50%off", "db", None, "mlflow", {}),  # a literal %
    ("postgresql://u:100%@db/mlflow", "u", "100%", "db", None, "mlflow", {}),
    ("postgresql://u:50%2541@db/mlflow", "u", "50%41", "db", None, "mlflow", {}),  # literal %41, encoded
    ("postgresql://u@db/mlflow", "u", None, "db", None, "mlflow", {}),             # no password
    ("postgresql://u:@db/mlflow", "u", "", "db", None, "mlflow", {}),              # empty password
    ("postgresql://:p@ss@db/mlflow", "", "p@ss", "db", None, "mlflow", {}),        # no user
    ("postgresql://db.example/mlflow", None, None, "db.example", None, "mlflow", {}),  # no userinfo
    ("postgresql://u:p@ss@[2001:db8::1]:5433/mlflow", "u", "p@ss", "2001:db8::1", 5433, "mlflow", {}),
    ("postgresql://u:p@ss?x@db:5432/mlflow?sslmode=require&application_name=a%40b",
     "u", "p@ss?x", "db", 5432, "mlflow", {"sslmode": "require", "application_name": "a@b"}),
    ("mysql+pymysql://u:pa ss@w0rd!@db:3306/mlflow?charset=utf8mb4",
     "u", "pa ss@w0rd!", "db", 3306, "mlflow", {"charset": "utf8mb4"}),
    ("postgresql://me@tenant:p@ss@db.example/mlflow", "me@tenant", "p@ss", "db.example", None, "mlflow", {}),
    ("postgresql://u:pässwörd€@db/mlflow", "u", "pässwörd€", "db", None, "mlflow", {}),
]


@pytest.mark.parametrize(("written", "user", "password", "host", "port", "database", "query"), CASES,
                         ids=[c[0] for c in CASES])
def test_the_normalized_uri_parses_as_meant(written: str, user: str | None, password: str | None, host: str,
                                            port: int | None, database: str, query: dict[str, str]) -> None:
    url = make_url(normalize(written))
    assert (url.username, url.password, url.host, url.port, url.database, dict(url.query)) == \
        (user, password, host, port, database, query)


@pytest.mark.parametrize("written", [c[0] for c in CASES])
def test_normalizing_twice_changes_nothing(written: str) -> None:
    assert normalize(normalize(written)) == normalize(written)


@pytest.mark.parametrize("written", [
    "sqlite:////mlflow/data/mlflow.db",
    "sqlite:////data/team@example/mlflow.db",   # an @ in a path, no userinfo
    "sqlite:///relative/a@b.db",
    "file:///mlflow/mlruns",
    "postgresql://u:plain@db:5432/mlflow?sslmode=require",
    "mssql+pyodbc://u:p%40ss@dsn",
    "not a uri",
])
def test_uris_that_parse_already_are_left_as_they_are(written: str) -> None:
    assert normalize(written) == written


def test_the_operator_renders_normalized_uris() -> None:
    spec = MLflowServerSpec.model_validate({
        "backendStore": {"uriSecretRef": {"name": "db", "key": "uri"}},
        "auth": {"authDatabase": {"uriSecretRef": {"name": "auth-db", "key": "uri"}}}})
    uris = StoreUris(backend_store="postgresql://u:p@ss@db/mlflow", auth_database="postgresql://a:x@y@db/auth")
    assert backend_store_uri(spec, uris) == "postgresql://u:p%40ss@db/mlflow"
    assert auth_database_uri(spec, uris) == "postgresql://a:x%40y@db/auth"


# --- the real migration command ------------------------------------------------------------

PASSWORD = "Qx7v@Zk9w@Hm4t"
PIECES = ("Qx7v", "Zk9w", "Hm4t")


# The migration Job's two steps (render/migration.py), and the server's own start, whose
# backend-store checks run before the plugin is loaded.
COMMANDS = {"tracking": [str(MLFLOW), "db", "upgrade"],
            "auth": [sys.executable, "-m", "mlflow.server.auth", "db", "upgrade", "--url"],
            "server": [str(MLFLOW), "server", "--app-name", "k8s-auth", "--host", "127.0.0.1",
                       "--port", str(free_port()), "--backend-store-uri"]}


def _first_connection_error(command: str, uri: str, tmp_path: Path) -> str:
    """What a command prints up to its first connection error (or its end). MLflow
    retries the tracking store's connection 10 times over ~100 s, printing the same error
    each time: one is enough."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(HOME=str(tmp_path), PGCONNECT_TIMEOUT="3")
    proc = subprocess.Popen([*COMMANDS[command], uri], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=tmp_path, start_new_session=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "will be retried" in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    output = "".join(lines)
    assert "OperationalError" in output, output[-3000:]  # it did try to connect, and failed
    return output


@pytest.mark.parametrize("command", COMMANDS)
def test_migrations_and_server_print_no_piece_of_a_raw_at_password(command: str, tmp_path: Path) -> None:
    written = f"postgresql://mlflow:{PASSWORD}@127.0.0.1:{free_port()}/mlflow"
    raw = _first_connection_error(command, written, tmp_path)
    # Without normalizing, the password's tail is read as a host and shown.
    assert any(piece in raw for piece in PIECES), raw[-3000:]
    output = _first_connection_error(command, normalize(written), tmp_path)
    print("\n" + next(line for line in output.splitlines() if "OperationalError" in line)[:300])
    assert "Connection refused" in output, output[-3000:]  # the host it was meant to reach
    assert not [piece for piece in PIECES if piece in output], output[-3000:]
