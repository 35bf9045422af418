"""`spec.workspaces` and `spec.auth.authorization`: rendered into the server's flags and the
plugin's ini, checked (Kubernetes authorization needs Namespaces, workspaces need a SQL
backend), and the server's ServiceAccount bound to the chart's
mlflow-operator:workspace-server by the real operator on the real API server (deleted when
the mode goes back to None and with the MLflowServer)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlflow_k8s_auth.config import load_config
from mlflow_operator import names
from mlflow_operator.model import GeneratedSecrets, ServerRef, SpecError, StoreUris, parse_spec
from mlflow_operator.render import render_all, render_auth_ini
from mlflow_operator.render.config import config_data
from mlflow_operator.render.deployment import server_args
from tests.conftest import unique_namespace
from tests.operator.harness import CR, OperatorProcess, chart_operator, rbac_denials, server_manifest, wait_for
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import ApiError, Kube

CRB = "rbac.authorization.k8s.io/v1/clusterrolebindings"
GENERATED = GeneratedSecrets(flask_secret_key="k" * 32, admin_password="p" * 24)
REF = ServerRef("tracking", "ml", "uid-tracking")
SELECTOR = {"matchLabels": {"mlflow": "on"},
            "matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]},
                                 {"key": "retired", "operator": "DoesNotExist"}]}
MULTI_TEAM = {"workspaces": {"mode": "Namespaces", "namespaceSelector": SELECTOR},
              "auth": {"authorization": "Kubernetes", "allowedNamespaces": ["*"]}}


# ---- render (pure) ----------------------------------------------------------------------


def test_defaults_render_as_before(tmp_path: Path) -> None:
    spec = parse_spec({})
    assert "--enable-workspaces" not in server_args(REF, spec)
    ini = tmp_path / "auth.ini"
    ini.write_text(render_auth_ini(REF, spec, StoreUris()))
    config = load_config(ini)
    assert (config.workspaces, config.authorization) == ("none", "mlflow")
    assert [o["metadata"]["name"] for o in render_all(REF, spec, GENERATED) if o["kind"] == "ClusterRoleBinding"] \
        == [names.cluster_role_binding_name(REF)]


def test_namespaces_and_kubernetes_authorization_render(tmp_path: Path) -> None:
    spec = parse_spec(MULTI_TEAM)
    args = server_args(REF, spec)
    assert args[args.index("--enable-workspaces") + 1:][:2] == ["--workspace-store-uri", "k8s-namespaces://"]
    ini = tmp_path / "auth.ini"
    ini.write_text(render_auth_ini(REF, spec, StoreUris()))
    config = load_config(ini)  # the plugin's own reader
    assert (config.workspaces, config.authorization) == ("namespaces", "kubernetes")
    assert config.workspace_namespace_selector == "mlflow=on,team in (a,b),!retired"
    bindings = {o["metadata"]["name"]: o for o in render_all(REF, spec, GENERATED) if o["kind"] == "ClusterRoleBinding"}
    workspaces = bindings[names.workspaces_binding_name(REF)]
    assert workspaces["roleRef"]["name"] == "mlflow-operator:workspace-server"
    assert workspaces["subjects"] == [{"kind": "ServiceAccount", "name": names.service_account_name(REF),
                                       "namespace": "ml"}]


def test_jwks_with_kubernetes_authorization_still_gets_subjectaccessreviews() -> None:
    spec = parse_spec({**MULTI_TEAM, "auth": {**MULTI_TEAM["auth"], "tokenValidation": "JWKS"}})
    bindings = [o["metadata"]["name"] for o in render_all(REF, spec, GENERATED) if o["kind"] == "ClusterRoleBinding"]
    assert bindings == [names.workspaces_binding_name(REF)]  # the workspace-server role has SAR create


@pytest.mark.parametrize(("spec", "reason"), [
    ({"auth": {"authorization": "Kubernetes"}}, "InvalidAuthorization"),
    ({"workspaces": {"mode": "Namespaces", "namespaceSelector": {"matchExpressions": [
        {"key": "team", "operator": "In"}]}}}, "InvalidWorkspaces"),
    ({"workspaces": {"mode": "Namespaces", "namespaceSelector": {"matchLabels": {"team": "a b"}}}},
     "InvalidWorkspaces"),
])
def test_bad_specs(spec: dict[str, Any], reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert caught.value.reason == reason


def test_workspaces_need_a_sql_backend() -> None:
    spec = parse_spec({"workspaces": {"mode": "Namespaces"}, "backendStore": {"uriSecretRef": {"name": "db"}}})
    with pytest.raises(SpecError) as caught:
        config_data(REF, spec, StoreUris(backend_store="file:///mlruns"))
    assert caught.value.reason == "WorkspacesNeedSQLBackend"
    config_data(REF, spec, StoreUris(backend_store="postgresql+psycopg2://u@db/mlflow"))


# ---- the CRD and the real operator on the real API server --------------------------------


def test_the_api_server_defaults_and_checks_the_fields(admin: Kube, crd: dict, namespace: str) -> None:
    created = admin.create(CR, server_manifest("defaulted", namespace), namespace)
    assert created["spec"]["workspaces"] == {"mode": "None"}
    assert created["spec"]["auth"]["authorization"] == "MLflow"
    with pytest.raises(ApiError) as refused:
        admin.create(CR, server_manifest("rbac", namespace, {"auth": {"authorization": "Kubernetes"}}), namespace)
    assert refused.value.code == 422 and "requires workspaces.mode Namespaces" in str(refused.value)
    admin.create(CR, server_manifest("teams", namespace, MULTI_TEAM), namespace)


@dataclass
class Stack:
    admin: Kube
    ns: str
    operator: OperatorProcess

    def binding(self, name: str) -> dict[str, Any] | None:
        return self.admin.get(CRB, None, f"mlflow-operator:{self.ns}:{name}:workspaces")

    def status(self, name: str) -> dict[str, Any]:
        return (self.admin.get(CR, self.ns, name) or {}).get("status") or {}


@pytest.fixture(scope="module")
def stack(admin: Kube, crd: dict, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ns = unique_namespace("workspaces")
    admin.create_namespace(ns)
    workdir = tmp_path_factory.mktemp("workspaces")
    with chart_operator(admin, proxy, workdir, [ns], unique_namespace("op-ws")) as operator:
        yield Stack(admin, ns, operator)
    assert "Traceback" not in operator.log()
    assert rbac_denials(operator.log()) == []


def test_the_operator_binds_the_server_and_renders_the_mode(stack: Stack) -> None:
    stack.admin.create(CR, server_manifest("teams", stack.ns, MULTI_TEAM), stack.ns)
    binding = wait_for(lambda: stack.binding("teams"), timeout=60, what="the workspaces binding")
    assert binding["roleRef"]["name"] == "mlflow-operator:workspace-server"
    secret = stack.admin.get("v1/secrets", stack.ns, "teams-config")
    ini = base64.b64decode(secret["data"][names.AUTH_INI_KEY]).decode()
    assert "workspaces = namespaces\n" in ini and "authorization = kubernetes\n" in ini
    # Back to one workspace: the binding goes; deleting the server cleans up the rest.
    stack.admin.patch(CR, stack.ns, "teams", {"spec": {"auth": {"authorization": "MLflow"},
                                                        "workspaces": {"mode": "None"}}})
    wait_for(lambda: stack.binding("teams") is None, timeout=60, what="the binding deleted after the switch")
    stack.admin.patch(CR, stack.ns, "teams", {"spec": {"workspaces": {"mode": "Namespaces"}}})
    wait_for(lambda: stack.binding("teams"), timeout=60, what="the binding back")
    stack.admin.delete(CR, stack.ns, "teams")
    wait_for(lambda: stack.binding("teams") is None, timeout=60, what="the binding deleted with the server")


def test_a_non_sql_backend_is_degraded(stack: Stack) -> None:
    stack.admin.create("v1/secrets", {"metadata": {"name": "files"}, "stringData": {"uri": "file:///mlruns"}},
                       stack.ns)
    stack.admin.create(CR, server_manifest("files", stack.ns, {
        "workspaces": {"mode": "Namespaces"}, "backendStore": {"uriSecretRef": {"name": "files"}}}), stack.ns)

    def degraded() -> dict[str, Any] | None:
        conditions = stack.status("files").get("conditions") or []
        return next((c for c in conditions if c["type"] == "Degraded" and c["status"] == "True"), None)

    condition = wait_for(degraded, timeout=60, what="the Degraded condition")
    assert condition["reason"] == "WorkspacesNeedSQLBackend"
    assert "SQL backend store" in condition["message"] and "file:///" not in condition["message"]


def test_the_multi_team_example_passes_the_api_server_and_the_model(admin: Kube, crd: dict, namespace: str) -> None:
    import yaml

    documents = list(yaml.safe_load_all((Path(__file__).parents[2] / "examples" / "multi-team.yaml").read_text()))
    servers = [d for d in documents if d["kind"] == "MLflowServer"]
    assert len(servers) == 1 and {d["kind"] for d in documents} == {"Namespace", "MLflowServer", "RoleBinding"}
    spec = parse_spec(servers[0]["spec"])
    assert spec.workspaces.enabled and spec.auth.authorization == "Kubernetes"
    body = {**servers[0], "metadata": {"name": "mlflow", "namespace": namespace}}
    created = admin.create(CR, body, namespace)
    assert created["spec"]["workspaces"]["namespaceSelector"]["matchLabels"] == {"mlflow-operator.dev/workspace": "enabled"}


@pytest.mark.parametrize(("server", "reason"), [
    ({"extraArgs": ["--enable-workspaces"]}, "ConflictingServerArgs"),
    ({"extraArgs": ["--workspace-store-uri=sqlite:///w.db"]}, "ConflictingServerArgs"),
    ({"extraEnv": [{"name": "MLFLOW_ENABLE_WORKSPACES", "value": "true"}]}, "ConflictingServerEnv"),
])
def test_workspace_flags_belong_to_the_spec(server: dict[str, Any], reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({"server": server})
    assert caught.value.reason == reason
