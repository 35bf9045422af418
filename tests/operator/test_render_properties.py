"""Properties every rendering must have, whatever the spec: ownership, ordering, secrets
kept in Secrets, pod hardening, and flags that MLflow's own CLI and host check accept."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import yaml
from mlflow.cli import server as mlflow_server_command
from mlflow.server.security_utils import is_allowed_host_header

from mlflow_operator import names
from mlflow_operator.model import GeneratedSecrets, ServerRef, SpecError, StoreUris, parse_spec
from mlflow_operator.render import (
    allowed_hosts,
    config_checksum,
    render_all,
    render_config_secret,
    server_args,
    split_by_phase,
)
from tests.operator.test_render import CASES, GENERATED, PROD_URIS, render_case

CASE_NAMES = sorted(CASES)


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = _by_kind(objects, kind)
    return found


def _checksum(objects: list[dict[str, Any]]) -> str:
    template = _one(objects, "Deployment")["spec"]["template"]
    return template["metadata"]["annotations"][names.CONFIG_CHECKSUM_ANNOTATION]


def _pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_namespaced_children_are_owned_by_the_server(name: str) -> None:
    case = CASES[name]
    for obj in render_case(case):
        meta = obj["metadata"]
        if obj["kind"] == "ClusterRoleBinding":
            assert "ownerReferences" not in meta and "namespace" not in meta
            assert meta["labels"][names.OWNER_UID_LABEL] == case.ref.uid
            assert meta["labels"][names.OWNER_NAMESPACE_LABEL] == case.ref.namespace
            assert meta["labels"][names.OWNER_NAME_LABEL] == case.ref.name
            continue
        assert meta["namespace"] == case.ref.namespace
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "mlflow-operator.dev/v1alpha1", "kind": "MLflowServer",
            "name": case.ref.name, "uid": case.ref.uid, "controller": True,
            "blockOwnerDeletion": True,
        }
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "mlflow-operator"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_migration_job_comes_before_the_deployment(name: str) -> None:
    objects = render_case(CASES[name])
    kinds = [o["kind"] for o in objects]
    assert kinds.index("Job") < kinds.index("Deployment")
    assert kinds[-1] == "Deployment"
    phases = split_by_phase(objects)
    assert phases.migration["kind"] == "Job"
    assert [o["kind"] for o in phases.rollout] == ["Deployment"]
    assert len(phases.prepare) + 2 == len(objects)
    assert "ServiceAccount" in [o["kind"] for o in phases.prepare]


def test_the_server_may_create_token_reviews_and_nothing_more() -> None:
    case = CASES["minimal"]
    objects = render_case(case)
    binding = _one(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
        "name": "system:auth-delegator",
    }
    assert binding["subjects"] == [{
        "kind": "ServiceAccount", "name": names.service_account_name(case.ref),
        "namespace": case.ref.namespace,
    }]
    assert binding["metadata"]["name"] == "mlflow-operator:ml-team:mlflow:auth-delegator"
    assert not _by_kind(objects, "Role") and not _by_kind(objects, "ClusterRole")
    account = _one(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    deployment_pod, job_pod = (
        _one(objects, "Deployment")["spec"]["template"]["spec"],
        _one(objects, "Job")["spec"]["template"]["spec"],
    )
    assert deployment_pod["automountServiceAccountToken"] is True  # for TokenReview
    assert job_pod["automountServiceAccountToken"] is False  # migrations need no API access


def test_generated_secrets_are_create_only_and_config_is_not() -> None:
    objects = render_case(CASES["minimal"])
    secrets = {s["metadata"]["name"]: s for s in _by_kind(objects, "Secret")}
    assert set(secrets) == {"mlflow-config", "mlflow-admin", "mlflow-secret-key"}
    policy = names.APPLY_POLICY_ANNOTATION
    assert secrets["mlflow-admin"]["metadata"]["annotations"][policy] == "create-only"
    assert secrets["mlflow-secret-key"]["metadata"]["annotations"][policy] == "create-only"
    assert policy not in secrets["mlflow-config"]["metadata"].get("annotations", {})
    assert secrets["mlflow-admin"]["type"] == "kubernetes.io/basic-auth"
    assert secrets["mlflow-admin"]["stringData"] == {
        "username": "admin", "password": GENERATED.admin_password,
    }
    assert secrets["mlflow-secret-key"]["stringData"] == {
        "secret-key": GENERATED.flask_secret_key,
    }


def test_an_existing_admin_secret_is_used_not_rendered() -> None:
    case = CASES["basic-auth-off"]
    objects = render_all(
        case.ref, parse_spec(case.spec), GeneratedSecrets(flask_secret_key="k"), case.uris
    )
    assert "break-glass-admin" not in [s["metadata"]["name"] for s in _by_kind(objects, "Secret")]
    assert "tokens-only-admin" not in [s["metadata"]["name"] for s in _by_kind(objects, "Secret")]
    env = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    password = next(e for e in env if e["name"] == "MLFLOW_AUTH_ADMIN_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "break-glass-admin", "key": "password"}
    assert names.admin_secret_name(case.ref, parse_spec(case.spec)) == "break-glass-admin"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_secret_values_appear_only_in_secrets(name: str) -> None:
    case = CASES[name]
    values = [GENERATED.flask_secret_key, GENERATED.admin_password, "db-p%40ss", "db-p@ss"]
    for obj in render_case(case):
        if obj["kind"] == "Secret":
            continue
        text = yaml.safe_dump(obj)
        for value in values:
            assert value not in text, f"{value!r} leaked into {obj['kind']}"
        assert "postgresql://" not in text


def test_checksum_follows_the_config_and_only_the_config() -> None:
    case = CASES["production"]
    spec = parse_spec(case.spec)
    base = _checksum(render_all(case.ref, spec, GENERATED, PROD_URIS))
    assert base == _checksum(render_all(case.ref, spec, GENERATED, PROD_URIS))  # stable
    more_replicas = parse_spec({**case.spec, "replicas": 5})
    assert _checksum(render_all(case.ref, more_replicas, GENERATED, PROD_URIS)) == base
    new_admin = parse_spec({**case.spec, "auth": {**case.spec["auth"],
                                                  "adminServiceAccounts": ["ml-platform:other"]}})
    assert _checksum(render_all(case.ref, new_admin, GENERATED, PROD_URIS)) != base
    rotated = StoreUris(
        backend_store=PROD_URIS.backend_store.replace("db-p%40ss", "rotated"),  # type: ignore[union-attr]
        auth_database=PROD_URIS.auth_database,
    )
    assert _checksum(render_all(case.ref, spec, GENERATED, rotated)) != base


def test_checksum_is_keyed_so_it_cannot_confirm_password_guesses() -> None:
    case = CASES["production"]
    spec = parse_spec(case.spec)
    data = render_config_secret(case.ref, spec, PROD_URIS)["stringData"]
    plain = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
    checksum = _checksum(render_all(case.ref, spec, GENERATED, PROD_URIS))
    assert checksum == config_checksum(data, GENERATED)
    assert checksum != plain.hexdigest()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_pods_are_hardened(name: str) -> None:
    for pod_spec in _pod_specs(render_case(CASES[name])):
        security = pod_spec["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] != 0
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod_spec)
        assert all("hostPath" not in v for v in pod_spec["volumes"])
        for container in pod_spec.get("initContainers", []) + pod_spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert "/tmp" in mounts and not mounts["/tmp"].get("readOnly")
            assert {"name": "HOME", "value": "/tmp"} in container["env"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_server_args_parse_with_mlflows_own_cli(name: str) -> None:
    case = CASES[name]
    spec = parse_spec(case.spec)
    container = _one(render_case(case), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow"]
    assert container["args"][0] == "server"
    # MLflow's click command parses (and validates choices like --app-name) without running.
    context = mlflow_server_command.make_context("server", list(container["args"][1:]))
    params = context.params
    assert params["app_name"] == "k8s-auth"
    assert params["host"] == "0.0.0.0"
    assert int(params["port"]) == 5000
    assert int(params["workers"]) == spec.server.workers
    assert params["backend_store_uri"] is None  # from MLFLOW_BACKEND_STORE_URI, a Secret
    if spec.artifacts.proxied:
        assert params["serve_artifacts"] is True
        assert params["artifacts_destination"] == (spec.artifacts.destination or "/data/artifacts")
    else:
        assert params["serve_artifacts"] is False
        assert params["default_artifact_root"] == spec.artifacts.destination
    assert (params["expose_prometheus"] is not None) == spec.server.expose_metrics
    assert params["static_prefix"] == spec.server.static_prefix
    prefix = spec.server.static_prefix or ""
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == f"{prefix}/health"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_mlflows_host_check_accepts_every_service_name(name: str) -> None:
    case = CASES[name]
    spec = parse_spec(case.spec)
    hosts = allowed_hosts(case.ref, spec)
    assert ",".join(hosts) in server_args(case.ref, spec)
    port = spec.service.port
    for hostname in names.service_hostnames(case.ref, spec):
        assert is_allowed_host_header(hosts, hostname)
        assert is_allowed_host_header(hosts, f"{hostname}:{port}")
    assert is_allowed_host_header(hosts, "localhost:5000")  # kubectl port-forward
    if spec.ingress.enabled:
        assert is_allowed_host_header(hosts, spec.ingress.host)
    for extra in spec.server.allowed_hosts:
        assert is_allowed_host_header(hosts, extra)
    assert not is_allowed_host_header(hosts, "attacker.example")
    assert not is_allowed_host_header(hosts, f"{case.ref.name}.attacker.example")


def test_metrics_scraping_by_pod_ip_is_accepted_only_with_metrics_on() -> None:
    ref = ServerRef("demo", "ns", "uid")
    assert not is_allowed_host_header(allowed_hosts(ref, parse_spec({})), "10.1.2.3:5000")
    with_metrics = parse_spec({"server": {"exposeMetrics": True}})
    assert is_allowed_host_header(allowed_hosts(ref, with_metrics), "10.1.2.3:5000")


def test_optional_objects_follow_the_spec() -> None:
    minimal = [o["kind"] for o in render_case(CASES["minimal"])]
    assert "Ingress" not in minimal and "PodDisruptionBudget" not in minimal
    assert "NetworkPolicy" not in minimal and "PersistentVolumeClaim" in minimal
    production = render_case(CASES["production"])
    kinds = [o["kind"] for o in production]
    assert "PersistentVolumeClaim" not in kinds  # nothing lives on a volume
    assert _one(production, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    ingress = _one(production, "Ingress")
    assert ingress["spec"]["tls"] == [{"hosts": ["mlflow.example.com"], "secretName": "mlflow-tls"}]
    assert ingress["spec"]["ingressClassName"] == "nginx"


def test_sqlite_recreates_pods_and_external_databases_roll() -> None:
    minimal = _one(render_case(CASES["minimal"]), "Deployment")["spec"]["strategy"]
    production = _one(render_case(CASES["production"]), "Deployment")["spec"]["strategy"]
    assert minimal == {"type": "Recreate"}
    assert production["type"] == "RollingUpdate"
    assert production["rollingUpdate"]["maxUnavailable"] == 0


def _server_env(spec: dict[str, Any]) -> dict[str, str | None]:
    uris = PROD_URIS if spec.get("replicas", 1) > 1 else StoreUris()
    objects = render_all(ServerRef("demo", "team-a", "uid-1"), parse_spec(spec), GENERATED, uris)
    container = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


_MULTI = {"replicas": 2, "backendStore": {"uriSecretRef": {"name": "db"}},
          "auth": {"authDatabase": {"uriSecretRef": {"name": "db"}}},
          "artifacts": {"destination": "s3://bucket/mlflow"}}


def test_mlflow_job_execution_is_off_unless_asked_for() -> None:
    # MLflow's own default is on: the variable must be rendered explicitly.
    assert _server_env({})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS" not in _server_env(_MULTI)
    one = _server_env({"server": {"jobExecution": {"enabled": True}}})
    assert one["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
    assert "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS" not in one  # MLflow's default: on
    # Several replicas would each schedule the periodic tasks: they are turned off.
    many = _server_env({**_MULTI, "server": {"jobExecution": {"enabled": True}}})
    assert many["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
    assert many["MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS"] == "false"
    for name in ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS"):
        with pytest.raises(SpecError, match=f"server.extraEnv: {name} is set by the operator"):
            parse_spec({"server": {"extraEnv": [{"name": name, "value": "true"}]}})


def test_network_policy_defaults_to_the_allowed_namespaces() -> None:
    ref = ServerRef("demo", "team-a", "uid")
    spec = parse_spec({"networkPolicy": {"enabled": True},
                       "auth": {"allowedNamespaces": ["team-b", "team-a"]}})
    policy = _one(render_all(ref, spec, GENERATED), "NetworkPolicy")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]
    expression = rule["from"][0]["namespaceSelector"]["matchExpressions"][0]
    assert expression["values"] == ["team-a", "team-b"]
    nobody = parse_spec({"networkPolicy": {"enabled": True}, "auth": {"allowedNamespaces": []}})
    closed = _one(render_all(ref, nobody, GENERATED), "NetworkPolicy")
    assert closed["spec"]["ingress"] == []  # never a rule without `from` (that admits all)
    anywhere = _one(render_case(CASES["basic-auth-off"]), "NetworkPolicy")
    assert anywhere["spec"]["ingress"][0]["from"] == [{"namespaceSelector": {}}]


def test_pod_labels_cannot_break_the_selector() -> None:
    ref = ServerRef("demo", "team-a", "uid")
    spec = parse_spec({"podLabels": {"app.kubernetes.io/instance": "other", "team": "x"}})
    deployment = _one(render_all(ref, spec, GENERATED), "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == "demo" and labels["team"] == "x"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()


def test_topology_spread_defaults_to_the_servers_own_pods() -> None:
    deployment = _one(render_case(CASES["production"]), "Deployment")
    (constraint,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert constraint["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_render_refuses_names_the_children_cannot_carry() -> None:
    from mlflow_operator.model import SpecError

    with pytest.raises(SpecError):
        render_all(ServerRef("a" * 41, "ns", "uid"), parse_spec({}), GENERATED)
