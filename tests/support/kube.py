"""A Kubernetes API server for tests: kmock 0.8's KubernetesEmulator plus the gaps filled.

``KubeEmulator`` keeps kmock's object store (``kube.objects[...]``), resource
declarations (``kube.resources``) and reaction DSL (``kube['post /apis/...'] << 500``
answers before the built-in behaviour), and replaces the request routing to
behave like kube-apiserver where Kopf, the ``kubernetes`` client and kubectl
need it. Each filled gap is marked ``GAP:`` here and in the mixins
(``kubewatch``: watch semantics; ``kubediscovery``: declared resources and
discovery; ``harness``: serving from a thread and the sync helpers of the
``kube`` fixture; ``tokenreview``: TokenReview).

Not emulated (do not rely on them): controllers (no garbage collection by
owner references, no namespace deletion cascade, no Deployment/Job status —
use the harness helpers), OpenAPI (kubectl needs ``--validate=false``, helm
``--disable-openapi-validation``), protobuf beyond the kinds in
``tests.support.protobuf``, field ownership of server-side apply (approximated
as create-or-merge-patch), the ``scale`` subresource, admission, RBAC
authorization (any non-empty bearer token is accepted), pagination (lists
come whole).
"""
from __future__ import annotations

import asyncio
import collections
import copy
import json
import logging
import secrets
import threading
import uuid
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import apps

from tests.support import kubediscovery, protobuf
from tests.support import kubeproto as kp
from tests.support.harness import KubeHelpers
from tests.support.kubediscovery import DiscoveryMixin
from tests.support.kubeproto import ApiError
from tests.support.kubewatch import Change, WatchMixin, Watcher
from tests.support.tokenreview import TokenReviewer

log = logging.getLogger(__name__)

TOKENREVIEWS = kubediscovery.TOKENREVIEWS

_GENERATE_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789'  # apimachinery's SimpleNameGenerator


