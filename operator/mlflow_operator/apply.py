"""Create-or-patch of rendered manifests, idempotent and quiet in steady state.

One GET per object; a POST when it is missing; a merge-PATCH only when a field the
operator renders differs from the live object, or a map key it rendered last time is no
longer rendered (`applied_fields`). Fields the API server or other controllers add are
left alone, so a reconcile of an unchanged object writes nothing.
"""
from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow_operator import applied_fields
from mlflow_operator.api import ApiError, KubeApi, describe, resource_of

APPLY_POLICY = "mlflow-operator.dev/apply-policy"
CREATE_ONLY = "create-only"


@dataclasses.dataclass
class ApplyResult:
    created: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)
    unchanged: list[str] = dataclasses.field(default_factory=list)
    # The live objects after apply, keyed by `Kind/name`: status is computed from them.
    live: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def merge(self, other: ApplyResult) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.live.update(other.live)


def is_create_only(manifest: Mapping[str, Any]) -> bool:
    annotations = manifest.get("metadata", {}).get("annotations") or {}
    return annotations.get(APPLY_POLICY) == CREATE_ONLY


def is_subset(want: Any, have: Any) -> bool:
    """Does the live value `have` already contain everything in `want`?

    Maps may hold extra keys (server defaults); lists must match element by element,
    since a merge patch replaces a list as a whole.
    """
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            key in have and is_subset(value, have[key]) for key, value in want.items())
    if isinstance(want, list):
        return (isinstance(have, list) and len(want) == len(have)
                and all(is_subset(w, h) for w, h in zip(want, have)))
    if isinstance(want, bool) or isinstance(have, bool):
        return want is have
    if isinstance(want, (int, float)) and isinstance(have, (int, float)):
        return want == have
    return want == have or (want is not None and str(want) == str(have))


def normalize(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A Secret's `stringData` is write-only (the API server folds it into `data`), so it
    is created, compared and patched in its stored, base64 form."""
    body = dict(manifest)
    if manifest.get("kind") == "Secret" and body.get("stringData"):
        data = dict(body.get("data") or {})
        for key, value in body.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        body["data"] = data
    return body


def _comparable(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a manifest that a patch may change.

    Kubernetes makes some fields immutable after creation; patching them would fail on
    every reconcile. A Job's pod template never changes (a new migration gets a new Job
    name), and of a PVC's spec only the requested size may grow.
    """
    body = {key: value for key, value in manifest.items()
            if key not in ("apiVersion", "kind", "status")}
    if manifest.get("kind") == "Job":
        body.pop("spec", None)
    elif manifest.get("kind") == "PersistentVolumeClaim" and "spec" in body:
        resources = body["spec"].get("resources")
        body["spec"] = {"resources": resources} if resources else {}
    return body


# Labels that say which MLflowServer an object belongs to (the ones the manifest carries).
_IDENTITY_LABELS = ("app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
                    "mlflow-operator.dev/owner-name", "mlflow-operator.dev/owner-namespace")


def _controllers(obj: Mapping[str, Any]) -> set[str]:
    return {ref.get("uid", "") for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
            if ref.get("controller")}


def is_ours(manifest: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """May the operator take this live object over? Only if the same MLflowServer controls
    it, or, lacking a controller (orphaned, or cluster-scoped), it carries that server's
    identifying labels. A user's own object with the same name is never overwritten."""
    have = _controllers(live)
    if have:
        return bool(have & _controllers(manifest))
    want_labels = manifest["metadata"].get("labels") or {}
    live_labels = (live.get("metadata") or {}).get("labels") or {}
    keys = [k for k in _IDENTITY_LABELS if k in want_labels]
    return bool(keys) and all(live_labels.get(k) == want_labels[k] for k in keys)


class ConflictError(Exception):
    """The object exists but belongs to someone else."""

    def __init__(self, what: str):
        super().__init__(f"{what} already exists and does not belong to this MLflowServer;"
                         " rename or delete it")
        self.what = what


def apply_one(api: KubeApi, manifest: Mapping[str, Any], result: ApplyResult,
              known: Mapping[str, dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """Create, patch or leave one object; `known` holds live objects (or None for absent)
    the caller fetched moments ago, so they are not read twice."""
    manifest = normalize(manifest)
    manifest = applied_fields.with_record(manifest, _comparable(manifest))
    res, meta, what = resource_of(manifest), manifest["metadata"], describe(manifest)
    if known is not None and what in known:
        live = known[what]
    else:
        live = api.get(res, meta.get("namespace"), meta["name"])
    if live is None:
        try:
            live = api.create(manifest)
            result.created.append(what)
        except ApiError as exc:
            if exc.status != 409:
                raise
            # Created concurrently (another reconcile, or a user): re-read and fall through.
            live = api.get(res, meta.get("namespace"), meta["name"]) or {}
    elif is_create_only(manifest):
        # Never written after creation, whoever made it (e.g. a user restoring a Secret).
        result.unchanged.append(what)
    elif not is_ours(manifest, live):
        raise ConflictError(what)
    else:
        want = _comparable(manifest)
        gone = applied_fields.removed(applied_fields.recorded(live), want, live)
        if not gone and is_subset(want, live):
            result.unchanged.append(what)
        else:
            live = api.patch(res, meta.get("namespace"), meta["name"], applied_fields.with_removals(want, gone))
            result.updated.append(what)
    result.live[what] = live
    return live


def apply_all(api: KubeApi, manifests: Iterable[Mapping[str, Any]],
              known: Mapping[str, dict[str, Any] | None] | None = None) -> ApplyResult:
    result = ApplyResult()
    for manifest in manifests:
        apply_one(api, manifest, result, known)
    return result


def prune(api: KubeApi, stale: Iterable[Mapping[str, Any]], owner_uid: str) -> list[str]:
    """Delete objects the spec no longer asks for, but only those this CR controls."""
    deleted = []
    for manifest in stale:
        res, meta = resource_of(manifest), manifest["metadata"]
        live = api.get(res, meta.get("namespace"), meta["name"])
        if live is None:
            continue
        owners = live.get("metadata", {}).get("ownerReferences") or []
        if any(ref.get("uid") == owner_uid and ref.get("controller") for ref in owners):
            if api.delete(res, meta.get("namespace"), meta["name"]):
                deleted.append(describe(manifest))
    return deleted
