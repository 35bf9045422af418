"""Resources the emulator serves, and API discovery (a mixin of ``KubeEmulator``).

``RESOURCES`` lists the resources declared at start; creating a
CustomResourceDefinition through the API declares (or redeclares) its
resources, as applying ``crds/mlflowservers.yaml`` does; tests may also set
``kube.resources['group/version/plural'] = kmock.ResourceInfo(...)`` before
clients discover them. Discovery answers like kube-apiserver: ``/api/v1`` has
groupVersion ``v1``; subresources (``pods/status``) carry no short names.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import kmock

from tests.support.kubeproto import ApiError

if TYPE_CHECKING:
    from tests.support.kube import KubeEmulator

ALL_VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch']
TOKENREVIEWS = kmock.resource('authentication.k8s.io', 'v1', 'tokenreviews')
CRDS = kmock.resource('apiextensions.k8s.io', 'v1', 'customresourcedefinitions')

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


def declare(resources: kmock.ResourcesArray) -> None:
    for key, kind, namespaced, short, subs in RESOURCES:
        resources[key] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=ALL_VERBS,
            shortnames=short, subresources=subs)
    resources[TOKENREVIEWS] = kmock.ResourceInfo(
        kind='TokenReview', singular='tokenreview', namespaced=False, verbs=['create'])


def declare_crd(resources: kmock.ResourcesArray, crd: dict[str, Any]) -> None:
    """Serve the resources a CustomResourceDefinition defines (as the API does once it is Established)."""
    spec = crd.get('spec') or {}
    names = spec.get('names') or {}
    for version in spec.get('versions') or []:
        if not version.get('served', True) or not names.get('plural'):
            continue
        resources[kmock.resource(spec.get('group', ''), version['name'], names['plural'])] = kmock.ResourceInfo(
            kind=names.get('kind'), singular=names.get('singular') or str(names.get('kind', '')).lower(),
            namespaced=spec.get('scope') == 'Namespaced', verbs=ALL_VERBS,
            shortnames=names.get('shortNames') or (), categories=names.get('categories') or (),
            subresources=set(version.get('subresources') or {}))


class DiscoveryMixin:

    async def _discovery(self: KubeEmulator, request: kmock.Request, path: str) -> dict[str, Any]:
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

    def _group(self: KubeEmulator, group: str) -> dict[str, Any]:
        versions = sorted({r.version for r in self.resources if r.group == group})
        if not versions:
            raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
        entries = [{'groupVersion': f'{group}/{v}', 'version': v} for v in versions]
        return {'kind': 'APIGroup', 'apiVersion': 'v1', 'name': group,
                'versions': entries, 'preferredVersion': entries[0]}

    def _resource_list(self: KubeEmulator, group: str, version: str) -> dict[str, Any]:
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
