"""Manifests of the sample training job, exactly as a user would apply them in a cluster.

The job's only MLflow credential is a projected ServiceAccount token whose audience is
the one the MLflowServer reports in ``status.audience``; the tracking URI is
``status.url``. The script comes from a ConfigMap so the manifests are self-contained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TOKEN_DIR = "/var/run/secrets/mlflow/serviceaccount"
SCRIPT = Path(__file__).with_name("sample_train.py")


def service_account(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}


def job_objects(
    *,
    name: str,
    namespace: str,
    service_account_name: str,
    tracking_uri: str,
    audience: str,
    experiment: str = "sample-training",
) -> list[dict[str, Any]]:
    """ConfigMap with the script + the Job running it with a projected MLflow token."""
    code = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-code", "namespace": namespace},
        "data": {"train.py": SCRIPT.read_text()},
    }
    container = {
        "name": "train",
        "image": "ghcr.io/mlflow/mlflow:v3.17.2",
        "command": ["python", "/app/train.py"],
        "env": [
            {"name": "MLFLOW_TRACKING_URI", "value": tracking_uri},
            {"name": "MLFLOW_TRACKING_AUTH", "value": "k8s-token"},
            {"name": "MLFLOW_K8S_TOKEN_PATH", "value": f"{TOKEN_DIR}/token"},
            {"name": "EXPERIMENT_NAME", "value": experiment},
            # fail fast in a test instead of retrying a 5xx for minutes
            {"name": "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "value": "1"},
            {"name": "TMPDIR", "value": "/tmp"},
        ],
        "volumeMounts": [
            {"name": "code", "mountPath": "/app", "readOnly": True},
            {"name": "mlflow-token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": name}},
                "spec": {
                    "serviceAccountName": service_account_name,
                    "automountServiceAccountToken": False,
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [
                        {"name": "code", "configMap": {"name": f"{name}-code"}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "mlflow-token", "projected": {"sources": [
                            {"serviceAccountToken": {"audience": audience, "expirationSeconds": 3600, "path": "token"}},
                        ]}},
                    ],
                },
            },
        },
    }
    return [code, job]


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)
