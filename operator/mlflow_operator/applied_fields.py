"""Which map keys the operator applied last time, so a key it stops rendering is removed.

A JSON merge patch only changes what it names. Without a record, a key the spec no longer
asks for (a node selector, a pod annotation, a resource limit, a Secret key) would stay on
the child object for ever. Each applied object carries, in one annotation, the shape of
what the operator last applied: its nested map keys, with every value replaced by 0. So a
Secret's values never reach the annotation, only its key names. The next apply sends `null`
for each recorded key that the new manifest lacks, the way `kubectl apply`'s three-way
merge uses its last-applied annotation. Keys that other controllers or users added were
never recorded and are left alone. Lists need no record: a merge patch replaces them whole.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

ANNOTATION = "mlflow-operator.dev/applied-fields"
Path = tuple[str, ...]


def shape(body: Mapping[str, Any]) -> dict[str, Any]:
    """The nested map keys of `body`, every non-map value replaced by 0."""
    return {key: shape(value) if isinstance(value, Mapping) else 0 for key, value in body.items()}


def encode(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def recorded(live: Mapping[str, Any]) -> dict[str, Any]:
    """The shape recorded on a live object; empty when absent or not one we could have
    written (edited by hand): then nothing is removed, as before the record existed."""
    text = ((live.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    try:
        fields = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


def with_record(manifest: Mapping[str, Any], applied: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `manifest` that carries `applied`'s shape in its annotation."""
    body = dict(manifest)
    meta = dict(body.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), ANNOTATION: encode(shape(applied))}
    body["metadata"] = meta
    return body


def removed(old: Mapping[str, Any], new: Mapping[str, Any], live: Mapping[str, Any],
            path: Path = ()) -> list[Path]:
    """Keys recorded in `old` that `new` lacks and the live object still has."""
    found: list[Path] = []
    for key, sub in old.items():
        if key not in live:
            continue
        if key not in new:
            found.append((*path, key))
        elif isinstance(sub, dict) and isinstance(new[key], Mapping) and isinstance(live[key], Mapping):
            found += removed(sub, new[key], live[key], (*path, key))
    return sorted(found)


def with_removals(body: Mapping[str, Any], paths: list[Path]) -> dict[str, Any]:
    """A copy of the patch `body` that also sets each path to null (deletes it)."""
    patch = copy.deepcopy(dict(body))
    for path in paths:
        node = patch
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = None
    return patch
