"""Metadata shared by every rendered object."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from mlflow_operator import names
from mlflow_operator.model import ServerRef

Manifest = dict[str, Any]


def owner_reference(ref: ServerRef) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    ref: ServerRef,
    name: str,
    component: str,
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Metadata of a namespaced child: our labels plus a controller ownerReference."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ref.namespace,
        "labels": {**(labels or {}), **names.labels(ref, component)},
        "ownerReferences": [owner_reference(ref)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def checksum(*parts: Any) -> str:
    """Stable sha256 of JSON-serialisable values (key order does not matter)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
