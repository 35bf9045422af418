"""`spec.auth.tokenValidation`: rendered into the plugin's ini; with `JWKS` the server's
ServiceAccount gets no system:auth-delegator ClusterRoleBinding, and one left from before
is deleted by the real operator on the real API server."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlflow_k8s_auth.config import load_config
from mlflow_operator.model import GeneratedSecrets, ServerRef, SpecError, StoreUris, parse_spec
from mlflow_operator.names import AUTH_INI_KEY
from mlflow_operator.render import render_all, render_auth_ini
from tests.conftest import unique_namespace
from tests.operator.harness import CR, OperatorProcess, chart_operator, rbac_denials, server_manifest, wait_for
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import ApiError, Kube

CRB = "rbac.authorization.k8s.io/v1/clusterrolebindings"
GENERATED = GeneratedSecrets(flask_secret_key="k" * 32, admin_password="p" * 24)
REF = ServerRef("tracking", "ml", "uid-tracking")
MODES = {"JWKSAndTokenReview": "jwks+tokenreview", "TokenReview": "tokenreview", "JWKS": "jwks"}


def _spec(mode: str | None) -> dict[str, Any]:
    return {"auth": {"tokenValidation": mode}} if mode else {}


# ---- render (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [None, *MODES])
def test_the_ini_carries_the_mode_the_plugin_reads(mode: str | None, tmp_path: Path) -> None:
    ini = tmp_path / "auth.ini"
    ini.write_text(render_auth_ini(REF, parse_spec(_spec(mode)), StoreUris()))
    config = load_config(ini)
    assert config.token_validation == MODES[mode or "JWKSAndTokenReview"]


@pytest.mark.parametrize("mode", [None, *MODES])
def test_a_cluster_role_binding_only_when_tokens_are_reviewed(mode: str | None) -> None:
    kinds = [o["kind"] for o in render_all(REF, parse_spec(_spec(mode)), GENERATED)]
    assert kinds.count("ClusterRoleBinding") == (0 if mode == "JWKS" else 1)
    assert kinds.count("ServiceAccount") == 1  # JWKS still runs as its own ServiceAccount


def test_an_unknown_mode_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec("Signature"))
    assert "tokenValidation" in caught.value.message


# ---- the CRD and the real operator on the real API server --------------------------------


def test_the_api_server_defaults_and_checks_the_field(admin: Kube, crd: dict, namespace: str) -> None:
    created = admin.create(CR, server_manifest("defaulted", namespace), namespace)
    assert created["spec"]["auth"]["tokenValidation"] == "JWKSAndTokenReview"
    with pytest.raises(ApiError) as refused:
        admin.create(CR, server_manifest("bogus", namespace, _spec("Signature")), namespace)
    assert refused.value.code == 422
    assert "tokenValidation" in str(refused.value)


@dataclass
class Stack:
    admin: Kube
    ns: str
    operator: OperatorProcess

    def binding(self, name: str) -> dict[str, Any] | None:
        return self.admin.get(CRB, None, f"mlflow-operator:{self.ns}:{name}:auth-delegator")

    def ours(self) -> list[str]:
        """Every ClusterRoleBinding the operator made for this namespace's servers."""
        return sorted(b["metadata"]["name"] for b in self.admin.list(
            CRB, labels=f"mlflow-operator.dev/owner-namespace={self.ns}"))

    def rendered(self, name: str) -> bool:
        return self.admin.get("v1/secrets", self.ns, f"{name}-config") is not None


@pytest.fixture(scope="module")
def stack(admin: Kube, crd: dict, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ns = unique_namespace("tokval")
    admin.create_namespace(ns)
    workdir = tmp_path_factory.mktemp("token-validation")
    with chart_operator(admin, proxy, workdir, [ns], unique_namespace("op-tokval")) as operator:
        yield Stack(admin, ns, operator)
    assert "Traceback" not in operator.log()
    assert rbac_denials(operator.log()) == []


def test_jwks_server_gets_no_cluster_role_binding(stack: Stack) -> None:
    stack.admin.create(CR, server_manifest("signed", stack.ns, _spec("JWKS")), stack.ns)
    stack.admin.create(CR, server_manifest("reviewed", stack.ns), stack.ns)
    wait_for(lambda: stack.rendered("signed") and stack.binding("reviewed") is not None, timeout=60,
             what="both servers rendered")
    assert stack.ours() == [f"mlflow-operator:{stack.ns}:reviewed:auth-delegator"]
    ini = base64.b64decode(stack.admin.get("v1/secrets", stack.ns, "signed-config")["data"][AUTH_INI_KEY]).decode()
    assert "token_validation = jwks\n" in ini


def test_switching_to_jwks_deletes_the_binding_and_back(stack: Stack) -> None:
    stack.admin.create(CR, server_manifest("switch", stack.ns), stack.ns)
    wait_for(lambda: stack.binding("switch") is not None, timeout=60, what="the binding of a reviewing server")
    stack.admin.patch(CR, stack.ns, "switch", {"spec": {"auth": {"tokenValidation": "JWKS"}}})
    wait_for(lambda: stack.binding("switch") is None, timeout=60, what="the binding deleted after the switch")
    stack.admin.patch(CR, stack.ns, "switch", {"spec": {"auth": {"tokenValidation": "TokenReview"}}})
    wait_for(lambda: stack.binding("switch") is not None, timeout=60, what="the binding back")


def test_a_binding_not_ours_is_left_alone(stack: Stack) -> None:
    """A ClusterRoleBinding with the name the operator would use but made by someone else
    (no owner labels) survives a JWKS server of that name."""
    name = f"mlflow-operator:{stack.ns}:foreign:auth-delegator"
    stack.admin.create(CRB, {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "someone", "namespace": stack.ns}]})
    try:
        stack.admin.create(CR, server_manifest("foreign", stack.ns, _spec("JWKS")), stack.ns)
        wait_for(lambda: stack.rendered("foreign"), timeout=60, what="the JWKS server rendered")
        stack.admin.patch(CR, stack.ns, "foreign", {"spec": {"auth": {"tokenCacheTTLSeconds": 60}}})
        wait_for(lambda: (stack.admin.get(CR, stack.ns, "foreign").get("status") or {}).get("observedGeneration") == 2,
                 timeout=60, what="the change handled")
        assert stack.admin.get(CRB, None, name) is not None
    finally:
        stack.admin.delete(CRB, None, name)
