"""The multi-tenancy settings of the ini, MLflow's workspace-name rules as the provider
applies them, and a server whose flags do not match its ini (one line, exit code 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlflow_k8s_auth.config import ConfigError, parse_config
from mlflow_k8s_auth.workspaces import usable_name
from tests.plugin.conftest import free_port, render_ini
from tests.plugin.test_bad_config import plugin_lines


def run_server(tmp_path: Path, ini: str, flags: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KUBECONFIG"))}
    (tmp_path / "auth.ini").write_text(ini)
    env.update({"MLFLOW_FLASK_SERVER_SECRET_KEY": "k", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini")})
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "k8s-auth", "--port", str(free_port()),
               "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--workers", "1", *flags]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def config(**settings: object):  # type: ignore[no-untyped-def]
    return parse_config(render_ini("sqlite:///auth.db", "/kubeconfig", **settings))


def test_defaults_are_todays_behaviour() -> None:
    parsed = config()
    assert (parsed.workspaces, parsed.authorization, parsed.attribute_runs) == ("none", "mlflow", True)
    assert parsed.workspace_namespace_selector is None
    assert (parsed.authorization_allow_ttl_seconds, parsed.authorization_deny_ttl_seconds) == (30, 5)


def test_namespaces_with_kubernetes_authorization() -> None:
    parsed = config(workspaces="Namespaces", authorization="kubernetes", workspace_namespace_selector="team in (a, b)",
                    authorization_allow_ttl_seconds=10, authorization_deny_ttl_seconds=0, attribute_runs="false")
    assert (parsed.workspaces, parsed.authorization) == ("namespaces", "kubernetes")
    assert parsed.workspace_namespace_selector == "team in (a, b)"
    assert (parsed.authorization_allow_ttl_seconds, parsed.authorization_deny_ttl_seconds) == (10, 0)
    assert parsed.attribute_runs is False


@pytest.mark.parametrize(("settings", "message"), [
    ({"workspaces": "labels"}, "workspaces must be one of none | namespaces"),
    ({"authorization": "rbac"}, "authorization must be one of mlflow | kubernetes"),
    ({"authorization": "kubernetes"}, "authorization = kubernetes needs workspaces = namespaces"),
    ({"workspace_namespace_selector": "a=b"}, "workspace_namespace_selector needs workspaces = namespaces"),
    ({"workspaces": "namespaces", "authorization_deny_ttl_seconds": "-1"}, "authorization_deny_ttl_seconds must be >= 0"),
    ({"attribute_runs": "maybe"}, "attribute_runs must be true or false"),
])
def test_bad_settings(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("|", r"\|").replace("(", r"\(")):
        config(**settings)


@pytest.mark.parametrize(("name", "usable"), [
    ("a", False),  # MLflow: 2-63 characters
    ("ab", True), ("team-a", True), ("default", True), ("x" * 63, True), ("x" * 64, False),
    ("api", False), ("workspaces", False), ("-a", False), ("A", False),
])
def test_workspace_names_follow_mlflows_rules(name: str, usable: bool) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.store.workspace.abstract_store import WorkspaceNameValidator

    assert usable_name(name) is usable
    try:
        WorkspaceNameValidator.validate(name)
        accepted = True
    except MlflowException:
        accepted = False
    assert accepted is usable  # the same rule as MLflow's own validator


@pytest.mark.parametrize("flags", [[], ["--enable-workspaces"]])
def test_namespaces_mode_needs_the_server_flags(tmp_path: Path, flags: list[str]) -> None:
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    ini = render_ini(f"sqlite:///{tmp_path}/auth.db", kubeconfig, workspaces="namespaces")
    result = run_server(tmp_path, ini, flags)
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(plugin_lines(result)) == 1
    assert "--enable-workspaces --workspace-store-uri k8s-namespaces://" in plugin_lines(result)[0]
    assert "Traceback" not in result.stderr
