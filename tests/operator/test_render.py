"""Golden files pin what every renderer produces for several specs.

Regenerate after an intended change, then review the diff:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/operator/test_render.py
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mlflow_operator.model import GeneratedSecrets, ServerRef, StoreUris, parse_spec
from mlflow_operator.render import render_all

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = ROOT / "examples"
# DESIGN.md targets Kubernetes 1.35 (kubectl v1.35); also check the newest schemas shipped.
KUBERNETES_VERSIONS = ("1.35.0", kubernetes_validate.latest_version())

# Fixed test values: real ones are random and generated once by the handlers.
GENERATED = GeneratedSecrets(
    flask_secret_key="test-flask-secret-key-not-random", admin_password="test-admin-password"
)
PROD_URIS = StoreUris(
    backend_store="postgresql://mlflow:db-p%40ss@postgres.databases.svc:5432/mlflow",
    auth_database="postgresql://mlflow:db-p%40ss@postgres.databases.svc:5432/mlflow_auth",
)


@dataclass(frozen=True)
class Case:
    ref: ServerRef
    spec: dict[str, Any]
    uris: StoreUris = field(default_factory=StoreUris)


def _example(name: str) -> tuple[ServerRef, dict[str, Any]]:
    body = yaml.safe_load((EXAMPLES / name).read_text())
    meta = body["metadata"]
    return ServerRef(meta["name"], meta["namespace"], f"uid-{meta['name']}"), body["spec"]


def _example_server(name: str) -> tuple[ServerRef, dict[str, Any]]:
    """The MLflowServer of a multi-document example."""
    (body,) = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d["kind"] == "MLflowServer"]
    meta = body["metadata"]
    return ServerRef(meta["name"], meta["namespace"], f"uid-{meta['name']}"), body["spec"]


CASES: dict[str, Case] = {
    "minimal": Case(*_example("minimal.yaml")),
    "production": Case(*_example("production.yaml"), uris=PROD_URIS),
    "multi-team": Case(*_example_server("multi-team.yaml"), uris=StoreUris(backend_store=PROD_URIS.backend_store)),
    "basic-auth-off": Case(
        ServerRef("tokens-only", "shared", "uid-tokens-only"),
        {
            "auth": {
                "audience": "mlflow.example.com",
                "allowedNamespaces": ["*"],
                "adminServiceAccounts": ["platform:ci", "platform:admin-bot"],
                "namespacePermissions": ["team-a:EDIT", "team-b:USE"],
                "defaultPermission": "NO_PERMISSIONS",
                "basicAuth": {"enabled": False, "existingAdminSecret": "break-glass-admin"},
                "tokenCacheTTLSeconds": 30,
            },
            "networkPolicy": {"enabled": True},
        },
    ),
    "custom-scheduling": Case(
        ServerRef("gpu-team", "research", "uid-gpu-team"),
        {
            "image": "registry.example.com/mlflow-server:3.17.2-custom",
            "imagePullPolicy": "Always",
            "imagePullSecrets": ["registry-creds"],
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 2}},
            "nodeSelector": {"node-pool": "services"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
            ],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [
                                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
                            ]}
                        ]
                    }
                }
            },
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                 "whenUnsatisfiable": "DoNotSchedule"}
            ],
            "priorityClassName": "ml-services",
            "podAnnotations": {"team": "research"},
            "podLabels": {"cost-center": "ml-42"},
            "serviceAccountAnnotations": {"iam.gke.io/gcp-service-account": "mlflow@p.iam.gserviceaccount.com"},
            "artifacts": {"destination": "gs://research-artifacts/mlflow", "proxied": False},
            "server": {
                "workers": 1,
                "allowedHosts": ["mlflow.research.internal"],
                "staticPrefix": "/mlflow",
                "extraArgs": ["--cors-allowed-origins=https://notebooks.research.internal"],
                "extraEnv": [
                    {"name": "MLFLOW_LOGGING_LEVEL", "value": "DEBUG"},
                    {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/run/gcs/key.json"},
                ],
                "extraVolumes": [{"name": "gcs-key", "secret": {"secretName": "gcs-key"}}],
                "extraVolumeMounts": [{"name": "gcs-key", "mountPath": "/var/run/gcs",
                                       "readOnly": True}],
                "clusterDomain": "corp.local",
            },
            "service": {"type": "LoadBalancer", "port": 80,
                        "annotations": {"networking.gke.io/load-balancer-type": "Internal"}},
            "storage": {"size": "50Gi", "storageClassName": "fast-ssd"},
        },
    ),
}


def render_case(case: Case) -> list[dict[str, Any]]:
    return render_all(case.ref, parse_spec(case.spec), GENERATED, case.uris)


def _dump(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, width=100)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_objects_match_golden_file(name: str) -> None:
    text = _dump(render_case(CASES[name]))
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{name} changed: review, then UPDATE_GOLDEN=1"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_rendered_object_validates_against_kubernetes_schemas(
    name: str, version: str
) -> None:
    for obj in render_case(CASES[name]):
        # strict: unknown fields (typos) fail too, as the API server would warn or drop them
        kubernetes_validate.validate(obj, version, strict=True)


def test_golden_files_have_no_stale_cases() -> None:
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == set(CASES)


def test_training_job_example_targets_the_minimal_servers_url_and_audience() -> None:
    from mlflow_operator import names

    ref, spec = _example("minimal.yaml")
    server = parse_spec(spec)
    docs = list(yaml.safe_load_all((EXAMPLES / "training-job.yaml").read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
    job = next(d for d in docs if d["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    (source,) = next(v for v in pod["volumes"] if "projected" in v)["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == names.audience(server, ref)
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == names.server_url(ref, server)
    assert env["MLFLOW_TRACKING_AUTH"] == "k8s-token"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "mlflow-token")
    assert env["MLFLOW_K8S_TOKEN_PATH"] == f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"
    assert job["metadata"]["namespace"] == ref.namespace  # the default allowed namespace
