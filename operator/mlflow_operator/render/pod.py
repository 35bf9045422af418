"""Pieces shared by the server pod and the migration Job pod."""

from __future__ import annotations

from typing import Any

from mlflow_operator import names
from mlflow_operator.model import MLflowServerSpec, ServerRef

# The server image runs as this user (plugin/Dockerfile creates it); set explicitly so
# runAsNonRoot holds even if an image forgets its USER line.
RUN_AS_USER = 10001

TMP_VOLUME = "tmp"
CONFIG_VOLUME = "config"
DATA_VOLUME = "data"


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        # Lets the non-root user write sqlite files and artifacts on the volume.
        "fsGroup": RUN_AS_USER,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def base_env() -> list[dict[str, Any]]:
    # The root filesystem is read-only: anything that writes under $HOME (caches,
    # matplotlib, gunicorn/uvicorn temp files) must land on the /tmp emptyDir.
    return [{"name": "HOME", "value": "/tmp"}]


def tmp_volume() -> dict[str, Any]:
    # No sizeLimit: proxied artifact uploads are spooled here before they reach object
    # storage, and a limit would evict the pod on a large model. Bound it, if needed,
    # with an ephemeral-storage limit in spec.resources.
    return {"name": TMP_VOLUME, "emptyDir": {}}


def data_volume(ref: ServerRef) -> dict[str, Any]:
    return {"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": names.pvc_name(ref)}}


def tmp_mount() -> dict[str, Any]:
    return {"name": TMP_VOLUME, "mountPath": "/tmp"}


def data_mount() -> dict[str, Any]:
    return {"name": DATA_VOLUME, "mountPath": names.DATA_MOUNT}


def uses_sqlite(spec: MLflowServerSpec) -> bool:
    return spec.backend_store.uri_secret_ref is None or spec.auth.auth_database is None


def image_pull_secrets(spec: MLflowServerSpec) -> list[dict[str, str]]:
    return [{"name": name} for name in spec.image_pull_secrets]


def resources(spec: MLflowServerSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.resources.requests:
        out["requests"] = dict(spec.resources.requests)
    if spec.resources.limits:
        out["limits"] = dict(spec.resources.limits)
    return out


def tolerations(spec: MLflowServerSpec) -> list[dict[str, Any]]:
    return [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
