"""The CRD file: structural, documented, in agreement with the typed model, and judged by
the real kube-apiserver v1.35 (tests.support.controlplane): it accepts the CRD, applies
its defaults and enforces its schema and CEL rules on MLflowServers created with
server-side dry-run (nothing is stored)."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from mlflow_operator import model, names
from tests.conftest import unique_namespace
from tests.support.crd import ServerCheck, crd_namespace
from tests.support.kubeapi import Kube

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "mlflowservers.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    return _version(crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]


@pytest.fixture(scope="module")
def server(admin: Kube) -> Iterator[ServerCheck]:
    """The CRD installed on the real API server, and a namespace to dry-run objects in."""
    with crd_namespace(admin, unique_namespace("crd")) as check:
        yield check


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version


def _walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for prop, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{prop}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_identity_matches_the_fixed_names(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == f"{names.PLURAL}.{names.GROUP}"
    assert crd["spec"]["group"] == names.GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["kind"] == names.KIND
    assert crd["spec"]["names"]["plural"] == names.PLURAL
    assert crd["spec"]["names"]["shortNames"] == ["mlflow"]
    version = _version(crd)
    assert version["name"] == names.VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns_show_ready_replicas_url_age(crd: dict[str, Any]) -> None:
    columns = {c["name"]: c for c in _version(crd)["additionalPrinterColumns"]}
    assert {"Ready", "Replicas", "URL", "Age"} <= set(columns)
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["URL"]["jsonPath"] == ".status.url"


def test_schema_is_structural(crd: dict[str, Any]) -> None:
    root = _version(crd)["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        open_ = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"
        )
        assert "type" in node or open_, f"{path or '<root>'} has no type"


def test_every_field_is_documented(crd: dict[str, Any]) -> None:
    root = _version(crd)["schema"]["openAPIV3Schema"]
    # Scalar list items and map values are described by their list or map.
    undocumented = [
        path
        for path, node in _walk(root)
        if path
        and not path.startswith(".metadata")
        and not path.endswith("{}")
        and not (path.endswith("[]") and node.get("type") != "object")
        and not node.get("description")
    ]
    assert undocumented == []


# --- agreement with the typed model -------------------------------------------------


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model class, is_list) for a field annotation like `Auth | None` or `list[EnvVar]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found[0] is not None:
                return found
        return None, False
    if origin is list:
        inner, _ = _model_of(typing.get_args(annotation)[0])
        return inner, True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _model_paths(cls: type[BaseModel], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for name, field in cls.model_fields.items():
        alias = field.alias or name
        path = f"{prefix}.{alias}"
        paths.add(path)
        sub, is_list = _model_of(field.annotation)
        if sub is not None:
            paths |= _model_paths(sub, f"{path}[]" if is_list else path)
    return paths


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for prop, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{prop}"
        paths.add(path)
        paths |= _schema_paths(sub, path)
        if isinstance(sub.get("items"), dict):
            paths |= _schema_paths(sub["items"], f"{path}[]")
    return paths


def test_schema_and_model_have_the_same_fields(spec_schema: dict[str, Any]) -> None:
    assert _schema_paths(spec_schema) == _model_paths(model.MLflowServerSpec)


def test_the_api_server_accepts_the_crd(server: ServerCheck) -> None:
    crd = server.admin.get("apiextensions.k8s.io/v1/customresourcedefinitions", None,
                           f"{names.PLURAL}.{names.GROUP}")
    assert crd is not None
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions.get("NonStructuralSchema", "False") == "False"


def test_crd_validates_against_the_kubernetes_schema(crd: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(crd, "1.35.0", strict=True)


def _prune_empty(value: Any) -> Any:
    """Absent, None, [] and {} all mean "not set" for the operator."""
    if isinstance(value, dict):
        pruned = {k: _prune_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_prune_empty(v) for v in value]
    return value


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"auth": {}},
        {"auth": {"basicAuth": {"existingAdminSecret": "mine"}, "allowedNamespaces": ["*"]}},
        {"backendStore": {"uriSecretRef": {"name": "db"}}},
        {"auth": {"authDatabase": {"uriSecretRef": {"name": "db", "key": "auth"}}}},
        {"ingress": {"enabled": True, "host": "mlflow.example.com", "tls": {"secretName": "t"}}},
        {"resources": {"requests": {"cpu": "1"}}},
        {"server": {"extraEnv": [{"name": "A", "value": "b"}]}, "tolerations": [{"key": "k"}]},
    ],
)
def test_api_server_defaults_equal_model_defaults(server: ServerCheck, spec: dict) -> None:
    stored, errors = server.create(spec)
    assert errors == [] and stored is not None
    by_model = model.parse_spec(spec).model_dump(by_alias=True, exclude_none=True)
    assert _prune_empty(stored["spec"]) == _prune_empty(by_model)


def test_an_absent_spec_is_defaulted_too(server: ServerCheck) -> None:
    stored, errors = server.create(None, body={"apiVersion": names.API_VERSION, "kind": names.KIND,
                                               "metadata": {"name": "demo"}})
    assert errors == [] and stored is not None
    assert stored["spec"]["replicas"] == 1 and stored["spec"]["auth"]["tokenCacheTTLSeconds"] == 120


def _enum_paths(schema: dict[str, Any]) -> dict[str, list[Any]]:
    return {path: node["enum"] for path, node in _walk(schema) if "enum" in node}


def test_schema_enums_equal_model_literals(spec_schema: dict[str, Any]) -> None:
    enums = _enum_paths(spec_schema)
    assert enums  # the walk found them
    for path, values in enums.items():
        fields = path.strip(".").replace("[]", "").split(".")
        cls: type[BaseModel] = model.MLflowServerSpec
        for part in fields[:-1]:
            field = next(f for n, f in cls.model_fields.items() if (f.alias or n) == part)
            cls = _model_of(field.annotation)[0]  # type: ignore[assignment]
        field = next(f for n, f in cls.model_fields.items() if (f.alias or n) == fields[-1])
        assert set(values) == _literal_values(field.annotation), path


def _literal_values(annotation: Any) -> set[Any]:
    """Values of a Literal, also inside `Literal[...] | None`."""
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    values: set[Any] = set()
    for arg in typing.get_args(annotation):
        values |= _literal_values(arg)
    return values


def test_default_permission_enum_is_the_plugins_permission_list(
    spec_schema: dict[str, Any],
) -> None:
    enum = spec_schema["properties"]["auth"]["properties"]["defaultPermission"]["enum"]
    assert tuple(enum) == model.PERMISSIONS


# --- CEL rules (x-kubernetes-validations), enforced by the API server -------------------

EXTERNAL_DBS = {
    "backendStore": {"uriSecretRef": {"name": "db"}},
    "auth": {"authDatabase": {"uriSecretRef": {"name": "db"}}},
}
NEEDS_BACKEND = ("spec.backendStore: Invalid value: replicas > 1 requires backendStore.uriSecretRef "
                 "(an external database); sqlite on a volume cannot be shared by several pods")
NEEDS_AUTH_DB = ("spec.auth: Invalid value: replicas > 1 requires auth.authDatabase (an external "
                 "database for users and permissions)")
NEEDS_SHARED = ("spec.storage.accessMode: Invalid value: replicas > 1 with artifacts on the volume "
                "requires storage.accessMode ReadWriteMany, or set artifacts.destination")
NEEDS_DEST = "spec.artifacts: Invalid value: artifacts.proxied=false requires artifacts.destination"
TLS_HOST = "spec.ingress: Invalid value: ingress.tls requires ingress.host"
ENABLED_HOST = "spec.ingress: Invalid value: ingress.enabled requires ingress.host"
CACHE_TTL = ("spec.auth.permissionCacheTTLSeconds: Invalid value: auth.permissionCacheTTLSeconds must "
             "not exceed auth.tokenCacheTTLSeconds; lower it too")
TWICE = ("spec.auth.namespacePermissions: Invalid value: auth.namespacePermissions lists a"
         " namespace twice; give each namespace one permission")
RBAC_NEEDS_WORKSPACES = ("spec.auth.authorization: Invalid value: auth.authorization Kubernetes requires"
                         " workspaces.mode Namespaces (RBAC is checked in the namespace of the workspace)")

CEL_CASES = [
    ({}, []),
    ({"replicas": 0}, []),
    ({"replicas": 2}, [NEEDS_BACKEND, NEEDS_AUTH_DB, NEEDS_SHARED]),
    ({"replicas": 2, "backendStore": EXTERNAL_DBS["backendStore"]}, [NEEDS_AUTH_DB, NEEDS_SHARED]),
    ({"replicas": 2, **EXTERNAL_DBS}, [NEEDS_SHARED]),
    ({"replicas": 2, **EXTERNAL_DBS, "artifacts": {"destination": "s3://b"}}, []),
    ({"replicas": 2, **EXTERNAL_DBS, "storage": {"accessMode": "ReadWriteMany"}}, []),
    ({"artifacts": {"proxied": False}}, [NEEDS_DEST]),
    ({"artifacts": {"proxied": False, "destination": "gs://b/p"}}, []),
    ({"ingress": {"tls": {"secretName": "t"}}}, [TLS_HOST]),
    ({"ingress": {"enabled": True}}, [ENABLED_HOST]),
    ({"ingress": {"enabled": True, "tls": {"secretName": "t"}}}, [TLS_HOST, ENABLED_HOST]),
    ({"ingress": {"enabled": True, "host": "a.example.com", "tls": {"secretName": "t"}}}, []),
    ({"ingress": {"enabled": False, "host": "a.example.com"}}, []),
    ({"auth": {"tokenCacheTTLSeconds": 10}}, []),  # the unset permission cache follows it down
    ({"auth": {"tokenCacheTTLSeconds": 10, "permissionCacheTTLSeconds": 30}}, [CACHE_TTL]),
    ({"auth": {"tokenCacheTTLSeconds": 10, "permissionCacheTTLSeconds": 10}}, []),
    ({"auth": {"tokenCacheTTLSeconds": 10, "permissionCacheTTLSeconds": 0}}, []),
    ({"auth": {"permissionCacheTTLSeconds": 121}}, [CACHE_TTL]),  # against the default 120
    ({"auth": {"permissionCacheTTLSeconds": 120}}, []),
    ({"auth": {"namespacePermissions": ["a:READ", "b:EDIT", "a:EDIT"]}}, [TWICE]),
    ({"auth": {"namespacePermissions": ["a:READ", "ab:EDIT", "b:READ"]}}, []),
    ({"auth": {"authorization": "Kubernetes"}}, [RBAC_NEEDS_WORKSPACES]),
    ({"auth": {"authorization": "Kubernetes"}, "workspaces": {"mode": "None"}}, [RBAC_NEEDS_WORKSPACES]),
    ({"auth": {"authorization": "Kubernetes"}, "workspaces": {"mode": "Namespaces"}}, []),
    ({"workspaces": {"mode": "Namespaces", "namespaceSelector": {"matchLabels": {"team": "a"}}}}, []),
]


@pytest.mark.parametrize(("spec", "expected"), CEL_CASES)
def test_cel_rules_are_enforced_and_agree_with_the_model(
        server: ServerCheck, spec: dict[str, Any], expected: list[str]) -> None:
    _, errors = server.create(spec)
    assert sorted(errors) == sorted(expected)
    try:
        model.parse_spec(spec)
        model_rejects = None
    except model.SpecError as error:
        model_rejects = error.message
    assert bool(errors) == bool(model_rejects), (errors, model_rejects)


def _rules(schema: dict[str, Any]):
    yield from schema.get("x-kubernetes-validations", [])
    for sub in schema.get("properties", {}).values():
        yield from _rules(sub)


def _rule_nodes(schema: dict[str, Any]):
    for rule in schema.get("x-kubernetes-validations", []):
        yield schema, rule["rule"]
    for sub in schema.get("properties", {}).values():
        yield from _rule_nodes(sub)


def test_cel_fallbacks_are_the_schema_defaults(crd: dict[str, Any]) -> None:
    """`self.?f.orValue(d)` only matters where f is not defaulted yet (the API server's
    check of a `default: {}`); d must still be f's default, or that check lies."""
    fallbacks = 0
    for node, rule in _rule_nodes(_version(crd)["schema"]["openAPIV3Schema"]):
        for path, value in re.findall(r"self\.\?([\w.?]+?)\.orValue\(([^)]*)\)", rule):
            field = node
            for part in path.split(".?"):
                field = field["properties"][part]
            assert field["default"] == yaml.safe_load(value), (rule, path)
            fallbacks += 1
    assert fallbacks >= 5


def test_every_cel_rule_has_a_rejected_case(crd: dict[str, Any]) -> None:
    messages = {r["message"] for r in _rules(_version(crd)["schema"]["openAPIV3Schema"])}
    rejected = " ".join(e for _, expected in CEL_CASES for e in expected)
    assert [m for m in messages if m not in rejected] == []


@pytest.mark.parametrize("example", ["minimal.yaml", "production.yaml"])
def test_examples_pass_the_api_server_and_the_model(server: ServerCheck, example: str) -> None:
    body = yaml.safe_load((CRD_PATH.parents[1] / "examples" / example).read_text())
    assert body["apiVersion"] == names.API_VERSION and body["kind"] == names.KIND
    del body["metadata"]["namespace"]  # dry-run in the test's namespace
    assert server.create(None, body=body)[1] == []
    model.parse_spec(body["spec"])
