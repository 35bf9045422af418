"""The CRD's field validation and stored status, judged by the real kube-apiserver
(server-side dry-run), in agreement with the operator's model and names
(test_crd.py holds the schema, defaults and CEL rule checks)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mlflow_operator import model, names
from tests.conftest import unique_namespace
from tests.support.crd import CR, ServerCheck, crd_namespace
from tests.support.kubeapi import Kube


@pytest.fixture(scope="module")
def server(admin: Kube) -> Iterator[ServerCheck]:
    with crd_namespace(admin, unique_namespace("crd-fields")) as check:
        yield check


# --- field validation: the API server and the model reject the same values -----------
# One difference is intended: the API server prunes unknown fields silently, the model
# rejects them (typos in `render -f` files).

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
    ({"auth": {"tokenCacheTTLSeconds": -1}}, False),
    ({"auth": {"tokenCacheTTLSeconds": 0}}, True),
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
def test_api_server_and_model_reject_the_same_field_values(
        server: ServerCheck, spec: dict[str, Any], valid: bool) -> None:
    _, errors = server.create(spec)
    assert (not errors) == valid, errors
    if valid:
        model.parse_spec(spec)
    else:
        with pytest.raises(model.SpecError):
            model.parse_spec(spec)


def test_the_status_the_operator_writes_is_stored_unchanged(server: ServerCheck) -> None:
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
    server.create({}, name="with-status", dry_run=False)
    stored = server.admin.patch(CR, server.namespace, "with-status", {"status": written},
                                subresource="status")
    assert stored["status"] == written  # nothing pruned, nothing rejected


@pytest.mark.parametrize(
    ("name", "valid"),
    [("demo", True), ("a" * 40, True), ("a-1", True), ("Demo", False), ("a" * 41, False),
     ("1abc", False), ("a.b", False), ("abc-", False)],
)
def test_api_server_and_names_reject_the_same_object_names(
        server: ServerCheck, name: str, valid: bool) -> None:
    _, errors = server.create({}, name=name)
    assert (not errors) == valid, errors
    if valid:
        names.validate_ref(model.ServerRef(name, "ns", "uid"))
    else:
        with pytest.raises(model.SpecError):
            names.validate_ref(model.ServerRef(name, "ns", "uid"))
