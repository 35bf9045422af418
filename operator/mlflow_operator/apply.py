"""Server-side apply of rendered manifests, idempotent and silent in steady state.

Each object is read once (GET), then:

* missing: created. Create-only objects (the generated Secrets) by a POST, which fails
  if the object appeared meanwhile, so a secret is never generated over an existing one;
  every other object by server-side apply (`fieldManager=mlflow-operator`, forced).
* create-only and present: never written again, whoever made it.
* present but not this MLflowServer's: `ConflictError` (a user's object is not touched).
* otherwise applied (the immutable fields of a Job or a PVC as they are live), but only
  when something would change: a value the operator renders differs from the live one,
  or the set of keys it renders is not the set it applied last time (a key dropped from
  the spec: server-side apply removes the fields its manager no longer applies; it
  leaves other managers' fields alone, and takes back conflicting ones). The last set is
  kept as a fingerprint annotation of key names only, hashed, never a value. An apply
  of an unchanged object is a no-op on the server but still a request (a PATCH):
  comparing first keeps a steady-state resync free of writes.

Objects written by 0.1.0 (a POST and merge patches under the same manager name, so an
`Update` entry in managedFields, plus the `applied-fields` annotation) are taken over:
that entry becomes the operator's `Apply` entry, then one apply drops whatever the
operator wrote back then and no longer renders, the old annotation included.
"""
from __future__ import annotations

import base64
import dataclasses
import decimal
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow_operator.api import FIELD_MANAGER, ApiError, KubeApi, describe, resource_of
from mlflow_operator.names import APPLY_POLICY_ANNOTATION, CREATE_ONLY, GROUP

# Hash of the key names the operator applied last (see `fingerprint`).
APPLIED_KEYS = f"{GROUP}/applied-keys"
# The record 0.1.0 kept of the map keys it merge-patched; removed on takeover.
LEGACY_ANNOTATION = f"{GROUP}/applied-fields"


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
    return annotations.get(APPLY_POLICY_ANNOTATION) == CREATE_ONLY


