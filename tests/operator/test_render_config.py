"""The rendered auth ini, read back by the two programs that read it in the server:
the plugin's own loader (`[k8s_auth]`) and MLflow's `read_auth_config` (`[mlflow]`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.server.auth.config import read_auth_config

from mlflow_k8s_auth.config import AUTHORIZATION_FUNCTION, ServiceAccountRef, load_config
from mlflow_operator import names
from mlflow_operator.model import ServerRef, SpecError, StoreUris, parse_spec
from mlflow_operator.render import render_auth_ini, render_config_secret
from mlflow_operator.render.config import AUTHORIZATION_FUNCTION as RENDERED_FUNCTION
from tests.operator.test_render import CASES, PROD_URIS

REF = ServerRef("demo", "team-a", "uid-demo")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "auth.ini"
    path.write_text(text)
    return path


@pytest.fixture
def mlflow_reads(monkeypatch: pytest.MonkeyPatch):
    """MLflow's reader, pointed at a file the way the server's env var points it."""

    def read(path: Path):
        monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
        monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
        return read_auth_config()

    return read


def test_authorization_function_is_the_plugins() -> None:
    assert RENDERED_FUNCTION == AUTHORIZATION_FUNCTION


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_case_loads_in_the_plugin_and_in_mlflow(name, tmp_path, mlflow_reads) -> None:
    case = CASES[name]
    spec = parse_spec(case.spec)
    path = _write(tmp_path, render_auth_ini(case.ref, spec, case.uris))
    plugin = load_config(path)
    mlflow = mlflow_reads(path)
    assert plugin.audiences == (names.audience(spec, case.ref),)
    assert mlflow.authorization_function == AUTHORIZATION_FUNCTION
    assert mlflow.default_permission == spec.auth.default_permission
    assert mlflow.admin_username == spec.auth.admin_username
    assert mlflow.admin_password is None  # comes from the admin Secret's env var instead
    expected_db = case.uris.auth_database or names.SQLITE_AUTH_URI
    assert mlflow.database_uri == expected_db


def test_defaults_allow_only_the_own_namespace(tmp_path) -> None:
    config = load_config(_write(tmp_path, render_auth_ini(REF, parse_spec({}), StoreUris())))
    assert config.audiences == ("https://demo.team-a.svc",)
    assert config.namespace_allowed("team-a")
    assert not config.namespace_allowed("team-b")
    assert config.admin_service_accounts == frozenset()
    assert config.namespace_permissions == ()
    assert config.allow_basic_auth is True
    assert config.token_cache_ttl_seconds == 120
    assert config.tokenreview_timeout_seconds == 5
    assert config.permission_cache_ttl_seconds == 30  # on: near-unauthenticated throughput
    assert config.issuers == ()  # not checked locally; the TokenReview decides
    assert config.kubeconfig is None  # in-cluster credentials of the server's ServiceAccount


def test_every_auth_setting_reaches_the_plugin(tmp_path) -> None:
    spec = parse_spec({
        "auth": {
            "audience": "mlflow-prod",
            "allowedNamespaces": ["ml", "team-x"],
            "adminServiceAccounts": ["ml:admin", "ci:deployer"],
            "namespacePermissions": ["team-x:EDIT", "ml:MANAGE"],
            "defaultPermission": "NO_PERMISSIONS",
            "basicAuth": {"enabled": False},
            "tokenCacheTTLSeconds": 30,
            "tokenReviewTimeoutSeconds": 2,
            "permissionCacheTTLSeconds": 10,
            "issuers": ["https://kubernetes.default.svc.cluster.local", "https://oidc.example.com/c1"],
        }
    })
    config = load_config(_write(tmp_path, render_auth_ini(REF, spec, StoreUris())))
    assert config.audiences == ("mlflow-prod",)
    assert config.allowed_namespaces == frozenset({"ml", "team-x"})
    assert config.admin_service_accounts == frozenset(
        {ServiceAccountRef("ml", "admin"), ServiceAccountRef("ci", "deployer")}
    )
    assert dict(config.namespace_permissions) == {"team-x": "EDIT", "ml": "MANAGE"}
    assert config.default_permission == "NO_PERMISSIONS"
    assert config.allow_basic_auth is False
    assert config.token_cache_ttl_seconds == 30
    assert config.tokenreview_timeout_seconds == 2
    assert config.permission_cache_ttl_seconds == 10
    assert config.issuers == ("https://kubernetes.default.svc.cluster.local", "https://oidc.example.com/c1")


def test_permission_cache_can_be_turned_off_and_never_outlives_the_token_cache(tmp_path) -> None:
    off = parse_spec({"auth": {"permissionCacheTTLSeconds": 0}})
    assert load_config(_write(tmp_path, render_auth_ini(REF, off, StoreUris()))).permission_cache_ttl_seconds == 0
    # The plugin would refuse to start with it; the operator says so first, naming both fields.
    with pytest.raises(SpecError, match=r"auth.permissionCacheTTLSeconds \(30\) must not exceed"
                                        r" auth.tokenCacheTTLSeconds \(10\)") as error:
        parse_spec({"auth": {"tokenCacheTTLSeconds": 10, "permissionCacheTTLSeconds": 30}})
    assert error.value.reason == "InvalidCacheTTL"
    # Left unset, it follows a short token cache down instead of making the spec invalid.
    short = parse_spec({"auth": {"tokenCacheTTLSeconds": 10}})
    assert load_config(_write(tmp_path, render_auth_ini(REF, short, StoreUris()))).permission_cache_ttl_seconds == 10
    equal = parse_spec({"auth": {"tokenCacheTTLSeconds": 10, "permissionCacheTTLSeconds": 10}})
    assert load_config(_write(tmp_path, render_auth_ini(REF, equal, StoreUris()))).permission_cache_ttl_seconds == 10


def test_any_namespace(tmp_path) -> None:
    spec = parse_spec({"auth": {"allowedNamespaces": ["*"]}})
    config = load_config(_write(tmp_path, render_auth_ini(REF, spec, StoreUris())))
    assert config.namespace_allowed("anything")


def test_url_encoded_password_survives_mlflows_interpolation(tmp_path, mlflow_reads) -> None:
    spec = parse_spec(CASES["production"].spec)
    path = _write(tmp_path, render_auth_ini(REF, spec, PROD_URIS))
    # '%40' is an '@' inside the password; configparser would treat a bare '%' as the
    # start of an interpolation and fail (or mangle it).
    assert mlflow_reads(path).database_uri == PROD_URIS.auth_database


def test_config_secret_carries_the_store_uris_and_the_ini() -> None:
    spec = parse_spec(CASES["production"].spec)
    secret = render_config_secret(REF, spec, PROD_URIS)
    data = secret["stringData"]
    assert data[names.BACKEND_URI_KEY] == PROD_URIS.backend_store
    assert data[names.AUTH_DB_URI_KEY] == PROD_URIS.auth_database
    assert data[names.AUTH_INI_KEY] == render_auth_ini(REF, spec, PROD_URIS)


def test_missing_uri_for_a_referenced_secret_is_an_error_not_sqlite() -> None:
    spec = parse_spec({"backendStore": {"uriSecretRef": {"name": "db"}}})
    with pytest.raises(ValueError, match="backendStore"):
        render_config_secret(REF, spec, StoreUris())
    spec = parse_spec({"auth": {"authDatabase": {"uriSecretRef": {"name": "db"}}}})
    with pytest.raises(ValueError, match="authDatabase"):
        render_config_secret(REF, spec, StoreUris())
