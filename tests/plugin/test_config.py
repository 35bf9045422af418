"""`load_config`: the ini an admin (or the operator) writes is accepted or refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_k8s_auth.config import AUTHORIZATION_FUNCTION, ConfigError, ServiceAccountRef, load_config

MLFLOW = f"""[mlflow]
default_permission = READ
database_uri = sqlite:///auth.db
admin_username = admin
authorization_function = {AUTHORIZATION_FUNCTION}
"""


def write(tmp_path: Path, k8s: str, mlflow: str = MLFLOW) -> Path:
    path = tmp_path / "auth.ini"
    path.write_text(mlflow + "\n[k8s_auth]\n" + k8s)
    return path


def test_full_config_is_parsed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
audiences = mlflow, mlflow-b ,mlflow
allowed_namespaces = team-a, team-b
admin_service_accounts = ops:deployer
namespace_permissions = team-a:edit, team-b:READ
token_cache_ttl_seconds = 60
negative_cache_ttl_seconds = 2
cache_max_entries = 50
tokenreview_timeout_seconds = 0.5
allow_basic_auth = false
kubeconfig = /tmp/kc
"""))
    assert config.audiences == ("mlflow", "mlflow-b")
    assert config.namespace_allowed("team-a") and not config.namespace_allowed("team-c")
    assert config.admin_service_accounts == frozenset({ServiceAccountRef("ops", "deployer")})
    assert config.permission_for("team-a") == "EDIT"
    assert config.permission_for("team-c") is None
    assert config.token_cache_ttl_seconds == 60
    assert config.cache_max_entries == 50
    assert config.tokenreview_timeout_seconds == 0.5
    assert config.allow_basic_auth is False
    assert config.kubeconfig == "/tmp/kc"
    assert config.database_uri == "sqlite:///auth.db"


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "audiences = mlflow\n"))
    assert config.allowed_namespaces == frozenset()
    assert not config.namespace_allowed("default")
    assert config.token_cache_ttl_seconds == 120
    assert config.negative_cache_ttl_seconds == 5
    assert config.cache_max_entries == 10000
    assert config.tokenreview_timeout_seconds == 5
    assert config.allow_basic_auth is True
    assert config.kubeconfig is None
    assert config.permission_cache_ttl_seconds == 30  # kept fresh by the change counter
    assert config.revocation_check_interval_seconds == 0.3


def test_token_cache_ttl_zero_turns_the_positive_cache_off_and_lowers_the_permission_default(
        tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "audiences = a\ntoken_cache_ttl_seconds = 0\n"))
    assert config.token_cache_ttl_seconds == 0
    assert config.permission_cache_ttl_seconds == 0
    config = load_config(write(tmp_path, "audiences = a\ntoken_cache_ttl_seconds = 10\n"))
    assert config.permission_cache_ttl_seconds == 10


def test_star_allows_any_namespace(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "audiences = a\nallowed_namespaces = *\n"))
    assert config.namespace_allowed("anything")


@pytest.mark.parametrize(
    ("k8s", "message"),
    [
        ("", "audiences is required"),
        ("audiences = ,\n", "audiences is required"),
        ("audiences = a\ntoken_cache_ttl_seconds = soon\n", "token_cache_ttl_seconds must be a number"),
        ("audiences = a\ntoken_cache_ttl_seconds = -1\n", "token_cache_ttl_seconds must be >= 0"),
        ("audiences = a\ntoken_cache_ttl_seconds = nan\n", "token_cache_ttl_seconds must be >= 0"),
        ("audiences = a\nrevocation_check_interval_seconds = 0\n", "revocation_check_interval_seconds must be > 0"),
        ("audiences = a\nnegative_cache_ttl_seconds = -1\n", "negative_cache_ttl_seconds must be >= 0"),
        ("audiences = a\ncache_max_entries = 1.5\n", "cache_max_entries must be an integer"),
        ("audiences = a\ncache_max_entries = 0\n", "cache_max_entries must be >= 1"),
        ("audiences = a\ntokenreview_timeout_seconds = 0\n", "tokenreview_timeout_seconds must be > 0"),
        ("audiences = a\nallow_basic_auth = maybe\n", "allow_basic_auth must be true or false"),
        ("audiences = a\nallowed_namespaces = Team_A\n", "not a valid namespace name"),
        ("audiences = a\nadmin_service_accounts = ops\n", "must look like namespace:value"),
        ("audiences = a\nadmin_service_accounts = ops:Bad_Name\n", "not a valid ServiceAccount name"),
        ("audiences = a\nnamespace_permissions = team:OWNER\n", "'OWNER' is not one of"),
        ("audiences = a\nnamespace_permissions = t:READ,t:EDIT\n", "listed twice"),
        ("audiences = a\naudience = b\n", "unknown key(s): audience"),
        ("audiences = a\npermission_cache_ttl_seconds = 500\n", "must not exceed"),
    ],
)
def test_bad_values_give_one_clear_message(tmp_path: Path, k8s: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, k8s))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("mlflow", "message"),
    [
        ("", "no [mlflow] section"),
        ("[mlflow]\nauthorization_function = " + AUTHORIZATION_FUNCTION + "\n", "database_uri is required"),
        ("[mlflow]\ndatabase_uri = sqlite://\n", "authorization_function must be"),
        (
            "[mlflow]\ndatabase_uri = sqlite://\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
            "authorization_function must be",
        ),
        (MLFLOW.replace("READ", "ALL"), "default_permission must be one of"),
    ],
)
def test_mlflow_section_is_checked(tmp_path: Path, mlflow: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r".*") as info:
        load_config(write(tmp_path, "audiences = a\n", mlflow=mlflow))
    assert message in str(info.value)


def test_missing_section_file_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "only-mlflow.ini"
    path.write_text(MLFLOW)
    with pytest.raises(ConfigError, match=r"no \[k8s_auth\] section"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read auth config"):
        load_config(tmp_path / "absent.ini")
    garbage = tmp_path / "garbage.ini"
    garbage.write_text("this is not = an ini\n[[[")
    with pytest.raises(ConfigError, match="not a valid ini file"):
        load_config(garbage)
    binary = tmp_path / "binary.ini"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="not a valid ini file"):
        load_config(binary)


def test_percent_escapes_match_mlflows_reader(tmp_path: Path) -> None:
    escaped = MLFLOW.replace("sqlite:///auth.db", "postgresql://u:p%%40ss@db/auth")
    assert load_config(write(tmp_path, "audiences = a\n", mlflow=escaped)).database_uri == "postgresql://u:p%40ss@db/auth"
    bare = MLFLOW.replace("sqlite:///auth.db", "postgresql://u:p%40ss@db/auth")
    with pytest.raises(ConfigError, match=r"\[mlflow\] database_uri: a literal '%' must be written as '%%'"):
        load_config(write(tmp_path, "audiences = a\n", mlflow=bare))