# ---- comparing a manifest with the live object (pure) ----------------------------------

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_SUFFIX = {"": 1, "n": decimal.Decimal("1e-9"), "u": decimal.Decimal("1e-6"), "m": decimal.Decimal("1e-3"),
           "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value: Any) -> decimal.Decimal | None:
    """The value of a Kubernetes quantity ("500m", "1Gi", 2), None if it is not one.

    The API server stores quantities in canonical form ("0.5" becomes "500m"): compared
    as text, a rendered quantity would look like drift on every resync."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    match = _QUANTITY.match(str(value))
    if match is None:
        return None
    number, suffix = decimal.Decimal(match.group(1)), match.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return number.scaleb(int(suffix[1:]))
    return number * decimal.Decimal(_SUFFIX[suffix])


def _same_scalar(want: Any, have: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return want is have
    if want == have:
        return True
    if want is None or have is None:
        return False
    if str(want) == str(have):
        return True
    a, b = quantity(want), quantity(have)
    return a is not None and a == b


def is_subset(want: Any, have: Any) -> bool:
    """Does the live value `have` already hold everything in `want`?

    Maps may hold extra keys (server defaults, other managers' fields); lists must match
    element by element (the operator's lists are its own, an added element is drift)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            key in have and is_subset(value, have[key]) for key, value in want.items())
    if isinstance(want, list):
        return (isinstance(have, list) and len(want) == len(have)
                and all(is_subset(w, h) for w, h in zip(want, have)))
    return _same_scalar(want, have)


def shape(value: Any) -> Any:
    """The key structure of `value`: maps and lists kept, every scalar replaced by 0."""
    if isinstance(value, Mapping):
        return {key: shape(sub) for key, sub in value.items()}
    if isinstance(value, list):
        return [shape(sub) for sub in value]
    return 0


def fingerprint(body: Mapping[str, Any]) -> str:
    """Hash of the key names of an apply body, without any value: a changed fingerprint
    means a key was added or dropped, so the object must be applied even when every
    rendered value is already live. No value enters it, so not a Secret's either."""
    meta = dict(body.get("metadata") or {})
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k != APPLIED_KEYS}
    text = json.dumps(shape({**body, "metadata": meta}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def normalize(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A Secret's `stringData` is write-only (the API server folds it into `data`), so it
    is created, compared and applied in its stored, base64 form."""
    body = dict(manifest)
    if manifest.get("kind") == "Secret" and body.get("stringData"):
        data = dict(body.get("data") or {})
        for key, value in body.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        body["data"] = data
    return body


def with_fingerprint(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = dict(body.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_KEYS: fingerprint(body)}
    return {**body, "metadata": meta}


def owned_values(fields: Mapping[str, Any], live: Any) -> Any:
    """The part of `live` that a managedFields `fieldsV1` set covers, with live values.

    `f:<key>` names a map key, `k:{...}` a list element by its merge key, `v:<json>` a set
    element; an empty set means the whole value (a leaf, or an atomic list or map)."""
    if not fields or not isinstance(live, (Mapping, list)):
        return live
    if isinstance(live, Mapping):
        return {key[2:]: owned_values(sub, live[key[2:]]) for key, sub in fields.items()
                if key.startswith("f:") and key[2:] in live}
    picked = []
    for element in live:  # live order: the order the list has
        for key, sub in fields.items():
            if key.startswith("k:") and isinstance(element, Mapping) \
                    and all(element.get(k) == v for k, v in json.loads(key[2:]).items()):
                picked.append(owned_values({k: v for k, v in sub.items() if k != "."}, element))
                break
            if key.startswith("v:") and json.loads(key[2:]) == element:
                picked.append(element)
                break
    return picked


def projected(want: Any, have: Any) -> Any:
    """`want`'s keys with `have`'s values where `have` has them: the same fields, as live."""
    if isinstance(want, Mapping) and isinstance(have, Mapping):
        return {key: projected(value, have[key]) if key in have else value for key, value in want.items()}
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        return [projected(w, h) for w, h in zip(want, have)]
    return have


def pinned(manifest: Mapping[str, Any], live: Mapping[str, Any] | None) -> dict[str, Any]:
    """The body to apply to `live`, immutable fields applied as they are: a Job's whole spec
    (a migration of another image or database gets a Job of another name), and a PVC's spec
    but the requested size. They are applied with exactly the fields the operator owns now
    and their live values, so the apply neither changes nor drops any of them (either
    would be refused on every reconcile); labels, annotations and owners stay repairable."""
    body = dict(manifest)
    if live is None or "spec" not in body or manifest.get("kind") not in ("Job", "PersistentVolumeClaim"):
        return body
    owned = _owned_fields(live).get("f:spec")
    have = live.get("spec") or {}
    spec = owned_values(owned, have) if owned else projected(body["spec"], have)
    if manifest["kind"] == "PersistentVolumeClaim" and "resources" in body["spec"]:
        spec["resources"] = body["spec"]["resources"]
    body["spec"] = spec
    return body


def _entries(live: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((live.get("metadata") or {}).get("managedFields") or [])


def _ours(entry: Mapping[str, Any], operation: str) -> bool:
    return entry.get("manager") == FIELD_MANAGER and entry.get("operation") == operation \
        and not entry.get("subresource")


def is_legacy(live: Mapping[str, Any]) -> bool:
    """Written by 0.1.0: create/merge-patch (`Update`) under our manager, or its annotation."""
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    return LEGACY_ANNOTATION in annotations or any(_ours(e, "Update") for e in _entries(live))


def _merge_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge_fields(out[key], value) if isinstance(out.get(key), Mapping) else value
    return out


def _owned_fields(live: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the operator owns on `live`: its Apply entry, plus 0.1.0's Update entry."""
    fields: dict[str, Any] = {}
    for entry in _entries(live):
        if _ours(entry, "Update") or _ours(entry, "Apply"):
            fields = _merge_fields(fields, entry.get("fieldsV1") or {})
    return fields


def taken_over(live: Mapping[str, Any]) -> list[dict[str, Any]]:
    """managedFields with 0.1.0's `Update` entry turned into the operator's `Apply` entry,
    as client-go's csaupgrade does for kubectl: the next apply then owns, and so removes,
    the fields 0.1.0 wrote that the operator no longer renders."""
    keep = [e for e in _entries(live) if not (_ours(e, "Update") or _ours(e, "Apply"))]
    return [*keep, {"manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": live.get("apiVersion"),
                    "fieldsType": "FieldsV1", "fieldsV1": _owned_fields(live)}]


def in_sync(body: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """Would applying `body` (fingerprint included) change nothing on `live`?"""
    applied = any(_ours(e, "Apply") for e in _entries(live))
    want = {key: value for key, value in body.items() if key not in ("apiVersion", "kind")}
    return applied and not is_legacy(live) and is_subset(want, live)


# ---- talking to the API server --------------------------------------------------------

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


def _strip_legacy(api: KubeApi, manifest: Mapping[str, Any], live: dict[str, Any],
                  result: ApplyResult, what: str) -> dict[str, Any]:
    """Drop 0.1.0's annotation from a generated Secret, which is otherwise never written
    again: the annotation holds key names only, so this touches no value."""
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    if LEGACY_ANNOTATION not in annotations or not is_ours(manifest, live):
        result.unchanged.append(what)
        return live
    meta = manifest["metadata"]
    result.updated.append(what)
    return api.patch(resource_of(manifest), meta.get("namespace"), meta["name"],
                     {"metadata": {"annotations": {LEGACY_ANNOTATION: None}}})


def _create_only(api: KubeApi, manifest: Mapping[str, Any], live: dict[str, Any] | None,
                 result: ApplyResult, what: str) -> dict[str, Any]:
    if live is not None:
        return _strip_legacy(api, manifest, live, result, what)
    try:
        created = api.create(manifest)
    except ApiError as exc:
        if exc.status != 409:
            raise
        # Created meanwhile (a user restoring it, another reconcile): theirs stands.
        meta = manifest["metadata"]
        result.unchanged.append(what)
        return api.get(resource_of(manifest), meta.get("namespace"), meta["name"]) or {}
    result.created.append(what)
    return created


def apply_one(api: KubeApi, manifest: Mapping[str, Any], result: ApplyResult,
              known: Mapping[str, dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """Create, apply or leave one object; `known` holds live objects (or None for absent)
    the caller fetched moments ago, so they are not read twice."""
    manifest = normalize(manifest)
    res, meta, what = resource_of(manifest), manifest["metadata"], describe(manifest)
    if known is not None and what in known:
        live = known[what]
    else:
        live = api.get(res, meta.get("namespace"), meta["name"])
    if is_create_only(manifest):
        live = _create_only(api, manifest, live, result, what)
    elif live is not None and not is_ours(manifest, live):
        raise ConflictError(what)
    else:
        body = with_fingerprint(pinned(manifest, live))
        if live is not None and in_sync(body, live):
            result.unchanged.append(what)
        else:
            if live is not None and is_legacy(live):
                api.patch(res, meta.get("namespace"), meta["name"], {"metadata": {
                    "managedFields": taken_over(live), "resourceVersion": live["metadata"]["resourceVersion"]}})
            (result.created if live is None else result.updated).append(what)
            # An apply also creates. A user's object made between the GET above and this
            # request would be taken over: a window of one request, accepted.
            live = api.apply(body)
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