@attrs.define(kw_only=True)
class KubeEmulator(KubeHelpers, WatchMixin, DiscoveryMixin, kmock.KubernetesEmulator):
    request_log_limit: int = 300  # GAP: kmock scans its whole request log on every request
    event_log_limit: int = 10000  # watch history kept for ?resourceVersion=; older -> 410
    collect_garbage: bool = False  # opt-in: delete dependents (ownerReferences) with their owner
    require_namespaces: bool = False  # opt-in: creating in a missing Namespace is a 404, as for real
    host: str = '127.0.0.1'
    port: int = 0

    tokenreview: TokenReviewer = attrs.field(init=False)
    _rv: int = attrs.field(default=0, init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)
    _events: collections.deque[tuple[int, kmock.resource, Change]] = attrs.field(
        factory=collections.deque, init=False)
    _watchers: set[Watcher] = attrs.field(factory=set, init=False)
    _served: int = attrs.field(default=0, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _stop_event: asyncio.Event | None = attrs.field(default=None, init=False)
    _web_server: Any = attrs.field(default=None, init=False)
    _site: Any = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        # Deliberately not calling kmock's post-init: its fallback reactions are
        # replaced by _route() (also avoids scanning the request log for them).
        kubediscovery.declare(self.resources)
        self.tokenreview = TokenReviewer(
            service_account_uid=lambda ns, n: self._uid_of('v1/serviceaccounts', ns, n),
            pod_uid=lambda ns, n: self._uid_of('v1/pods', ns, n))

    # ---- HTTP entry point ------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        try:
            request = await self._parse(raw)
            return await self._handle(request)
        except ApiError as exc:
            return aiohttp.web.json_response(exc.status(), status=exc.code)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # answer like the API does; never a traceback
            log.exception('emulator failure on %s %s', raw.method, raw.path)
            return await self._render_error(exc)

    async def _parse(self, raw: aiohttp.web.BaseRequest) -> kmock.Request:
        # GAP: kmock's parser fails on /api/v1/namespaces (and Namespace objects).
        body = await raw.read()
        path = kp.parse_path(raw.path)
        request = kmock.Request(
            id=self._served, raw_request=raw, url=raw.url, method=raw.method,
            params=dict(raw.query), headers=dict(raw.headers), cookies=dict(raw.cookies),
            body=body, text=body.decode('utf-8', 'replace'), data=_decode(raw, body),
            action=_action(path, raw.method, raw.query.get('watch')),
            resource=kmock.resource(path.group, path.version, path.plural) if path else None,
            namespace=path.namespace if path else None, name=path.name if path else None,
            subresource=path.subresource if path else None)
        self._served += 1
        self._requests.append(request)
        if len(self._requests) > self.request_log_limit:
            self.trim_requests(self.request_log_limit // 2)
        return request

    def trim_requests(self, keep: int = 0) -> None:
        """Forget all but the last `keep` requests (kmock's log and reactions)."""
        del self._requests[:len(self._requests) - keep]
        for payload in self._payloads:
            del payload._requests[:max(0, len(payload._requests) - keep)]

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if self._payloads:  # reactions declared by the test answer first
            try:
                return await apps.RawHandler._handle(self, request)
            except NotImplementedError:
                pass
        return await self._route(request)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        # GAP: kmock puts a server traceback into every error's details.
        if isinstance(exc, kmock.KubernetesError):
            error = ApiError(exc.status, exc.reason or 'Failure', exc.message or '')
        else:
            error = ApiError(500, 'InternalError', f'Internal error occurred: {exc!r}')
        return aiohttp.web.json_response(error.status(), status=error.code)

    async def _route(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        path = kp.parse_path(raw.path)
        if path is None:
            return aiohttp.web.json_response(await self._discovery(request, raw.path))
        res = kmock.resource(path.group, path.version, path.plural)
        if res not in self.resources:
            raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
        if res == TOKENREVIEWS:
            # GAP: create-only review APIs are answered, never stored.
            if raw.method != 'POST' or path.name:
                raise ApiError(405, 'MethodNotAllowed', 'the server does not allow this method')
            return await self.tokenreview.serve(raw, request.data)
        info = self.resources[res]
        if bool(path.namespace) and not info.namespaced:
            raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
        if path.subresource and path.subresource not in info.subresources:
            raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
        query = raw.query
        if raw.method == 'GET' and query.get('watch') in ('true', '1'):
            return await self._watch(raw, res, path.namespace, path.name)
        status, obj = self._dispatch(raw.method, res, path, request.data, raw)
        return aiohttp.web.json_response(obj, status=status)

    def _dispatch(self, method: str, res: kmock.resource, path: kp.ApiPath, data: Any,
                  raw: aiohttp.web.BaseRequest) -> tuple[int, dict[str, Any]]:
        ns, name, sub = path.namespace, path.name, path.subresource
        dry = 'dryRun' in raw.query
        if method == 'GET' and name:
            return 200, self.op_get(res, ns, name)
        if method == 'GET':
            return 200, self.op_list(res, ns, raw.query.get('labelSelector'), raw.query.get('fieldSelector'))
        if method == 'POST' and not name:
            return 201, self.op_create(res, ns, data, dry_run=dry)
        if method == 'PUT' and name:
            return 200, self.op_replace(res, ns, name, data, sub, dry_run=dry)
        if method == 'PATCH' and name:
            ctype = raw.headers.get('Content-Type', '').split(';')[0].strip()
            return self.op_patch(res, ns, name, data, ctype, sub, dry_run=dry)
        if method == 'DELETE' and name:
            return 200, self.op_delete(res, ns, name, data if isinstance(data, dict) else {}, dry_run=dry)
        raise ApiError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource')

    # ---- state operations (run on the server's loop; sync helpers call them too) ----

    def _live(self, res: kmock.resource, ns: str | None, name: str) -> dict[str, Any] | None:
        key = (res, ns, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return self._objects[key].raw

    def _uid_of(self, res_key: str, ns: str, name: str) -> str | None:
        obj = self._live(kmock.resource(res_key), ns, name)
        return obj['metadata'].get('uid') if obj else None

    def _store(self, res: kmock.resource, ns: str | None, name: str, obj: dict[str, Any] | None) -> None:
        # kmock's store keeps every version (kube.objects[..., 'name', :]) for assertions.
        key = (res, ns, name)
        if key not in self._objects:
            self._objects[key] = obj
        elif obj is None:
            self._objects[key].delete()
        else:
            self._objects[key].history.append(obj)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _info(self, res: kmock.resource) -> kmock.ResourceInfo:
        return self.resources[res]

    def op_get(self, res: kmock.resource, ns: str | None, name: str) -> dict[str, Any]:
        obj = self._live(res, ns, name)
        if obj is None:
            raise kp.not_found(res.plural or '', res.group or '', name)
        return obj

    def op_list(self, res: kmock.resource, ns: str | None, labels: str | None = None,
                fields: str | None = None) -> dict[str, Any]:
        # GAP: lists carry kind/apiVersion/resourceVersion; selectors are honoured.
        match_labels, match_fields = kp.label_selector(labels), kp.field_selector(fields)
        items = [obj for obj in self._objects_of(res, ns) if match_labels(obj) and match_fields(obj)]
        return {'kind': f'{self._info(res).kind}List', 'apiVersion': _api_version(res),
                'metadata': {'resourceVersion': str(self._rv)}, 'items': items}

    def _objects_of(self, res: kmock.resource, ns: str | None) -> list[dict[str, Any]]:
        found = []
        for (r, obj_ns, _), obj in self._objects.items():
            if r == res and (ns is None or obj_ns == ns) and not obj.deleted:
                found.append(obj.raw)
        return sorted(found, key=lambda o: int((o.get('metadata') or {}).get('resourceVersion') or 0))

    def op_create(self, res: kmock.resource, ns: str | None, body: Any, *, dry_run: bool = False) -> dict[str, Any]:
        obj = self._new_object(res, ns, body)
        name = obj['metadata']['name']
        if self._live(res, ns, name) is not None:  # GAP: 409 on an existing name
            raise kp.already_exists(res.plural or '', res.group or '', name)
        if dry_run:
            return obj
        obj['metadata']['resourceVersion'] = self._next_rv()
        self._store(res, ns, name, obj)
        self._emit(res, 'ADDED', obj)
        if res == kubediscovery.CRDS:  # GAP: a created CRD's resources are served
            kubediscovery.declare_crd(self.resources, obj)
        return obj

    def _new_object(self, res: kmock.resource, ns: str | None, body: Any) -> dict[str, Any]:
        """Validate a new object and stamp what the server owns (GAP: kmock stamps nothing)."""
        info = self._info(res)
        if not isinstance(body, dict):
            raise ApiError(400, 'BadRequest', 'the body of the request was not a JSON object')
        obj = copy.deepcopy(body)
        meta = obj['metadata'] = self._place(info, ns, dict(obj.get('metadata') or {}))
        if error := kp.name_error(res.plural or '', res.group or '', str(meta['name'])):  # per-kind name rules
            raise kp.invalid(info.kind or '', str(meta['name']), error)
        obj['apiVersion'], obj['kind'] = _api_version(res), info.kind
        if 'status' in info.subresources:
            obj.pop('status', None)  # GAP: status only via /status
        obj.update(_initial_status(res, obj))  # what the controllers would report at once
        if res == kmock.resource('v1/secrets') and not obj.get('type'):
            obj['type'] = 'Opaque'  # API defaulting
        for stale in ('deletionTimestamp', 'deletionGracePeriodSeconds'):
            meta.pop(stale, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=kp.now_rfc3339(), generation=1)
        return obj

    def _place(self, info: kmock.ResourceInfo, ns: str | None, meta: dict[str, Any]) -> dict[str, Any]:
        """The namespace (GAP: from the URL) and name (GAP: generateName) of a new object."""
        if info.namespaced:
            if not ns:  # the real API has no POST route on the all-namespaces collection
                raise ApiError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource')
            if meta.get('namespace') not in (None, '', ns):
                raise ApiError(400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request')
            if self.require_namespaces and self._live(kmock.resource('v1/namespaces'), None, ns) is None:
                raise kp.not_found('namespaces', '', ns)
            meta['namespace'] = ns
        else:
            meta.pop('namespace', None)
        if meta.get('resourceVersion'):
            raise ApiError(400, 'BadRequest', 'resourceVersion should not be set on objects to be created')
        if not meta.get('name') and meta.get('generateName'):
            meta['name'] = meta['generateName'] + ''.join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
        if not meta.get('name'):
            raise kp.invalid(info.kind or '', '', 'metadata.name: Required value: name or generateName is required')
        return meta

    def op_replace(self, res: kmock.resource, ns: str | None, name: str, body: Any,
                   sub: str | None = None, *, dry_run: bool = False) -> dict[str, Any]:
        # GAP: PUT (replace), with optimistic concurrency.
        old = self.op_get(res, ns, name)
        if not isinstance(body, dict):
            raise ApiError(400, 'BadRequest', 'the body of the request was not a JSON object')
        given = (body.get('metadata') or {})
        if given.get('name') not in (None, name):
            raise ApiError(400, 'BadRequest', 'the name of the object does not match the name on the URL')
        self._check_rv(res, name, old, given.get('resourceVersion'))
        return self._commit(res, ns, name, old, copy.deepcopy(body), sub, dry_run=dry_run)

    def op_patch(self, res: kmock.resource, ns: str | None, name: str, patch: Any, content_type: str,
                 sub: str | None = None, *, dry_run: bool = False) -> tuple[int, dict[str, Any]]:
        old = self._live(res, ns, name)
        if content_type == 'application/apply-patch+yaml':
            if not isinstance(patch, dict):
                raise ApiError(400, 'BadRequest', 'the apply configuration is not an object')
            if old is None:  # approximated server-side apply: create when absent
                body = {**patch, 'metadata': {**(patch.get('metadata') or {}), 'name': name}}
                return 201, self.op_create(res, ns, body, dry_run=dry_run)
            content_type = 'application/merge-patch+json'
        if old is None:
            raise kp.not_found(res.plural or '', res.group or '', name)
        new = kp.apply_patch(old, patch, content_type, self._info(res).kind or '', name)
        self._check_rv(res, name, old, (new.get('metadata') or {}).get('resourceVersion')
                       if content_type != 'application/json-patch+json' else None)
        return 200, self._commit(res, ns, name, old, new, sub, dry_run=dry_run)

    def _check_rv(self, res: kmock.resource, name: str, old: dict[str, Any], given: Any) -> None:
        # GAP: optimistic concurrency — a stale resourceVersion is a 409 Conflict.
        if given and str(given) != old['metadata']['resourceVersion']:
            raise kp.conflict(res.plural or '', res.group or '', name)

    def _commit(self, res: kmock.resource, ns: str | None, name: str, old: dict[str, Any],
                new: dict[str, Any], sub: str | None, *, dry_run: bool = False) -> dict[str, Any]:
        info = self._info(res)
        if sub == 'status':  # GAP: /status changes the status only ...
            new = {**old, 'status': new.get('status')}
            if new['status'] is None:
                del new['status']
        elif 'status' in info.subresources:  # ... and the main endpoint never does
            new.pop('status', None)
            if 'status' in old:
                new['status'] = old['status']
        meta = new['metadata'] = dict(new.get('metadata') or {})
        for key in ('uid', 'creationTimestamp', 'deletionTimestamp', 'deletionGracePeriodSeconds',
                    'generation', 'namespace', 'name', 'resourceVersion'):
            if key in old['metadata']:
                meta[key] = old['metadata'][key]
            else:
                meta.pop(key, None)
        new['apiVersion'], new['kind'] = old['apiVersion'], old['kind']
        if new == old or dry_run:  # a no-op write bumps nothing and notifies nobody
            return new
        if _spec_of(new) != _spec_of(old):  # GAP: generation bumps on spec changes only
            meta['generation'] = int(old['metadata'].get('generation', 1)) + 1
        meta['resourceVersion'] = self._next_rv()
        if meta.get('deletionTimestamp') and not meta.get('finalizers'):
            self._remove(res, ns, name, new)  # the last finalizer is gone: the object goes
        else:
            self._store(res, ns, name, new)
            self._emit(res, 'MODIFIED', new, old)
        return new

    def op_delete(self, res: kmock.resource, ns: str | None, name: str,
                  options: dict[str, Any] | None = None, *, dry_run: bool = False) -> dict[str, Any]:
        obj = self.op_get(res, ns, name)
        meta = obj['metadata']
        pre = (options or {}).get('preconditions') or {}
        if pre.get('uid') not in (None, meta['uid']) or pre.get('resourceVersion') not in (None, meta['resourceVersion']):
            raise ApiError(409, 'Conflict', f'Precondition failed for {kp.qualified(res.plural or "", res.group or "")} "{name}"')
        if dry_run:
            return obj
        if meta.get('finalizers'):
            if meta.get('deletionTimestamp'):
                return obj
            new = {**obj, 'metadata': {**meta, 'deletionTimestamp': kp.now_rfc3339(),
                                       'deletionGracePeriodSeconds': 0, 'resourceVersion': self._next_rv()}}
            self._store(res, ns, name, new)
            self._emit(res, 'MODIFIED', new, obj)
            return new
        gone = {**obj, 'metadata': {**meta, 'resourceVersion': self._next_rv()}}
        self._remove(res, ns, name, gone, orphan=(options or {}).get('propagationPolicy') == 'Orphan')
        return gone

    def _remove(self, res: kmock.resource, ns: str | None, name: str, last: dict[str, Any],
                orphan: bool = False) -> None:
        self._store(res, ns, name, None)
        self._emit(res, 'DELETED', last)
        if self.collect_garbage and not orphan:
            self._collect(last['metadata']['uid'])

    def _collect(self, owner_uid: str) -> None:
        # Opt-in garbage collector: dependents go when their owner is gone
        # (background propagation; their own finalizers still hold them).
        for (res, ns, name), obj in list(self._objects.items()):
            refs = [] if obj.deleted else obj.raw['metadata'].get('ownerReferences') or []
            if any(ref.get('uid') == owner_uid for ref in refs):
                self.op_delete(res, ns, name)

def _initial_status(res: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
    if res == kmock.resource('v1/namespaces'):
        return {'status': {'phase': 'Active'}}
    if res == kubediscovery.CRDS:
        now = kp.now_rfc3339()
        spec = obj.get('spec') or {}
        return {'status': {
            'acceptedNames': spec.get('names') or {},
            'storedVersions': [v['name'] for v in spec.get('versions') or [] if v.get('storage')],
            'conditions': [{'type': kind, 'status': 'True', 'reason': reason, 'lastTransitionTime': now}
                           for kind, reason in (('NamesAccepted', 'NoConflicts'),
                                                ('Established', 'InitialNamesAccepted'))]}}
    return {}


def _api_version(res: kmock.resource) -> str:
    return kp.api_version(res.group, res.version)


def _spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ('metadata', 'status')}


def _action(path: kp.ApiPath | None, method: str, watch: str | None) -> kmock.action | None:
    # Feeds kmock's reaction filters (e.g. kube['create', 'tokenreviews']).
    if path is None:
        return None
    if method == 'GET':
        return kmock.action.WATCH if watch in ('true', '1') else kmock.action.FETCH if path.name else kmock.action.LIST
    return {('POST', False): kmock.action.CREATE, ('PATCH', True): kmock.action.UPDATE,
            ('PUT', True): kmock.action.UPDATE, ('DELETE', True): kmock.action.DELETE,
            }.get((method, bool(path.name)))


def _decode(raw: aiohttp.web.BaseRequest, body: bytes) -> Any:
    if not body:
        return None
    if raw.content_type == 'application/vnd.kubernetes.protobuf':
        # GAP: client-go's typed clients (kubectl create <kind>, helm's release
        # Secrets) write protobuf; the kinds they write are decoded, others are a 415.
        decoded = protobuf.decode(body)
        if decoded is None:
            raise ApiError(415, 'UnsupportedMediaType', 'the emulator decodes protobuf only for '
                           f'{", ".join(protobuf.KINDS)}; send application/json')
        return decoded
    try:
        if raw.content_type == 'application/apply-patch+yaml':
            return yaml.safe_load(body)
        return json.loads(body)
    except (ValueError, yaml.YAMLError):
        raise ApiError(400, 'BadRequest', 'the body of the request could not be decoded')
