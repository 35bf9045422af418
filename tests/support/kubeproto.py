"""Pure pieces of the Kubernetes API protocol used by the emulator (no I/O).

URL parsing, API errors (`Status` objects), object name rules, patches (JSON
patch, RFC 7386 merge patch, a strategic-merge-patch approximation), and
label/field selectors. Kept apart from ``tests.support.kube`` so that module
holds only server behaviour.
"""
from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonpatch
import jsonpointer


@dataclass(frozen=True)
class ApiPath:
    group: str
    version: str
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


# Namespace subresources: /api/v1/namespaces/<name>/<sub> is not a collection.
_NAMESPACE_SUBRESOURCES = {'status', 'finalize'}


def parse_path(path: str) -> ApiPath | None:
    """Split an API path; None for non-resource paths (discovery, /version).

    Unlike kmock 0.8's parser this handles ``/api/v1/namespaces`` and
    ``/api/v1/namespaces/<name>`` (the Namespace objects themselves).
    """
    parts = [p for p in path.strip('/').split('/') if p]
    if len(parts) >= 2 and parts[0] == 'api':
        group, version, rest = '', parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == 'apis':
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace = None
    if rest[0] == 'namespaces' and len(rest) >= 3 and rest[2] not in _NAMESPACE_SUBRESOURCES:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = '/'.join(rest[2:]) or None
    return ApiPath(group, version, plural, namespace, name, sub)


class ApiError(Exception):
    """An error answered as a Kubernetes `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = dict(details or {})

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            'kind': 'Status', 'apiVersion': 'v1', 'metadata': {},
            'status': 'Failure', 'message': self.message, 'reason': self.reason,
            'code': self.code,
        }
        if self.details:
            body['details'] = self.details
        return body


def api_version(group: str | None, version: str | None) -> str:
    return f'{group}/{version}' if group else str(version)


def qualified(plural: str, group: str) -> str:
    return f'{plural}.{group}' if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(404, 'NotFound', f'{qualified(plural, group)} "{name}" not found',
                    {'name': name, 'group': group, 'kind': plural})


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(409, 'AlreadyExists', f'{qualified(plural, group)} "{name}" already exists',
                    {'name': name, 'group': group, 'kind': plural})


def conflict(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409, 'Conflict',
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": the object has '
        'been modified; please apply your changes to the latest version and try again',
        {'name': name, 'group': group, 'kind': plural})


def invalid(kind: str, name: str, message: str) -> ApiError:
    return ApiError(422, 'Invalid', f'{kind} "{name}" is invalid: {message}',
                    {'name': name, 'kind': kind})


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


_DNS_SUBDOMAIN = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')


_DNS_LABEL = re.compile(r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')
_DNS_1035_LABEL = re.compile(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')


def valid_name(name: Any) -> bool:
    """An RFC 1123 subdomain (most kinds' name rule)."""
    return isinstance(name, str) and len(name) <= 253 and bool(_DNS_SUBDOMAIN.match(name))


def name_error(plural: str, group: str, name: str) -> str | None:
    """Why kube-apiserver would reject this object name (its rule per kind), or None."""
    if group == 'rbac.authorization.k8s.io':  # path segments: `system:auth-delegator` is fine
        if name in ('.', '..') or '/' in name or '%' in name:
            return f"metadata.name: Invalid value: {name!r}: may not be '.' or '..' or contain '/' or '%'"
        return None
    if (group, plural) in (('', 'namespaces'), ('', 'services')):
        pattern, what = ((_DNS_LABEL, 'a lowercase RFC 1123 label') if plural == 'namespaces'
                         else (_DNS_1035_LABEL, 'a DNS-1035 label (starting with a letter)'))
        if len(name) > 63:
            return f'metadata.name: Invalid value: {name!r}: must be no more than 63 characters'
        if not pattern.match(name):
            return (f"metadata.name: Invalid value: {name!r}: {what} must consist of lower case "
                    "alphanumeric characters or '-', and must end with an alphanumeric character")
        return None
    if not valid_name(name):
        return (f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain must consist "
                "of lower case alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character (at most 253 characters)")
    return None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null deletes; non-objects replace)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_patch(old: dict[str, Any], patch: Any, content_type: str, kind: str, name: str) -> dict[str, Any]:
    """The object after a PATCH of this content type; errors as the API answers them."""
    if content_type == 'application/json-patch+json':
        # A failing JSON patch is a 422 (a malformed one a 400), not kmock's 500.
        if not isinstance(patch, list) or not all(isinstance(op, dict) for op in patch):
            raise ApiError(400, 'BadRequest', 'json: cannot unmarshal the body into a JSON patch (an array of operations)')
        try:
            return jsonpatch.apply_patch(copy.deepcopy(old), patch)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError) as exc:
            raise invalid(kind, name, f'the JSON patch could not be applied: {exc}')
    if not isinstance(patch, dict):
        raise ApiError(400, 'BadRequest', 'the patch is not a JSON object')
    if content_type == 'application/merge-patch+json':
        return merge_patch(old, patch)
    if content_type == 'application/strategic-merge-patch+json':
        return strategic_merge_patch(old, patch)  # kmock treated it as a merge patch
    raise ApiError(415, 'UnsupportedMediaType', 'the body of the request was in an unknown format - accepted media '
                   'types include: application/json-patch+json, application/merge-patch+json, '
                   f'application/apply-patch+yaml, application/strategic-merge-patch+json ({content_type!r})')


