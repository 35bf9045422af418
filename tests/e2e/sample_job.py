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
    mlflow_env = [
        {"name": "MLFLOW_TRACKING_URI", "value": tracking_uri},
        {"name": "MLFLOW_TRACKING_AUTH", "value": "k8s-token"},
        {"name": "MLFLOW_K8S_TOKEN_PATH", "value": f"{TOKEN_DIR}/token"},
    ]
    token_volume = {"name": "mlflow-token", "projected": {"sources": [
        {"serviceAccountToken": {"audience": audience, "expirationSeconds": 3600, "path": "token"}},
    ]}}
    return _objects(name, namespace, service_account_name, experiment,
                    image="ghcr.io/mlflow/mlflow:v3.17.2", python="python",
                    labels={"app.kubernetes.io/name": name}, mlflow_env=mlflow_env,
                    mlflow_mounts=[{"name": "mlflow-token", "mountPath": TOKEN_DIR, "readOnly": True}],
                    mlflow_volumes=[token_volume])


def labelled_job_objects(
    *, name: str, namespace: str, service_account_name: str, label: dict[str, str], experiment: str, python: str,
) -> list[dict[str, Any]]:
    """ConfigMap + Job with the injection label and nothing else about MLflow (no URI,
    no auth variable, no token volume): the webhook adds them."""
    return _objects(name, namespace, service_account_name, experiment, image="registry.example/train:1",
                    python=python, labels=label, mlflow_env=[], mlflow_mounts=[], mlflow_volumes=[])


def _objects(
    name: str, namespace: str, service_account_name: str, experiment: str, *, image: str, python: str,
    labels: dict[str, str], mlflow_env: list[dict[str, Any]], mlflow_mounts: list[dict[str, Any]],
    mlflow_volumes: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    code = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-code", "namespace": namespace},
        "data": {"train.py": SCRIPT.read_text()},
    }
    container = {
        "name": "train",
        "image": image,
        "command": [python, "/app/train.py"],
        "env": [
            *mlflow_env,
            {"name": "EXPERIMENT_NAME", "value": experiment},
            # fail fast in a test instead of retrying a 5xx for minutes
            {"name": "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "value": "1"},
            {"name": "TMPDIR", "value": "/tmp"},
        ],
        "volumeMounts": [
            {"name": "code", "mountPath": "/app", "readOnly": True},
            *mlflow_mounts,
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
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": service_account_name,
                    "automountServiceAccountToken": False,
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [
                        {"name": "code", "configMap": {"name": f"{name}-code"}},
                        {"name": "tmp", "emptyDir": {}},
                        *mlflow_volumes,
                    ],
                },
            },
        },
    }
    return [code, job]


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)
