"""The volume for sqlite files and artifacts, when anything lives on it."""

from __future__ import annotations

from mlflow_operator import names
from mlflow_operator.model import MLflowServerSpec, ServerRef
from mlflow_operator.render.common import Manifest, metadata


def render_pvc(ref: ServerRef, spec: MLflowServerSpec) -> Manifest | None:
    if not spec.needs_pvc:
        return None
    pvc_spec: dict = {
        "accessModes": [spec.storage.access_mode],
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    if spec.storage.storage_class_name:
        pvc_spec["storageClassName"] = spec.storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(ref, names.pvc_name(ref), "storage"),
        "spec": pvc_spec,
    }