# patchMergeKey of the list fields our manifests use (from the core/v1 and
# apps/v1 Go types); a list field not named here is replaced, as in SMP.
_MERGE_KEYS: dict[str, tuple[str, ...]] = {
    'containers': ('name',), 'initContainers': ('name',), 'ephemeralContainers': ('name',),
    'env': ('name',), 'volumes': ('name',), 'volumeMounts': ('mountPath',),
    'imagePullSecrets': ('name',), 'ports': ('containerPort', 'port'),
    'conditions': ('type',), 'ownerReferences': ('uid',), 'hostAliases': ('ip',),
}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """An approximation of strategic merge patch, good for our manifests.

    List fields with a known merge key (containers/env/volumes by ``name``,
    volumeMounts by ``mountPath``, ports by ``containerPort`` or ``port``...)
    merge item by item, keeping items the patch does not mention (as the real
    API does); ``$patch: delete`` items are removed; the
    ``$setElementOrder``/``$retainKeys``/``$deleteFromPrimitiveList``
    directives kubectl sends are dropped. Other lists are replaced, as in a
    merge patch. Not supported: ``$patch: replace``, primitive-list merges.
    """
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if key.startswith('$'):
            continue
        if value is None:
            result.pop(key, None)
        elif key in _MERGE_KEYS and isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(_MERGE_KEYS[key], result[key], value)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_list(keys: tuple[str, ...], old: list[Any], new: list[Any]) -> list[Any]:
    items = old + new
    key = next((k for k in keys if all(isinstance(i, Mapping) and k in i for i in items)), None)
    if key is None:
        return [i for i in new if not (isinstance(i, Mapping) and i.get('$patch'))]
    merged = {i[key]: dict(i) for i in old}
    for item in new:
        if item.get('$patch') == 'delete':
            merged.pop(item[key], None)
        else:
            merged[item[key]] = strategic_merge_patch(merged.get(item[key]), item)
    return list(merged.values())


Predicate = Callable[[Mapping[str, Any]], bool]

_SET_EXPR = re.compile(r'^\s*(!?)([^\s!=<>(),]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$')


def _split_selector(selector: str) -> list[str]:
    # Commas inside `in (a,b)` do not separate requirements.
    parts, depth, current = [], 0, ''
    for char in selector:
        depth += char == '('
        depth -= char == ')'
        if char == ',' and depth == 0:
            parts.append(current)
            current = ''
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def label_selector(selector: str | None) -> Predicate:
    """Compile a label selector (=, ==, !=, in, notin, key, !key)."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for req in _split_selector(selector or ''):
        checks.append(_label_requirement(req))

    def match(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get('metadata') or {}).get('labels') or {}
        return all(check(labels) for check in checks)
    return match


def _label_requirement(req: str) -> Callable[[Mapping[str, str]], bool]:
    for op in ('!=', '==', '='):
        if op in req:
            key, value = (s.strip() for s in req.split(op, 1))
            if op == '!=':
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    found = _SET_EXPR.match(req)
    if not found:
        raise ApiError(400, 'BadRequest', f'unable to parse requirement: {req!r}')
    negated, key, op, values = found.groups()
    if op:
        allowed = {v.strip() for v in values.split(',') if v.strip()}
        if op == 'in':
            return lambda labels: labels.get(key) in allowed
        return lambda labels: labels.get(key) not in allowed
    if negated:
        return lambda labels: key not in labels
    return lambda labels: key in labels


def field_selector(selector: str | None) -> Predicate:
    """Compile a field selector: `a.b=v`, `a.b==v`, `a.b!=v` on any dotted path."""
    checks: list[Predicate] = []
    for req in _split_selector(selector or ''):
        op = '!=' if '!=' in req else '==' if '==' in req else '='
        if op not in req:
            raise ApiError(400, 'BadRequest', f'invalid field selector: {req!r}')
        path, value = (s.strip() for s in req.split(op, 1))
        checks.append(_field_check(path.split('.'), value, negate=op == '!='))
    return lambda obj: all(check(obj) for check in checks)


def _field_check(path: list[str], value: str, *, negate: bool) -> Predicate:
    def check(obj: Mapping[str, Any]) -> bool:
        current: Any = obj
        for part in path:
            current = current.get(part) if isinstance(current, Mapping) else None
        actual = '' if current is None else str(current).lower() if isinstance(current, bool) else str(current)
        return (actual == value) != negate
    return check


def deployment_available_status(deployment: Mapping[str, Any], replicas: int, now: str) -> dict[str, Any]:
    """The status the Deployment controller writes once `replicas` pods are ready."""
    return {
        'observedGeneration': deployment['metadata'].get('generation', 1),
        'replicas': replicas, 'updatedReplicas': replicas, 'readyReplicas': replicas,
        'availableReplicas': replicas,
        'conditions': [
            {'type': 'Available', 'status': 'True', 'reason': 'MinimumReplicasAvailable',
             'lastUpdateTime': now, 'lastTransitionTime': now},
            {'type': 'Progressing', 'status': 'True', 'reason': 'NewReplicaSetAvailable',
             'lastUpdateTime': now, 'lastTransitionTime': now},
        ],
    }
