"""A Kubernetes API server for tests: kmock 0.8's KubernetesEmulator plus the gaps filled.

``KubeEmulator`` keeps kmock's object store (``kube.objects[...]``), resource
declarations (``kube.resources``) and reaction DSL (``kube['post /apis/...'] << 500``
answers before the built-in behaviour), and replaces the request routing to
behave like kube-apiserver where Kopf, the ``kubernetes`` client and kubectl
need it. Each filled gap is marked ``GAP:`` below. Served over real HTTP on
127.0.0.1 from a background thread (``start()``/``stop()``; see
``tests.support.harness`` for the sync helpers the ``kube`` fixture offers).

Not emulated (do not rely on them): controllers (no garbage collection by
owner references, no Deployment/Job status — use the harness helpers), OpenAPI
(kubectl needs ``--validate=false``), protobuf, field ownership of server-side
apply (it is approximated as create-or-merge), admission, RBAC authorization.
"""
from __future__ import annotations

import asyncio
import collections
import copy
import json
import logging
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import apps

from tests.support import kubeproto as kp
from tests.support import protobuf
from tests.support.harness import KubeHelpers
from tests.support.kubeproto import ApiError
from tests.support.tokenreview import TokenReviewer

log = logging.getLogger(__name__)

_ALL_VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch']
TOKENREVIEWS = kmock.resource('authentication.k8s.io', 'v1', 'tokenreviews')

# (group/version/plural, kind, namespaced, short names, subresources)
RESOURCES: list[tuple[str, str, bool, tuple[str, ...], tuple[str, ...]]] = [
    ('v1/namespaces', 'Namespace', False, ('ns',), ('status',)),
    ('v1/serviceaccounts', 'ServiceAccount', True, ('sa',), ()),
    ('v1/secrets', 'Secret', True, (), ()),
    ('v1/configmaps', 'ConfigMap', True, ('cm',), ()),
    ('v1/services', 'Service', True, ('svc',), ('status',)),
    ('v1/persistentvolumeclaims', 'PersistentVolumeClaim', True, ('pvc',), ('status',)),
    ('v1/events', 'Event', True, ('ev',), ()),
    ('v1/pods', 'Pod', True, ('po',), ('status',)),
    ('apps/v1/deployments', 'Deployment', True, ('deploy',), ('status',)),
    ('batch/v1/jobs', 'Job', True, (), ('status',)),
    ('networking.k8s.io/v1/ingresses', 'Ingress', True, ('ing',), ('status',)),
    ('networking.k8s.io/v1/networkpolicies', 'NetworkPolicy', True, ('netpol',), ()),
    ('policy/v1/poddisruptionbudgets', 'PodDisruptionBudget', True, ('pdb',), ('status',)),
    ('rbac.authorization.k8s.io/v1/clusterroles', 'ClusterRole', False, (), ()),
    ('rbac.authorization.k8s.io/v1/clusterrolebindings', 'ClusterRoleBinding', False, (), ()),
    ('rbac.authorization.k8s.io/v1/roles', 'Role', True, (), ()),
    ('rbac.authorization.k8s.io/v1/rolebindings', 'RoleBinding', True, (), ()),
    ('coordination.k8s.io/v1/leases', 'Lease', True, (), ()),
    ('apiextensions.k8s.io/v1/customresourcedefinitions', 'CustomResourceDefinition', False,
     ('crd', 'crds'), ('status',)),
    ('events.k8s.io/v1/events', 'Event', True, ('ev',), ()),
    ('mlflow-operator.dev/v1alpha1/mlflowservers', 'MLflowServer', True, ('mlflow',), ('status',)),
]

_GENERATE_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789'  # apimachinery's SimpleNameGenerator


# A watch event plus the object's previous state (to see selector transitions).
_Change = tuple[dict[str, Any], dict[str, Any] | None]


@dataclass(eq=False)
class _Watcher:
    resource: kmock.resource
    queue: asyncio.Queue[_Change | None] = field(default_factory=asyncio.Queue)


