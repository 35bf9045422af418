"""Real clients against the emulator: a minimal Kopf operator, and kubectl."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner

from tests.support.kube import KubeEmulator

CR = 'mlflow-operator.dev/v1alpha1/mlflowservers'
ROOT = Path(__file__).resolve().parents[1]
KUBECTL = ROOT / '.cache' / 'bin' / 'kubectl'
HELM = ROOT / '.cache' / 'bin' / 'helm'


def wait_for(condition: Callable[[], Any], timeout: float = 15, what: str = 'condition') -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError(f'timed out waiting for {what}')


def mlflow_server(name: str, **spec: Any) -> dict[str, Any]:
    return {'apiVersion': 'mlflow-operator.dev/v1alpha1', 'kind': 'MLflowServer',
            'metadata': {'name': name}, 'spec': spec}


def operator(kube: KubeEmulator, seen: list[tuple[str, str, Any]],
             kubeconfig: Path | None = None) -> tuple[kopf.OperatorRegistry, kopf.OperatorSettings]:
    registry = kopf.OperatorRegistry()
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True  # the emulator has no namespace scanning to offer
    settings.watching.server_timeout = 2
    settings.watching.client_timeout = 5
    group, version, plural = CR.split('/')

    @kopf.on.login(registry=registry)
    def credentials(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if kubeconfig is None:
            return kopf.ConnectionInfo(server=kube.url, token='kopf-token')
        return kopf.login_with_kubeconfig(**kwargs)  # Kopf's own reading of $KUBECONFIG

    @kopf.on.create(group, version, plural, id='created', registry=registry)
    def created(name: str, spec: Any, body: Any, **_: Any) -> dict[str, Any]:
        seen.append(('create', name, dict(spec)))
        kopf.info(body, reason='Seen', message='created')  # a k8s Event, posted in background
        return {'phase': 'Created'}  # Kopf writes it to status.created via /status

    @kopf.on.update(group, version, plural, id='updated', registry=registry)
    def updated(name: str, spec: Any, **_: Any) -> None:
        seen.append(('update', name, dict(spec)))

    @kopf.on.delete(group, version, plural, id='deleted', registry=registry)
    def deleted(name: str, **_: Any) -> None:
        seen.append(('delete', name, None))

    return registry, settings


@pytest.mark.parametrize('scope, via_kubeconfig', [(['--namespace', 'ns1'], False), (['--all-namespaces'], True)])
def test_kopf_lifecycle_create_update_finalizer_delete(kube: KubeEmulator, kubeconfig: Path, scope: list[str],
                                                      via_kubeconfig: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('KUBECONFIG', str(kubeconfig))
    seen: list[tuple[str, str, Any]] = []
    registry, settings = operator(kube, seen, kubeconfig if via_kubeconfig else None)
    with KopfRunner(['run', '--standalone', *scope], registry=registry, settings=settings, timeout=30) as runner:
        kube.create(CR, mlflow_server('m', replicas=1), namespace='ns1')
        wait_for(lambda: ('create', 'm', {'replicas': 1}) in seen, what='the create handler')
        obj = wait_for(lambda: (o := kube.get(CR, 'ns1', 'm')) and 'created' in o.get('status', {}) and o,
                       what='status.created')
        assert obj['status']['created'] == {'phase': 'Created'}
        assert obj['metadata']['finalizers'] == ['kopf.zalando.org/KopfFinalizerMarker']

        kube.patch(CR, 'ns1', 'm', {'spec': {'replicas': 2}})
        wait_for(lambda: ('update', 'm', {'replicas': 2}) in seen, what='the update handler')

        kube.delete(CR, 'ns1', 'm')
        wait_for(lambda: ('delete', 'm', None) in seen, what='the delete handler')
        wait_for(lambda: kube.get(CR, 'ns1', 'm') is None, what='the finalizer release')
        assert [kind for kind, _, _ in seen] == ['create', 'update', 'delete']
        events = wait_for(lambda: kube.list('v1/events', 'ns1'), what='Kopf posting k8s Events')
        assert events[0]['reason'] == 'Seen' and events[0]['involvedObject']['name'] == 'm'
    assert runner.exception is None


def test_kopf_namespace_patterns_with_scanning(kube: KubeEmulator) -> None:
    # Namespaces can be listed and watched, so Kopf's scanning works (no need to disable it).
    seen: list[tuple[str, str, Any]] = []
    registry, settings = operator(kube, seen)
    settings.scanning.disabled = False
    kube.create_namespace('ns1')
    kube.create_namespace('other')
    with KopfRunner(['run', '--standalone', '--namespace', 'ns*'], registry=registry, settings=settings, timeout=30):
        kube.create(CR, mlflow_server('m'), namespace='ns1')
        kube.create(CR, mlflow_server('o'), namespace='other')
        wait_for(lambda: ('create', 'm', {}) in seen, what='the create handler')
        kube.create_namespace('ns2')  # a namespace that appears later is picked up
        kube.create(CR, mlflow_server('n'), namespace='ns2')
        wait_for(lambda: ('create', 'n', {}) in seen, what='the create handler in a new namespace')
    assert sorted(name for _, name, _ in seen) == ['m', 'n']


def test_kopf_default_client_login_reads_our_kubeconfig(kube: KubeEmulator, kubeconfig: Path) -> None:
    # In a fresh process: the kubernetes client reads $KUBECONFIG when imported.
    code = ('import logging, kopf; info = kopf.login_via_client(logger=logging.getLogger(), '
            'settings=kopf.OperatorSettings()); print(info.server, info.token)')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, 'KUBECONFIG': str(kubeconfig)})
    assert result.stdout.split() == [kube.url, 'emulator-admin-token'], result.stderr


# ---- kubectl -------------------------------------------------------------------------

@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    if not KUBECTL.exists():
        pytest.skip(f'kubectl is not at {KUBECTL}: run scripts/fetch-k8s-tools')
    env = {**os.environ, 'HOME': str(tmp_path), 'KUBECONFIG': str(kubeconfig)}

    def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(KUBECTL), '--cache-dir', str(tmp_path / 'cache'), *args],
                                capture_output=True, text=True, env=env, timeout=timeout)
        if check and result.returncode:
            raise AssertionError(f'kubectl {" ".join(args)} failed: {result.stderr}')
        return result
    return run


def test_kubectl_apply_get_wait_delete(kube: KubeEmulator, kubectl: Any, tmp_path: Path) -> None:
    kube.create_namespace('ns1')
    manifest = tmp_path / 'm.yaml'
    manifest.write_text(json.dumps({'apiVersion': 'v1', 'kind': 'List', 'items': [
        {'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'c', 'namespace': 'ns1'}, 'data': {'a': '1'}},
        {**mlflow_server('m', replicas=1), 'metadata': {'name': 'm', 'namespace': 'ns1'}},
    ]}))
    out = kubectl('apply', '--validate=false', '-f', str(manifest)).stdout
    assert 'configmap/c created' in out and 'mlflowserver.mlflow-operator.dev/m created' in out

    manifest.write_text(manifest.read_text().replace('"replicas": 1', '"replicas": 3'))
    out = kubectl('apply', '--validate=false', '-f', str(manifest)).stdout
    assert 'mlflowserver.mlflow-operator.dev/m configured' in out and 'configmap/c unchanged' in out
    assert kube.get(CR, 'ns1', 'm')['spec'] == {'replicas': 3}

    got = json.loads(kubectl('get', 'mlflow', '-n', 'ns1', '-o', 'json').stdout)
    assert [i['metadata']['name'] for i in got['items']] == ['m']
    assert kubectl('get', 'configmaps', '-n', 'ns1', '-o', 'name').stdout.split() == ['configmap/c']

    kube.patch(CR, 'ns1', 'm', {'status': {'conditions': [{'type': 'Ready', 'status': 'True'}]}}, subresource='status')
    kubectl('wait', '-n', 'ns1', '--for=condition=Ready', 'mlflow/m', '--timeout=10s')

    kubectl('delete', '-f', str(manifest))
    assert kube.get(CR, 'ns1', 'm') is None and kube.get('v1/configmaps', 'ns1', 'c') is None
    missing = kubectl('get', 'mlflow', 'm', '-n', 'ns1', check=False)
    assert missing.returncode == 1 and 'NotFound' in missing.stderr


def test_kubectl_apply_twice_patches_a_deployment_strategically(kube: KubeEmulator, kubectl: Any, tmp_path: Path) -> None:
    def deployment(image: str, env: list[dict[str, str]]) -> str:
        return json.dumps({'apiVersion': 'apps/v1', 'kind': 'Deployment', 'metadata': {'name': 'd', 'namespace': 'ns1'},
                           'spec': {'selector': {'matchLabels': {'app': 'd'}}, 'template': {
                               'metadata': {'labels': {'app': 'd'}},
                               'spec': {'containers': [{'name': 'server', 'image': image, 'env': env},
                                                       {'name': 'proxy', 'image': 'proxy:1'}]}}}})
    manifest = tmp_path / 'd.json'
    manifest.write_text(deployment('mlflow:1', [{'name': 'A', 'value': '1'}, {'name': 'B', 'value': '2'}]))
    kubectl('apply', '--validate=false', '-f', str(manifest))
    manifest.write_text(deployment('mlflow:2', [{'name': 'B', 'value': '3'}]))
    assert 'configured' in kubectl('apply', '--validate=false', '-f', str(manifest)).stdout
    containers = kube.get('apps/v1/deployments', 'ns1', 'd')['spec']['template']['spec']['containers']
    assert [(c['name'], c['image']) for c in containers] == [('server', 'mlflow:2'), ('proxy', 'proxy:1')]
    assert containers[0]['env'] == [{'name': 'B', 'value': '3'}]  # kubectl's 3-way patch deletes A


def test_kubectl_get_watch_streams_changes(kube: KubeEmulator, kubectl: Any) -> None:
    kube.create('v1/configmaps', {'metadata': {'name': 'first'}}, namespace='ns1')

    def change_later() -> None:
        time.sleep(1.5)
        kube.create('v1/configmaps', {'metadata': {'name': 'second'}}, namespace='ns1')
    threading.Thread(target=change_later, daemon=True).start()
    result = kubectl('get', 'configmaps', '-n', 'ns1', '-w', '-o', 'name', '--request-timeout=4s', check=False, timeout=20)
    assert result.stdout.split()[:2] == ['configmap/first', 'configmap/second'], result.stderr


def test_kubectl_imperative_creates_send_protobuf_we_decode(kube: KubeEmulator, kubectl: Any) -> None:
    kubectl('create', 'namespace', 'team')
    kubectl('create', 'secret', 'generic', 'db', '-n', 'team', '--from-literal=uri=postgresql://u:p@h/db')
    kubectl('create', 'configmap', 'cfg', '-n', 'team', '--from-literal=a=b')
    kubectl('create', 'serviceaccount', 'trainer', '-n', 'team')
    assert kube.get('v1/namespaces', None, 'team')['status'] == {'phase': 'Active'}
    secret = json.loads(kubectl('get', 'secret', 'db', '-n', 'team', '-o', 'json').stdout)
    assert secret['type'] == 'Opaque'
    assert base64.b64decode(secret['data']['uri']) == b'postgresql://u:p@h/db'
    assert kube.get('v1/configmaps', 'team', 'cfg')['data'] == {'a': 'b'}
    assert kube.get('v1/serviceaccounts', 'team', 'trainer')['metadata']['uid']
    kubectl('delete', 'secret', 'db', '-n', 'team')
    assert kube.get('v1/secrets', 'team', 'db') is None


def test_crds_are_established_at_once(kube: KubeEmulator, kubectl: Any) -> None:
    crd = ROOT / 'crds' / 'mlflowservers.yaml'
    if not crd.exists():
        pytest.skip('crds/mlflowservers.yaml is not written yet')
    kubectl('apply', '--validate=false', '-f', str(crd))
    kubectl('wait', '--for=condition=Established', 'crd/mlflowservers.mlflow-operator.dev', '--timeout=5s')
    kube.create(CR, mlflow_server('m'), namespace='ns1')
    assert kubectl('get', 'mlflow', '-n', 'ns1', '-o', 'name').stdout.split() == ['mlflowserver.mlflow-operator.dev/m']


def test_helm_install_upgrade_uninstall(kube: KubeEmulator, kubeconfig: Path, tmp_path: Path) -> None:
    chart = ROOT / 'charts' / 'mlflow-operator'
    if not HELM.exists() or not (chart / 'Chart.yaml').exists():
        pytest.skip(f'helm ({HELM}) or the chart is absent: run scripts/fetch-k8s-tools')
    kube.create_namespace('mlops')
    env = {**os.environ, 'HOME': str(tmp_path), 'KUBECONFIG': str(kubeconfig)}

    def helm(*args: str) -> str:
        result = subprocess.run([str(HELM), *args, '-n', 'mlops'], capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout
    # No OpenAPI in the emulator, hence --disable-openapi-validation.
    helm('install', 'op', str(chart), '--disable-openapi-validation')
    deployments = kube.list('apps/v1/deployments', 'mlops')
    assert [d['metadata']['annotations']['meta.helm.sh/release-name'] for d in deployments] == ['op']
    helm('upgrade', 'op', str(chart), '--disable-openapi-validation', '--set', 'commonLabels.team=ml')
    assert 'deployed' in helm('list') and ' 2 ' in helm('list').replace('\t', ' ')
    assert kube.get('apps/v1/deployments', 'mlops', deployments[0]['metadata']['name'])['metadata']['labels']['team'] == 'ml'
    helm('uninstall', 'op')
    assert kube.list('apps/v1/deployments', 'mlops') == []
    assert kube.list('v1/secrets', 'mlops') == []  # helm's release records are gone too


@pytest.mark.slow
def test_kopf_reconciles_200_objects_in_seconds(kube: KubeEmulator) -> None:
    # Guards the emulator's cost per request (request-log trimming, O(1) lookups).
    seen: list[tuple[str, str, Any]] = []
    registry, settings = operator(kube, seen)
    started = time.monotonic()
    with KopfRunner(['run', '--standalone', '--namespace', 'ns1'], registry=registry, settings=settings, timeout=60):
        for i in range(200):
            kube.create(CR, mlflow_server(f'm{i}', replicas=1), namespace='ns1')
        wait_for(lambda: sum(kind == 'create' for kind, _, _ in seen) == 200, timeout=120, what='200 creations')
        elapsed = time.monotonic() - started
    assert all('created' in (o.get('status') or {}) for o in kube.list(CR, 'ns1'))
    assert elapsed < 60, f'200 objects took {elapsed:.1f}s'
