"""The typed spec model: defaults, and clear SpecErrors for what the API server cannot check."""

from __future__ import annotations

import types

import pytest

from mlflow_operator import names
from mlflow_operator.model import (
    DEFAULT_IMAGE,
    GeneratedSecrets,
    ServerRef,
    SpecError,
    StoreUris,
    parse_spec,
)

REF = ServerRef("demo", "team-a", "uid-1")


def test_empty_spec_gets_the_documented_defaults() -> None:
    spec = parse_spec({})
    assert spec.replicas == 1
    assert spec.server_image == DEFAULT_IMAGE
    assert DEFAULT_IMAGE.startswith("ghcr.io/mlflow-operator/mlflow-server:")
    assert spec.auth.default_permission == "READ"
    assert spec.auth.basic_auth.enabled is True
    assert spec.auth.token_cache_ttl_seconds == 120
    assert spec.server.workers == 2
    assert spec.service.port == 5000
    assert spec.storage.size == "10Gi"
    assert spec.needs_pvc
    assert spec.secret_refs() == {}
    assert parse_spec(None) == spec


def test_computed_defaults_depend_on_the_objects_identity() -> None:
    spec = parse_spec({})
    assert names.audience(spec, REF) == "https://demo.team-a.svc"
    assert names.allowed_namespaces(spec, REF) == ["team-a"]
    assert names.server_url(REF, spec) == "http://demo.team-a.svc:5000"
    assert names.external_url(spec) is None


def test_explicit_values_win_over_computed_defaults() -> None:
    spec = parse_spec({
        "auth": {"audience": "mlflow", "allowedNamespaces": ["*"]},
        "ingress": {"enabled": True, "host": "ml.example.com", "path": "/mlflow/",
                    "tls": {"secretName": "t"}},
    })
    assert names.audience(spec, REF) == "mlflow"
    assert names.allowed_namespaces(spec, REF) == ["*"]
    assert names.external_url(spec) == "https://ml.example.com"
    prefixed = parse_spec({**spec.model_dump(by_alias=True, exclude_none=True),
                           "server": {"staticPrefix": "/mlflow"}})
    assert names.external_url(prefixed) == "https://ml.example.com/mlflow"
    assert names.server_url(REF, prefixed) == "http://demo.team-a.svc:5000/mlflow"


def test_kopf_style_read_only_mappings_are_accepted() -> None:
    spec = types.MappingProxyType({"auth": types.MappingProxyType({"adminServiceAccounts": ("a:b",)})})
    assert parse_spec(spec).auth.admin_service_accounts == ["a:b"]


def test_secret_refs_lists_what_the_handlers_must_read() -> None:
    spec = parse_spec({
        "backendStore": {"uriSecretRef": {"name": "db"}},
        "auth": {"authDatabase": {"uriSecretRef": {"name": "auth-db", "key": "url"}}},
    })
    refs = spec.secret_refs()
    assert (refs["backendStore"].name, refs["backendStore"].key) == ("db", "uri")
    assert (refs["authDatabase"].name, refs["authDatabase"].key) == ("auth-db", "url")


EXTERNAL = {
    "backendStore": {"uriSecretRef": {"name": "db"}},
    "auth": {"authDatabase": {"uriSecretRef": {"name": "db", "key": "auth"}}},
    "artifacts": {"destination": "s3://bucket/mlflow"},
}