@attrs.define(kw_only=True)
class KubeEmulator(KubeHelpers, kmock.KubernetesEmulator):
    request_log_limit: int = 300  # GAP: kmock scans its whole request log on every request
    event_log_limit: int = 10000  # watch history kept for ?resourceVersion=; older -> 410
    host: str = '127.0.0.1'
    port: int = 0

    tokenreview: TokenReviewer = attrs.field(init=False)
    _rv: int = attrs.field(default=0, init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)
    _events: collections.deque[tuple[int, kmock.resource, _Change]] = attrs.field(
        factory=collections.deque, init=False)
    _watchers: set[_Watcher] = attrs.field(factory=set, init=False)
    _served: int = attrs.field(default=0, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _stop_event: asyncio.Event | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        # Deliberately not calling kmock's post-init: its fallback reactions are
        # replaced by _route() (also avoids scanning the request log for them).
        for key, kind, namespaced, short, subs in RESOURCES:
            self.resources[key] = kmock.ResourceInfo(
                kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=_ALL_VERBS,
                shortnames=short, subresources=subs)
        self.resources[TOKENREVIEWS] = kmock.ResourceInfo(
            kind='TokenReview', singular='tokenreview', namespaced=False, verbs=['create'])
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
        key = (res, ns, name)
        if key not in self._objects:
            self._objects[key] = obj if obj is not None else []
        elif obj is None:
            self._objects[key].delete()
        else:
            self._objects[key].history.append(obj)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, res: kmock.resource, kind: str, obj: dict[str, Any], prev: dict[str, Any] | None = None) -> None:
        change: _Change = ({'type': kind, 'object': obj}, prev)
        self._events.append((self._rv, res, change))
        while len(self._events) > self.event_log_limit:
            self._compacted_rv = self._events.popleft()[0]
        for watcher in self._watchers:
            if watcher.resource == res:
                watcher.queue.put_nowait(change)

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
        return sorted(found, key=lambda o: int(o['metadata'].get('resourceVersion', '0')))

    def op_create(self, res: kmock.resource, ns: str | None, body: Any, *, dry_run: bool = False) -> dict[str, Any]:
        info = self._info(res)
        if not isinstance(body, dict):
            raise ApiError(400, 'BadRequest', 'the body of the request was not a JSON object')
        obj = copy.deepcopy(body)
        meta = obj['metadata'] = dict(obj.get('metadata') or {})
        if info.namespaced:
            if not ns:  # the real API has no POST route on the all-namespaces collection
                raise ApiError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource')
            if meta.get('namespace') not in (None, '', ns):  # GAP: namespace comes from the URL
                raise ApiError(400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request')
            meta['namespace'] = ns
        else:
            meta.pop('namespace', None)
        if meta.get('resourceVersion'):
            raise ApiError(400, 'BadRequest', 'resourceVersion should not be set on objects to be created')
        if not meta.get('name') and meta.get('generateName'):  # GAP: generateName
            meta['name'] = meta['generateName'] + ''.join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
        name = meta.get('name')
        if not name:
            raise kp.invalid(info.kind or '', '', 'metadata.name: Required value: name or generateName is required')
        if error := kp.name_error(res.plural or '', res.group or '', str(name)):  # GAP: per-kind name rules
            raise kp.invalid(info.kind or '', str(name), error)
        if self._live(res, ns, name) is not None:  # GAP: 409 on an existing name
            raise kp.already_exists(res.plural or '', res.group or '', name)
        obj['apiVersion'], obj['kind'] = _api_version(res), info.kind
        if 'status' in info.subresources:
            obj.pop('status', None)  # GAP: status only via /status
        obj.update(_initial_status(res, obj))  # GAP: what the controllers would report at once
        if res == kmock.resource('v1/secrets') and not obj.get('type'):
            obj['type'] = 'Opaque'  # API defaulting
        for stale in ('deletionTimestamp', 'deletionGracePeriodSeconds', 'uid', 'creationTimestamp'):
            meta.pop(stale, None)
        # GAP: the server stamps identity and versioning metadata.
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=kp.now_rfc3339(), generation=1)
        if dry_run:
            return obj
        meta['resourceVersion'] = self._next_rv()
        self._store(res, ns, name, obj)
        self._emit(res, 'ADDED', obj)
        return obj

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
            if old is None:  # approximated server-side apply: create when absent
                body = dict(patch or {})
                body.setdefault('metadata', {})['name'] = name
                return 201, self.op_create(res, ns, body, dry_run=dry_run)
            content_type = 'application/merge-patch+json'
        if old is None:
            raise kp.not_found(res.plural or '', res.group or '', name)
        new = self._apply_patch(res, name, old, patch, content_type)
        self._check_rv(res, name, old, (new.get('metadata') or {}).get('resourceVersion')
                       if content_type != 'application/json-patch+json' else None)
        return 200, self._commit(res, ns, name, old, new, sub, dry_run=dry_run)

    def _apply_patch(self, res: kmock.resource, name: str, old: dict[str, Any], patch: Any,
                     content_type: str) -> dict[str, Any]:
        kind = self._info(res).kind or ''
        if content_type == 'application/json-patch+json':
            # GAP: a failing JSON patch is a 422 (a malformed one a 400), not a 500.
            if not isinstance(patch, list) or not all(isinstance(op, dict) for op in patch):
                raise ApiError(400, 'BadRequest', 'json: cannot unmarshal the body into a JSON patch (an array of operations)')
            try:
                return jsonpatch.apply_patch(copy.deepcopy(old), patch)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError) as exc:
                raise kp.invalid(kind, name, f'the JSON patch could not be applied: {exc}')
        if not isinstance(patch, dict):
            raise ApiError(400, 'BadRequest', 'the patch is not a JSON object')
        if content_type == 'application/merge-patch+json':
            return kp.merge_patch(old, patch)
        if content_type == 'application/strategic-merge-patch+json':
            return kp.strategic_merge_patch(old, patch)  # GAP: lists merged by key
        raise ApiError(415, 'UnsupportedMediaType', f'the body of the request was in an unknown format - accepted media types include: '
                       'application/json-patch+json, application/merge-patch+json, '
                       f'application/apply-patch+yaml, application/strategic-merge-patch+json ({content_type!r})')

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
            self._store(res, ns, name, None)  # the last finalizer is gone: the object goes
            self._emit(res, 'DELETED', new)
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
        self._store(res, ns, name, None)
        self._emit(res, 'DELETED', gone)
        return gone

    # ---- watch -------------------------------------------------------------------

    async def _watch(self, raw: aiohttp.web.BaseRequest, res: kmock.resource, ns: str | None,
                     name: str | None) -> aiohttp.web.StreamResponse:
        # GAP: watches honour resourceVersion, selectors, timeoutSeconds; JSON content type.
        q = raw.query
        labels, fields = kp.label_selector(q.get('labelSelector')), kp.field_selector(q.get('fieldSelector'))

        def wanted(obj: dict[str, Any]) -> bool:
            meta = obj.get('metadata') or {}
            return ((ns is None or meta.get('namespace') == ns) and (name is None or meta.get('name') == name)
                    and labels(obj) and fields(obj))

        since = q.get('resourceVersion', '')
        initial_events = q.get('sendInitialEvents') == 'true'
        if since not in ('', '0') and not since.isdigit():
            raise ApiError(400, 'BadRequest', f'invalid resource version: {since!r}')
        watcher = _Watcher(res)
        self._watchers.add(watcher)  # registered in the same loop step as the snapshot below
        try:
            if since in ('', '0') or initial_events:
                backlog = [{'type': 'ADDED', 'object': o} for o in self._objects_of(res, ns) if wanted(o)]
            elif int(since) < self._compacted_rv:
                backlog = [{'type': 'ERROR', 'object': ApiError(
                    410, 'Expired', f'too old resource version: {since} ({self._rv})').status()}]
            else:
                backlog = [e for rv, r, c in self._events if r == res and rv > int(since) and (e := _seen_as(c, wanted))]
            if initial_events:
                backlog.append(self._bookmark(res, initial_end=True))
            response = aiohttp.web.StreamResponse(status=200)
            response.content_type = 'application/json'
            response.enable_chunked_encoding()
            await response.prepare(raw)
            for event in backlog:
                await response.write(json.dumps(event).encode() + b'\n')
            if backlog and backlog[0]['type'] == 'ERROR':
                await response.write_eof()
                return response
            await self._stream_events(response, watcher, wanted, float(q.get('timeoutSeconds') or 1800))
            if q.get('allowWatchBookmarks') == 'true':
                await response.write(json.dumps(self._bookmark(res)).encode() + b'\n')
            await response.write_eof()
            return response
        finally:
            self._watchers.discard(watcher)

    async def _stream_events(self, response: aiohttp.web.StreamResponse, watcher: _Watcher,
                             wanted: Any, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                change = await asyncio.wait_for(watcher.queue.get(), remaining)
            except TimeoutError:
                return
            if change is None:  # the server is stopping
                return
            if seen := _seen_as(change, wanted):
                await response.write(json.dumps(seen).encode() + b'\n')

    def _bookmark(self, res: kmock.resource, initial_end: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {'resourceVersion': str(self._rv)}
        if initial_end:
            meta['annotations'] = {'k8s.io/initial-events-end': 'true'}
        return {'type': 'BOOKMARK', 'object': {'kind': self._info(res).kind, 'apiVersion': _api_version(res),
                                               'metadata': meta}}

    # ---- discovery ---------------------------------------------------------------

    async def _discovery(self, request: kmock.Request, path: str) -> dict[str, Any]:
        path = '/' + path.strip('/')
        if path == '/':
            return await self._serve_root(request)
        if path == '/version':
            return {'major': '1', 'minor': '35', 'gitVersion': 'v1.35.0', 'platform': 'linux/amd64'}
        if path == '/api':
            return {'kind': 'APIVersions', 'versions': ['v1']}
        if path == '/apis':
            return await self._serve_apis(request)
        found = re.fullmatch(r'/api/([^/]+)|/apis/([^/]+)(?:/([^/]+))?', path)
        if found and found.group(1):
            return self._resource_list('', found.group(1))
        if found and found.group(3):
            return self._resource_list(found.group(2), found.group(3))
        if found:
            return self._group(found.group(2))
        raise ApiError(404, 'NotFound', 'the server could not find the requested resource')

    def _group(self, group: str) -> dict[str, Any]:
        versions = sorted({r.version for r in self.resources if r.group == group})
        if not versions:
            raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
        entries = [{'groupVersion': f'{group}/{v}', 'version': v} for v in versions]
        return {'kind': 'APIGroup', 'apiVersion': 'v1', 'name': group,
                'versions': entries, 'preferredVersion': entries[0]}

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        # GAP: core groupVersion is "v1" (not "/v1"); subresources carry no short names.
        entries: list[dict[str, Any]] = []
        for res in self.resources:
            if res.group != group or res.version != version:
                continue
            info = self.resources[res]
            entries.append({'name': res.plural, 'singularName': info.singular or '', 'namespaced': bool(info.namespaced),
                            'kind': info.kind, 'verbs': sorted(info.verbs), 'shortNames': sorted(info.shortnames)})
            entries.extend({'name': f'{res.plural}/{sub}', 'singularName': '', 'namespaced': bool(info.namespaced),
                            'kind': info.kind, 'verbs': ['get', 'patch', 'update']} for sub in sorted(info.subresources))
        if not entries:
            raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
        return {'kind': 'APIResourceList', 'apiVersion': 'v1',
                'groupVersion': f'{group}/{version}' if group else version, 'resources': entries}

    # ---- lifecycle: a real HTTP server on its own loop in a background thread ------

    @property
    def url(self) -> str:  # type: ignore[override]
        return f'http://{self.host}:{self.port}'

    def start(self) -> KubeEmulator:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve(ready, failure)),
                                        name='kube-emulator', daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(30)
        self._loop = self._thread = self._stop_event = None

    async def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            self._loop, self._stop_event = asyncio.get_running_loop(), asyncio.Event()
            async with self:
                server = aiohttp.web.Server(self, access_log=None, handler_cancellation=True)
                runner = aiohttp.web.ServerRunner(server, shutdown_timeout=2)
                await runner.setup()
                site = aiohttp.web.TCPSite(runner, self.host, self.port)
                await site.start()
                self.port = runner.addresses[0][1]
                ready.set()
                await self._stop_event.wait()
                for watcher in self._watchers:
                    watcher.queue.put_nowait(None)
                await runner.cleanup()
        except BaseException as exc:  # surfaced by start()
            failure.append(exc)
            ready.set()


def _seen_as(change: _Change, wanted: Any) -> dict[str, Any] | None:
    # GAP: through a selector, an object that starts matching is ADDED and one
    # that stops matching is DELETED (as kube-apiserver's filtered watches do).
    event, prev = change
    now = wanted(event['object'])
    if event['type'] != 'MODIFIED' or prev is None:
        return event if now else None
    before = wanted(prev)
    if now and not before:
        return {**event, 'type': 'ADDED'}
    if before and not now:
        return {**event, 'type': 'DELETED'}
    return event if now else None


def _initial_status(res: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
    if res == kmock.resource('v1/namespaces'):
        return {'status': {'phase': 'Active'}}
    if res == kmock.resource('apiextensions.k8s.io/v1/customresourcedefinitions'):
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
    return f'{res.group}/{res.version}' if res.group else str(res.version)


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
