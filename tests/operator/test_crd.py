"""The CRD file: structural, documented, and in agreement with the typed model."""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from mlflow_operator import model, names

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "mlflowservers.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    return _version(crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]


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


def _apply_schema_defaults(schema: dict[str, Any], value: Any) -> Any:
    """What the API server does: fill absent fields with `default`, recursively."""
    if isinstance(value, dict) and "properties" in schema:
        for prop, sub in schema["properties"].items():
            if prop not in value and "default" in sub:
                value[prop] = copy.deepcopy(sub["default"])
            if prop in value:
                value[prop] = _apply_schema_defaults(sub, value[prop])
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_apply_schema_defaults(schema["items"], v) for v in value]
    return value


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
def test_schema_defaults_equal_model_defaults(spec_schema: dict[str, Any], spec: dict) -> None:
    by_api_server = _apply_schema_defaults(spec_schema, copy.deepcopy(spec))
    by_model = model.parse_spec(spec).model_dump(by_alias=True, exclude_none=True)
    assert _prune_empty(by_api_server) == _prune_empty(by_model)


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


# --- CEL rules (x-kubernetes-validations) ----------------------------------------------


def _rules(schema: dict[str, Any], path: tuple[str, ...] = ()):
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for prop, sub in schema.get("properties", {}).items():
        yield from _rules(sub, (*path, prop))


