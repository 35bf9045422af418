"""Decode the few Kubernetes protobuf bodies that real clients send us.

client-go's typed clients (kubectl's imperative ``create namespace|secret|
configmap|serviceaccount``, and helm's release Secrets and their deletion) send
``application/vnd.kubernetes.protobuf`` even when the server answers JSON.
Without the generated schemas we cannot decode every kind, so this module
carries the field numbers of the kinds those clients write (from
k8s.io/api/core/v1/generated.proto and apimachinery's meta/v1) and turns such
bodies into the JSON shape. Any other kind returns None (the caller answers
415). Only decoding: the emulator always answers JSON.
"""
from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

MAGIC = b'k8s\x00'

# field number -> (json name, type); types: 'string', 'bytes', 'bool', 'int',
# a nested schema (dict), ('map', value type), ('list', item type).
Schema = Mapping[int, tuple[str, Any]]

_OWNER_REFERENCE: Schema = {
    1: ('kind', 'string'), 3: ('name', 'string'), 4: ('uid', 'string'), 5: ('apiVersion', 'string'),
    6: ('controller', 'bool'), 7: ('blockOwnerDeletion', 'bool'),
}
_OBJECT_META: Schema = {
    1: ('name', 'string'), 2: ('generateName', 'string'), 3: ('namespace', 'string'),
    5: ('uid', 'string'), 6: ('resourceVersion', 'string'), 7: ('generation', 'int'),
    11: ('labels', ('map', 'string')), 12: ('annotations', ('map', 'string')),
    13: ('ownerReferences', ('list', _OWNER_REFERENCE)), 14: ('finalizers', ('list', 'string')),
}
_LOCAL_REF: Schema = {1: ('name', 'string')}
_OBJECT_REF: Schema = {1: ('kind', 'string'), 2: ('namespace', 'string'), 3: ('name', 'string')}

KINDS: dict[str, Schema] = {
    'Secret': {1: ('metadata', _OBJECT_META), 2: ('data', ('map', 'bytes')), 3: ('type', 'string'),
               4: ('stringData', ('map', 'string')), 5: ('immutable', 'bool')},
    'ConfigMap': {1: ('metadata', _OBJECT_META), 2: ('data', ('map', 'string')),
                  3: ('binaryData', ('map', 'bytes')), 4: ('immutable', 'bool')},
    'Namespace': {1: ('metadata', _OBJECT_META), 2: ('spec', {1: ('finalizers', ('list', 'string'))})},
    'ServiceAccount': {1: ('metadata', _OBJECT_META), 2: ('secrets', ('list', _OBJECT_REF)),
                       3: ('imagePullSecrets', ('list', _LOCAL_REF)),
                       4: ('automountServiceAccountToken', 'bool')},
    'DeleteOptions': {1: ('gracePeriodSeconds', 'int'),
                      2: ('preconditions', {1: ('uid', 'string'), 2: ('resourceVersion', 'string')}),
                      3: ('orphanDependents', 'bool'), 4: ('propagationPolicy', 'string'),
                      5: ('dryRun', ('list', 'string'))},
}
_TYPE_META: Schema = {1: ('apiVersion', 'string'), 2: ('kind', 'string')}
_UNKNOWN: Schema = {1: ('typeMeta', _TYPE_META), 2: ('raw', 'raw')}


def decode(body: bytes) -> dict[str, Any] | None:
    """The JSON form of a protobuf-encoded object of a known kind, else None."""
    if not body.startswith(MAGIC):
        return None
    try:
        envelope = _message(body[len(MAGIC):], _UNKNOWN)
        type_meta = envelope.get('typeMeta') or {}
        schema = KINDS.get(type_meta.get('kind', ''))
        if schema is None:
            return None
        obj = _message(envelope.get('raw', b''), schema)
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    return {'apiVersion': type_meta.get('apiVersion', 'v1'), 'kind': type_meta['kind'], **obj}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    found: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            found.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            found.append((number, data[pos:pos + length]))
            pos += length
        elif wire in (1, 5):  # fixed64/fixed32: none in our kinds, skipped
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f'unsupported protobuf wire type {wire}')
    return found


def _message(data: bytes, schema: Schema) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in schema:
            continue  # fields we do not model (timestamps, managedFields, status)
        name, kind = schema[number]
        if isinstance(kind, tuple) and kind[0] == 'map':
            entry = _message(value, {1: ('key', 'string'), 2: ('value', kind[1])})  # type: ignore[arg-type]
            result.setdefault(name, {})[entry.get('key', '')] = entry.get('value', _empty(kind[1]))
        elif isinstance(kind, tuple):
            result.setdefault(name, []).append(_scalar(value, kind[1]))
        else:
            result[name] = _scalar(value, kind)
    return result


def _empty(kind: Any) -> Any:
    return '' if kind in ('string', 'bytes') else None


def _scalar(value: int | bytes, kind: Any) -> Any:
    if isinstance(value, int) != (kind in ('bool', 'int')):
        raise ValueError('protobuf wire type does not match the schema')
    if isinstance(kind, Mapping):
        return _message(bytes(value), kind)  # type: ignore[arg-type]
    if kind == 'string':
        return bytes(value).decode()  # type: ignore[arg-type]
    if kind == 'bytes':  # JSON carries bytes as base64, as the API does
        return base64.b64encode(bytes(value)).decode()  # type: ignore[arg-type]
    if kind == 'bool':
        return bool(value)
    return value  # 'int' and 'raw'