@pytest.mark.parametrize(
    ("spec", "reason", "words"),
    [
        ({"replicas": 2}, "SqliteWithReplicas", "backendStore.uriSecretRef"),
        ({"replicas": 2, "backendStore": EXTERNAL["backendStore"]}, "SqliteWithReplicas",
         "auth.authDatabase"),
        ({"replicas": 2, "backendStore": EXTERNAL["backendStore"], "auth": EXTERNAL["auth"]},
         "ArtifactsVolumeWithReplicas", "ReadWriteMany"),
        ({"auth": {"namespacePermissions": ["team-a:WRITE"]}}, "InvalidPermission", "team-a:WRITE"),
        ({"auth": {"namespacePermissions": ["team-a"]}}, "InvalidPermission", "namespace:PERMISSION"),
        ({"auth": {"adminServiceAccounts": ["just-a-name"]}}, "InvalidServiceAccount",
         "namespace:name"),
        ({"auth": {"allowedNamespaces": ["Team_A"]}}, "InvalidNamespace", "Team_A"),
        ({"auth": {"defaultPermission": "WRITE"}}, "InvalidSpec", "spec.auth.defaultPermission"),
        ({"ingress": {"enabled": True}}, "InvalidIngress", "ingress.host"),
        ({"ingress": {"host": None, "tls": {"secretName": "t"}}}, "InvalidIngress", "ingress.host"),
        ({"artifacts": {"proxied": False}}, "InvalidArtifacts", "artifacts.destination"),
        ({"artifacts": {"destination": "ftp://x"}}, "InvalidSpec", "spec.artifacts.destination"),
        ({"server": {"extraArgs": ["--workers", "8"]}}, "ConflictingServerArgs", "--workers"),
        ({"server": {"extraArgs": ["--backend-store-uri=sqlite://"]}}, "ConflictingServerArgs",
         "--backend-store-uri"),
        ({"server": {"extraArgs": ["--static-prefix=/x"]}}, "ConflictingServerArgs",
         "--static-prefix"),
        ({"server": {"staticPrefix": "/mlflow/"}}, "InvalidSpec", "spec.server.staticPrefix"),
        ({"server": {"extraEnv": [{"name": "MLFLOW_AUTH_CONFIG_PATH", "value": "/x"}]}},
         "ConflictingServerEnv", "MLFLOW_AUTH_CONFIG_PATH"),
        ({"server": {"extraVolumes": [{"name": "data", "emptyDir": {}}]}}, "ConflictingVolume",
         "'data'"),
        ({"server": {"extraVolumes": [{"name": "ca", "emptyDir": {}}],
                     "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/mlflow/ca"}]}},
         "ConflictingVolume", "/etc/mlflow/ca"),
        ({"server": {"extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/db"}]}},
         "InvalidVolumeMount", "'ca'"),
        ({"replicas": -1}, "InvalidSpec", "spec.replicas"),
        ({"replics": 1}, "InvalidSpec", "spec.replics"),
        ({"storage": {"accessMode": "ReadWriteOncePod"}}, "InvalidSpec", "spec.storage.accessMode"),
    ],
)
def test_invalid_specs_raise_a_clear_spec_error(spec: dict, reason: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert caught.value.reason == reason
    assert words in caught.value.message
    assert "Traceback" not in str(caught.value)


def test_valid_multi_replica_spec() -> None:
    spec = parse_spec({"replicas": 3, **EXTERNAL})
    assert spec.replicas == 3
    assert not spec.needs_pvc
    shared_volume = parse_spec({
        "replicas": 2, "backendStore": EXTERNAL["backendStore"], "auth": EXTERNAL["auth"],
        "storage": {"accessMode": "ReadWriteMany"},
    })
    assert shared_volume.needs_pvc


def test_error_messages_never_echo_values_of_wrong_fields() -> None:
    # A password pasted where a number belongs must not end up in an Event.
    with pytest.raises(SpecError) as caught:
        parse_spec({"server": {"workers": "hunter2-secret"}, "replicas": "also-secret"})
    assert "hunter2" not in caught.value.message
    assert "also-secret" not in caught.value.message
    assert "spec.server.workers" in caught.value.message
    assert "spec.replicas" in caught.value.message


def test_secret_holders_do_not_print_their_values() -> None:
    generated = GeneratedSecrets(flask_secret_key="k-value", admin_password="p-value")
    uris = StoreUris(backend_store="postgresql://u:pw-value@h/db")
    for text in (repr(generated), str(generated), repr(uris), str(uris)):
        assert "value" not in text


@pytest.mark.parametrize("name", ["Demo", "1abc", "a" * 41, "a.b", "abc-"])
def test_object_names_the_children_cannot_carry_are_rejected(name: str) -> None:
    with pytest.raises(SpecError) as caught:
        names.validate_ref(ServerRef(name, "ns", "uid"))
    assert caught.value.reason == "InvalidName"


def test_migration_job_name_follows_image_and_databases() -> None:
    spec = parse_spec({})
    key = GeneratedSecrets(flask_secret_key="key")
    base = names.migration_job_name(REF, spec, StoreUris(), key)
    assert base.startswith("demo-migrate-") and len(base) == len("demo-migrate-") + 8
    assert names.migration_job_name(REF, spec, StoreUris(), key) == base
    new_image = parse_spec({"image": "example.com/mlflow:next"})
    assert names.migration_job_name(REF, new_image, StoreUris(), key) != base
    pg = StoreUris(backend_store="postgresql://u:one@db:5432/mlflow")
    fixed_password = StoreUris(backend_store="postgresql://u:two@db:5432/mlflow")
    other_db = StoreUris(backend_store="postgresql://u:one@db:5432/other")
    jobs = {names.migration_job_name(REF, spec, uris, key) for uris in (pg, fixed_password, other_db)}
    assert len(jobs) == 3 and base not in jobs  # a Job that failed on a bad password is retried
    longest = ServerRef("a" * names.MAX_NAME_LENGTH, "ns", "uid")
    assert len(names.migration_job_name(longest, spec, pg, key)) <= 63


def test_migration_hash_is_keyed() -> None:
    spec, pg = parse_spec({}), StoreUris(backend_store="postgresql://u:guess@db/mlflow")
    one = names.migration_hash(spec, pg, GeneratedSecrets(flask_secret_key="one"))
    two = names.migration_hash(spec, pg, GeneratedSecrets(flask_secret_key="two"))
    assert one != two