def _cel_failures(root_schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Evaluate every rule on its node, as the API server does after defaulting."""
    import celpy

    env = celpy.Environment()
    failures = []
    for path, rule in _rules(root_schema):
        node: Any = obj
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            continue  # rules of absent objects do not run
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(node)}):
            failures.append(rule["message"])
    return failures


EXTERNAL_DBS = {
    "backendStore": {"uriSecretRef": {"name": "db"}},
    "auth": {"authDatabase": {"uriSecretRef": {"name": "db"}}},
}


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("demo", {}),
        ("demo", {"replicas": 2}),
        ("demo", {"replicas": 2, "backendStore": EXTERNAL_DBS["backendStore"]}),
        ("demo", {"replicas": 2, **EXTERNAL_DBS}),
        ("demo", {"replicas": 2, **EXTERNAL_DBS, "artifacts": {"destination": "s3://b"}}),
        ("demo", {"replicas": 2, **EXTERNAL_DBS, "storage": {"accessMode": "ReadWriteMany"}}),
        ("demo", {"artifacts": {"proxied": False}}),
        ("demo", {"artifacts": {"proxied": False, "destination": "gs://b/p"}}),
        ("demo", {"ingress": {"tls": {"secretName": "t"}}}),
        ("demo", {"ingress": {"enabled": True}}),
        ("demo", {"ingress": {"enabled": True, "host": "a.example.com", "tls": {"secretName": "t"}}}),
        ("demo", {"auth": {"tokenCacheTTLSeconds": 10}}),  # the unset permission cache follows it down
        ("demo", {"auth": {"tokenCacheTTLSeconds": 10, "permissionCacheTTLSeconds": 30}}),
        ("demo", {"auth": {"tokenCacheTTLSeconds": 10, "permissionCacheTTLSeconds": 10}}),
        ("demo", {"auth": {"tokenCacheTTLSeconds": 10, "permissionCacheTTLSeconds": 0}}),
        ("demo", {"auth": {"permissionCacheTTLSeconds": 121}}),
    ],
)
def test_cel_rules_accept_exactly_what_the_model_accepts(
    crd: dict[str, Any], name: str, spec: dict[str, Any]
) -> None:
    root = _version(crd)["schema"]["openAPIV3Schema"]
    obj = _apply_schema_defaults(
        root, {"metadata": {"name": name, "namespace": "ns"}, "spec": copy.deepcopy(spec)}
    )
    api_server_rejects = _cel_failures(root, obj)
    try:
        names.validate_ref(model.ServerRef(name, "ns", "uid"))
        model.parse_spec(spec)
        model_rejects = None
    except model.SpecError as error:
        model_rejects = error.message
    assert bool(api_server_rejects) == bool(model_rejects), (api_server_rejects, model_rejects)


def test_crd_validates_against_the_kubernetes_schema(crd: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(crd, "1.35.0", strict=True)


@pytest.mark.parametrize("example", ["minimal.yaml", "production.yaml"])
def test_examples_pass_the_crd_rules_and_the_model(crd: dict[str, Any], example: str) -> None:
    body = yaml.safe_load((CRD_PATH.parents[1] / "examples" / example).read_text())
    root = _version(crd)["schema"]["openAPIV3Schema"]
    assert body["apiVersion"] == names.API_VERSION and body["kind"] == names.KIND
    assert _cel_failures(root, _apply_schema_defaults(root, copy.deepcopy(body))) == []
    model.parse_spec(body["spec"])


# --- field validation: the schema and the model reject the same values ---------------
# The API server validates a CR against the openAPIV3Schema (patterns, enums, bounds);
# jsonschema applies the same keywords here. One difference is intended: the API server
# prunes unknown fields silently, the model rejects them (typos in `render -f` files).

SINGLE_FIELD_CASES = [
    ({"replicas": 101}, False),
    ({"replicas": -1}, False),
    ({"replicas": 0}, True),
    ({"imagePullPolicy": "Sometimes"}, False),
    ({"image": ""}, False),
    ({"resources": {"requests": {"cpu": "lots"}}}, False),
    ({"resources": {"requests": {"cpu": "0.5", "memory": "1.5Gi"}, "limits": {"cpu": 2}}}, True),
    ({"resources": {"requests": {"cpu": 0.5}}}, False),  # YAML float: quote it
    ({"tolerations": [{"operator": "Maybe"}]}, False),
    ({"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute",
                       "tolerationSeconds": 30}]}, True),
    ({"backendStore": {"uriSecretRef": {}}}, False),
    ({"backendStore": {"uriSecretRef": {"name": ""}}}, False),
    ({"artifacts": {"destination": "ftp://host/x"}}, False),
    ({"artifacts": {"destination": "s3://"}}, False),
    ({"artifacts": {"destination": "wasbs://c@acct.blob.core.windows.net/p"}}, True),
    ({"artifacts": {"s3EndpointUrl": "minio:9000"}}, False),
    ({"artifacts": {"s3EndpointUrl": "http://minio.storage.svc:9000"}}, True),
    ({"auth": {"audience": ""}}, False),
    ({"auth": {"allowedNamespaces": ["Team"]}}, False),
    ({"auth": {"allowedNamespaces": ["*", "team-a"]}}, True),
    ({"auth": {"adminServiceAccounts": ["team-a"]}}, False),
    ({"auth": {"adminServiceAccounts": ["team-a:Bot"]}}, False),
    ({"auth": {"adminServiceAccounts": ["team-a:ci.bot"]}}, True),
    ({"auth": {"namespacePermissions": ["team-a:WRITE"]}}, False),
    ({"auth": {"namespacePermissions": ["team-a:read"]}}, False),
    ({"auth": {"namespacePermissions": ["team-a:NO_PERMISSIONS"]}}, True),
    ({"auth": {"defaultPermission": "ADMIN"}}, False),
    ({"auth": {"adminUsername": "has space"}}, False),
    ({"auth": {"adminUsername": "root"}}, True),
    ({"auth": {"authDatabase": {}}}, False),
    ({"auth": {"tokenCacheTTLSeconds": 0}}, False),
    ({"auth": {"tokenCacheTTLSeconds": 3601}}, False),
    ({"auth": {"tokenReviewTimeoutSeconds": 61}}, False),
    ({"auth": {"permissionCacheTTLSeconds": -1}}, False),
    ({"auth": {"permissionCacheTTLSeconds": 0}}, True),
    ({"auth": {"issuers": ["https://kubernetes.default.svc"]}}, True),
    ({"auth": {"issuers": ["a,b"]}}, False),
    ({"auth": {"issuers": ["has space"]}}, False),
    ({"auth": {"issuers": [""]}}, False),
    ({"server": {"workers": 0}}, False),
    ({"server": {"workers": 65}}, False),
    ({"server": {"extraEnv": [{"value": "no name"}]}}, False),
    ({"server": {"extraEnv": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s",
                                                                          "key": "k"}}}]}}, True),
    ({"server": {"extraVolumes": [{"secret": {"secretName": "s"}}]}}, False),
    ({"server": {"extraVolumes": [{"name": "ca", "configMap": {"name": "ca"}}],
                 "extraVolumeMounts": [{"name": "ca"}]}}, False),
    ({"server": {"extraVolumes": [{"name": "ca", "configMap": {"name": "ca"}}],
                 "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/db",
                                        "readOnly": True}]}}, True),
    ({"service": {"type": "ExternalName"}}, False),
    ({"service": {"port": 0}}, False),
    ({"service": {"port": 65536}}, False),
    ({"ingress": {"host": "Bad_Host.example"}}, False),
    ({"ingress": {"path": "mlflow"}}, False),
    ({"ingress": {"tls": {}, "host": "a.example"}}, False),
    ({"storage": {"size": "ten"}}, False),
    ({"storage": {"size": "1.5Ti"}}, True),
    ({"storage": {"accessMode": "ReadOnlyMany"}}, False),
]


@pytest.mark.parametrize(("spec", "valid"), SINGLE_FIELD_CASES)
def test_schema_and_model_reject_the_same_field_values(
    crd: dict[str, Any], spec: dict[str, Any], valid: bool
) -> None:
    import jsonschema

    root = _version(crd)["schema"]["openAPIV3Schema"]
    schema_errors = list(jsonschema.Draft7Validator(root).iter_errors({"spec": spec}))
    assert (not schema_errors) == valid, [e.message for e in schema_errors]
    if valid:
        model.parse_spec(spec)
    else:
        with pytest.raises(model.SpecError):
            model.parse_spec(spec)


def _unknown_keys(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Keys the API server would prune (not in the structural schema)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in value.items():
            if key not in schema["properties"]:
                found.append(f"{path}.{key}")
            else:
                found += _unknown_keys(schema["properties"][key], sub, f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            found += _unknown_keys(schema["items"], item, f"{path}[]")
    return found


def test_the_status_the_operator_writes_fits_the_schema(crd: dict[str, Any]) -> None:
    import jsonschema

    from mlflow_operator import status

    observation = status.Observation(
        generation=3,
        problem=status.Problem("MigrationFailed", "Job demo-migrate-1234abcd failed"),
        migration=status.Migration("demo-migrate-1234abcd", "Failed"),
        rollout=status.Rollout(desired=2, ready=1, updated=1, available=1),
        url="http://demo.team-a.svc:5000",
        audience="https://demo.team-a.svc",
        admin_secret="demo-admin",
    )
    written = status.compute(observation)
    schema = _version(crd)["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert _unknown_keys(schema, written) == []
    jsonschema.Draft7Validator(schema).validate(written)


@pytest.mark.parametrize(
    ("name", "valid"),
    [("demo", True), ("a" * 40, True), ("a-1", True), ("Demo", False), ("a" * 41, False),
     ("1abc", False), ("a.b", False), ("abc-", False)],
)
def test_schema_and_names_reject_the_same_object_names(
    crd: dict[str, Any], name: str, valid: bool
) -> None:
    import jsonschema

    root = _version(crd)["schema"]["openAPIV3Schema"]
    errors = list(jsonschema.Draft7Validator(root).iter_errors({"metadata": {"name": name}}))
    assert (not errors) == valid
    if valid:
        names.validate_ref(model.ServerRef(name, "ns", "uid"))
    else:
        with pytest.raises(model.SpecError):
            names.validate_ref(model.ServerRef(name, "ns", "uid"))
